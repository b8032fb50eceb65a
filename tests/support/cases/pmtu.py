"""Section 8c of docs/packet-path.md, path MTU: every egress method (but GRE passthrough) of
either backend family, with inner IPv4 (DF) and IPv6, at the next hop's MTU (sent) and one byte
over it (an ICMP error to the client); IPv4 without DF, the rate limit, GRE ingress (VLAN tags,
outer IPv6), the IPv6 quote filling 1280 bytes, IPv4 options in the quote, GRE passthrough that
changes the outer family (checked) and GRE passthrough that keeps it (never checked). Expected
frames are built with wire.build and wire.tunnels from the fields the spec names."""

from __future__ import annotations

from dataclasses import replace

from rusty_rail.model.flowhash import Flow, flow_hash
from rusty_rail.model.pmtu import TooBig
from rusty_rail.model.state import BackendEntry, CtEntry, Egress, Stat, Verdict
from rusty_rail.wire.build import ethernet, gre, icmp, icmp6, ipv4, ipv6, l4_for
from rusty_rail.wire.constants import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
)
from rusty_rail.wire.fields import VlanTag, ipv6_address
from rusty_rail.wire.frames import (
    LB_IPV4,
    LB_IPV6,
    LB_MAC,
    OUTER_IPV6,
    ROUTER_MAC,
    encapsulate,
    inner_ipv6,
)
from rusty_rail.wire.tunnels import geneve, inner_tos, ipip, outer_ip, tunnel_sport, vxlan
from tests.support.cases._base import (
    _STANDARD,
    DNS_FLOW,
    DNS_PORT_VIP,
    WEB6_FLOW,
    WEB_FLOW,
    WEB_PORT_VIP,
    PacketCase,
    Section,
    StateBuilder,
    table_pick,
    variant,
)

SECTION = Section()

ROUTED = {"routed_ingress": True}
BACKEND6 = ipv6_address("2001:2:0:10::1")
VNI = 0x1234
#: What each method adds in front of the inner packet, to an IPv4 / IPv6 backend (section 8b).
OVERHEAD = {
    Egress.IPIP: (20, 40),
    Egress.VXLAN: (50, 70),
    Egress.GENEVE: (50, 70),
    Egress.GRE: (24, 44),
    Egress.ROUTE: (0, 0),
}


