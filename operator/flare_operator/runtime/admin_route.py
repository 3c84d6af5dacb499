"""How an operator outside the cluster reaches an NVFlare server's admin port: a local relay.

In the cluster the admin kit works as provisioned: it dials the server's Service by the name in
the server's certificate. A developer's operator (``flare-operator run`` on a laptop, or these
tests) cannot resolve that name, and the FLARE API speaks gRPC over mutual TLS, which checks the
name it dials against the certificate. So the operator listens on 127.0.0.1:<ephemeral> and its
local copy of the admin kit dials ``localhost:<that port>`` (the server's certificate carries
``localhost`` among its names for exactly this); each connection is relayed byte for byte — TLS
stays end to end, nothing is terminated here — through the Kubernetes API's port-forward to the
server Pod (what ``kubectl port-forward`` does: only the kubeconfig is needed, no route to the
Pod network), or straight to the Pod's IP where the operator's machine routes to it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ADMIN_CONFIG = "startup/fed_admin.json"

Dial = Callable[[], Any]
"""Open a connection to the server's admin port: a socket-like object (recv, sendall, close)."""

_CHUNK = 1 << 16


def dial_port_forward(api_client: Any, namespace: str, pod: str, port: int) -> Dial:
    """Each connection through a new port-forward stream of the Kubernetes API (pods/portforward),
    on an ApiClient of its own: the client library's stream call swaps its ApiClient's transport
    while it connects, which would break every other request made meanwhile on a shared one."""

    def dial():
        from kubernetes import client
        from kubernetes.stream import portforward

        own = client.ApiClient(api_client.configuration)
        try:
            forward = portforward(client.CoreV1Api(own).connect_get_namespaced_pod_portforward,
                                  pod, namespace, ports=str(port))
        except Exception:
            own.close()
            raise
        return _Forwarded(forward, port, own)

    return dial


def dial_direct(address: Callable[[], str], port: int, timeout: float = 5.0) -> Dial:
    """Each connection straight to ``address()`` (a Pod IP, looked up per connection)."""

    def dial():
        sock = socket.create_connection((address(), port), timeout=timeout)
        sock.settimeout(None)  # the timeout was for connecting: an admin session may idle for long
        return sock

    return dial


class _Forwarded:
    """One port-forward stream as a socket: closing it closes the stream."""

    def __init__(self, forward: Any, port: int, api_client: Any):
        self.forward = forward
        self.api_client = api_client
        self.sock = forward.socket(port)
        self.sock.setblocking(True)

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        try:
            self.sock.close()
            self.forward.close()
            self.api_client.close()
        except Exception:  # noqa: BLE001 - closing a broken stream
            log.debug("closing a port-forward failed", exc_info=True)


class LocalRelay:
    """Listens on 127.0.0.1:<ephemeral> (or ``bind``); every accepted connection is piped to a fresh
    ``dial()``: a TCP passthrough, it never looks into the bytes."""

    def __init__(self, dial: Dial, name: str, bind: tuple[str, int] = ("127.0.0.1", 0)):
        self.dial = dial
        self.name = name
        self.connections = 0  # accepted so far
        self._listener = socket.create_server(bind)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name=f"relay {name}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), name=f"relay {self.name}", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            upstream = self.dial()
        except Exception as err:  # noqa: BLE001 - the FLARE API call on the other end reports it
            log.info("relay %s: cannot reach the server: %s: %s", self.name, type(err).__name__, err)
            conn.close()
            return

        ended = [0]
        lock = threading.Lock()

        def pipe(src, dst) -> None:
            try:
                while data := src.recv(_CHUNK):
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)  # EOF passes on; the other direction may still carry data
                broken = False
            except OSError:
                broken = True
            with lock:
                ended[0] += 1
                last = ended[0] == 2
            if broken or last:  # either side broken, or both directions done: end both
                for side in (src, dst):
                    try:
                        side.shutdown(socket.SHUT_RDWR)  # close() alone does not wake a blocked recv
                    except OSError:
                        pass
                    side.close()

        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        pipe(conn, upstream)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


def admin_port(kit_folder: Path) -> int:
    """The server admin port an unpacked admin kit dials."""
    return int(json.loads((kit_folder / ADMIN_CONFIG).read_text())["admin"]["port"])


def route_kit_through(kit_folder: Path, relay: LocalRelay) -> None:
    """Point an unpacked admin kit at ``relay`` (the operator's own copy: admin kits carry no
    signature), by the name the server's certificate holds for it."""
    path = kit_folder / ADMIN_CONFIG
    config = json.loads(path.read_text())
    config["admin"].update(host="localhost", port=relay.port)
    path.write_text(json.dumps(config, indent=2))
