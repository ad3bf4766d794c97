"""A free TCP port on 127.0.0.1: bound, then closed, so nothing listens on it until someone takes it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (a server may take it, or a test may use it as closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def silent_listener(backlog: int = 64) -> Iterator[socket.socket]:
    """A socket listening on a free port of 127.0.0.1 that never accepts: connections complete in the kernel's
    backlog and get no answer. A port already taken, for a server; an endpoint that hangs, for a client."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
        yield sock
