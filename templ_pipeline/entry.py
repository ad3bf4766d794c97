"""The ``templ`` console script (and ``python -m templ_pipeline.cli``): what must happen before the CLI is imported.

Importing the CLI (RDKit, numpy, OpenTelemetry) takes a second or more. A handler
installed by the CLI module itself would leave that time to Python's defaults (a
``KeyboardInterrupt`` traceback from inside an import), and installing one at
import time would change the signal handling of every program that imports it.
The parent's BLAS and OpenMP pools are limited here too, because numpy reads the
variables once, when it is imported (:mod:`templ_pipeline.parent_threads`).
"""

from __future__ import annotations

from templ_pipeline.interrupts import exit_while_starting
from templ_pipeline.parent_threads import limit_parent_pools


def main() -> int:
    """Handle signals while starting, keep the parent's thread pools at one thread, then run
    :func:`templ_pipeline.cli.root.main`."""
    exit_while_starting()
    limit_parent_pools()
    from templ_pipeline.cli.root import main as run

    return run()
