"""The health monitor inside a real daemon (the loaded balancer, its API on a thread): an ICMP
unreachable run through the program becomes a report on the ring, the daemon makes the backend
suspect, its tunnel probe gets no echo, and only that VIP's table changes; trusted reports stop
at the floor; reports about unwatched addresses change nothing; an ICMPv6 unreachable about an
IPv6 backend is reported through the same ring and makes it suspect.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest

from rusty_rail.config import Config, config_from_toml_text
from rusty_rail.model.icmp import IcmpStat
from rusty_rail.model.state import BackendState, Verdict
from rusty_rail.wire.build import ethernet, gre, icmp, ipv4, ipv6
from rusty_rail.wire.constants import ETH_P_IPV4, ETH_P_IPV6, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6
from tests.support.control_bed import BASE_TOML, Bed, Node, control_bed

pytestmark = pytest.mark.bpf
LB = "198.18.0.2"
WEB = "198.18.100.1:80/tcp"
OTHER = "198.18.100.2"
BACKENDS = ["198.18.64.1", "198.18.64.2", "198.18.64.3"]


def config(health: str = "") -> Config:
    return config_from_toml_text(
        f'device = "eth0"\nlb_address = "{LB}"\n{BASE_TOML}\n{health}', "test"
    )


@pytest.fixture(scope="module")
def bed(require_root: None) -> Iterator[Bed]:
    with control_bed(devices=1) as control:
        yield control


@pytest.fixture
def node(bed: Bed) -> Iterator[Node]:
    started = bed.start("eth0", config())
    try:
        yield started
    finally:
        bed.stop("eth0")


def unreachable(backend: str, code: int = 2, source: str = LB) -> bytes:
    """What a backend without GRE answers to the GRE the balancer sent it."""
    sent = ipv4(source, backend, PROTO_GRE, gre(ETH_P_IPV4, ipv4("198.18.5.5", "198.18.100.1",
                                                                 6, bytes(20))))  # fmt: skip
    packet = ipv4(backend, LB, PROTO_ICMP, icmp(3, code, sent))
    return ethernet("02:00:00:00:00:02", "02:00:00:00:00:01", ETH_P_IPV4, packet)


def inject(node: Node, frame: bytes) -> None:
    assert node.daemon.balancer is not None
    run = node.daemon.balancer.program.test_run(frame)
    assert Verdict(run.retval) == Verdict.PASS and run.data == frame


def wait(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def dataplane_state(node: Node, backend: str, vip: str = WEB) -> BackendState:
    assert node.daemon.plan is not None
    slot = node.daemon.plan.allocation.slot_of(vip, IPv4Address(backend))
    assert slot is not None
    entry = node.maps.read_backend(slot)
    assert entry is not None
    return BackendState(entry.state)


def health_of(node: Node, backend: str, vip: str = WEB) -> dict[str, Any]:
    answer = node.call("GET", "/v1/health").body
    found: dict[str, Any] = next(
        b for b in answer["backends"] if b["backend"] == backend and b["vip"] == vip
    )
    return found


def test_a_report_through_the_ring_is_confirmed_and_changes_only_its_vips_table(
    node: Node,
) -> None:
    generations = dict(node.daemon.table_generations)
    inject(node, unreachable(BACKENDS[0]))
    wait(lambda: dataplane_state(node, BACKENDS[0]) is BackendState.DOWN, "backend down")
    health = health_of(node, BACKENDS[0])
    assert health["status"] == "unhealthy" and health["icmp"]["confirmed"]
    assert "protocol unreachable" in health["icmp"]["last_report"]
    events = node.call("GET", "/v1/events").body["events"]
    assert [(e["from"], e["to"], e["cause"]) for e in events] == [
        ("healthy", "suspect", "icmp"),
        ("suspect", "unhealthy", "probe"),
    ]
    assert "no echo reply through GRE" in events[-1]["detail"]
    assert node.daemon.last_change is not None and node.daemon.last_change["source"] == "health"
    # Only the web VIP's table was swapped; the other VIP's is the one from the start.
    assert node.daemon.table_generations[WEB] == generations[WEB] + 1
    assert node.daemon.table_generations[OTHER] == generations[OTHER]
    assert node.daemon.plan is not None
    assert BACKENDS[0] not in {str(a) for a in node.daemon.plan.tables[WEB].backends}
    # The report disarmed the backend: the next ICMP is held until the daemon re-arms it.
    assert node.daemon.monitor is not None and node.daemon.monitor.icmp_maps is not None
    maps = node.daemon.monitor.icmp_maps
    armed = maps.read_watch().armed
    assert set(armed) == {IPv4Address(a).packed for a in [*BACKENDS, "198.18.64.4"]}
    wait(lambda: maps.read_watch().armed[IPv4Address(BACKENDS[0]).packed], "re-armed", 5)


def test_trusted_reports_stop_at_the_floor_and_the_rest_wait_for_probes(node: Node) -> None:
    # Recovery probes 30 s apart: none comes while the test looks.
    trusting = config(
        "[health]\nicmp = 'trust'\nicmp_max_removed = 0.34\nicmp_hold = 60\ninterval = 30"
    )
    assert node.call("PUT", "/v1/config", trusting.model_dump(mode="json")).status == 200

    def trusting_now() -> bool:
        monitor = node.daemon.monitor
        assert monitor is not None
        return monitor.book.backends[(WEB, IPv4Address(BACKENDS[0]))].settings.icmp.value == "trust"

    wait(trusting_now, "trust applied")
    for backend in BACKENDS:
        inject(node, unreachable(backend, code=1))
    # Out by a trusted report alone: drained (issue 14, item 5), its connections stay.
    wait(lambda: dataplane_state(node, BACKENDS[0]) is BackendState.DRAIN, "the first out")
    summary = node.call("GET", "/healthz").body["backend_health"][WEB]
    assert summary["icmp_floor_held"] == 2
    kinds = [e["kind"] for e in node.call("GET", "/v1/events").body["events"]]
    assert kinds.count("floor") == 1
    # No probe gets an echo here: the two held back are confirmed by their probes, and with all
    # three unhealthy the VIP fails open, every backend back in its table.
    wait(lambda: all(health_of(node, b)["status"] == "unhealthy" for b in BACKENDS), "confirmed")
    wait(lambda: all(dataplane_state(node, b) is BackendState.UP for b in BACKENDS), "fail-open")
    assert [health_of(node, b)["icmp"]["confirmed"] for b in BACKENDS] == [False, True, True]
    assert node.call("GET", "/healthz").body["backend_health"][WEB]["fail_open"]


def test_reports_about_addresses_no_vip_watches_change_nothing(node: Node) -> None:
    before = node.call("GET", "/metrics").body
    inject(node, unreachable("198.18.64.99"))
    inject(node, unreachable(BACKENDS[0], source="198.18.0.1"))  # GRE that is not ours
    inject(node, unreachable(BACKENDS[1], code=4))  # path MTU: never a failure
    metrics = node.call("GET", "/metrics").body
    for outcome in ("unknown_backend", "not_our_gre", "frag_needed"):
        assert f'rusty_rail_icmp_packets_total{{outcome="{outcome}"}} 1.0' in metrics, outcome
        assert f'rusty_rail_icmp_packets_total{{outcome="{outcome}"}} 1.0' not in before
    time.sleep(0.5)
    assert node.call("GET", "/v1/events").body["events"] == []
    assert all(dataplane_state(node, b) is BackendState.UP for b in BACKENDS)


LB6 = "2001:2:ff::2"
BACKEND6 = "2001:2:ff::21"
VIP6 = "198.18.100.3:80/tcp"


def unreachable6(backend: str, code: int = 4, type_: int = 1) -> bytes:
    """An ICMPv6 destination unreachable (or packet too big) about the GRE over IPv6 the
    balancer sent ``backend``. Its checksum is not checked by the balancer."""
    sent = ipv6(LB6, backend, PROTO_GRE, gre(ETH_P_IPV4, ipv4("198.18.5.5", "198.18.100.3",
                                                              6, bytes(20))))  # fmt: skip
    packet = ipv6(backend, LB6, PROTO_ICMPV6, bytes([type_, code, 0, 0, 0, 0, 0, 0]) + sent)
    return ethernet("02:00:00:00:00:02", "02:00:00:00:00:01", ETH_P_IPV6, packet)


def test_an_icmpv6_report_through_the_ring_makes_an_ipv6_backend_suspect(bed: Bed) -> None:
    """The report makes the IPv6 backend suspect, and the IPv6 tunnel probe confirms it (the
    backend's neighbour answers nothing, so no echo comes back): unhealthy; its report is
    re-armed after icmp_hold (docs/health.md, IPv6)."""
    bed.namespace.ip("-6", "addr", "add", f"{LB6}/64", "dev", "eth0", "nodad")
    bed.namespace.ip("-6", "neigh", "replace", BACKEND6, "lladdr", "02:00:00:00:ff:21",
                     "dev", "eth0", "nud", "permanent")  # fmt: skip
    toml = (
        f'device = "eth0"\nlb_address = "{LB}"\nlb_address_ipv6 = "{LB6}"\n{BASE_TOML}\n'
        f'[[vips]]\naddress = "198.18.100.3"\nprotocol = "tcp"\nport = 80\n'
        f'backends = ["{BACKEND6}"]\n[health]\nicmp_hold = 0.2\n'
    )
    node = bed.start("eth0", config_from_toml_text(toml, "test"))
    try:
        assert node.daemon.monitor is not None and node.daemon.monitor.icmp_maps is not None
        prober = node.daemon.monitor.prober  # IPv6 tunnel probes go out from lb_address_ipv6
        assert prober is not None and prober.lb_ipv6 == IPv6Address(LB6)
        maps = node.daemon.monitor.icmp_maps
        key = IPv6Address(BACKEND6).packed
        wait(lambda: key in maps.read_watch().armed, "the IPv6 backend watched")
        assert maps.read_watch().armed[key]

        inject(node, unreachable6(BACKEND6, type_=2))  # packet too big: counted, no report
        inject(node, unreachable6(BACKEND6))
        wait(lambda: len(node.call("GET", "/v1/events").body["events"]) >= 2, "two events")
        events = [e for e in node.call("GET", "/v1/events").body["events"] if e["kind"] == "health"]
        assert [(e["backend"], e["from"], e["to"], e["cause"]) for e in events] == [
            (BACKEND6, "healthy", "suspect", "icmp"),
            (BACKEND6, "suspect", "unhealthy", "probe"),
        ]
        assert "ICMPv6 type 1 code 4 (port unreachable)" in events[0]["detail"]
        assert "no echo reply through GRE" in events[1]["detail"]
        assert health_of(node, BACKEND6, VIP6)["status"] == "unhealthy"
        assert node.daemon.monitor.probe_results[False] >= 1
        stats = {s.name: p for s, (p, _) in maps.read_stats().items()}
        assert stats["REPORTED"] == 1 and stats["PACKET_TOO_BIG"] == 1
        wait(lambda: maps.read_watch().armed[key], "re-armed", 5)
    finally:
        bed.stop("eth0")
        bed.namespace.ip("-6", "neigh", "del", BACKEND6, "dev", "eth0", check=False)
        bed.namespace.ip("-6", "addr", "del", f"{LB6}/64", "dev", "eth0", check=False)


def test_the_icmp_counters_survive_a_restart(bed: Bed) -> None:
    """Issue 14, item 5: the ICMP outcomes are pinned with the other counters, so a restart
    (the data plane left running, the next daemon adopting it) keeps them."""
    node = bed.start("eth0", config(), attach=True, detach=False)  # attached: pinned
    try:
        inject(node, unreachable("198.18.64.99"))  # about an address no VIP has
        inject(node, unreachable("198.18.64.99"))
        assert node.daemon.monitor is not None and node.daemon.monitor.icmp_maps is not None
        before = node.daemon.monitor.icmp_maps.read_stats()
        assert before[IcmpStat.UNKNOWN_BACKEND][0] == 2
    finally:
        bed.stop("eth0")  # the pins stay
    node = bed.start("eth0", config(), attach=True)  # adopts them; detaches when stopped
    try:
        assert node.daemon.monitor is not None and node.daemon.monitor.icmp_maps is not None
        after = node.daemon.monitor.icmp_maps.read_stats()
        assert after[IcmpStat.UNKNOWN_BACKEND][0] == 2
        metrics = node.call("GET", "/metrics").body
        assert 'rusty_rail_icmp_packets_total{outcome="unknown_backend"} 2.0' in metrics
    finally:
        bed.stop("eth0")
