"""/metrics: the daemon's Prometheus exposition. Counters are read from the BPF maps at each
scrape (summed over CPUs); change and table-build durations are histograms fed by the daemon.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rusty_rail import __version__
from rusty_rail.config import AdminState, Backend
from rusty_rail.dataplane.structs import CONNTRACK_WAYS
from rusty_rail.dataplane.too_big_maps import TooBigMaps
from rusty_rail.model import pipeline
from rusty_rail.model.pmtu import TooBig
from rusty_rail.model.state import BackendState, Stat, VipFlow

from .flow_counts import COUNT_INTERVAL, FlowCount, FlowCounts

if TYPE_CHECKING:
    from rusty_rail.control.announcer import Announcer
    from rusty_rail.control.cluster import StoreSync
    from rusty_rail.control.daemon import ChangeResult, Daemon
    from rusty_rail.control.reloads import ReloadRecord
    from rusty_rail.dataplane.maps import BalancerMaps

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _vip_flow_series(maps: BalancerMaps, names: Mapping[int, str]) -> Iterator[Metric]:
    """New flows (CPS, as a rate) and drops by reason per VIP (docs/metrics.md)."""
    new_flows = CounterMetricFamily(
        "rusty_rail_vip_new_flows",
        "Flows per VIP its Maglev table decided (connection-table misses and stale entries sent "
        "to a backend); rate() of it is the VIP's new connections per second",
        labels=["vip"],
    )
    drops = CounterMetricFamily(
        "rusty_rail_vip_drops",
        "Packets per VIP dropped once the VIP was known, by reason: no_backend, no_nexthop, "
        "too_big_limited, too_big_no_df",
        labels=["vip", "reason"],
    )
    flows = maps.read_vip_flows(names)
    for index, name in sorted(names.items(), key=lambda item: item[1]):
        new_flows.add_metric([name], flows.get((index, VipFlow.NEW), (0, 0))[0])
        for reason, (count, _) in maps.read_vip_drops(index).items():
            drops.add_metric([name, reason], count)
    yield new_flows
    yield drops


def _action(stat: Stat, daemon: Daemon) -> str:
    if stat in pipeline.FORWARD_STATS:
        return "forward"
    settings = daemon.plan.state.settings if daemon.plan is not None else None
    if settings is None:
        return "unknown"
    return pipeline.verdict_for(stat, settings).name.lower()


class _MapsCollector(Collector):
    """Everything read from the maps and the daemon's state at scrape time."""

    def __init__(self, daemon: Daemon, flow_counts: FlowCounts) -> None:
        self.daemon = daemon
        self.flow_counts = flow_counts

    def collect(self) -> Iterable[Metric]:
        daemon = self.daemon
        plan, config, balancer = daemon.plan, daemon.config, daemon.balancer
        yield GaugeMetricFamily(
            "rusty_rail_attached", "1 when the XDP program runs on the device", daemon.attached()
        )
        yield GaugeMetricFamily(
            "rusty_rail_desired_generation",
            "Changes of the desired state (API writes, reloads) since the state was created",
            daemon.generation,
        )
        yield GaugeMetricFamily(
            "rusty_rail_change_pending",
            "1 when the desired state is not fully applied (the daemon retries)",
            daemon.apply_error is not None,
        )
        yield from reload_metrics(daemon.reloads)
        if daemon.store is not None:
            yield from store_metrics(daemon.store)
        yield GaugeMetricFamily(
            "rusty_rail_drained", "1 while the node is drained (its VIPs not announced)",
            daemon.drained,
        )  # fmt: skip
        if daemon.announcer is not None:
            yield from bgp_metrics(daemon.announcer)
        if plan is None or balancer is None:
            return
        maps = balancer.maps
        packets = CounterMetricFamily(
            "rusty_rail_packets",
            "Packets by outcome (reason) and what was done with them (action)",
            labels=["reason", "action"],
        )
        size = CounterMetricFamily(
            "rusty_rail_bytes", "Bytes by outcome (reason) and action", labels=["reason", "action"]
        )
        for stat, (count, octets) in maps.read_stats().items():
            labels = [stat.name.lower(), _action(stat, daemon)]
            packets.add_metric(labels, count)
            size.add_metric(labels, octets)
        yield packets
        yield size

        names = {index: name for name, index in plan.allocation.vip_index.items()}
        vip_packets = CounterMetricFamily(
            "rusty_rail_vip_packets", "Packets forwarded per VIP", labels=["vip"]
        )
        vip_bytes = CounterMetricFamily(
            "rusty_rail_vip_bytes", "Bytes forwarded per VIP", labels=["vip"]
        )
        counters = maps.read_vip_stats(names)
        for index, name in sorted(names.items(), key=lambda item: item[1]):
            count, octets = counters.get(index, (0, 0))
            vip_packets.add_metric([name], count)
            vip_bytes.add_metric([name], octets)
        yield vip_packets
        yield vip_bytes
        too_big = CounterMetricFamily(
            "rusty_rail_vip_too_big_packets",
            "Packets per VIP too big for the next hop once encapsulated (docs/packet-path.md 8c):"
            " answered with an ICMP error (icmp), or dropped (limited, no_df)",
            labels=["vip", "reason"],
        )
        too_big_counts = TooBigMaps.of_object(balancer.obj).read_counts(names)
        for index, name in sorted(names.items(), key=lambda item: item[1]):
            for reason in TooBig:
                count = too_big_counts.get((index, reason), (0, 0))[0]
                too_big.add_metric([name, reason.name.lower()], count)
        yield too_big
        yield from _vip_flow_series(maps, names)

        services = [("default", config.default_backends)] + [
            (str(vip.key), vip.backends) for vip in config.vips
        ]
        pairs = sum(len(backends) for _, backends in services)
        per_backend = pairs <= daemon.options.metrics_backend_limit
        flow_count = self.flow_counts.read()
        yield from _vip_backend_counts(daemon, services)
        yield from _flow_series(daemon, services, flow_count, per_backend=per_backend)
        if per_backend:
            yield from _backend_series(daemon, services)
            yield from _backend_state_series(daemon, services)
        yield GaugeMetricFamily(
            "rusty_rail_metrics_backends_omitted",
            "Backends (per VIP) without series of their own: more than --metrics-backend-limit "
            "in all; rusty_rail_vip_backends counts them",
            0 if per_backend else pairs,
        )

        yield GaugeMetricFamily(
            "rusty_rail_conntrack_entries",
            f"Flows in the connection table (counted at most every {COUNT_INTERVAL:g} s)",
            flow_count.total,
        )
        yield GaugeMetricFamily(
            "rusty_rail_conntrack_capacity",
            "Flows the connection table can hold",
            maps.conntrack.max_entries * CONNTRACK_WAYS,
        )
        generations = GaugeMetricFamily(
            "rusty_rail_table_generation",
            "Times the VIP's table was swapped in since the daemon started",
            labels=["vip"],
        )
        for name, generation in sorted(daemon.table_generations.items()):
            generations.add_metric([name], generation)
        yield generations


