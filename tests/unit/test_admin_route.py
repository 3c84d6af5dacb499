"""The operator's local relay to a server's admin port: bytes pass unchanged both ways, each client
connection gets its own upstream, a dial failure closes only that connection."""

from __future__ import annotations

import socket
import threading

from flare_operator.runtime.admin_route import LocalRelay, dial_direct


def echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


def roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
        except OSError:  # the relay closed it already (a failed dial)
            return b""
        out = b""
        try:
            while data := conn.recv(65536):
                out += data
        except ConnectionResetError:  # closed with our bytes unread
            pass
        return out


def test_relay_passes_bytes_both_ways_per_connection():
    server, port = echo_server()
    dialled = []

    def dial():
        dialled.append(1)
        return dial_direct(lambda: "127.0.0.1", port)()

    relay = LocalRelay(dial, "test")
    try:
        assert roundtrip(relay.port, b"hello") == b"hello"
        big = bytes(range(256)) * 4096  # 1 MiB: several relay chunks
        assert roundtrip(relay.port, big) == big
        assert len(dialled) >= 2, "one upstream connection per client connection"
    finally:
        relay.close()
        server.close()


def test_a_failed_dial_closes_only_that_connection():
    calls = []

    def dial():
        calls.append(1)
        raise ConnectionRefusedError("server pod not running")

    relay = LocalRelay(dial, "down")
    try:
        assert roundtrip(relay.port, b"x") == b""  # closed at once, no hang
        assert roundtrip(relay.port, b"y") == b""  # the relay itself still listens
        assert len(calls) == 2
    finally:
        relay.close()
