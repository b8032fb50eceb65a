"""The health monitor's ICMP side without the data plane: IPv6 backends are watched, an ICMPv6
report makes one suspect like an ICMP report, the tunnel probe (over IPv6) confirms or clears
it (docs/health.md, "IPv6"), and its report is re-armed after icmp_hold; the prober follows
the balancer's addresses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest

from rusty_rail.config import Config, HealthSettings, validate_as
from rusty_rail.control import monitor as monitor_module
from rusty_rail.control.checks import Outcome, TunnelProber
from rusty_rail.control.events import EventLog
from rusty_rail.control.monitor import HealthMonitor
from rusty_rail.dataplane.icmp_maps import IcmpMaps
from rusty_rail.model.icmp import IcmpReport

VIP = "198.19.0.10"
SERVICE = f"{VIP}:80/tcp"
BACKEND6 = "2001:2::10:1"
BACKEND4 = "198.18.0.21"
ROUTER6 = "2001:2::fe"


class FakeIcmpMaps(IcmpMaps):
    """Records what the monitor asks of the ICMP maps."""

    def __init__(self) -> None:  # no maps behind it
        self.watched: set[bytes] = set()
        self.armed: list[IPv4Address | IPv6Address | bytes] = []

    def sync_watch(self, addresses: Iterable[IPv4Address | IPv6Address | bytes]) -> tuple[int, int]:
        self.watched = {a if isinstance(a, bytes) else a.packed for a in addresses}
        return len(self.watched), 0

    def arm(self, address: IPv4Address | IPv6Address | bytes) -> bool:
        self.armed.append(address)
        return True


def config(health: dict[str, Any]) -> Config:
    vip = {
        "address": VIP,
        "protocol": "tcp",
        "port": 80,
        "backends": [BACKEND4, BACKEND6],
        "health": health,
    }
    return validate_as(Config, {"vips": [vip]}, "test")


def report6(code: int = 3, reporter: str = BACKEND6) -> IcmpReport:
    return IcmpReport(ip_address(BACKEND6).packed, ip_address(reporter).packed, 1, code)


class Checks:
    """Stands in for run_check: records each call, answers ``ok``."""

    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.calls: list[tuple[str, str, float]] = []

    async def __call__(
        self, settings: HealthSettings, address: Any, prober: TunnelProber | None
    ) -> Outcome:
        self.calls.append((settings.check.value, str(address), settings.timeout))
        return Outcome(self.ok, f"tcp {address}: {'connected' if self.ok else 'refused'}")


def status6(monitor: HealthMonitor) -> str:
    (backend,) = monitor.book.of_address(ip_address(BACKEND6))
    return backend.status.value


async def _settle(monitor: HealthMonitor, address: str) -> None:
    """Until the report about ``address`` is confirmed or cleared."""
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not monitor.book.to_confirm(ip_address(address)):
            return
    raise AssertionError(f"the report about {address} was neither confirmed nor cleared")


def _monitor(health: dict[str, Any]) -> tuple[HealthMonitor, FakeIcmpMaps, list[int]]:
    maps = FakeIcmpMaps()
    verdicts: list[int] = []
    monitor = HealthMonitor(
        config(health),
        EventLog(time.monotonic),
        on_verdict=lambda: verdicts.append(1),
        icmp_maps=maps,
    )
    return monitor, maps, verdicts


def test_ipv6_backends_are_watched() -> None:
    monitor, maps, _ = _monitor({"check": "tcp"})
    monitor.sync_watch()
    assert maps.watched == {ip_address(BACKEND4).packed, ip_address(BACKEND6).packed}


def test_an_icmpv6_report_makes_the_backend_suspect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor_module, "run_check", Checks(True))
    monitor, _, verdicts = _monitor({"check": "tcp"})

    async def scenario() -> None:
        monitor._loop = asyncio.get_running_loop()
        monitor.handle_report(report6())
        # Before the confirming check has had a chance to run:
        assert status6(monitor) == "suspect"
        assert monitor.book.to_confirm(ip_address(BACKEND6))
        monitor.stop()

    asyncio.run(scenario())
    assert monitor.book.reports == {(ip_address(BACKEND6), 3): 1}
    assert monitor.book.of_address(ip_address(BACKEND6))[0].last_report == (
        f"ICMPv6 type 1 code 3 (address unreachable) about {BACKEND6} from {BACKEND6}"
    )
    assert verdicts == []  # a suspect keeps its traffic


class Prober:
    """Stands in for the tunnel prober, which needs raw sockets and a decapsulating backend
    (tests/e2e/test_tunnel_probe.py probes for real): records what it was asked."""

    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.probed: list[tuple[str, float]] = []

    async def probe(self, address: Any, timeout: float) -> Outcome:
        self.probed.append((str(address), timeout))
        return Outcome(self.ok, "echo reply" if self.ok else "no echo")


@pytest.mark.parametrize(("ok", "status"), [(False, "unhealthy"), (True, "healthy")])
def test_the_tunnel_probe_confirms_or_clears_an_icmpv6_report(
    monkeypatch: pytest.MonkeyPatch, ok: bool, status: str
) -> None:
    checks = Checks(ok)
    monkeypatch.setattr(monitor_module, "run_check", checks)
    monitor, maps, verdicts = _monitor(
        {"check": "tcp", "port": 8080, "icmp_confirm_timeout": 0.25, "icmp_hold": 0.01}
    )
    prober = Prober(ok)
    monitor.prober = prober  # type: ignore[assignment]

    async def scenario() -> None:
        monitor._loop = asyncio.get_running_loop()
        monitor.handle_report(report6(reporter=ROUTER6))
        await _settle(monitor, BACKEND6)
        await asyncio.sleep(0.05)  # past icmp_hold: re-armed
        monitor.prober = None
        monitor.stop()  # ends the recovery probes of a confirmed report

    asyncio.run(scenario())
    # A tunnel probe at the confirmation's timeout, not a round of the tcp check.
    assert prober.probed[0] == (BACKEND6, 0.25)
    assert not any(call[1] == BACKEND6 and call[2] == 0.25 for call in checks.calls)
    assert monitor.probe_results[ok] >= 1
    assert status6(monitor) == status
    assert verdicts == ([] if ok else [1])
    assert maps.armed == [ip_address(BACKEND6)]


def test_an_ipv4_report_still_goes_to_the_tunnel_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = Checks(False)
    monkeypatch.setattr(monitor_module, "run_check", checks)
    monitor, _, _ = _monitor({"check": "tcp"})
    prober = Prober(False)
    monitor.prober = prober  # type: ignore[assignment]

    async def scenario() -> None:
        monitor._loop = asyncio.get_running_loop()
        monitor.handle_report(
            IcmpReport(ip_address(BACKEND4).packed, ip_address(BACKEND4).packed, 3, 2)
        )
        await _settle(monitor, BACKEND4)
        monitor.prober = None
        monitor.stop()

    asyncio.run(scenario())
    assert [address for address, _ in prober.probed] == [BACKEND4] and checks.calls == []
    (backend,) = monitor.book.of_address(ip_address(BACKEND4))
    assert backend.status.value == "unhealthy"


def test_the_prober_follows_the_balancers_addresses() -> None:
    """Each applied configuration gives the prober the balancer's addresses, IPv6 included (a
    tunnel check on an IPv6 backend is probed from lb_ipv6); None when the node has none."""
    monitor, _, _ = _monitor({"check": "tunnel"})

    class Prober:
        lb_address = IPv4Address("198.18.0.1")
        lb_ipv6: IPv6Address | None = None

    prober = Prober()
    monitor.prober = prober  # type: ignore[assignment]
    tunnel = config({"check": "tunnel"})
    monitor.configure(tunnel, IPv4Address("198.18.0.2"), IPv6Address("2001:2::2"))
    assert (prober.lb_address, prober.lb_ipv6) == (
        IPv4Address("198.18.0.2"),
        IPv6Address("2001:2::2"),
    )
    monitor.configure(tunnel, IPv4Address("198.18.0.2"), None)
    assert prober.lb_ipv6 is None
    # Without addresses (the configuration only), the prober keeps what it has.
    monitor.configure(tunnel)
    assert prober.lb_address == IPv4Address("198.18.0.2")
    monitor.prober = None
    monitor.stop()
