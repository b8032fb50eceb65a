"""Client traffic for the test bed: many short HTTP requests over new connections, and
long-lived TCP echo connections whose survival can be checked at any moment."""

from __future__ import annotations

import secrets
import socket
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.model.flowhash import Flow
from rusty_rail.testbed.netns import Namespace
from rusty_rail.wire.constants import PROTO_TCP


@dataclass
class HttpResult:
    per_backend: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(self.per_backend.values())


def http_get(vip: str, port: int, timeout: float = 5.0) -> str:
    """One request on a new connection; returns the backend's name (the response body)."""
    with socket.create_connection((vip, port), timeout=timeout) as connection:
        host = f"[{vip}]" if ":" in vip else vip
        connection.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := connection.recv(4096):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected response: {head[:60]!r}")
    return body.decode().strip()


def http_requests(
    clients: Sequence[Namespace], vip: str, port: int, count: int, workers_per_client: int = 4
) -> HttpResult:
    """``count`` requests, each on a new connection, spread evenly over the clients."""
    result = HttpResult()
    lock = threading.Lock()
    jobs = len(clients) * workers_per_client
    shares = [count // jobs + (1 if i < count % jobs else 0) for i in range(jobs)]

    def worker(client: Namespace, share: int) -> None:
        with in_netns(client.name):
            for _ in range(share):
                try:
                    name = http_get(vip, port)
                except OSError as error:
                    with lock:
                        result.errors.append(f"{client.name}: {type(error).__name__}: {error}")
                    continue
                with lock:
                    result.per_backend[name] += 1

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(worker, clients[i % len(clients)], share) for i, share in enumerate(shares)
        ]
        for future in futures:
            future.result()
    return result


@dataclass
class EchoConnection:
    client: str
    backend: str
    sock: socket.socket
    alive: bool = True

    @property
    def flow(self) -> Flow:
        """The connection's 5-tuple as the router and the balancers see it."""
        src, sport = self.sock.getsockname()[:2]
        dst, dport = self.sock.getpeername()[:2]
        return Flow.of(src, dst, PROTO_TCP, sport, dport)


class LongLived:
    """Echo connections that stay open; :meth:`check` proves each still reaches its server."""

    def __init__(self, clients: Sequence[Namespace], vip: str, port: int, count: int) -> None:
        self.connections: list[EchoConnection] = []
        for i in range(count):
            client = clients[i % len(clients)]
            with in_netns(client.name):
                sock = socket.create_connection((vip, port), timeout=5)
            greeting = _read_line(sock)
            backend = greeting.rsplit(" ", 1)[-1]
            self.connections.append(EchoConnection(client.name, backend, sock))

    def per_backend(self) -> Counter[str]:
        return Counter(c.backend for c in self.connections)

    def check(self, timeout: float = 3.0) -> list[EchoConnection]:
        """Send a fresh payload on every connection still alive and expect it echoed back;
        returns the connections that failed now (they are marked dead)."""
        failed = []
        for connection in self.connections:
            if not connection.alive:
                continue
            payload = secrets.token_hex(16).encode() + b"\n"
            try:
                connection.sock.settimeout(timeout)
                connection.sock.sendall(payload)
                echoed = b""
                while len(echoed) < len(payload):
                    chunk = connection.sock.recv(len(payload) - len(echoed))
                    if not chunk:
                        raise ConnectionError("closed by the peer")
                    echoed += chunk
                if echoed != payload:
                    raise ConnectionError(f"echo mismatch: {echoed!r}")
            except OSError:
                connection.alive = False
                failed.append(connection)
        return failed

    def close(self) -> None:
        for connection in self.connections:
            connection.sock.close()


def _read_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed before the greeting")
        data += chunk
    return data.decode().strip()
