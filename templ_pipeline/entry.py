"""The ``templ`` console script: SIGINT and SIGTERM are handled from its first line, then the CLI is imported.

Importing the CLI (RDKit, numpy, OpenTelemetry) takes a second or more. A handler
installed by the CLI module itself would leave that time to Python's defaults (a
``KeyboardInterrupt`` traceback from inside an import), and installing one at
import time would change the signal handling of every program that imports it.
"""

from __future__ import annotations

from templ_pipeline.interrupts import exit_while_starting


def main() -> int:
    """Handle signals while starting, then run :func:`templ_pipeline.cli.main`."""
    exit_while_starting()
    from templ_pipeline.cli import main as run

    return run()
