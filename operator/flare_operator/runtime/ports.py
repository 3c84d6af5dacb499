"""Free TCP ports on loopback for the process runtime's NVFlare servers."""

from __future__ import annotations

import contextlib
import socket


def free_port_pair() -> tuple[int, int]:
    """Two distinct ports nobody listens on now (the kernel picks them)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(2):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports[0], ports[1]
