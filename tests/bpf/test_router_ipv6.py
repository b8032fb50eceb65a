"""bpf/testbed_router.bpf.c with an IPv6 outer source (BPF_PROG_TEST_RUN): IPv4 and IPv6 VIP
traffic comes out wrapped in outer IPv6 + GRE towards the IPv6 LB that the Python twin
(choose_lb, over the LBs' four address words) names, byte for byte: hop limit the set's,
traffic class carried, flow label 0; the choice is per flow, spread, moves only a removed LB's
flows; the MTU check counts the 40-byte header; the set's family is one and checked.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from ipaddress import IPv6Address, ip_address
from pathlib import Path

import pytest

from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import NextHop, Verdict
from rusty_rail.testbed.router import (
    GRE6_OVERHEAD,
    MAX_LBS,
    LbTarget,
    Router,
    choose_lb,
    lb_scores,
)
from rusty_rail.wire.build import ethernet, gre, ipv4, ipv6, udp
from rusty_rail.wire.constants import ETH_P_IPV4, ETH_P_IPV6, PROTO_GRE, PROTO_TCP, PROTO_UDP
from rusty_rail.wire.describe import describe
from rusty_rail.wire.fields import mac
from rusty_rail.wire.frames import inner_ipv4, inner_ipv6
from tests.support.router_run import send

pytestmark = pytest.mark.bpf

CLIENT_MAC = "02:00:00:00:02:01"
ROUTER_CLIENT_MAC = "02:00:00:00:02:02"
ROUTER_LB_MAC = "02:00:00:00:03:01"
SOURCE6 = "2001:2:0:3::1"  # the router's LB-side IPv6 address
VIPS = ["198.19.0.0/24", "2001:2:0:100::/64"]
VIP = "198.19.0.1"
CLIENT = "198.18.2.7"
VIP6 = "2001:2:0:100::1"
CLIENT6 = "2001:2:0:1::7"
LB_IFINDEX = 7
LOOPBACK = 1
#: Four IPv6 LBs that differ in every word, so a score that skipped a word would show.
LBS6 = [
    "2001:2:0:3::11",
    "2001:2:0:3::12",
    "2001:2:0:3:1::13",
    "2001:2:0:3:0:1:0:14",
]


def lb_mac(address: str | IPv6Address) -> bytes:
    return bytes([0x02, 0x00, 0x00, 0x00, 0x06, ip_address(address).packed[-1]])


def targets(addresses: Sequence[str], *, ifindex: int = LB_IFINDEX, mtu: int = 0) -> list[LbTarget]:
    return [
        LbTarget(
            IPv6Address(address),
            NextHop(ifindex=ifindex, src_mac=mac(ROUTER_LB_MAC), dst_mac=lb_mac(address)),
            mtu,
        )
        for address in addresses
    ]


@pytest.fixture(scope="module")
def loaded_router() -> Iterator[Router]:
    with Router.load(source=SOURCE6, vips=VIPS, outer_ttl=61) as router:
        yield router


@pytest.fixture
def router(loaded_router: Router) -> Router:
    loaded_router.set_lb_targets(targets(LBS6))
    return loaded_router


def client_frame(packet: bytes) -> bytes:
    return ethernet(ROUTER_CLIENT_MAC, CLIENT_MAC, ETH_P_IPV4, packet)


def client_frame6(packet: bytes) -> bytes:
    return ethernet(ROUTER_CLIENT_MAC, CLIENT_MAC, ETH_P_IPV6, packet)


def expected_gre6(
    lb: IPv6Address | str, forwarded: bytes, *, traffic_class: int = 0, protocol: int
) -> bytes:
    """What leaves towards ``lb``: Ethernet to the LB, outer IPv6 (hop limit 61, flow label 0)
    + GRE."""
    outer = ipv6(SOURCE6, lb, PROTO_GRE, gre(protocol, forwarded),
                 hop_limit=61, traffic_class=traffic_class)  # fmt: skip
    return ethernet(lb_mac(lb), ROUTER_LB_MAC, ETH_P_IPV6, outer)


def chosen_lb(router: Router, frame: bytes) -> IPv6Address:
    verdict, out, _ = send(router, frame)
    assert verdict == Verdict.REDIRECT
    info = describe(out)
    assert out[12:14] == b"\x86\xdd" and info.outer is not None
    return IPv6Address(info.outer.dst)


def random_flows(count: int, seed: int) -> list[Flow]:
    rng = random.Random(seed)
    flows = []
    for _ in range(count):
        if rng.random() < 0.5:
            src, dst = f"198.18.2.{rng.randrange(1, 255)}", f"198.19.0.{rng.randrange(1, 255)}"
        else:
            src = f"2001:2:0:1::{rng.randrange(1, 0xFFFF):x}"
            dst = f"2001:2:0:100::{rng.randrange(1, 0xFFFF):x}"
        proto = rng.choice([PROTO_TCP, PROTO_UDP])
        flows.append(Flow.of(src, dst, proto, rng.randrange(1024, 65536), rng.choice([80, 443])))
    return flows


def frame_of(flow: Flow) -> bytes:
    return client_frame6(inner_ipv6(flow)) if flow.is_ipv6 else client_frame(inner_ipv4(flow))


# -- the encapsulation -----------------------------------------------------------------------


def test_ipv4_vip_traffic_is_wrapped_in_outer_ipv6_gre(router: Router) -> None:
    flow = Flow.of(CLIENT, VIP, PROTO_TCP, 40000, 443)
    lb = choose_lb(flow, LBS6)
    assert isinstance(lb, IPv6Address)
    verdict, out, counts = send(router, client_frame(inner_ipv4(flow, b"hello", ttl=64)))
    assert (verdict, counts) == (Verdict.REDIRECT, {"encapsulated": 1})
    assert out == expected_gre6(lb, inner_ipv4(flow, b"hello", ttl=63), protocol=ETH_P_IPV4)


def test_ipv6_vip_traffic_is_wrapped_in_outer_ipv6_gre(router: Router) -> None:
    flow = Flow.of(CLIENT6, VIP6, PROTO_UDP, 5353, 53)
    lb = choose_lb(flow, LBS6)
    assert lb is not None
    verdict, out, counts = send(router, client_frame6(inner_ipv6(flow, b"hi", hop_limit=9)))
    assert (verdict, counts) == (Verdict.REDIRECT, {"encapsulated": 1})
    assert out == expected_gre6(lb, inner_ipv6(flow, b"hi", hop_limit=8), protocol=ETH_P_IPV6)


def test_tos_and_traffic_class_are_carried_in_the_outer_traffic_class(router: Router) -> None:
    flow = Flow.of(CLIENT, VIP, PROTO_UDP, 1000, 2000)
    payload = udp(1000, 2000, b"dscp", src=CLIENT, dst=VIP)
    _, out, _ = send(router, client_frame(ipv4(CLIENT, VIP, PROTO_UDP, payload, tos=0xB9)))
    forwarded = ipv4(CLIENT, VIP, PROTO_UDP, payload, tos=0xB9, ttl=63)
    lb = choose_lb(flow, LBS6)
    assert lb is not None
    assert out == expected_gre6(lb, forwarded, traffic_class=0xB9, protocol=ETH_P_IPV4)

    flow6 = Flow.of(CLIENT6, VIP6, PROTO_UDP, 1000, 2000)
    inner = ipv6(CLIENT6, VIP6, PROTO_UDP, udp(1000, 2000, b"x"),
                 traffic_class=0x2D, flow_label=0x12345)  # fmt: skip
    _, out, _ = send(router, client_frame6(inner))
    lb = choose_lb(flow6, LBS6)
    assert lb is not None
    forwarded = inner[:7] + bytes([63]) + inner[8:]
    assert out == expected_gre6(lb, forwarded, traffic_class=0x2D, protocol=ETH_P_IPV6)


def test_link_padding_is_carried_behind_the_outer_packet(router: Router) -> None:
    flow = Flow.of(CLIENT, VIP, 253)
    frame = ethernet(
        ROUTER_CLIENT_MAC, CLIENT_MAC, ETH_P_IPV4, ipv4(CLIENT, VIP, 253, b""), pad_to=60
    )
    lb = choose_lb(flow, LBS6)
    assert lb is not None
    _, out, _ = send(router, frame)
    forwarded = ipv4(CLIENT, VIP, 253, b"", ttl=63)
    assert out == expected_gre6(lb, forwarded, protocol=ETH_P_IPV4) + bytes(26)


def test_an_lb_behind_the_ingress_interface_is_sent_back_out(router: Router) -> None:
    router.set_lb_targets(targets(LBS6[:1], ifindex=LOOPBACK))
    flow = Flow.of(CLIENT6, VIP6, PROTO_TCP, 1, 2)
    verdict, out, _ = send(router, client_frame6(inner_ipv6(flow)), ingress_ifindex=LOOPBACK)
    assert verdict == Verdict.TX
    assert out == expected_gre6(LBS6[0], inner_ipv6(flow, hop_limit=63), protocol=ETH_P_IPV6)


def test_the_mtu_check_counts_the_outer_ipv6_header(router: Router) -> None:
    packet = inner_ipv4(Flow.of(CLIENT, VIP, PROTO_TCP, 1, 2), bytes(1000))
    router.set_lb_targets(targets(LBS6, mtu=len(packet) + GRE6_OVERHEAD))
    assert send(router, client_frame(packet))[:3:2] == (Verdict.REDIRECT, {"encapsulated": 1})
    router.set_lb_targets(targets(LBS6, mtu=len(packet) + GRE6_OVERHEAD - 1))
    assert send(router, client_frame(packet))[:3:2] == (Verdict.DROP, {"drop_too_big": 1})


def test_no_live_lb_drops_and_says_so(router: Router) -> None:
    router.set_lb_targets([])
    frame = client_frame6(inner_ipv6(Flow.of(CLIENT6, VIP6, PROTO_TCP, 1, 2)))
    assert send(router, frame)[:3:2] == (Verdict.DROP, {"drop_no_lb": 1})


# -- the choice ------------------------------------------------------------------------------


def test_the_kernel_chooses_as_the_python_twin_does(router: Router) -> None:
    flows = random_flows(600, seed=11)
    chosen = [chosen_lb(router, frame_of(flow)) for flow in flows]
    assert chosen == [choose_lb(flow, LBS6) for flow in flows]
    shares = Counter(chosen)
    assert set(shares) == {IPv6Address(lb) for lb in LBS6}
    for lb, count in shares.items():
        assert 100 <= count <= 200, (lb, shares)  # 150 each expected


def test_every_address_word_weighs_in_the_score() -> None:
    """Two LBs that differ in one word only get different scores: the four words are hashed
    (an IPv4-style score over one word would tie them)."""
    flow = Flow.of(CLIENT6, VIP6, PROTO_TCP, 1, 2)
    for word in range(4):
        other = bytearray(IPv6Address(LBS6[0]).packed)
        other[word * 4] ^= 0x40
        first, second = lb_scores(flow, [LBS6[0], IPv6Address(bytes(other))])
        assert first != second, word


def test_removing_an_lb_moves_only_its_flows(router: Router) -> None:
    flows = random_flows(400, seed=12)
    before = [chosen_lb(router, frame_of(flow)) for flow in flows]
    dead = IPv6Address(LBS6[2])
    router.set_lb_targets(targets([lb for lb in LBS6 if IPv6Address(lb) != dead]))
    after = [chosen_lb(router, frame_of(flow)) for flow in flows]
    for old, new in zip(before, after, strict=True):
        assert new != dead and (old == dead or new == old)
    assert len({new for old, new in zip(before, after, strict=True) if old == dead}) == 3


def test_the_choice_does_not_depend_on_the_order_and_swaps_whole(router: Router) -> None:
    flows = random_flows(200, seed=13)
    before = [chosen_lb(router, frame_of(flow)) for flow in flows]
    router.set_lb_targets(targets(list(reversed(LBS6))))
    assert [chosen_lb(router, frame_of(flow)) for flow in flows] == before
    many = [f"2001:2:0:3::{n:x}:{n:x}" for n in range(1, MAX_LBS + 1)]
    frame = frame_of(flows[0])
    for size in (1, MAX_LBS, 2):
        router.set_lb_targets(targets(many[:size]))
        assert chosen_lb(router, frame) == choose_lb(flows[0], many[:size])


def test_per_lb_counters_are_keyed_by_the_ipv6_address(router: Router) -> None:
    before = router.lb_counters()
    flows = random_flows(60, seed=14)
    chosen = Counter(chosen_lb(router, frame_of(flow)) for flow in flows)
    after = router.lb_counters()
    for lb in LBS6:
        sent = after[lb]["packets"] - before.get(lb, {"packets": 0})["packets"]
        assert sent == chosen[IPv6Address(lb)], lb


# -- what is refused -------------------------------------------------------------------------


def test_an_lb_of_the_other_family_is_refused_and_the_set_kept(router: Router) -> None:
    with pytest.raises(ValueError, match=r"LB 198\.18\.0\.11: .* 2001:2:0:3::1 is IPv6"):
        router.set_lb_targets(
            [*targets(LBS6[:1]), LbTarget(ip_address("198.18.0.11"), targets(LBS6[:1])[0].next_hop)]
        )
    with pytest.raises(ValueError, match=r"LB 198\.18\.0\.11: .* IPv6"):
        router.set_lbs(["198.18.0.11"])
    assert router.lbs == tuple(targets(LBS6))


def test_mapped_addresses_and_mixed_sets_are_refused() -> None:
    with pytest.raises(ValueError, match=r"source ::ffff:198\.18\.0\.1: an IPv4-mapped"):
        Router.load(source="::ffff:198.18.0.1")
    with pytest.raises(ValueError, match="one set holds one address family"):
        choose_lb(Flow.of(CLIENT, VIP, PROTO_TCP, 1, 2), ["198.18.0.11", LBS6[0]])


# -- pins ------------------------------------------------------------------------------------


def test_a_pinned_ipv6_router_is_adopted_whole(bpffs_dir: Path) -> None:
    with Router.load(source=SOURCE6, vips=VIPS, outer_ttl=9) as router:
        router.set_lb_targets(targets(LBS6[:3], mtu=1544))
        router.pin(bpffs_dir / "router6")
        with Router.from_pinned(bpffs_dir / "router6") as adopted:
            assert adopted.lbs == tuple(targets(LBS6[:3], mtu=1544))
            assert (adopted.source, adopted.outer_ttl) == (IPv6Address(SOURCE6), 9)
            adopted.set_lb_targets(targets(LBS6[3:]))
            frame = frame_of(Flow.of(CLIENT6, VIP6, PROTO_TCP, 7, 7))
            assert chosen_lb(router, frame) == IPv6Address(LBS6[3])