def inner4(
    flow: Flow, payload_len: int, *, dont_fragment: bool = True, options: bytes = b""
) -> bytes:
    """An inner IPv4 packet of ``flow``, DF set unless told otherwise."""
    payload = l4_for(flow, bytes(range(256)) * (payload_len // 256) + bytes(payload_len % 256))
    return ipv4(flow.src, flow.dst, flow.proto, payload, ident=0x1234,
                dont_fragment=dont_fragment, options=options)  # fmt: skip


def inner6(flow: Flow, payload_len: int) -> bytes:
    return inner_ipv6(flow, bytes(range(256)) * (payload_len // 256) + bytes(payload_len % 256))


def _plain(packet: bytes) -> bytes:
    """A routed packet: the packet itself in an Ethernet frame from the router."""
    return ethernet(LB_MAC, ROUTER_MAC, ETH_P_IPV6 if packet[0] >> 4 == 6 else ETH_P_IPV4, packet)


def _state(
    flow: Flow, vip_index: int, egress: Egress, mtu: int, *, ipv6_backend: bool = False,
    settings: dict[str, object] | None = None,
) -> tuple[StateBuilder, int, BackendEntry]:  # fmt: skip
    """The standard state, the picked backend of ``flow`` with ``egress`` and a next hop of
    ``mtu``; the builder, the backend index and its entry."""
    index = table_pick(_STANDARD, vip_index, flow)
    entry = _STANDARD.backends[index]
    assert entry.next_hop is not None
    entry = replace(entry, egress=egress, next_hop=replace(entry.next_hop, mtu=mtu),
                    vni=VNI if egress in (Egress.VXLAN, Egress.GENEVE) else 0,
                    addr=BACKEND6 if ipv6_backend else entry.addr)  # fmt: skip
    builder = variant(settings=ROUTED if settings is None else settings, backends={index: entry})
    return builder, index, entry


def _sent(egress: Egress, inner: bytes, backend: BackendEntry, flow: Flow) -> bytes:
    """What section 8b sends ``backend`` (its Ethernet header included)."""
    assert backend.next_hop is not None
    to_ipv6 = len(backend.addr) == 16
    src = LB_IPV6 if to_ipv6 else LB_IPV4
    inner_type = ETH_P_IPV6 if inner[0] >> 4 == 6 else ETH_P_IPV4
    sport = tunnel_sport(flow_hash(flow, _STANDARD.settings.hash_seed))
    if egress == Egress.ROUTE:
        ethertype, packet = inner_type, inner
    else:
        ethertype = ETH_P_IPV6 if to_ipv6 else ETH_P_IPV4
        if egress == Egress.IPIP:
            packet = ipip(inner, src=src, dst=backend.addr)
        elif egress == Egress.VXLAN:
            packet = vxlan(inner, vni=VNI, src=src, dst=backend.addr, sport=sport)
        elif egress == Egress.GENEVE:
            packet = geneve(inner, vni=VNI, src=src, dst=backend.addr, sport=sport)
        else:
            packet = outer_ip(PROTO_GRE, gre(inner_type, inner), src=src, dst=backend.addr,
                              ttl=64, tos=inner_tos(inner))  # fmt: skip
    return ethernet(backend.next_hop.dst_mac, backend.next_hop.src_mac, ethertype, packet)


def icmp_error(
    flow: Flow, inner: bytes, client_mtu: int, *, vlans: tuple[VlanTag | int, ...] = ()
) -> bytes:
    """Section 8c's ICMP error about ``inner`` to the client, from the VIP, to the router."""
    if not flow.is_ipv6:
        quote = inner[: min(len(inner), (inner[0] & 0x0F) * 4 + 8) & ~3]
        message = icmp(3, 4, quote, rest=client_mtu)
        packet = ipv4(flow.dst, flow.src, PROTO_ICMP, message, tos=0xC0, dont_fragment=True)
        return ethernet(ROUTER_MAC, LB_MAC, ETH_P_IPV4, packet, vlans=vlans)
    quote = inner[: min(len(inner), 1232) & ~3]
    message = icmp6(2, 0, quote, src=flow.dst, dst=flow.src, rest=client_mtu)
    packet = ipv6(flow.dst, flow.src, PROTO_ICMPV6, message)
    return ethernet(ROUTER_MAC, LB_MAC, ETH_P_IPV6, packet, vlans=vlans)


def too_big(
    name: str, description: str, frame: bytes, flow: Flow, inner: bytes, egress: Egress,
    mtu: int, reason: TooBig, *, vip_index: int = WEB_PORT_VIP, ipv6_backend: bool = False,
    settings: dict[str, object] | None = None, vlans: tuple[VlanTag | int, ...] = (),
    buckets: tuple[tuple[int, int], ...] = (),
) -> PacketCase:  # fmt: skip
    """A case one byte or more over the MTU: the ICMP error (TX), or dropped unchanged. The flow
    is recorded either way."""
    state, index, entry = _state(flow, vip_index, egress, mtu, ipv6_backend=ipv6_backend,
                                 settings=settings)  # fmt: skip
    overhead = OVERHEAD[egress][1 if ipv6_backend else 0]
    answered = reason == TooBig.ICMP
    case = PacketCase(
        name, description, frame,
        {TooBig.ICMP: Stat.TOO_BIG_ICMP, TooBig.LIMITED: Stat.TOO_BIG_LIMITED,
         TooBig.NO_DF: Stat.TOO_BIG_NO_DF}[reason],
        Verdict.TX if answered else Verdict.DROP, state,
        expected_frame=icmp_error(flow, inner, mtu - overhead, vlans=vlans) if answered else None,
        flow=flow, conntrack_after=CtEntry(index, entry.generation),
        too_big=(vip_index, reason), buckets=buckets,
    )  # fmt: skip
    SECTION.cases.append(case)
    return case


def fits(name: str, description: str, flow: Flow, inner: bytes, egress: Egress, mtu: int,
         *, ipv6_backend: bool = False) -> PacketCase:  # fmt: skip
    """A routed case at the MTU: sent as section 8b says."""
    state, index, entry = _state(flow, WEB_PORT_VIP, egress, mtu, ipv6_backend=ipv6_backend)
    case = PacketCase(
        name, description, _plain(inner), Stat.CT_MISS, Verdict.TX, state,
        expected_frame=_sent(egress, inner, entry, flow), vip_index=WEB_PORT_VIP,
        backend_index=index, flow=flow, conntrack_after=CtEntry(index, entry.generation),
    )  # fmt: skip
    SECTION.cases.append(case)
    return case


# At the boundary: every method, backend family and inner family. The inner IPv4 packet is 100
# bytes (DF set), the inner IPv6 one 81 (an odd length: its quote is rounded down to 80).
WEB4 = inner4(WEB_FLOW, 60)
WEB6 = inner6(WEB6_FLOW, 21)
for _egress, (_over4, _over6) in OVERHEAD.items():
    for _backend6 in (False, True) if _egress != Egress.ROUTE else (False,):
        for _flow, _inner in ((WEB_FLOW, WEB4), (WEB6_FLOW, WEB6)):
            _overhead = _over6 if _backend6 else _over4
            _mtu = len(_inner) + _overhead
            _what = (f"{_egress.name.lower()}-{6 if _flow.is_ipv6 else 4}in"
                     f"{6 if _backend6 else 4}")  # fmt: skip
            fits(f"pmtu-{_what}-at-the-mtu",
                 f"routed, {_what}: {len(_inner)} + {_overhead} bytes = the MTU {_mtu}: sent",
                 _flow, _inner, _egress, _mtu, ipv6_backend=_backend6)  # fmt: skip
            too_big(f"pmtu-{_what}-one-byte-over",
                    f"routed, {_what}: MTU {_mtu - 1}, one byte short: the client is told "
                    f"{len(_inner) - 1}", _plain(_inner), _flow, _inner, _egress, _mtu - 1,
                    TooBig.ICMP, ipv6_backend=_backend6)  # fmt: skip

WEB4_NO_DF = inner4(WEB_FLOW, 60, dont_fragment=False)
too_big(
    "pmtu-ipv4-without-df-dropped",
    "inner IPv4 without DF, too big: dropped and counted, no ICMP (the balancer never fragments)",
    _plain(WEB4_NO_DF), WEB_FLOW, WEB4_NO_DF, Egress.IPIP, 100, TooBig.NO_DF,
)  # fmt: skip
too_big(
    "pmtu-bucket-empty-dropped",
    "too big, DF set, the VIP's bucket on this CPU empty: dropped, counted LIMITED",
    _plain(WEB4), WEB_FLOW, WEB4, Egress.VXLAN, 140, TooBig.LIMITED, buckets=((WEB_PORT_VIP, 0),),
)  # fmt: skip
too_big(
    "pmtu-bucket-last-token-answers",
    "too big, the VIP's bucket holds its last token: answered",
    _plain(WEB6), WEB6_FLOW, WEB6, Egress.GENEVE, 120, TooBig.ICMP,
    buckets=((WEB_PORT_VIP, 1),),
)  # fmt: skip
too_big(
    "pmtu-another-vip-bucket-empty-answers",
    "too big, another VIP's bucket empty: this VIP's is full, answered",
    _plain(WEB4), WEB_FLOW, WEB4, Egress.IPIP, 100, TooBig.ICMP, buckets=((DNS_PORT_VIP, 0),),
)  # fmt: skip
DNS4 = inner4(DNS_FLOW, 200)
too_big(
    "pmtu-icmp-leaves-by-the-ingress",
    "the DNS VIP's backend is behind another port (REDIRECT), but the ICMP error goes back out of"
    " the ingress (TX), counted for the DNS VIP",
    _plain(DNS4), DNS_FLOW, DNS4, Egress.IPIP, 200, TooBig.ICMP, vip_index=DNS_PORT_VIP,
)  # fmt: skip
WEB6_LONG = inner6(WEB6_FLOW, 1400)
too_big(
    "pmtu-ipv6-quote-fills-1280",
    "a 1460-byte inner IPv6 packet, 6in6 over a 1340-byte link: the ICMPv6 error quotes 1232"
    " bytes (1280 in all) and says 1300",
    _plain(WEB6_LONG), WEB6_FLOW, WEB6_LONG, Egress.IPIP, 1340, TooBig.ICMP, ipv6_backend=True,
)  # fmt: skip
WEB4_OPTIONS = inner4(WEB_FLOW, 60, options=bytes([1] * 8))
too_big(
    "pmtu-ipv4-options-quoted",
    "inner IPv4 with 8 bytes of options (IHL 7): the quote is its 28-byte header and 8 bytes",
    _plain(WEB4_OPTIONS), WEB_FLOW, WEB4_OPTIONS, Egress.IPIP, 100, TooBig.ICMP,
)  # fmt: skip

# GRE ingress: the outer IP and GRE headers go; the error goes back to the router plain.
too_big(
    "pmtu-gre-ingress-vlan",
    "GRE ingress behind a VLAN tag, VXLAN egress, too big: the ICMP error to the router's MAC"
    " with the same tag, no GRE",
    ethernet(LB_MAC, ROUTER_MAC, ETH_P_IPV4, encapsulate(WEB4)[14:], vlans=[7]),
    WEB_FLOW, WEB4, Egress.VXLAN, 149, TooBig.ICMP, settings={}, vlans=(7,),
)  # fmt: skip
too_big(
    "pmtu-gre-ingress-outer6-inner6",
    "GRE over IPv6 ingress, inner IPv6, 6in6 egress, too big: an ICMPv6 error (the outer 40 + 4"
    " bytes removed, 48 put in front)",
    encapsulate(WEB6, replace(OUTER_IPV6, gre_protocol=ETH_P_IPV6)), WEB6_FLOW, WEB6,
    Egress.IPIP, 120, TooBig.ICMP, settings={}, ipv6_backend=True,
)  # fmt: skip

# GRE passthrough that changes the outer family is checked: the new outer header and the GRE
# header as it came (4 bytes here) go in front of the inner packet, so 44 to an IPv6 backend and
# 24 to an IPv4 one, which is OVERHEAD[Egress.GRE] by coincidence of the 4-byte GRE header.
too_big(
    "pmtu-gre-passthrough-4to6-one-byte-over",
    "GRE over IPv4 passed through to an IPv6 backend (the outer header grows by 20 bytes), the"
    " MTU one byte short of inner + 40 + 4: the client is told the MTU less 44",
    encapsulate(WEB4), WEB_FLOW, WEB4, Egress.GRE, len(WEB4) + 44 - 1, TooBig.ICMP,
    settings={}, ipv6_backend=True,
)  # fmt: skip
too_big(
    "pmtu-gre-passthrough-6to4-one-byte-over",
    "GRE over IPv6 passed through to an IPv4 backend, the MTU one byte short of inner + 20 + 4:"
    " too big as well (the rebuilt header is checked whichever way the family changes)",
    encapsulate(WEB6, replace(OUTER_IPV6, gre_protocol=ETH_P_IPV6)), WEB6_FLOW, WEB6,
    Egress.GRE, len(WEB6) + 24 - 1, TooBig.ICMP, settings={},
)  # fmt: skip
_PICK = table_pick(_STANDARD, WEB_PORT_VIP, WEB_FLOW)
_PICKED = _STANDARD.backends[_PICK]
assert _PICKED.next_hop is not None


def _picked_with(mtu: int, addr: bytes | None = None) -> StateBuilder:
    """The standard state, the web flow's backend with a next hop of ``mtu`` (and ``addr``)."""
    assert _PICKED.next_hop is not None
    entry = replace(_PICKED, next_hop=replace(_PICKED.next_hop, mtu=mtu))
    return variant(backends={_PICK: entry if addr is None else replace(entry, addr=addr)})


SECTION.forwarded(
    "pmtu-gre-passthrough-4to6-at-the-mtu",
    "GRE over IPv4 passed through to an IPv6 backend whose MTU is exactly inner + 40 + 4: sent",
    WEB_FLOW, WEB_PORT_VIP, inner=WEB4, state=_picked_with(len(WEB4) + 44, BACKEND6),
)  # fmt: skip
# GRE passthrough that keeps the family is not checked (section 8c): a tiny MTU changes nothing.
SECTION.forwarded(
    "pmtu-gre-passthrough-unchecked",
    "GRE ingress and the gre method (passthrough) with a 68-byte MTU: sent as always",
    WEB_FLOW, WEB_PORT_VIP, state=_picked_with(68),
)  # fmt: skip

CASES = SECTION.cases
