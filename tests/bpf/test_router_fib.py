"""bpf/testbed_router.bpf.c in FIB mode (the test bed's --cluster), in the kernel
(BPF_PROG_TEST_RUN with an xdp_md on a real interface): the kernel's routes choose the LB. A
namespace holds what BGP would have installed, an ECMP route per VIP over three balancers of
each family with permanent neighbours, and the L4 multipath hash; the program must send each
flow, wrapped in GRE of the gateway's family, to the gateway the kernel itself picks for that
5-tuple (``ip route get``), and count a drop for every way the FIB says no.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import Verdict
from rusty_rail.testbed.netns import Namespace, netns
from rusty_rail.testbed.router import Router
from rusty_rail.wire.build import ethernet, gre, ipv4, ipv6
from rusty_rail.wire.constants import ETH_P_IPV4, ETH_P_IPV6, PROTO_GRE, PROTO_TCP, PROTO_UDP
from rusty_rail.wire.describe import describe
from rusty_rail.wire.frames import inner_ipv4, inner_ipv6
from tests.support.router_run import send as router_send

pytestmark = pytest.mark.bpf

SOURCE = "198.18.0.1"
SOURCE6 = "2001:2:0:3::1"
VIP = "198.19.0.10"
VIP6 = "2001:2:0:100::10"
CLIENT = "198.18.1.11"
CLIENT6 = "2001:2:0:1::11"
LBS = ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
LBS6 = ["2001:2:0:3::11", "2001:2:0:3::12", "2001:2:0:3::13"]
CLIENT_MAC = "02:00:00:00:01:0b"


def lb_mac(address: str) -> str:
    return f"02:00:00:00:0{ip_address(address).version}:{ip_address(address).packed[-1]:02x}"


class Fib:
    """The router namespace: eth1 (clients, where the program runs), eth0 (the balancers)."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.ingress = namespace.ifindex("eth1")
        self.egress_mac = namespace.mac("eth0")

    def route(self, vip: str, hops: list[str]) -> None:
        """``vip`` routed over ``hops`` (ECMP), as BGP with merged paths installs it."""
        nexthops = [a for h in hops for a in ("nexthop", "via", h, "dev", "eth0")]
        self.namespace.ip("route", "replace", vip, *nexthops)

    def kernel_choice(self, flow: Flow) -> str | None:
        """The gateway the kernel's own lookup picks for ``flow`` arriving on eth1."""
        family = "-6" if len(flow.dst) == 16 else "-4"
        out = self.namespace.ip(
            family, "-j", "route", "get", str(ip_address(flow.dst)),
            "from", str(ip_address(flow.src)), "iif", "eth1",
            "ipproto", "tcp" if flow.proto == PROTO_TCP else "udp",
            "sport", str(flow.sport), "dport", str(flow.dport),
        )  # fmt: skip
        routes = json.loads(out)
        return str(routes[0]["gateway"]) if routes and "gateway" in routes[0] else None


@pytest.fixture(scope="module")
def fib() -> Iterator[Fib]:
    with netns() as net:
        router = net.namespace("rt")
        peer = net.namespace("lbs")
        net.veth(router, "eth1", peer, "c0")
        net.veth(router, "eth0", peer, "l0")
        router.ip("addr", "add", f"{SOURCE}/24", "dev", "eth0")
        router.ip("addr", "add", "198.18.1.1/24", "dev", "eth1")
        router.ip("-6", "addr", "add", f"{SOURCE6}/64", "dev", "eth0", "nodad")
        router.ip("-6", "addr", "add", "2001:2:0:1::1/64", "dev", "eth1", "nodad")
        for key, value in (
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
        ):
            router.sysctl(key, value)
        for lb in LBS + LBS6:
            router.ip("neigh", "replace", lb, "lladdr", lb_mac(lb), "dev", "eth0",
                      "nud", "permanent")  # fmt: skip
        bed = Fib(router)
        bed.route(VIP, LBS)
        bed.route(VIP6, LBS6)
        yield bed


@pytest.fixture(scope="module")
def router(fib: Fib) -> Iterator[Router]:
    with Router.load(
        source=SOURCE, source6=SOURCE6, vips=["198.19.0.0/24", "2001:2:0:100::/64"]
    ) as loaded:
        loaded.count_lbs(LBS + LBS6)
        yield loaded


@pytest.fixture(autouse=True)
def _routes_back(fib: Fib) -> Iterator[None]:
    yield
    fib.namespace.ip("neigh", "del", VIP, "dev", "eth0", check=False)
    fib.namespace.ip("link", "set", "eth0", "mtu", "1500")
    fib.route(VIP, LBS)
    fib.route(VIP6, LBS6)


def frame_of(flow: Flow, payload: bytes = b"hello") -> bytes:
    if len(flow.dst) == 16:
        return ethernet("02:00:00:00:00:01", CLIENT_MAC, ETH_P_IPV6, inner_ipv6(flow, payload))
    return ethernet("02:00:00:00:00:01", CLIENT_MAC, ETH_P_IPV4, inner_ipv4(flow, payload))


def send(fib: Fib, router: Router, frame: bytes) -> tuple[int, bytes, dict[str, int]]:
    with in_netns(fib.namespace.name):
        return router_send(router, frame, ingress_ifindex=fib.ingress)


def flows(count: int, dst: str = VIP, proto: int = PROTO_TCP) -> list[Flow]:
    src = CLIENT6 if ":" in dst else CLIENT
    return [Flow.of(src, dst, proto, 20000 + 7 * i, 80) for i in range(count)]


