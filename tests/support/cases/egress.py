"""Sections 2c and 8b of docs/packet-path.md: routed ingress (only packets to a configured VIP
are taken; everything else passes as it would have) and the egress methods (GRE for routed
packets, IPIP, VXLAN, GENEVE, route). Expected frames are built with wire.build and
wire.tunnels from the fields the spec names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from rusty_rail.model.flowhash import Flow, flow_hash
from rusty_rail.model.state import BackendEntry, CtEntry, Egress, Stat, Verdict
from rusty_rail.wire.build import ethernet, gre, ipv4, tcp
from rusty_rail.wire.constants import ETH_P_IPV4, ETH_P_IPV6, ETH_P_TEB, PROTO_GRE, PROTO_TCP
from rusty_rail.wire.fields import ipv6_address
from rusty_rail.wire.frames import LB_IPV4, LB_IPV6, LB_MAC, ROUTER_MAC, inner_ipv4, inner_ipv6
from rusty_rail.wire.tunnels import geneve, ipip, tunnel_sport, vxlan
from tests.support.cases._base import (
    _STANDARD,
    CLIENT,
    DEFAULT_VIP_INDEX,
    NO_VIP_FLOW,
    VIP_WEB,
    WEB6_FLOW,
    WEB_ADDRESS_VIP,
    WEB_FLOW,
    WEB_FRAME,
    WEB_PORT_VIP,
    PacketCase,
    Section,
    StateBuilder,
    standard_state,
    table_pick,
    variant,
)

SECTION = Section()
kept = SECTION.kept

ROUTED = {"routed_ingress": True}
BACKEND6 = ipv6_address("2001:2:0:10::1")


def _plain(packet: bytes, *, pad_to: int = 0, vlans: tuple[int, ...] = ()) -> bytes:
    """A routed packet as the router sends it: the packet itself in an Ethernet frame."""
    ethertype = ETH_P_IPV6 if packet[0] >> 4 == 6 else ETH_P_IPV4
    return ethernet(LB_MAC, ROUTER_MAC, ethertype, packet, vlans=vlans, pad_to=pad_to)


def _state(
    flow: Flow, vip_index: int, egress: Egress, *, vni: int = 0, ipv6: bool = False,
    settings: dict[str, object] | None = None,
) -> tuple[StateBuilder, int, BackendEntry]:  # fmt: skip
    """A standard state whose picked backend for ``flow`` has ``egress`` (and an IPv6 address
    with ``ipv6``); returns the builder, the backend index and its entry."""
    index = table_pick(_STANDARD, vip_index, flow)
    entry = replace(_STANDARD.backends[index], egress=egress, vni=vni)
    if ipv6:
        entry = replace(entry, addr=BACKEND6)
    return variant(settings=settings or ROUTED, backends={index: entry}), index, entry


def encapsulated(
    name: str,
    description: str,
    frame: bytes,
    flow: Flow,
    vip_index: int,
    egress: Egress,
    build: Callable[[BackendEntry, int], tuple[int, bytes]],
    *,
    vni: int = 0,
    ipv6: bool = False,
    settings: dict[str, object] | None = None,
    tail: bytes = b"",
    vlans: tuple[int, ...] = (),
) -> PacketCase:
    """A forwarded case: ``build(backend, flow hash)`` gives the EtherType and the packet that
    follows the readdressed Ethernet header (and VLAN tags); ``tail`` comes after it."""
    state, index, entry = _state(flow, vip_index, egress, vni=vni, ipv6=ipv6, settings=settings)
    assert entry.next_hop is not None
    ethertype, packet = build(entry, flow_hash(flow, standard_state().settings.hash_seed))
    expected = ethernet(entry.next_hop.dst_mac, entry.next_hop.src_mac, ethertype, packet,
                        vlans=vlans) + tail  # fmt: skip
    case = PacketCase(
        name, description, frame, Stat.CT_MISS, Verdict.TX, state,
        expected_frame=expected, vip_index=vip_index, backend_index=index, flow=flow,
        conntrack_after=CtEntry(index, entry.generation),
    )  # fmt: skip
    SECTION.cases.append(case)
    return case


WEB_INNER = inner_ipv4(WEB_FLOW)
WEB6_INNER = inner_ipv6(WEB6_FLOW)

# 2c + 8b: routed ingress, each egress method.
encapsulated(
    "routed-ipip-4in4",
    "a plain packet to the port VIP, routed ingress on: taken, sent in IPIP to an IPv4 backend",
    _plain(WEB_INNER), WEB_FLOW, WEB_PORT_VIP, Egress.IPIP,
    lambda b, h: (ETH_P_IPV4, ipip(WEB_INNER, src=LB_IPV4, dst=b.addr)),
)  # fmt: skip
encapsulated(
    "routed-ipip-6in6",
    "a plain IPv6 packet to the IPv6 port VIP: 6in6 to an IPv6 backend",
    _plain(WEB6_INNER), WEB6_FLOW, WEB_PORT_VIP, Egress.IPIP,
    lambda b, h: (ETH_P_IPV6, ipip(WEB6_INNER, src=LB_IPV6, dst=b.addr)),
    ipv6=True,
)  # fmt: skip
encapsulated(
    "routed-ipip-4in6",
    "a plain IPv4 packet, an IPv6 backend: 4in6 (next header 4)",
    _plain(WEB_INNER), WEB_FLOW, WEB_PORT_VIP, Egress.IPIP,
    lambda b, h: (ETH_P_IPV6, ipip(WEB_INNER, src=LB_IPV6, dst=b.addr)),
    ipv6=True,
)  # fmt: skip
encapsulated(
    "routed-vxlan-6in4",
    "a plain IPv6 packet, an IPv4 backend, VXLAN: the source port from the flow hash, VNI 77",
    _plain(WEB6_INNER), WEB6_FLOW, WEB_PORT_VIP, Egress.VXLAN,
    lambda b, h: (ETH_P_IPV4, vxlan(WEB6_INNER, vni=77, src=LB_IPV4, dst=b.addr,
                                    sport=tunnel_sport(h))),
    vni=77,
)  # fmt: skip
encapsulated(
    "routed-geneve-4in6",
    "a plain IPv4 packet, an IPv6 backend, GENEVE (protocol 0x6558, no options), VNI 0xABCDEF",
    _plain(WEB_INNER), WEB_FLOW, WEB_PORT_VIP, Egress.GENEVE,
    lambda b, h: (ETH_P_IPV6, geneve(WEB_INNER, vni=0xABCDEF, src=LB_IPV6, dst=b.addr,
                                     sport=tunnel_sport(h))),
    vni=0xABCDEF, ipv6=True,
)  # fmt: skip
encapsulated(
    "routed-gre-fresh-header",
    "a plain packet with the gre method: a new outer IPv4 header and a 4-byte GRE header",
    _plain(WEB_INNER), WEB_FLOW, WEB_PORT_VIP, Egress.GRE,
    lambda b, h: (ETH_P_IPV4, ipv4(LB_IPV4, b.addr, PROTO_GRE, gre(ETH_P_IPV4, WEB_INNER),
                                   dont_fragment=True)),
)  # fmt: skip
encapsulated(
    "routed-route",
    "a plain packet with route: only the Ethernet addresses change, Ethernet padding kept",
    _plain(WEB_INNER, pad_to=80), WEB_FLOW, WEB_PORT_VIP, Egress.ROUTE,
    lambda b, h: (ETH_P_IPV4, WEB_INNER),
    tail=bytes(80 - 14 - len(WEB_INNER)),
)  # fmt: skip
GRE_TO_VIP = ipv4(CLIENT, VIP_WEB, PROTO_GRE, gre(ETH_P_TEB, b"\x00" * 20))
GRE_TO_VIP_FLOW = Flow.of(CLIENT, VIP_WEB, PROTO_GRE)
encapsulated(
    "routed-gre-to-a-vip-address",
    "GRE to a VIP address (not to this node) is a routed 3-tuple flow of the address VIP",
    _plain(GRE_TO_VIP), GRE_TO_VIP_FLOW, WEB_ADDRESS_VIP, Egress.IPIP,
    lambda b, h: (ETH_P_IPV4, ipip(GRE_TO_VIP, src=LB_IPV4, dst=b.addr)),
)  # fmt: skip

# 8b for GRE that came in: the outer header and GRE are replaced.
encapsulated(
    "gre-in-geneve-out",
    "GRE ingress, GENEVE egress: outer IPv4 and GRE removed, GENEVE pushed",
    WEB_FRAME, WEB_FLOW, WEB_PORT_VIP, Egress.GENEVE,
    lambda b, h: (ETH_P_IPV4, geneve(WEB_INNER, vni=5, src=LB_IPV4, dst=b.addr,
                                     sport=tunnel_sport(h))),
    vni=5, settings={},
)  # fmt: skip
encapsulated(
    "gre-in-route-out-vlan",
    "GRE ingress behind a VLAN tag, route egress: the inner packet after the same tag",
    ethernet(LB_MAC, ROUTER_MAC, ETH_P_IPV4, WEB_FRAME[14:], vlans=[7]),
    WEB_FLOW, WEB_PORT_VIP, Egress.ROUTE,
    lambda b, h: (ETH_P_IPV4, WEB_INNER),
    settings={}, vlans=(7,),
)  # fmt: skip

# 2c: what routed ingress does not take.
PLAIN_WEB = _plain(WEB_INNER)
kept(
    "routed-off-passes",
    "routed ingress off: a plain packet to a VIP passes as before",
    PLAIN_WEB, Stat.PASS_NOT_GRE, Verdict.PASS,
)  # fmt: skip
kept(
    "routed-not-a-vip-passes",
    "routed ingress on: a plain packet to no VIP passes to the host",
    _plain(inner_ipv4(NO_VIP_FLOW)), Stat.PASS_NOT_GRE, Verdict.PASS,
    state=variant(settings=ROUTED),
)  # fmt: skip
kept(
    "routed-default-set-never-applies",
    "routed ingress on and a default set: a plain packet to no VIP still passes",
    _plain(inner_ipv4(NO_VIP_FLOW)), Stat.PASS_NOT_GRE, Verdict.PASS,
    state=variant(settings={**ROUTED, "default_vip": DEFAULT_VIP_INDEX}),
)  # fmt: skip
_DEFAULT_PICK = table_pick(_STANDARD, DEFAULT_VIP_INDEX, NO_VIP_FLOW)
kept(
    "routed-default-set-hit-passes",
    "routed ingress on: a plain packet to no VIP whose flow went to the default set (in GRE)"
    " before still passes: only a hit on a VIP's slot takes a routed packet",
    _plain(inner_ipv4(NO_VIP_FLOW)), Stat.PASS_NOT_GRE, Verdict.PASS,
    state=variant(
        settings={**ROUTED, "default_vip": DEFAULT_VIP_INDEX},
        conntrack={NO_VIP_FLOW: CtEntry(_DEFAULT_PICK, 1)},
    ),
    flow=NO_VIP_FLOW, conntrack_after=CtEntry(_DEFAULT_PICK, 1),
)  # fmt: skip
kept(
    "routed-ports-cut-short-passes",
    "routed ingress on: TCP to the VIP whose ports are cut short is the host's to judge",
    _plain(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(40000, 80)[:2])), Stat.PASS_NOT_GRE,
    Verdict.PASS, state=variant(settings=ROUTED),
)  # fmt: skip
kept(
    "routed-gre-to-other-node-passes",
    "routed ingress on: GRE to another address that is not a VIP passes (PASS_NOT_LOCAL)",
    _plain(ipv4(CLIENT, "198.19.0.99", PROTO_GRE, gre(ETH_P_IPV4, WEB_INNER))),
    Stat.PASS_NOT_LOCAL, Verdict.PASS, state=variant(settings=ROUTED),
)  # fmt: skip
kept(
    "gre-ingress-off",
    "GRE ingress off: GRE to this node is not balanced, PASS_UNSUPPORTED",
    WEB_FRAME, Stat.PASS_UNSUPPORTED, Verdict.PASS,
    state=variant(settings={"gre_ingress": False}),
)  # fmt: skip
kept(
    "gre-ingress-off-routed-on",
    "GRE ingress off, routed on: GRE to this node is routed traffic to no VIP and passes",
    WEB_FRAME, Stat.PASS_UNSUPPORTED, Verdict.PASS,
    state=variant(settings={"gre_ingress": False, **ROUTED}),
)  # fmt: skip

CASES = SECTION.cases
