"""`rusty-rail bench health`: how fast the balancers stop sending to a backend that dies, in a
test bed with real traffic. (a) a server stops taking GRE and answers protocol-unreachable:
ICMP learning; (b) a server's HTTP service stops: the active checks. Needs root.

Also the toolkit of the end-to-end health tests: the configuration with health settings, each
balancer's view over its API, a background load, and the ways a server is made to fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from rusty_rail.api.client import ApiClient, backend_path, vip_path
from rusty_rail.api.credentials import local_token
from rusty_rail.config import merge_health
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.decap.agent import decap_attach, decap_detach
from rusty_rail.testbed.topology import (
    ECHO_PORT,
    HTTP_PORT,
    LB_NET,
    VIP,
    Testbed,
    TestbedSpec,
    balancer_config,
    server_address,
)
from rusty_rail.testbed.traffic import LongLived, http_get

API: Final = "http://127.0.0.1:9180"
#: The scenarios' check settings: detection within interval x (fall + 1) is the budget.
CHECK_INTERVAL: Final = 0.5
CHECK_FALL: Final = 3
CHECK_RISE: Final = 2
BUDGET_ICMP_SECONDS: Final = 1.0
POLL: Final = 0.02


@dataclass(frozen=True)
class HealthBedSettings:
    """The [health] table every balancer of the bed gets."""

    check: str = "http"
    interval: float = CHECK_INTERVAL
    fall: int = CHECK_FALL
    rise: int = CHECK_RISE
    icmp: str = "suspect"
    icmp_max_removed: float = 0.5
    icmp_hold: float = 1.0
    all_unhealthy: str = "fail-open"

    def toml(self) -> str:
        return (
            "\n[health]\n"
            f'check = "{self.check}"\nport = {HTTP_PORT}\npath = "/"\n'
            f"interval = {self.interval}\nfall = {self.fall}\nrise = {self.rise}\n"
            f'icmp = "{self.icmp}"\nicmp_max_removed = {self.icmp_max_removed}\n'
            f'icmp_hold = {self.icmp_hold}\nall_unhealthy = "{self.all_unhealthy}"\n'
        )


def health_config(spec: TestbedSpec, settings: HealthBedSettings) -> str:
    """The IPv4 VIP alone: the scenarios follow one VIP's backends (each backend of a second
    VIP has its own health entry and state changes)."""
    return balancer_config(spec, vips=[VIP]) + settings.toml()


def reload_balancers(bed: Testbed, text: str, timeout: float = 15) -> None:
    """Give every balancer ``text`` as its configuration (SIGHUP) and wait until each says
    it reloaded."""
    names = [f"lb{i + 1}" for i in range(bed.spec.lbs)]
    before = {name: bed.log(name).read_text().count("reloaded") for name in names}
    bed.config_path.write_text(text)
    for name in names:
        os.kill(bed.pids[name], signal.SIGHUP)
    deadline = time.monotonic() + timeout
    for name in names:
        while bed.log(name).read_text().count("reloaded") <= before[name]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not reload:\n{bed.log(name).read_text()}")
            time.sleep(0.05)


def api(bed: Testbed, lb: int, path: str) -> Any:
    """GET ``path`` from balancer ``lb``'s API (on its namespace's loopback)."""
    with in_netns(bed.lbs[lb].name):
        return ApiClient(API, timeout=5).get(path)


def set_admin_state(bed: Testbed, address: str, state: str) -> None:
    """An operator's `ctl down/up` of the VIP's backend on every balancer."""
    for lb in range(bed.spec.lbs):
        with in_netns(bed.lbs[lb].name):
            ApiClient(API, local_token(), timeout=10).patch(
                backend_path(VIP, address), {"state": state}
            )


def dataplane_states(bed: Testbed, lb: int) -> dict[str, str]:
    """Per backend address of the VIP: its state in balancer ``lb``'s maps."""
    view = api(bed, lb, vip_path(VIP))
    return {backend["address"]: backend["dataplane_state"] for backend in view["backends"]}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` holds (polled every POLL s); TimeoutError after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not within {timeout:g} s: {what}")
        time.sleep(POLL)
    return time.monotonic() - started


def wait_on_every_lb(bed: Testbed, address: str, state: str, timeout: float) -> float:
    """Seconds until every balancer's maps hold ``address`` in ``state`` ("up", "down")."""
    pending = set(range(bed.spec.lbs))

    def done() -> bool:
        for lb in sorted(pending):
            if dataplane_states(bed, lb).get(address) == state:
                pending.discard(lb)
        return not pending

    return wait_for(done, timeout, f"{address} {state} on every balancer")


def wait_all_healthy(bed: Testbed, timeout: float = 20) -> None:
    """Until every balancer has every backend up and has checked each at least once."""

    def ready() -> bool:
        for lb in range(bed.spec.lbs):
            health = api(bed, lb, "/v1/health")
            for backend in health["backends"]:
                check = backend["check"]
                if backend["status"] != "healthy" or (
                    check["type"] != "none" and check["successes"] == 0
                ):
                    return False
            if set(dataplane_states(bed, lb).values()) != {"up"}:
                return False
        return True

    wait_for(ready, timeout, "every backend healthy and checked on every balancer")


# --- making servers fail -----------------------------------------------------------------------


def stop_gre(bed: Testbed, server: int) -> None:
    """The server stops unwrapping GRE: with no GRE in its kernel it answers protocol
    unreachable to each balancer that sends it some."""
    decap_detach("eth0", netns=bed.servers[server].name, pin_root=bed.pin_root / f"s{server + 1}")


def start_gre(bed: Testbed, server: int) -> None:
    decap_attach(
        "eth0",
        [f"{LB_NET}.0/24"],
        bed.spec.xdp_mode,  # type: ignore[arg-type]
        netns=bed.servers[server].name,
        pin_root=bed.pin_root / f"s{server + 1}",
    )


def stop_service(bed: Testbed, server: int) -> None:
    """The server's HTTP (and echo) service stops: its process ends."""
    name = f"s{server + 1}"
    pid = bed.pids.pop(name)
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            break
        time.sleep(0.02)
    bed.save()


def start_service(bed: Testbed, server: int) -> None:
    """Start the server's HTTP and echo service again (the test bed stops it at teardown)."""
    name = f"s{server + 1}"
    namespace = bed.servers[server].name
    command = [
        "nsenter", f"--net=/run/netns/{namespace}", sys.executable, "-m",
        "rusty_rail.testbed.server", "--name", name, "--http-port", str(HTTP_PORT),
        "--echo-port", str(ECHO_PORT),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RR_")}
    with bed.log(name).open("a") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
    bed.pids[name] = process.pid
    bed.save()
    wait_for(lambda: _serving(bed, server), 15, f"{name} serving again")


def _serving(bed: Testbed, server: int) -> bool:
    log = bed.log(f"s{server + 1}").read_text()
    return log.count(f"server s{server + 1}:") >= 2


# --- traffic -----------------------------------------------------------------------------------


@dataclass
class Load:
    """New HTTP connections to the VIP, back to back, from every client until stopped: the
    traffic that makes a dead backend show (and answer ICMP)."""

    bed: Testbed
    workers_per_client: int = 2
    timeout: float = 1.0
    answers: list[tuple[float, str]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for client in self.bed.clients:
            for _ in range(self.workers_per_client):
                thread = threading.Thread(target=self._run, args=(client.name,), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _run(self, namespace: str) -> None:
        with in_netns(namespace):
            while not self._stop.is_set():
                try:
                    backend = http_get(VIP, HTTP_PORT, timeout=self.timeout)
                except OSError as error:
                    with self._lock:
                        self.errors.append((time.monotonic(), f"{type(error).__name__}"))
                    continue
                with self._lock:
                    self.answers.append((time.monotonic(), backend))
                time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def since(self, moment: float) -> tuple[Counter[str], int]:
        """Answers per backend and errors of the requests that ended after ``moment``."""
        with self._lock:
            answers = Counter(name for at, name in self.answers if at > moment)
            errors = sum(1 for at, _ in self.errors if at > moment)
        return answers, errors


@contextmanager
def loaded(bed: Testbed) -> Iterator[Load]:
    load = Load(bed)
    load.start()
    try:
        yield load
    finally:
        load.stop()


def broken_among(connections: LongLived, healthy: Sequence[str]) -> int:
    """Echo connections to the ``healthy`` backends (names) that fail now."""
    for connection in connections.connections:
        if connection.backend not in healthy:
            connection.alive = False  # a dead backend's connections are not counted
    return len(connections.check())


# --- the bench -----------------------------------------------------------------------------


def run_health_bench(settings: HealthBedSettings | None = None) -> dict[str, Any]:
    """Scenarios (a) and (b) in a fresh test bed (2 clients, 2 balancers, 3 servers)."""
    settings = settings or HealthBedSettings()
    spec = TestbedSpec(clients=2, lbs=2, servers=3)
    result: dict[str, Any]
    with Testbed.up(spec) as bed:
        reload_balancers(bed, health_config(spec, settings))
        wait_all_healthy(bed)
        # The baseline: an operator takes a backend out through the API, measured the same
        # way (until every balancer's table has it out).
        started = time.monotonic()
        set_admin_state(bed, server_address(2), "down")
        admin = time.monotonic() - started
        admin += wait_on_every_lb(bed, server_address(2), "down", 10)
        set_admin_state(bed, server_address(2), "up")
        wait_on_every_lb(bed, server_address(2), "up", 10)
        wait_all_healthy(bed)
        connections = LongLived(bed.clients, VIP, ECHO_PORT, 12)
        try:
            broken = 0
            with loaded(bed) as load:
                # (a) s1 stops taking GRE: the balancers learn it from ICMP.
                time.sleep(0.5)
                stop_gre(bed, 0)
                icmp = wait_on_every_lb(bed, server_address(0), "down", 10)
                moved_at = time.monotonic()
                time.sleep(1.0)
                answers, _ = load.since(moved_at + 0.2)
                traffic_after = dict(answers)
                broken += broken_among(connections, ["s2", "s3"])
                start_gre(bed, 0)
                icmp_back = wait_on_every_lb(bed, server_address(0), "up", 20)

                # (b) s2's HTTP service stops: the checks find it.
                stop_service(bed, 1)
                check = wait_on_every_lb(bed, server_address(1), "down", 20)
                broken += broken_among(connections, ["s3"])
                # (c) it comes back.
                start_service(bed, 1)
                check_back = wait_on_every_lb(bed, server_address(1), "up", 20)
                broken += broken_among(connections, ["s3"])
        finally:
            connections.close()
        result = {
            "icmp_detection_s": round(icmp, 3),
            "check_detection_s": round(check, 3),
            "check_interval_s": settings.interval,
            "check_fall": settings.fall,
            "healthy_connections_broken": broken,
            "icmp_recovery_s": round(icmp_back, 3),
            "check_recovery_s": round(check_back, 3),
            "check_rise": settings.rise,
            "icmp_confirm_timeout_s": merge_health().icmp_confirm_timeout,
            "baseline_admin_down_s": round(admin, 3),
            "icmp_detection_x_baseline": round(icmp / admin, 1),
            "check_detection_x_baseline": round(check / admin, 1),
            "answers_after_icmp_detection": traffic_after,
            "budgets": {
                "icmp_detection_s": BUDGET_ICMP_SECONDS,
                "check_detection_s": settings.interval * (settings.fall + 1),
                "healthy_connections_broken": 0,
            },
        }
        result["budgets_met"] = (
            icmp <= BUDGET_ICMP_SECONDS
            and check <= settings.interval * (settings.fall + 1)
            and broken == 0
        )
    return result


def render_health_bench(result: dict[str, Any]) -> str:
    budgets = result["budgets"]
    lines = [
        "backend health in the test bed (2 clients, 2 balancers, 3 servers, real traffic)",
        f"  (a) GRE refused, learnt from ICMP: {result['icmp_detection_s']:.3f} s to leave every "
        f"balancer's table (budget {budgets['icmp_detection_s']:g} s; the confirming tunnel "
        f"probe waits up to {result['icmp_confirm_timeout_s']:g} s); back "
        f"{result['icmp_recovery_s']:.3f} s after GRE is taken again",
        f"  (b) HTTP service stopped: {result['check_detection_s']:.3f} s (budget "
        f"{budgets['check_detection_s']:g} s = interval {result['check_interval_s']:g} s x "
        f"(fall {result['check_fall']} + 1))",
        f"  (c) service back: {result['check_recovery_s']:.3f} s (rise {result['check_rise']})",
        f"  baseline, a backend set down through the API on both balancers: "
        f"{result['baseline_admin_down_s']:.3f} s (ICMP {result['icmp_detection_x_baseline']}x, "
        f"checks {result['check_detection_x_baseline']}x)",
        f"  connections to healthy backends broken: {result['healthy_connections_broken']}",
        f"  budgets met: {'yes' if result['budgets_met'] else 'NO'}",
    ]
    return "\n".join(lines)
