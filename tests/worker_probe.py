"""Run inside a pool worker: what the worker process has loaded and set up.

Kept in its own small module so that submitting it to a worker imports nothing
the worker would not import anyway.
"""

from __future__ import annotations

import sys


def loaded_modules() -> list[str]:
    """Every module in this process's ``sys.modules``."""
    return sorted(sys.modules)


def root_log_handlers() -> int:
    """Handlers on the stdlib root logger (0 when logging was never configured or not imported)."""
    logging = sys.modules.get("logging")
    return len(logging.getLogger().handlers) if logging is not None else 0
