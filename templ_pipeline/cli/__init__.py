"""The ``templ`` command line: one module per command, the options and consoles they share, the root app.

``select_best`` (with the workflow ``demo`` shares), ``screen``, ``demo``, ``stress``,
``doctor`` and ``dashboards`` hold the commands; ``options`` and ``common`` what they
share; ``root`` the app, ``--version`` and :func:`main`, whose exit codes are 0 done,
2 bad input, 1 a failed run, 130/143 stopped by SIGINT/SIGTERM.

Importing this package loads nothing: ``app`` and ``main`` come from
:mod:`templ_pipeline.cli.root` when first asked for, so that ``python -m
templ_pipeline.cli`` and the ``templ`` script (:mod:`templ_pipeline.entry`) handle
signals and limit the parent's thread pools before RDKit and numpy are imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from templ_pipeline.cli.root import app, main

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from templ_pipeline.cli import root

        return getattr(root, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
