"""bpf/testbed_router.bpf.c in the kernel (BPF_PROG_TEST_RUN): VIP traffic, IPv4 and IPv6, comes
out wrapped in outer IPv4 GRE towards the LB that the Python twin (choose_lb) names, byte for
byte; the choice is per flow, spread, and moves only a removed LB's flows; everything else
passes untouched or is counted.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import NextHop, Verdict
from rusty_rail.testbed.router import (
    MAX_LBS,
    ROUTER_SEED,
    LbTarget,
    Router,
    RouterStat,
    choose_lb,
)
from rusty_rail.wire.build import (
    ethernet,
    gre,
    ipv4,
    ipv4_fragments,
    ipv6,
    ipv6_fragment_header,
    l4_for,
    udp,
)
from rusty_rail.wire.constants import (
    ETH_P_ARP,
    ETH_P_IPV4,
    ETH_P_IPV6,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
)
from rusty_rail.wire.describe import describe
from rusty_rail.wire.fields import mac
from rusty_rail.wire.frames import inner_ipv4, inner_ipv6
from tests.support.router_run import send

pytestmark = pytest.mark.bpf

CLIENT_MAC = "02:00:00:00:02:01"
ROUTER_CLIENT_MAC = "02:00:00:00:02:02"
ROUTER_LB_MAC = "02:00:00:00:03:01"
SOURCE = "198.18.3.1"  # the router's LB-side address
VIPS = ["198.19.0.0/24", "198.19.9.9", "2001:2:0:100::/64", "2001:2:0:200::9"]
VIP = "198.19.0.1"
CLIENT = "198.18.2.7"
VIP6 = "2001:2:0:100::1"
CLIENT6 = "2001:2:0:1::7"
PROTO_IPV6_FRAGMENT = 44
LB_IFINDEX = 7  # any interface but the ingress one (loopback in a test run): a redirect
LOOPBACK = 1
LBS = [f"198.18.3.{n}" for n in (11, 12, 13, 14)]


def lb_mac(address: IPv4Address | str) -> bytes:
    return bytes([0x02, 0x00, 0x00, 0x00, 0x04, IPv4Address(address).packed[-1]])


def targets(addresses: Sequence[str], *, ifindex: int = LB_IFINDEX, mtu: int = 0) -> list[LbTarget]:
    return [
        LbTarget(
            IPv4Address(address),
            NextHop(ifindex=ifindex, src_mac=mac(ROUTER_LB_MAC), dst_mac=lb_mac(address)),
            mtu,
        )
        for address in addresses
    ]


@pytest.fixture(scope="module")
def loaded_router() -> Iterator[Router]:
    with Router.load(source=SOURCE, vips=VIPS) as router:
        yield router


@pytest.fixture
def router(loaded_router: Router) -> Router:
    loaded_router.set_vips(VIPS)
    loaded_router.set_lb_targets(targets(LBS))
    return loaded_router


def client_frame(packet: bytes) -> bytes:
    return ethernet(ROUTER_CLIENT_MAC, CLIENT_MAC, ETH_P_IPV4, packet)


def client_frame6(packet: bytes) -> bytes:
    return ethernet(ROUTER_CLIENT_MAC, CLIENT_MAC, ETH_P_IPV6, packet)


def expected_gre(
    lb: IPv4Address | str, forwarded: bytes, *, tos: int = 0, protocol: int = ETH_P_IPV4
) -> bytes:
    """What leaves towards ``lb``: Ethernet to the LB, outer IPv4 (DF, ID 0, TTL 64) + GRE."""
    outer = ipv4(
        SOURCE, lb, PROTO_GRE, gre(protocol, forwarded), tos=tos, ident=0, dont_fragment=True
    )
    return ethernet(lb_mac(lb), ROUTER_LB_MAC, ETH_P_IPV4, outer)


def chosen_lb(router: Router, frame: bytes) -> IPv4Address:
    verdict, out, _ = send(router, frame)
    assert verdict == Verdict.REDIRECT
    info = describe(out)
    assert info.outer is not None
    return IPv4Address(info.outer.dst)


# -- the encapsulation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "flow",
    [
        Flow.of(CLIENT, VIP, PROTO_TCP, 40000, 443),
        Flow.of(CLIENT, "198.19.9.9", PROTO_UDP, 5353, 53),
        Flow.of(CLIENT, VIP, PROTO_ICMP),
        Flow.of(CLIENT, VIP, 132),  # SCTP: no ports taken
    ],
    ids=["tcp", "udp", "icmp", "other"],
)
def test_vip_traffic_is_wrapped_towards_the_chosen_lb(router: Router, flow: Flow) -> None:
    lb = choose_lb(flow, LBS)
    assert lb is not None
    verdict, out, counts = send(router, client_frame(inner_ipv4(flow, b"hello", ttl=64)))
    assert verdict == Verdict.REDIRECT
    assert counts == {"encapsulated": 1}
    assert out == expected_gre(lb, inner_ipv4(flow, b"hello", ttl=63))


def test_inner_options_tos_and_ecn_are_carried(router: Router) -> None:
    flow = Flow.of(CLIENT, VIP, PROTO_UDP, 1000, 2000)
    payload = l4_for(flow, b"dscp")
    packet = ipv4(CLIENT, VIP, PROTO_UDP, payload, tos=0xB9, options=b"\x01" * 4, ident=77)
    forwarded = ipv4(
        CLIENT, VIP, PROTO_UDP, payload, tos=0xB9, options=b"\x01" * 4, ident=77, ttl=63
    )
    lb = choose_lb(flow, LBS)
    assert lb is not None
    _, out, _ = send(router, client_frame(packet))
    assert out == expected_gre(lb, forwarded, tos=0xB9)


def test_link_padding_is_carried_behind_the_outer_packet(router: Router) -> None:
    flow = Flow.of(CLIENT, VIP, 253)
    frame = ethernet(
        ROUTER_CLIENT_MAC, CLIENT_MAC, ETH_P_IPV4, ipv4(CLIENT, VIP, 253, b""), pad_to=60
    )
    lb = choose_lb(flow, LBS)
    assert lb is not None
    _, out, _ = send(router, frame)
    assert out == expected_gre(lb, ipv4(CLIENT, VIP, 253, b"", ttl=63)) + bytes(26)


def test_an_lb_behind_the_ingress_interface_is_sent_back_out(router: Router) -> None:
    router.set_lb_targets(targets(LBS[:1], ifindex=LOOPBACK))
    flow = Flow.of(CLIENT, VIP, PROTO_TCP, 1, 2)
    verdict, out, _ = send(router, client_frame(inner_ipv4(flow)), ingress_ifindex=LOOPBACK)
    assert verdict == Verdict.TX
    assert out == expected_gre(LBS[0], inner_ipv4(flow, ttl=63))


def test_mtu_of_the_lb_link_is_respected(router: Router) -> None:
    flow = Flow.of(CLIENT, VIP, PROTO_TCP, 1, 2)
    packet = inner_ipv4(flow, bytes(1500 - 40))
    router.set_lb_targets(targets(LBS, mtu=1524))
    verdict, _, counts = send(router, client_frame(packet))
    assert (verdict, counts) == (Verdict.REDIRECT, {"encapsulated": 1})
    router.set_lb_targets(targets(LBS, mtu=1523))
    verdict, _, counts = send(router, client_frame(packet))
    assert (verdict, counts) == (Verdict.DROP, {"drop_too_big": 1})


def test_no_live_lb_drops_and_says_so(router: Router) -> None:
    router.set_lb_targets([])
    verdict, _, counts = send(router, client_frame(inner_ipv4(Flow.of(CLIENT, VIP, PROTO_ICMP))))
    assert (verdict, counts) == (Verdict.DROP, {"drop_no_lb": 1})


@pytest.mark.parametrize(
    "flow",
    [
        Flow.of(CLIENT6, VIP6, PROTO_TCP, 40000, 443),
        Flow.of(CLIENT6, "2001:2:0:200::9", PROTO_UDP, 5353, 53),
        Flow.of(CLIENT6, VIP6, 58),  # ICMPv6: no ports taken
    ],
    ids=["tcp", "udp", "icmpv6"],
)
def test_ipv6_vip_traffic_is_wrapped_in_ipv4_gre_towards_the_chosen_lb(
    router: Router, flow: Flow
) -> None:
    lb = choose_lb(flow, LBS)
    assert lb is not None
    verdict, out, counts = send(router, client_frame6(inner_ipv6(flow, b"hello", hop_limit=64)))
    assert verdict == Verdict.REDIRECT
    assert counts == {"encapsulated": 1}
    forwarded = inner_ipv6(flow, b"hello", hop_limit=63)
    assert out == expected_gre(lb, forwarded, protocol=ETH_P_IPV6)


def test_ipv6_traffic_class_is_carried_in_the_outer_tos(router: Router) -> None:
    flow = Flow.of(CLIENT6, VIP6, PROTO_UDP, 1000, 2000)
    inner = ipv6(CLIENT6, VIP6, PROTO_UDP, udp(1000, 2000, b"x"),
                 traffic_class=0xB9, flow_label=0x12345)  # fmt: skip
    verdict, out, _ = send(router, client_frame6(inner))
    assert verdict == Verdict.REDIRECT
    forwarded = inner[:7] + bytes([63]) + inner[8:]
    lb = choose_lb(flow, LBS)
    assert lb is not None
    assert out == expected_gre(lb, forwarded, tos=0xB9, protocol=ETH_P_IPV6)


def test_ipv6_link_padding_is_carried_behind_the_outer_packet(router: Router) -> None:
    flow = Flow.of(CLIENT6, VIP6, PROTO_TCP, 7, 8)
    padded = client_frame6(inner_ipv6(flow)) + bytes(6)
    verdict, out, _ = send(router, padded)
    assert verdict == Verdict.REDIRECT
    lb = choose_lb(flow, LBS)
    assert lb is not None
    assert out == expected_gre(lb, inner_ipv6(flow, hop_limit=63), protocol=ETH_P_IPV6) + bytes(6)


def test_ipv6_mtu_of_the_lb_link_is_respected(router: Router) -> None:
    flow = Flow.of(CLIENT6, VIP6, PROTO_UDP, 1, 2)
    packet = inner_ipv6(flow, bytes(100))
    router.set_lb_targets(targets(LBS, mtu=len(packet) + 24))
    assert send(router, client_frame6(packet))[0] == Verdict.REDIRECT
    router.set_lb_targets(targets(LBS, mtu=len(packet) + 23))
    assert send(router, client_frame6(packet))[2] == {"drop_too_big": 1}


def test_ipv6_fragments_and_extension_headers_go_by_address_pair(router: Router) -> None:
    """Without TCP or UDP right behind the fixed header, the flow is (source, destination,
    next header): every fragment of a datagram goes to one LB."""
    fragments = [
        ipv6(CLIENT6, VIP6, PROTO_IPV6_FRAGMENT,
             ipv6_fragment_header(PROTO_UDP, offset=offset, more=more, ident=7) + bytes(16))
        for offset, more in ((0, True), (2, True), (4, False))
    ]  # fmt: skip
    chosen = {chosen_lb(router, client_frame6(fragment)) for fragment in fragments}
    assert chosen == {choose_lb(Flow.of(CLIENT6, VIP6, PROTO_IPV6_FRAGMENT), LBS)}


def test_ipv6_ports_cut_off_by_the_payload_length_make_a_three_tuple(router: Router) -> None:
    tcp = inner_ipv6(Flow.of(CLIENT6, VIP6, PROTO_TCP, 1234, 80))
    three_tuple = Flow.of(CLIENT6, VIP6, PROTO_TCP)
    for payload_length in range(4):
        header = ipv6(CLIENT6, VIP6, PROTO_TCP, tcp[40 : 40 + payload_length])
        frame = client_frame6(header + tcp[40 + payload_length :])  # the rest is link padding
        assert chosen_lb(router, frame) == choose_lb(three_tuple, LBS)


def random_flows6(count: int, seed: int = 1) -> list[Flow]:
    rng = random.Random(seed)
    return [
        Flow.of(
            f"2001:2:0:1::{rng.randrange(1, 0xFFFF):x}",
            f"2001:2:0:100::{rng.randrange(1, 0xFFFF):x}",
            rng.choice([PROTO_TCP, PROTO_UDP]),
            rng.randrange(1024, 65536),
            rng.choice([80, 443, 53]),
        )
        for _ in range(count)
    ]


def test_the_kernel_chooses_ipv6_flows_as_the_python_twin_does(router: Router) -> None:
    flows = random_flows6(500, seed=4)
    chosen = [chosen_lb(router, client_frame6(inner_ipv6(flow))) for flow in flows]
    assert chosen == [choose_lb(flow, LBS) for flow in flows]
    shares = Counter(chosen)
    assert set(shares) == {IPv4Address(lb) for lb in LBS}


def test_ipv6_vip_prefixes_change_at_run_time_beside_the_ipv4_ones(router: Router) -> None:
    frame = client_frame6(inner_ipv6(Flow.of(CLIENT6, "2001:2:0:300::5", PROTO_TCP, 1, 2)))
    assert send(router, frame)[0] == Verdict.PASS
    router.set_vips([*VIPS, "2001:2:0:300::/64"])
    assert send(router, frame)[0] == Verdict.REDIRECT
    router.set_vips(["198.19.0.0/24", "2001:2:0:100::/64"])
    assert [str(vip) for vip in router.vips()] == ["198.19.0.0/24", "2001:2:0:100::/64"]
    assert send(router, frame)[0] == Verdict.PASS


def test_a_bad_vip_prefix_changes_neither_family(router: Router) -> None:
    with pytest.raises(ValueError, match="2001:2::1/64"):
        router.set_vips(["198.19.7.0/24", "2001:2::1/64"])
    expected = ["198.19.0.0/24", "198.19.9.9/32", "2001:2:0:100::/64", "2001:2:0:200::9/128"]
    assert [str(vip) for vip in router.vips()] == expected


# -- what is not the router's ----------------------------------------------------------------


def pass_cases() -> list[tuple[str, bytes, RouterStat]]:
    tcp_to_vip = inner_ipv4(Flow.of(CLIENT, VIP, PROTO_TCP, 1, 2))
    return [
        (
            "not a VIP",
            client_frame(inner_ipv4(Flow.of(CLIENT, "198.19.1.1", PROTO_TCP, 1, 2))),
            RouterStat.PASS_NOT_VIP,
        ),
        (
            "reply from a VIP to a client",
            client_frame(inner_ipv4(Flow.of(VIP, CLIENT, PROTO_TCP, 2, 1))),
            RouterStat.PASS_NOT_VIP,
        ),
        (
            "ARP",
            ethernet("ff:ff:ff:ff:ff:ff", CLIENT_MAC, ETH_P_ARP, bytes(28)),
            RouterStat.PASS_NOT_IP,
        ),
        (
            "IPv6 not to a VIP",
            client_frame6(ipv6("2001:2::1", "2001:2::2", PROTO_UDP, b"")),
            RouterStat.PASS_NOT_VIP,
        ),
        (
            "IPv6 reply from a VIP to a client",
            client_frame6(inner_ipv6(Flow.of(VIP6, CLIENT6, PROTO_TCP, 2, 1))),
            RouterStat.PASS_NOT_VIP,
        ),
        (
            "IPv6 hop limit 1",
            client_frame6(inner_ipv6(Flow.of(CLIENT6, VIP6, PROTO_UDP, 1, 2), hop_limit=1)),
            RouterStat.PASS_TTL_EXPIRED,
        ),
        (
            "IPv6 version 4 under EtherType IPv6",
            client_frame6(b"\x46" + inner_ipv6(Flow.of(CLIENT6, VIP6, PROTO_UDP, 1, 2))[1:]),
            RouterStat.PASS_MALFORMED,
        ),
        (
            "IPv6 payload length past the frame",
            client_frame6(ipv6(CLIENT6, VIP6, PROTO_UDP, bytes(8), payload_length=9)),
            RouterStat.PASS_MALFORMED,
        ),
        (
            "IPv6 header cut short",
            client_frame6(inner_ipv6(Flow.of(CLIENT6, VIP6, PROTO_UDP, 1, 2))[:39]),
            RouterStat.PASS_MALFORMED,
        ),
        (
            "VLAN-tagged",
            ethernet(ROUTER_CLIENT_MAC, CLIENT_MAC, ETH_P_IPV4, tcp_to_vip, vlans=(5,)),
            RouterStat.PASS_NOT_IP,
        ),
        (
            "TTL 1",
            client_frame(inner_ipv4(Flow.of(CLIENT, VIP, PROTO_UDP, 1, 2), ttl=1)),
            RouterStat.PASS_TTL_EXPIRED,
        ),
        (
            "TTL 0",
            client_frame(inner_ipv4(Flow.of(CLIENT, VIP, PROTO_UDP, 1, 2), ttl=0)),
            RouterStat.PASS_TTL_EXPIRED,
        ),
        (
            "version 6 under EtherType IPv4",
            client_frame(b"\x65" + tcp_to_vip[1:]),
            RouterStat.PASS_MALFORMED,
        ),
        ("IHL 4", client_frame(b"\x44" + tcp_to_vip[1:]), RouterStat.PASS_MALFORMED),
        (
            "total length past the frame",
            client_frame(ipv4(CLIENT, VIP, PROTO_TCP, b"abcd", total_length=100)),
            RouterStat.PASS_MALFORMED,
        ),
        (
            "total length under the header",
            client_frame(ipv4(CLIENT, VIP, PROTO_TCP, b"abcd", total_length=12)),
            RouterStat.PASS_MALFORMED,
        ),
        ("IPv4 header cut short", client_frame(tcp_to_vip[:19]), RouterStat.PASS_MALFORMED),
    ]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [(case[1], case[2]) for case in pass_cases()],
    ids=[case[0] for case in pass_cases()],
)
def test_everything_else_passes_untouched(router: Router, frame: bytes, reason: RouterStat) -> None:
    verdict, out, counts = send(router, frame)
    assert verdict == Verdict.PASS
    assert counts == {reason.name.lower(): 1}
    assert out == frame


def test_vip_prefixes_change_at_run_time(router: Router) -> None:
    frame = client_frame(inner_ipv4(Flow.of(CLIENT, "198.19.5.5", PROTO_TCP, 1, 2)))
    assert send(router, frame)[0] == Verdict.PASS
    router.set_vips([*VIPS, "198.19.5.0/24"])
    assert send(router, frame)[0] == Verdict.REDIRECT
    router.set_vips(["198.19.0.0/24"])
    assert [str(vip) for vip in router.vips()] == ["198.19.0.0/24"]
    assert send(router, frame)[0] == Verdict.PASS


def test_every_truncation_passes_untouched(router: Router) -> None:
    frame = client_frame(inner_ipv4(Flow.of(CLIENT, VIP, PROTO_TCP, 1, 2), b"payload"))
    for length in range(14, len(frame)):
        verdict, out, counts = send(router, frame[:length])
        assert verdict == Verdict.PASS, length
        assert out == frame[:length], length
        assert "encapsulated" not in counts


def test_ports_cut_off_by_the_total_length_make_a_three_tuple(router: Router) -> None:
    tcp = inner_ipv4(Flow.of(CLIENT, VIP, PROTO_TCP, 1234, 80))
    three_tuple = Flow.of(CLIENT, VIP, PROTO_TCP)
    for total_length in range(20, 24):
        header = ipv4(CLIENT, VIP, PROTO_TCP, tcp[20:total_length])
        frame = client_frame(header + tcp[total_length:])  # the rest is link padding
        assert chosen_lb(router, frame) == choose_lb(three_tuple, LBS)


# -- ECMP ------------------------------------------------------------------------------------


def random_flows(count: int, seed: int = 1) -> list[Flow]:
    rng = random.Random(seed)
    flows = []
    for _ in range(count):
        proto = rng.choice([PROTO_TCP, PROTO_TCP, PROTO_UDP])
        flows.append(
            Flow.of(
                f"198.18.{rng.randrange(2, 10)}.{rng.randrange(1, 255)}",
                f"198.19.0.{rng.randrange(1, 255)}",
                proto,
                rng.randrange(1024, 65536),
                rng.choice([80, 443, 53, rng.randrange(1, 65536)]),
            )
        )
    return flows


def assignment(router: Router, flows: Sequence[Flow]) -> list[IPv4Address]:
    return [chosen_lb(router, client_frame(inner_ipv4(flow))) for flow in flows]


def test_the_kernel_chooses_as_the_python_twin_does(router: Router) -> None:
    flows = random_flows(500, seed=2)
    assert assignment(router, flows) == [choose_lb(flow, LBS) for flow in flows]


def test_a_flow_always_goes_to_the_same_lb(router: Router) -> None:
    frame = client_frame(inner_ipv4(Flow.of(CLIENT, VIP, PROTO_TCP, 55555, 443), b"again"))
    assert len({chosen_lb(router, frame) for _ in range(50)}) == 1


def test_fragments_of_a_datagram_go_to_the_same_lb(router: Router) -> None:
    flow = Flow.of(CLIENT, VIP, PROTO_UDP, 4000, 53)
    datagram = ipv4(CLIENT, VIP, PROTO_UDP, udp(4000, 53, bytes(100), src=CLIENT, dst=VIP))
    fragments = ipv4_fragments(datagram, 32)
    assert len(fragments) == 4
    chosen = {chosen_lb(router, client_frame(fragment)) for fragment in fragments}
    assert chosen == {choose_lb(Flow.of(CLIENT, VIP, PROTO_UDP), LBS)}
    assert choose_lb(flow, LBS) is not None  # the unfragmented flow may differ: ports count


def test_flows_spread_over_the_lbs(router: Router) -> None:
    shares = Counter(assignment(router, random_flows(2000, seed=3)))
    assert set(shares) == {IPv4Address(lb) for lb in LBS}
    for lb, count in shares.items():
        assert 400 <= count <= 600, (lb, shares)  # 500 each expected


def test_removing_an_lb_moves_only_its_flows_and_adding_it_back_restores_all(
    router: Router,
) -> None:
    flows = random_flows(1000, seed=4)
    before = assignment(router, flows)
    dead = IPv4Address(LBS[1])
    router.set_lb_targets(targets([lb for lb in LBS if IPv4Address(lb) != dead]))
    after = assignment(router, flows)
    for old, new in zip(before, after, strict=True):
        if old == dead:
            assert new != dead
        else:
            assert new == old
    moved = Counter(new for old, new in zip(before, after, strict=True) if old == dead)
    assert len(moved) == 3  # the dead LB's flows spread over all the others
    router.set_lb_targets(targets(LBS))
    assert assignment(router, flows) == before


def test_the_choice_does_not_depend_on_the_order_of_the_lbs(router: Router) -> None:
    flows = random_flows(300, seed=5)
    before = assignment(router, flows)
    router.set_lb_targets(targets(list(reversed(LBS))))
    assert assignment(router, flows) == before


def test_the_set_swaps_whole_many_times(router: Router) -> None:
    flow = Flow.of(CLIENT, VIP, PROTO_TCP, 9, 9)
    frame = client_frame(inner_ipv4(flow))
    many = [f"198.18.4.{n}" for n in range(1, MAX_LBS + 1)]
    for size in (1, 2, MAX_LBS, 3, 1, MAX_LBS):
        router.set_lb_targets(targets(many[:size]))
        assert chosen_lb(router, frame) == choose_lb(flow, many[:size])
    with pytest.raises(ValueError, match="at most 32"):
        router.set_lb_targets(targets([*many, "198.18.5.1"]))
    with pytest.raises(ValueError, match="repeat"):
        router.set_lb_targets(targets([many[0], many[0]]))


def test_another_seed_places_flows_otherwise() -> None:
    flows = random_flows(200, seed=6)
    ours = [choose_lb(flow, LBS) for flow in flows]
    theirs = [choose_lb(flow, LBS, seed=ROUTER_SEED + 1) for flow in flows]
    assert sum(a != b for a, b in zip(ours, theirs, strict=True)) > 100


# -- counters --------------------------------------------------------------------------------


def test_counters_per_reason_and_per_lb_add_up(router: Router) -> None:
    before = router.counters()
    lb_before = router.lb_counters()
    flows = random_flows(100, seed=7)
    frames = [client_frame(inner_ipv4(flow, b"count")) for flow in flows]
    chosen = Counter(chosen_lb(router, frame) for frame in frames)
    after = router.counters()
    assert after["encapsulated"]["packets"] - before["encapsulated"]["packets"] == 100
    assert after["encapsulated"]["bytes"] - before["encapsulated"]["bytes"] == sum(map(len, frames))
    lb_after = router.lb_counters()
    for lb in LBS:
        sent = lb_after[lb]["packets"] - lb_before.get(lb, {"packets": 0})["packets"]
        assert sent == chosen[IPv4Address(lb)]


# -- pins ------------------------------------------------------------------------------------


def test_a_pinned_router_is_adopted_whole_by_another_router_object(bpffs_dir: Path) -> None:
    with Router.load(source=SOURCE, vips=VIPS, seed=ROUTER_SEED + 7, outer_ttl=9) as router:
        router.set_lb_targets(targets(LBS[:3], mtu=1524))
        router.pin(bpffs_dir / "router")
        flow = Flow.of(CLIENT, VIP, PROTO_TCP, 7, 7)
        frame = client_frame(inner_ipv4(flow))
        chosen_lb(router, frame)
        adopted = Router.from_pinned(bpffs_dir / "router")
        with adopted:
            assert adopted.lbs == tuple(targets(LBS[:3], mtu=1524))
            assert (adopted.source, adopted.seed, adopted.outer_ttl) == (
                IPv4Address(SOURCE),
                ROUTER_SEED + 7,
                9,
            )
            assert adopted.vips() == router.vips()
            assert adopted.counters() == router.counters()
            with pytest.raises(RuntimeError, match="no program"):
                adopted.program  # noqa: B018
            # The adopted object drives the same maps the running program reads.
            adopted.set_lb_targets(targets(LBS[3:]))
            assert chosen_lb(router, frame) == IPv4Address(LBS[3])
        assert sorted(path.name for path in (bpffs_dir / "router").iterdir()) == [
            "active",
            "lb_sets",
            "lb_stats",
            "stats",
            "vips",
            "vips_v6",
        ]