#: (VIP key text, its backends), the default set first.
Services = Sequence[tuple[str, Sequence[Backend]]]


def _vip_backend_counts(daemon: Daemon, services: Services) -> Iterable[Metric]:
    """Per VIP: its backends by admin and data-plane state, and those without a next hop."""
    plan = daemon.plan
    if plan is None:
        return
    states = GaugeMetricFamily(
        "rusty_rail_vip_backends",
        "The VIP's backends by admin state (configured) and data-plane state",
        labels=["vip", "kind", "state"],
    )
    unresolved = GaugeMetricFamily(
        "rusty_rail_vip_backends_unresolved",
        "The VIP's backends whose next hop is not known (their packets are dropped)",
        labels=["vip"],
    )
    for name, backends in services:
        admin = dict.fromkeys((state.value for state in AdminState), 0)
        live = dict.fromkeys((state.name.lower() for state in BackendState), 0)
        missing = 0
        for backend in backends:
            admin[backend.state.value] += 1
            slot = plan.allocation.slot_of(name, backend.address)
            entry = plan.state.backends.get(slot) if slot is not None else None
            live[(entry.state if entry is not None else BackendState.UNUSED).name.lower()] += 1
            missing += daemon.next_hops(backend.address) is None
        for kind, counts in (("admin", admin), ("dataplane", live)):
            for state_name, count in counts.items():
                states.add_metric([name, kind, state_name], count)
        unresolved.add_metric([name], missing)
    yield states
    yield unresolved


