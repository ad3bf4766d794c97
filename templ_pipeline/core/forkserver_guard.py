"""Preloaded by the fork server (``TEMPL_MP_START_METHOD=forkserver``): it ends when the pool's owner does.

The stdlib's fork server runs until every holder of its "alive" pipe has closed it, and each
worker it forks holds one; a worker, in turn, watches its own parent, the fork server. After a
``kill -9`` of the owner, the fork server and its workers would both wait for the other and
hold their tasks forever. Imported in the fork server as it starts (:func:`preload`), this
module arms the same parent-death signal the workers use, so the fork server ends once its
owner is gone, and the workers then end with it.
"""

from __future__ import annotations

import os
import sys

from templ_pipeline.core.worker_init import exit_with_parent


def preload() -> list[str]:
    """What the fork server imports as it starts: the stdlib's default (the main module), then this module."""
    return ["__main__", __name__]


def _in_fork_server() -> bool:
    """Whether this import runs in the stdlib's fork server (its ``main`` is on the stack)."""
    server = sys.modules.get("multiprocessing.forkserver")
    if server is None:
        return False
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is server.main.__code__:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


if _in_fork_server():
    exit_with_parent(os.getppid())
