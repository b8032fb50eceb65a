"""/metrics for backend health: each backend's status, check results, fail-open and the ICMP
floor per VIP, the reports the control plane read, and the data plane's ICMP counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rusty_rail.control.health import BackendHealth, Status
from rusty_rail.model.icmp import code_name

if TYPE_CHECKING:
    from rusty_rail.control.daemon import Daemon


class HealthCollector(Collector):
    """Read at scrape time from the daemon's health monitor and the ICMP counters. Series per
    backend only up to the daemon's metrics_backend_limit, like api/metrics.py."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @staticmethod
    def _per_backend(backends: Sequence[BackendHealth]) -> Iterable[Metric]:
        status = GaugeMetricFamily(
            "rusty_rail_backend_health",
            "1 for the backend's health status (healthy, suspect, unhealthy) in the VIP",
            labels=["vip", "backend", "status"],
        )
        checks = CounterMetricFamily(
            "rusty_rail_health_checks",
            "Active checks of the backend by result (ok, failed)",
            labels=["vip", "backend", "result"],
        )
        for backend in backends:
            labels = [backend.service, str(backend.address)]
            for value in Status:
                status.add_metric([*labels, value.value], backend.status is value)
            checks.add_metric([*labels, "ok"], backend.checks[True])
            checks.add_metric([*labels, "failed"], backend.checks[False])
        yield status
        yield checks

    def collect(self) -> Iterable[Metric]:
        monitor = self.daemon.monitor
        if monitor is None:
            return
        book = monitor.book
        backends = book.ordered()
        by_status = GaugeMetricFamily(
            "rusty_rail_vip_backend_health",
            "The VIP's backends by health status (healthy, suspect, unhealthy)",
            labels=["vip", "status"],
        )
        counts: dict[str, dict[Status, int]] = {}
        for backend in backends:
            per_vip = counts.setdefault(backend.service, dict.fromkeys(Status, 0))
            per_vip[backend.status] += 1
        for name, per_status in counts.items():
            for value, count in per_status.items():
                by_status.add_metric([name, value.value], count)
        yield by_status
        if len(backends) <= self.daemon.options.metrics_backend_limit:
            yield from self._per_backend(backends)

        fail_open = GaugeMetricFamily(
            "rusty_rail_vip_fail_open",
            "1 while every backend of the VIP is unhealthy and it sends to all of them",
            labels=["vip"],
        )
        all_unhealthy = GaugeMetricFamily(
            "rusty_rail_vip_all_unhealthy",
            "1 while every backend of the VIP (not admin down) is unhealthy",
            labels=["vip"],
        )
        floor = CounterMetricFamily(
            "rusty_rail_icmp_floor_held",
            "Times ICMP reports alone would have taken out more of the VIP's backends than "
            "icmp_max_removed allows; a tunnel probe decided instead",
            labels=["vip"],
        )
        for name, summary in book.summary().items():
            fail_open.add_metric([name], bool(summary["fail_open"]))
            all_unhealthy.add_metric([name], bool(summary["all_unhealthy"]))
            floor.add_metric([name], book.floor_held.get(name, 0))
        yield fail_open
        yield all_unhealthy
        yield floor

        reports = CounterMetricFamily(
            "rusty_rail_icmp_reports",
            "ICMP destination-unreachable reports the control plane read, by backend and code",
            labels=["backend", "code", "meaning"],
        )
        for (address, code), count in sorted(book.reports.items(), key=lambda i: str(i[0])):
            reports.add_metric([str(address), str(code), code_name(code)], count)
        yield reports
        probes = CounterMetricFamily(
            "rusty_rail_tunnel_probes",
            "Tunnel probes (ICMP echo inside GRE) that confirmed ICMP reports or watched a "
            "backend ICMP took out, by result",
            labels=["result"],
        )
        probes.add_metric(["ok"], monitor.probe_results[True])
        probes.add_metric(["failed"], monitor.probe_results[False])
        yield probes

        if monitor.icmp_maps is not None:
            packets = CounterMetricFamily(
                "rusty_rail_icmp_packets",
                "ICMP destination unreachable to this node, by what the data plane made of it",
                labels=["outcome"],
            )
            size = CounterMetricFamily(
                "rusty_rail_icmp_bytes",
                "Bytes of ICMP destination unreachable to this node, by outcome",
                labels=["outcome"],
            )
            for outcome, (count, octets) in monitor.icmp_maps.read_stats().items():
                packets.add_metric([outcome.name.lower()], count)
                size.add_metric([outcome.name.lower()], octets)
            yield packets
            yield size
