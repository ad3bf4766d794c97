"""Start one native thread with ``pthread_create`` and report its errno.

Python's ``RuntimeError("can't start new thread")`` drops the errno; this probe gets
it back. glibc returns EAGAIN both for a task limit and for a stack mmap that failed
(it translates ENOMEM), EPERM when a seccomp profile rejects ``clone3``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import threading

_ATTR_BYTES = 128  # >= sizeof(pthread_attr_t) on every Linux ABI
_START_ROUTINE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
_NOOP = _START_ROUTINE(lambda _arg: None)  # module-level: must outlive every probe thread


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """A private handle on libc (argtypes set here do not leak into ``ctypes.cdll``)."""
    try:
        libc = ctypes.CDLL(None)
        libc.pthread_create.argtypes = [
            ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p, _START_ROUTINE, ctypes.c_void_p]
        libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
        libc.pthread_attr_setstacksize.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def probe_native_thread() -> int:
    """Start and join a no-op native thread (with Python's thread stack size): 0, else its errno.

    Returns ENOSYS when libc's pthread functions cannot be reached.
    """
    libc = _libc()
    if libc is None:
        return errno.ENOSYS
    attr = None
    stack_size = threading.stack_size()
    if stack_size:
        attr = ctypes.create_string_buffer(_ATTR_BYTES)
        libc.pthread_attr_init(attr)
        libc.pthread_attr_setstacksize(attr, stack_size)
    tid = ctypes.c_ulong()
    try:
        rc: int = libc.pthread_create(ctypes.byref(tid), attr, _NOOP, None)  # restype: the default c_int
    finally:
        if attr is not None:
            libc.pthread_attr_destroy(attr)
    if rc == 0:
        libc.pthread_join(tid, None)
    return rc
