"""The workload of `rusty-rail bench soak`, each part on its own thread until stopped: short
HTTP requests at a steady rate, API churn of a spare backend, health flaps of one server (an
nft rule dropping its checks) and bursts of forged ICMP unreachables to the balancers.

Each part counts what it did and what went wrong; bench/soak.py runs them together and reads
the balancers while they run.
"""

from __future__ import annotations

import functools
import socket
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

from rusty_rail.api.client import ApiClient, ApiFailed, ApiUnreachable, backend_path
from rusty_rail.api.credentials import local_token
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.model.flowhash import Flow
from rusty_rail.testbed.netns import Namespace
from rusty_rail.testbed.topology import HTTP_PORT, VIP, Testbed, lb_address
from rusty_rail.wire.build import gre, icmp, ipv4
from rusty_rail.wire.constants import ETH_P_IPV4, PROTO_GRE, PROTO_ICMP, PROTO_TCP
from rusty_rail.wire.frames import inner_ipv4

API: Final = "http://127.0.0.1:9180"
#: The nft table a flap adds to the flapped server's namespace (and deletes to recover).
FLAP_TABLE: Final = "rrsoak"


class Worker:
    """A loop on a daemon thread until :meth:`stop`; ``errors`` counts what went wrong by kind."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        raise NotImplementedError

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when told to stop meanwhile."""
        return self._stop.wait(max(0.0, seconds))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
            if thread.is_alive():
                self._error("thread did not stop")


# --- short HTTP requests -----------------------------------------------------------------------


def http_status(vip: str, port: int, timeout: float) -> tuple[int, str]:
    """One GET on a new connection: the status code and the body (the backend's name)."""
    with socket.create_connection((vip, port), timeout=timeout) as connection:
        connection.sendall(f"GET / HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := connection.recv(4096):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {head[:40]!r}")
    return int(parts[1]), body.decode(errors="replace").strip()


class Requests(Worker):
    """Short HTTP requests to the VIP, each on a new connection, ``rate`` a second in all,
    spread over the clients (one thread each)."""

    def __init__(self, clients: Sequence[Namespace], rate: float, timeout: float = 2.0) -> None:
        super().__init__()
        self.clients = list(clients)
        self.rate = rate
        self.timeout = timeout
        self.statuses: Counter[int] = Counter()
        self.backends: Counter[str] = Counter()

    def start(self) -> None:
        for client in self.clients:
            self._spawn(functools.partial(self._run, client.name))

    def _run(self, namespace: str) -> None:
        period = len(self.clients) / self.rate
        with in_netns(namespace):
            due = time.monotonic()
            while not self._wait(due - time.monotonic()):
                due += period
                try:
                    status, backend = http_status(VIP, HTTP_PORT, self.timeout)
                except OSError as error:
                    self._error(f"request: {type(error).__name__}")
                    continue
                with self._lock:
                    self.statuses[status] += 1
                    if status == 200:
                        self.backends[backend] += 1
                due = max(due, time.monotonic() - period)  # no catching up after a stall

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


# --- API churn ---------------------------------------------------------------------------------

#: One cycle of the spare backend, a step every `interval`: added, weighted, drained, removed.
CHURN_STEPS: Final = (
    ("PUT", {"weight": 1, "state": "up"}),
    ("PATCH", {"weight": 3}),
    ("PATCH", {"state": "drain"}),
    ("DELETE", None),
)


