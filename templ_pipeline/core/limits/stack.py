"""The stack size a new thread gets, which sets its memory and address-space cost.

CPython on Linux passes ``threading.stack_size()`` to ``pthread_attr_setstacksize``
when it is non-zero; 0 means glibc's default. glibc computes that default once, at
process start, from the soft ``RLIMIT_STACK`` (``__pthread_initialize_minimal``):
the limit itself when finite (at least ``PTHREAD_STACK_MIN``), or
``ARCH_STACK_DEFAULT_SIZE`` when unlimited: 2 MiB on x86_64 (checked here with
``ulimit -s unlimited``: ``pthread_getattr_default_np`` reports 2097152), 8 MiB on
aarch64 and most others. Native threads (RDKit's ``std::thread``) always get the
glibc default. Each thread also costs a guard page.

Under ``RLIMIT_AS`` a thread can cost more address space than its stack: on its first
``malloc`` glibc gives it a new arena, reserving a 64 MiB heap (``HEAP_MAX_SIZE`` on
64-bit), until there are ``MALLOC_ARENA_MAX`` arenas (default 8 per CPU). Seen here:
with room for 12 stacks, sometimes 11 threads start and sometimes 3.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
from collections.abc import Mapping

_PTHREAD_STACK_MIN = 16384
_ATTR_BYTES = 128  # >= sizeof(pthread_attr_t) on every Linux ABI (56 on x86_64, 64 on aarch64)
_UNLIMITED_DEFAULT = {"x86_64": 2 << 20, "i686": 2 << 20}
_OTHER_DEFAULT = 8 << 20
ARENA_HEAP_RESERVE = 64 << 20  # HEAP_MAX_SIZE of 64-bit glibc
_ARENAS_PER_CPU = 8


def glibc_rule(rlimit_stack_soft: int, machine: str) -> int:
    """glibc's default thread stack for a given soft ``RLIMIT_STACK`` (see module docstring)."""
    if rlimit_stack_soft == resource.RLIM_INFINITY or rlimit_stack_soft < 0:
        return _UNLIMITED_DEFAULT.get(machine, _OTHER_DEFAULT)
    return max(rlimit_stack_soft, _PTHREAD_STACK_MIN)


def default_thread_stack() -> int:
    """The default pthread stack size of this process, asked from libc where it can tell.

    ``pthread_getattr_default_np`` (glibc >= 2.18) gives the value glibc really uses,
    which no longer follows ``RLIMIT_STACK`` changed after start; otherwise apply
    :func:`glibc_rule` to the current limit.
    """
    try:
        libc = ctypes.CDLL(None)
        attr = ctypes.create_string_buffer(_ATTR_BYTES)
        size = ctypes.c_size_t()
        if libc.pthread_getattr_default_np(attr) == 0:
            try:
                if libc.pthread_attr_getstacksize(attr, ctypes.byref(size)) == 0 and size.value:
                    return size.value
            finally:
                libc.pthread_attr_destroy(attr)
    except (OSError, AttributeError):  # no such symbol (musl, old glibc)
        pass
    return glibc_rule(resource.getrlimit(resource.RLIMIT_STACK)[0], platform.machine())


def _arena_max(environ: Mapping[str, str]) -> int | None:
    """``arena_max`` from ``GLIBC_TUNABLES`` or ``MALLOC_ARENA_MAX`` (the tunable wins)."""
    for tunable in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = tunable.partition("=")
        if name == "glibc.malloc.arena_max" and value.isdigit() and int(value) > 0:
            return int(value)
    value = environ.get("MALLOC_ARENA_MAX", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def new_malloc_arenas(
    environ: Mapping[str, str] = os.environ, cpus: int | None = None, glibc: bool | None = None
) -> int:
    """How many more malloc arenas (each reserving ARENA_HEAP_RESERVE) new threads may create.

    Conservative: assumes only the main arena exists. 0 outside glibc. glibc reads the
    settings at process start, so call this once, early.
    """
    if glibc is None:
        glibc = platform.libc_ver()[0] == "glibc"
    if not glibc:
        return 0
    arena_max = _arena_max(environ) or _ARENAS_PER_CPU * (cpus or os.cpu_count() or 1)
    return arena_max - 1


def address_space_fit(room: int, per_thread: int, new_arenas: int) -> int:
    """Threads whose stacks fit in ``room`` bytes when each of the first ``new_arenas``
    threads may also reserve an arena heap."""
    with_arena = per_thread + ARENA_HEAP_RESERVE
    if room <= new_arenas * with_arena:
        return max(0, room) // with_arena
    return new_arenas + (room - new_arenas * with_arena) // per_thread
