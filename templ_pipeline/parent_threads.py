"""Keep the CLI's own BLAS and OpenMP thread pools at one thread, set before numpy is imported.

numpy's OpenBLAS starts a pool of (CPUs - 1) threads when it is imported, and it
does not fail softly where threads cannot start: it reports a too-small
RLIMIT_NPROC (whatever the real cause) and the process dies at ``import numpy``,
before any diagnosis can run. The parent of a run does no linear algebra worth a
pool (workers do the scoring, and start with one BLAS thread each), so the CLI
asks for one thread, which starts none. A value the user set is kept.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

PARENT_POOL_VARIABLES: tuple[str, ...] = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_parent_pools(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Set each of PARENT_POOL_VARIABLES to 1 unless already set; return the names set."""
    added = [name for name in PARENT_POOL_VARIABLES if name not in environ]
    for name in added:
        environ[name] = "1"
    return added