def _backend_series(daemon: Daemon, services: Services) -> Iterable[Metric]:
    """Per VIP and backend: packets, bytes, states, weight, next hop."""
    plan, balancer = daemon.plan, daemon.balancer
    if plan is None or balancer is None:
        return
    backend_packets = CounterMetricFamily(
        "rusty_rail_backend_packets", "Packets sent per backend", labels=["vip", "backend"]
    )
    backend_bytes = CounterMetricFamily(
        "rusty_rail_backend_bytes", "Bytes sent per backend", labels=["vip", "backend"]
    )
    state = GaugeMetricFamily(
        "rusty_rail_backend_state",
        "1 for the backend's admin state (configured) and its data-plane state (deprecated: "
        "rusty_rail_backend_admin_state and rusty_rail_backend_dataplane_state)",
        labels=["vip", "backend", "kind", "state"],
    )
    weight = GaugeMetricFamily(
        "rusty_rail_backend_weight",
        "The backend's configured weight",
        labels=["vip", "backend"],
    )
    next_hop = GaugeMetricFamily(
        "rusty_rail_backend_next_hop_resolved",
        "1 when the backend's next hop is known (else its packets are dropped)",
        labels=["vip", "backend"],
    )
    slots = plan.allocation.slots
    backend_counters = balancer.maps.read_backend_stats(sorted(set(slots.values())))
    for name, backends in services:
        for backend in backends:
            labels = [name, str(backend.address)]
            slot = plan.allocation.slot_of(name, backend.address)
            count, octets = backend_counters.get(slot, (0, 0)) if slot is not None else (0, 0)
            backend_packets.add_metric(labels, count)
            backend_bytes.add_metric(labels, octets)
            state.add_metric([*labels, "admin", backend.state.value], 1)
            entry = plan.state.backends.get(slot) if slot is not None else None
            live = entry.state if entry is not None else BackendState.UNUSED
            state.add_metric([*labels, "dataplane", live.name.lower()], 1)
            weight.add_metric(labels, backend.weight)
            next_hop.add_metric(labels, daemon.next_hops(backend.address) is not None)
    yield backend_packets
    yield backend_bytes
    yield state
    yield weight
    yield next_hop


def _flow_series(
    daemon: Daemon, services: Services, flow_count: FlowCount, *, per_backend: bool
) -> Iterable[Metric]:
    """Tracked flows per VIP and, within the per-backend limit, per backend (flow_counts.py
    says what is counted)."""
    plan = daemon.plan
    if plan is None:
        return
    help_tail = f"valid connection-table entries, counted at most every {COUNT_INTERVAL:g} s"
    per_vip = GaugeMetricFamily(
        "rusty_rail_vip_flows_tracked",
        f"Flows the VIP's backends hold: {help_tail}",
        labels=["vip"],
    )
    backend_flows = GaugeMetricFamily(
        "rusty_rail_backend_flows_tracked",
        f"Flows the backend holds in the VIP: {help_tail}",
        labels=["vip", "backend"],
    )
    for name, backends in services:
        total = 0
        for backend in backends:
            flows = flow_count.of_slot(plan, plan.allocation.slot_of(name, backend.address))
            total += flows
            backend_flows.add_metric([name, str(backend.address)], flows)
        per_vip.add_metric([name], total)
    yield per_vip
    if per_backend:
        yield backend_flows


def _backend_state_series(daemon: Daemon, services: Services) -> Iterable[Metric]:
    """Per VIP and backend, every admin state and every data-plane state as 0 or 1."""
    plan = daemon.plan
    if plan is None:
        return
    admin = GaugeMetricFamily(
        "rusty_rail_backend_admin_state",
        "1 for the backend's configured state (up, drain, down), 0 for the others",
        labels=["vip", "backend", "state"],
    )
    dataplane = GaugeMetricFamily(
        "rusty_rail_backend_dataplane_state",
        "1 for the state the data plane holds for the backend (unused, up, drain, down), 0 "
        "for the others",
        labels=["vip", "backend", "state"],
    )
    for name, backends in services:
        for backend in backends:
            labels = [name, str(backend.address)]
            for configured in AdminState:
                admin.add_metric([*labels, configured.value], backend.state is configured)
            slot = plan.allocation.slot_of(name, backend.address)
            entry = plan.state.backends.get(slot) if slot is not None else None
            live = entry.state if entry is not None else BackendState.UNUSED
            for held in BackendState:
                dataplane.add_metric([*labels, held.name.lower()], live is held)
    yield admin
    yield dataplane


