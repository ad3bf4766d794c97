"""A free TCP port on 127.0.0.1: bound, then closed, so nothing listens on it until someone takes it."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (a server may take it, or a test may use it as closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