@pytest.mark.parametrize("vip", [VIP, VIP6], ids=["ipv4", "ipv6"])
def test_each_flow_goes_where_the_kernel_routes_it_wrapped_for_that_gateway(
    fib: Fib, router: Router, vip: str
) -> None:
    chosen: Counter[str] = Counter()
    for flow in flows(60, vip) + flows(20, vip, PROTO_UDP):
        gateway = fib.kernel_choice(flow)
        assert gateway is not None
        verdict, out, counts = send(fib, router, frame_of(flow))
        assert (verdict, counts) == (Verdict.REDIRECT, {"encapsulated": 1})
        if ":" in vip:
            forwarded = inner_ipv6(flow, b"hello", hop_limit=63)
            outer = ipv6(SOURCE6, gateway, PROTO_GRE, gre(ETH_P_IPV6, forwarded))
            expected = ethernet(lb_mac(gateway), fib.egress_mac, ETH_P_IPV6, outer)
        else:
            forwarded = inner_ipv4(flow, b"hello", ttl=63)
            outer = ipv4(SOURCE, gateway, PROTO_GRE, gre(ETH_P_IPV4, forwarded), ident=0,
                         dont_fragment=True)  # fmt: skip
            expected = ethernet(lb_mac(gateway), fib.egress_mac, ETH_P_IPV4, outer)
        assert out == expected
        chosen[gateway] += 1
    # The kernel's multipath hash spreads the flows over every balancer.
    assert set(chosen) == set(LBS6 if ":" in vip else LBS)


def outer_destination(fib: Fib, router: Router, flow: Flow) -> IPv4Address | IPv6Address:
    verdict, out, _ = send(fib, router, frame_of(flow))
    assert verdict == Verdict.REDIRECT
    info = describe(out)
    assert info.outer is not None
    return ip_address(info.outer.dst)


def test_a_withdrawn_next_hop_loses_its_flows_and_only_the_fib_decides(
    fib: Fib, router: Router
) -> None:
    sample = flows(60)
    before = [outer_destination(fib, router, flow) for flow in sample]
    fib.route(VIP, LBS[1:])
    after = [outer_destination(fib, router, flow) for flow in sample]
    assert IPv4Address(LBS[0]) in before
    assert IPv4Address(LBS[0]) not in after
    assert {str(a) for a in after} == set(LBS[1:])
    with pytest.raises(ValueError, match="FIB mode"):
        router.set_lbs([LBS[0]])


def test_per_lb_counters_count_what_the_fib_chose(fib: Fib, router: Router) -> None:
    before = router.lb_counters()
    sample = flows(30) + flows(30, VIP6)
    chosen = Counter(str(outer_destination(fib, router, flow)) for flow in sample)
    after = router.lb_counters()
    for lb in LBS + LBS6:
        assert after[lb]["packets"] - before[lb]["packets"] == chosen[lb]


@pytest.mark.parametrize(
    ("routes", "reason"),
    [
        (["del"], "drop_no_lb"),
        (["blackhole"], "drop_no_lb"),
        # On-link (its neighbour known): the kernel would send it as it is, no gateway is a
        # balancer.
        (["dev", "eth0"], "drop_no_lb"),
        (["via", "198.18.0.99", "dev", "eth0"], "drop_no_neigh"),
    ],
    ids=["no-route", "blackhole", "no-gateway", "no-neighbour"],
)
def test_every_refusal_of_the_fib_is_a_counted_drop(
    fib: Fib, router: Router, routes: list[str], reason: str
) -> None:
    if routes == ["del"]:
        fib.namespace.ip("-4", "route", "del", VIP)
    elif routes == ["blackhole"]:
        fib.namespace.ip("-4", "route", "replace", "blackhole", VIP)
    else:
        fib.namespace.ip("-4", "route", "replace", VIP, *routes)
        fib.namespace.ip("neigh", "replace", VIP, "lladdr", lb_mac(VIP), "dev", "eth0")
    verdict, _, counts = send(fib, router, frame_of(flows(1)[0]))
    assert (verdict, counts) == (Verdict.DROP, {reason: 1})


@pytest.mark.parametrize("vip", [VIP, VIP6], ids=["ipv4", "ipv6"])
def test_the_egress_mtu_counts_the_outer_header_of_the_gateway_family(
    fib: Fib, router: Router, vip: str
) -> None:
    (flow,) = flows(1, vip)
    frame = frame_of(flow, bytes(1300))  # an IPv6 link's MTU stays above 1280
    overhead = 44 if ":" in vip else 24
    fib.namespace.ip("link", "set", "eth0", "mtu", str(len(frame) - 14 + overhead))
    verdict, _, counts = send(fib, router, frame)
    assert (verdict, counts) == (Verdict.REDIRECT, {"encapsulated": 1})
    fib.namespace.ip("link", "set", "eth0", "mtu", str(len(frame) - 14 + overhead - 1))
    verdict, _, counts = send(fib, router, frame)
    assert (verdict, counts) == (Verdict.DROP, {"drop_too_big": 1})


def test_fib_mode_needs_both_sources_and_is_kept_by_a_pinned_router(bpffs_dir: Path) -> None:
    with pytest.raises(ValueError, match="FIB mode takes an IPv4 source and an IPv6 source6"):
        Router.load(source=SOURCE6, source6=SOURCE)
    with Router.load(source=SOURCE, source6=SOURCE6) as loaded:
        loaded.pin(bpffs_dir / "router")
        with Router.from_pinned(bpffs_dir / "router") as adopted:
            assert adopted.fib and adopted.source6 == IPv6Address(SOURCE6)
            assert adopted.source == IPv4Address(SOURCE)
