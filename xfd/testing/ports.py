"""Free ports on loopback, for servers that must be told their port (``ray start --port``, SeaweedFS)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on ``127.0.0.1`` that was free a moment ago (servers of this package bind port 0 instead)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
