"""The forwarding methods end to end (issue 11, items 5 and 6), with real TCP: routed ingress
(the router's kernel routes the VIPs to the balancers by ECMP, no BPF on the router) with IPIP,
with VXLAN unwrapped by the servers' kernel VXLAN devices, and with direct routing; GRE ingress
with GENEVE. In each, both VIPs' connections spread over the backends, every packet the router
sent a balancer is one the balancer forwarded, replies bypass the balancers, and connections
survive a balancer failure and the removal of another backend.

One test bed per combination (a module-scoped fixture with parameters); tests that change it
put it back. Also here: why the routed router uses a resilient nexthop group (a plain multipath
route moves flows between surviving next hops when one is removed).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest

from rusty_rail.decap.agent import decap_status
from rusty_rail.model.flowhash import Flow
from rusty_rail.testbed.demo import FORWARD_STATS
from rusty_rail.testbed.lb_segment import lb_address6
from rusty_rail.testbed.netns import netns
from rusty_rail.testbed.routed import KernelRouter
from rusty_rail.testbed.spec import TESTBED_VNI
from rusty_rail.testbed.topology import (
    ECHO_PORT,
    HTTP_PORT,
    VIP,
    VIPS,
    Testbed,
    TestbedSpec,
    lb_address,
)
from rusty_rail.testbed.traffic import LongLived, http_requests
from rusty_rail.wire.constants import PROTO_TCP

pytestmark = pytest.mark.e2e

#: (ingress, egress, what unwraps VXLAN on the servers).
COMBINATIONS = [
    ("routed", "ipip", "kernel"),
    ("routed", "vxlan", "kernel"),
    ("gre", "geneve", "kernel"),
    ("routed", "route", "kernel"),
    ("gre", "vxlan", "decap"),
]


@pytest.fixture(
    scope="module", params=COMBINATIONS, ids=["-".join(c[:2]) + f"-{c[2]}" for c in COMBINATIONS]
)
def bed(request: pytest.FixtureRequest, require_root: None) -> Iterator[Testbed]:
    ingress, egress, vxlan_server = request.param
    spec = TestbedSpec(
        clients=2, lbs=2, servers=3, ingress=ingress, egress=egress, vxlan_server=vxlan_server
    )
    testbed = Testbed.up(spec)
    try:
        yield testbed
    finally:
        assert testbed.down() == []


@pytest.fixture(params=sorted(VIPS))
def vip(request: pytest.FixtureRequest) -> str:
    return VIPS[request.param]


def test_connections_spread_and_every_routed_packet_is_balanced(bed: Testbed, vip: str) -> None:
    forwarded_before = bed.lb_packets(FORWARD_STATS)
    not_theirs_before = sum(bed.lb_packets(["PASS_NOT_GRE"]))
    router_before = bed.router_lb_counters()
    result = http_requests(bed.clients, vip, HTTP_PORT, 300)
    assert result.errors == [] and result.ok == 300
    assert set(result.per_backend) == {"s1", "s2", "s3"}
    router_after = bed.router_lb_counters()
    sent = {a: router_after[a]["packets"] - router_before[a]["packets"] for a in router_after}
    forwarded = [
        a - b for a, b in zip(bed.lb_packets(FORWARD_STATS), forwarded_before, strict=True)
    ]
    # Both balancers took part, and each forwarded exactly what the router sent it (GRE: to
    # its underlay address; routed: to its address of the VIP's family).
    if bed.spec.ingress == "gre":
        addresses = [bed.spec.lb_outer_address(i) for i in range(bed.spec.lbs)]
    else:
        family = lb_address6 if ":" in vip else lb_address
        addresses = [family(i) for i in range(bed.spec.lbs)]
    assert [sent[a] for a in addresses] == forwarded
    assert all(count > 0 for count in forwarded)
    assert sum(bed.lb_packets(["PASS_NOT_GRE"])) == not_theirs_before


def test_a_balancer_failure_keeps_every_connection(bed: Testbed, vip: str) -> None:
    new_flows_before = bed.lb_packets(["CT_MISS"])
    echo = LongLived(bed.clients, vip, ECHO_PORT, 16)
    try:
        # Each connection went through one balancer (routed: the one whose connection table
        # holds it; GRE: the XDP router's choice, its Python twin), and each balancer saw
        # exactly those new flows.
        predicted = Counter(bed.lb_of(c.flow) for c in echo.connections)
        new_flows = [
            a - b for a, b in zip(bed.lb_packets(["CT_MISS"]), new_flows_before, strict=True)
        ]
        assert new_flows == [predicted[0], predicted[1]], predicted
        assert predicted[0] > 0, "no connection runs through lb1: the failover tests nothing"
        bed.set_lbs([1])
        assert echo.check() == []
        after = http_requests(bed.clients, vip, HTTP_PORT, 60)
        assert after.errors == []
        bed.set_lbs([0, 1])
        assert echo.check() == []
    finally:
        bed.set_lbs([0, 1])
        echo.close()


def test_a_backend_removal_keeps_the_connections_to_the_others(bed: Testbed, vip: str) -> None:
    echo = LongLived(bed.clients, vip, ECHO_PORT, 24)
    try:
        assert set(echo.per_backend()) == {"s1", "s2", "s3"}
        bed.set_backends([0, 1])
        echo.check()
        survivors = [c for c in echo.connections if c.backend != "s3"]
        assert survivors and all(c.alive for c in survivors)
        after = http_requests(bed.clients, vip, HTTP_PORT, 120)
        assert after.errors == [] and set(after.per_backend) == {"s1", "s2"}
    finally:
        bed.set_backends([0, 1, 2])
        echo.close()


def test_the_servers_take_the_method_as_documented(bed: Testbed) -> None:
    """vxlan: the kernel's VXLAN device took the packets, no decap runs (or, with
    vxlan_server decap, decap for vxlan and the VNI alone); route: nothing runs on the
    server; ipip and geneve: decap with that method alone took them."""
    server = bed.servers[0]
    attached = decap_status("eth0", netns=server.name, pin_root=bed.pin_root / "s1")
    kernel_vxlan = bed.spec.egress == "vxlan" and bed.spec.vxlan_server == "kernel"
    before = _rx_packets(server.name, "vxlan0") if kernel_vxlan else 0
    result = http_requests(bed.clients, VIP, HTTP_PORT, 60)
    assert result.errors == [] and result.per_backend["s1"] > 0
    if kernel_vxlan or bed.spec.egress == "route":
        assert not attached["attached"]
    else:
        assert attached["attached"] and attached["methods"] == [bed.spec.egress]
        vnis = [TESTBED_VNI] if bed.spec.egress in ("vxlan", "geneve") else None
        assert attached["vnis"] == vnis
        after = decap_status("eth0", netns=server.name, pin_root=bed.pin_root / "s1")
        assert after["counters"]["decapsulated"]["packets"] > 0
    if kernel_vxlan:
        assert _rx_packets(server.name, "vxlan0") - before >= result.per_backend["s1"] * 3


def _rx_packets(namespace: str, ifname: str) -> int:
    from rusty_rail.testbed.netns import Namespace

    (link,) = json.loads(Namespace(namespace).ip("-s", "-j", "link", "show", "dev", ifname))
    return int(link["stats64"]["rx"]["packets"])


def _flows(count: int) -> list[Flow]:
    return [Flow.of("198.18.1.55", VIP, PROTO_TCP, 20000 + i, 80) for i in range(count)]


def test_removing_a_next_hop_moves_only_its_own_flows(require_root: None) -> None:
    """The resilient group keeps every flow of the surviving next hops where it was when one
    of three is removed; a plain multipath route (hash-threshold) would move some of them,
    which is why the router does not use one."""
    lbs = ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
    with netns() as net:
        router = net.namespace("rt")
        net.veth(router, "eth0", router, "peer0")
        net.veth(router, "eth1", router, "peer1")
        router.ip("addr", "add", "198.18.0.1/24", "dev", "eth0")
        router.ip("addr", "add", "198.18.1.1/24", "dev", "eth1")
        router.sysctl("net.ipv4.ip_forward", "1")
        for i, lb in enumerate(lbs):
            router.ip("neigh", "add", lb, "lladdr", f"02:00:00:00:00:{i + 11}", "dev", "eth0")
        kernel = KernelRouter(router, {4: lbs}, {4: ["198.19.0.0/24"]})
        kernel.setup()
        kernel.set_lbs([0, 1, 2])
        flows = _flows(200)
        before = [kernel.choose(flow) for flow in flows]
        assert set(before) == {0, 1, 2}
        kernel.set_lbs([1, 2])
        after = [kernel.choose(flow) for flow in flows]
        assert all(a == b for a, b in zip(before, after, strict=True) if a != 0)
        assert set(after) == {1, 2}

        # The same with a plain multipath route: survivors' flows move.
        hops = [arg for lb in lbs for arg in ("nexthop", "via", lb, "dev", "eth0")]
        router.ip("route", "replace", "198.19.0.0/24", *hops)
        before = [kernel.choose(flow) for flow in flows]
        router.ip("route", "replace", "198.19.0.0/24", *hops[5:])
        after = [kernel.choose(flow) for flow in flows]
        assert any(a != b for a, b in zip(before, after, strict=True) if a != 0)