class Metrics:
    """The daemon's registry: map counters, change histograms and build info."""

    def __init__(self, daemon: Daemon) -> None:
        # No *_created series: the flag is the library's, read at each scrape, so it holds
        # for this registry whatever else the process registers.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=False)
        self.flow_counts = FlowCounts(daemon)
        self.registry.register(_MapsCollector(daemon, self.flow_counts))
        ProcessCollector(registry=self.registry)
        self.build_seconds = Histogram(
            "rusty_rail_table_build_seconds",
            "Time to plan a change, building the Maglev tables whose backend sets changed",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "rusty_rail_apply_seconds",
            "Time to write a change into the maps (tables swapped in)",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.change_seconds = Histogram(
            "rusty_rail_change_seconds",
            "Time from a change's start to its tables being live, by source",
            ["source"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.changes = Counter(
            "rusty_rail_changes",
            "Changes tried, by source and result (applied, unchanged, refused)",
            ["source", "result"],
            registry=self.registry,
        )
        self.tables_rebuilt = Counter(
            "rusty_rail_tables_rebuilt",
            "Maglev tables built and swapped in",
            registry=self.registry,
        )
        info = Info("rusty_rail_build", "The rusty-rail build", registry=self.registry)
        info.info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "kernel": platform.release(),
            }
        )
        daemon.observers.append(self.observe)

    def observe(self, source: str, result: ChangeResult | None) -> None:
        if result is None:
            self.changes.labels(source, "refused").inc()
            return
        self.changes.labels(source, "applied" if result.map_updates else "unchanged").inc()
        if result.map_updates:
            self.build_seconds.observe(result.build_seconds)
            self.apply_seconds.observe(result.apply_seconds)
            self.change_seconds.labels(source).observe(result.seconds)
        self.tables_rebuilt.inc(len(result.tables_rebuilt))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def reload_metrics(reloads: ReloadRecord) -> Iterable[Metric]:
    """SIGHUP reloads, named as Prometheus names its own."""
    yield CounterMetricFamily(
        "rusty_rail_config_reload_failures",
        "SIGHUP reloads refused since start (the running configuration stayed)",
        reloads.failures_total,
    )
    yield GaugeMetricFamily(
        "rusty_rail_config_last_reload_successful",
        "0 while the last reload stands refused, else 1",
        reloads.failed is None,
    )
    yield GaugeMetricFamily(
        "rusty_rail_config_last_reload_success_timestamp_seconds",
        "When the configuration was last read into the running state (start or reload)",
        reloads.last_success_at,
    )


def store_metrics(store: StoreSync) -> Iterable[Metric]:
    """With run --store (docs/cluster.md): the revision applied, and whether the store answers.
    Nodes on different revisions (a split view) show as different rusty_rail_store_revision,
    or as rusty_rail_store_revision below rusty_rail_store_seen_revision."""
    yield GaugeMetricFamily(
        "rusty_rail_store_revision",
        "The store revision (of PREFIX/config) whose desired state this node applied",
        store.applied_revision,
    )
    yield GaugeMetricFamily(
        "rusty_rail_store_seen_revision",
        "The newest store revision this node has seen, applied or refused",
        store.seen_revision,
    )
    yield GaugeMetricFamily(
        "rusty_rail_store_rejected_revision",
        "The store revision this node refused (0: none stands refused)",
        0 if store.rejected is None else store.rejected.revision,
    )
    yield GaugeMetricFamily(
        "rusty_rail_store_reachable",
        "1 while the store answers (writes are refused while it does not)",
        store.reachable,
    )


def bgp_metrics(announcer: Announcer) -> Iterable[Metric]:
    """With a [bgp] section (docs/cluster.md): the routes announced, each peer's session."""
    yield GaugeMetricFamily(
        "rusty_rail_bgp_announced_routes",
        "VIP host routes announced to the routers (0 while drained, detached or stopping)",
        len(announcer.speaker.routes),
    )
    sessions = GaugeMetricFamily(
        "rusty_rail_bgp_session_established",
        "1 while the BGP session with the peer is established",
        labels=["peer"],
    )
    for peer in announcer.status()["peers"]:
        address = peer["address"]
        where = f"[{address}]" if ":" in address else address
        sessions.add_metric([f"{where}:{peer['port']}"], peer["established"])
    yield sessions