class Churn(Worker):
    """API writes about the spare backend on every balancer, through its API with the host's
    token: each write's latency (ms, until the daemon answered: its tables are live then) and
    every refusal by status."""

    def __init__(self, bed: Testbed, spare: str, interval: float) -> None:
        super().__init__()
        self.bed = bed
        self.spare = spare
        self.interval = interval
        self.latencies_ms: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.token = local_token()

    def start(self) -> None:
        self._spawn(self._run)

    def _run(self) -> None:
        path = backend_path(VIP, self.spare)
        step = 0
        due = time.monotonic()
        while not self._wait(due - time.monotonic()):
            due += self.interval
            method, body = CHURN_STEPS[step % len(CHURN_STEPS)]
            step += 1
            for lb in self.bed.lbs:
                self._write(lb.name, method, path, body)

    def _write(self, namespace: str, method: str, path: str, body: object) -> None:
        client = ApiClient(API, self.token, timeout=10)
        started = time.monotonic()
        try:
            with in_netns(namespace):
                response = client.request(method, path, body)
        except ApiFailed as error:
            with self._lock:
                self.statuses[error.status] += 1
            self._error(f"api {method}: {error.status}")
            return
        except ApiUnreachable:
            self._error(f"api {method}: unreachable")
            return
        took = (time.monotonic() - started) * 1000
        with self._lock:
            self.statuses[response.status] += 1
            self.latencies_ms.append(took)

    @property
    def writes(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


def percentile(values: Sequence[float], share: float) -> float | None:
    """The ``share`` quantile (0.5, 0.99) of ``values``, None when there are none."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


# --- health flaps ------------------------------------------------------------------------------


class Flaps(Worker):
    """The flapped server's health checks fail for ``down`` seconds (an nft rule in its
    namespace drops TCP to its own address's HTTP port: the checks' destination, not the
    VIP's, so its service goes on answering the VIP), then pass for ``up`` seconds."""

    def __init__(self, server: Namespace, address: str, down: float, up: float) -> None:
        super().__init__()
        self.server = server
        self.address = address
        self.down = down
        self.up = up
        self.flaps = 0

    def start(self) -> None:
        self._spawn(self._run)

    def _run(self) -> None:
        while not self._wait(self.up):
            try:
                self.fail()
                self.flaps += 1
                self._wait(self.down)
            finally:
                self.recover()

    def fail(self) -> None:
        script = (
            f"add table inet {FLAP_TABLE}\n"
            f"add chain inet {FLAP_TABLE} input {{ type filter hook input priority 0; }}\n"
            f"add rule inet {FLAP_TABLE} input ip daddr {self.address} tcp dport {HTTP_PORT} drop\n"
        )
        self._nft(script)

    def recover(self) -> None:
        self._nft(f"delete table inet {FLAP_TABLE}\n", missing_ok=True)

    def _nft(self, script: str, missing_ok: bool = False) -> None:
        command = ["ip", "netns", "exec", self.server.name, "nft", "-f", "-"]
        done = subprocess.run(command, input=script, capture_output=True, text=True, timeout=10)
        if done.returncode != 0 and not (missing_ok and "No such file" in done.stderr):
            self._error(f"nft: {done.stderr.strip()[:80]}")


# --- ICMP bursts -------------------------------------------------------------------------------


def forged_unreachables(backends: Sequence[str], lbs: int, count: int) -> list[tuple[bytes, str]]:
    """``count`` ICMP destination unreachables (protocol, host, port), each 'from' one of the
    ``backends`` to one of the balancers, quoting GRE that balancer could have sent it: what
    anyone who knows the addresses can forge. (packet, balancer address) pairs."""
    packets = []
    for number in range(count):
        lb = lb_address(number % lbs)
        backend = backends[number // lbs % len(backends)]
        flow = Flow.of("198.18.1.99", VIP, PROTO_TCP, 1024 + number % 50000, HTTP_PORT)
        quoted = ipv4(lb, backend, PROTO_GRE, gre(ETH_P_IPV4, inner_ipv4(flow)))
        message = icmp(3, 1 + number % 3, quoted)
        packets.append((ipv4(backend, lb, PROTO_ICMP, message), lb))
    return packets


class IcmpBursts(Worker):
    """Every ``every`` seconds, ``burst`` seconds of forged unreachables about ``backends``
    at ``rate`` a second, sent from a client through the router to the balancers."""

    def __init__(
        self, client: Namespace, backends: Sequence[str], lbs: int, every: float, burst: float,
        rate: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.client = client
        self.every = every
        self.burst = burst
        self.rate = rate
        self.sent = 0
        self.bursts = 0
        self._packets = forged_unreachables(backends, lbs, 600)

    def start(self) -> None:
        self._spawn(self._run)

    def _run(self) -> None:
        with in_netns(self.client.name):
            sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        with sender:
            while not self._wait(self.every - self.burst):
                self.bursts += 1
                self._burst(sender)

    def _burst(self, sender: socket.socket) -> None:
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < self.burst and not self._stop.is_set():
            packet, lb = self._packets[self.sent % len(self._packets)]
            try:
                sender.sendto(packet, (lb, 0))
            except OSError as error:
                self._error(f"icmp send: {type(error).__name__}")
            self.sent += 1
            sent += 1
            if sent % 50 == 0:
                time.sleep(max(0.0, started + sent / self.rate - time.monotonic()))
