"""Sections 2b and 2a of docs/packet-path.md, the outer header: IPv6 checked, addressed to
this node and cut at its payload length, then IPv4 checked, addressed to this node, and cut at
its total length (Ethernet padding)."""

from __future__ import annotations

from dataclasses import replace

from rusty_rail.model.state import Stat, Verdict
from rusty_rail.wire.build import gre, ipv4, ipv6, tcp, udp
from rusty_rail.wire.constants import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
)
from rusty_rail.wire.frames import (
    LB_IPV4,
    LB_IPV6,
    OUTER_IPV6,
    ROUTER_IPV4,
    ROUTER_IPV6,
    Outer,
    encapsulate,
    inner_ipv4,
)
from tests.support.cases._base import (
    CLIENT,
    GRE_WEB,
    VIP_WEB,
    WEB_ADDRESS_VIP,
    WEB_FLOW,
    WEB_FRAME,
    WEB_ICMP_FLOW,
    WEB_PORT_VIP,
    Section,
    _frame,
    _outer_ipv4,
    variant,
)

SECTION = Section()
kept, forwarded = SECTION.kept, SECTION.forwarded

# 2b. Outer IPv6

forwarded(
    "ipv6-gre",
    "GRE over IPv6 to this node's IPv6 address is balanced (to an IPv4 backend here)",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=OUTER_IPV6,
)
forwarded(
    "ipv6-gre-vlan",
    "GRE over IPv6 in a VLAN",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=replace(OUTER_IPV6, vlans=(7,)),
)
forwarded(
    "ipv6-gre-padding",
    "outer IPv6 cut at its payload length: the Ethernet padding after it is carried",
    WEB_ICMP_FLOW,
    WEB_ADDRESS_VIP,
    outer=replace(OUTER_IPV6, pad_to=200),
)
kept(
    "ipv6-gre-not-local",
    "GRE over IPv6 to another address is the host's",
    encapsulate(inner_ipv4(WEB_FLOW), replace(OUTER_IPV6, dst="2001:2::99")),
    Stat.PASS_NOT_LOCAL,
    Verdict.PASS,
)
kept(
    "ipv6-gre-no-lb-ipv6",
    "no IPv6 address configured: GRE to the address it would have had is not local",
    encapsulate(inner_ipv4(WEB_FLOW), OUTER_IPV6),
    Stat.PASS_NOT_LOCAL,
    Verdict.PASS,
    state=variant(settings={"lb_ipv6": bytes(16)}),
)
kept(
    "ipv6-gre-to-unspecified",
    "no IPv6 address configured: GRE to :: is not local either",
    encapsulate(inner_ipv4(WEB_FLOW), replace(OUTER_IPV6, dst="::")),
    Stat.PASS_NOT_LOCAL,
    Verdict.PASS,
    state=variant(settings={"lb_ipv6": bytes(16)}),
)
kept(
    "ipv6-udp",
    "IPv6 UDP is for the host",
    _frame(ipv6("2001:2::1", "2001:2::2", PROTO_UDP, udp(1, 2)), ethertype=ETH_P_IPV6),
    Stat.PASS_NOT_GRE,
    Verdict.PASS,
)
_V6_GRE = ipv6(ROUTER_IPV6, LB_IPV6, PROTO_GRE, GRE_WEB)
kept(
    "ipv6-39-bytes",
    "an IPv6 header one byte short",
    _frame(_V6_GRE[:39], ethertype=ETH_P_IPV6),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "ipv6-version-4",
    "EtherType IPv6, version 4 in the header",
    _frame(ipv6(ROUTER_IPV6, LB_IPV6, PROTO_GRE, GRE_WEB, version=4), ethertype=ETH_P_IPV6),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "ipv6-payload-beyond-frame",
    "a payload length one byte more than the frame holds",
    encapsulate(inner_ipv4(WEB_FLOW), replace(OUTER_IPV6, payload_length=len(GRE_WEB) + 1)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "ipv6-udp-payload-beyond-frame",
    "not GRE, and a payload length beyond the frame: malformed comes first, as for IPv4",
    _frame(
        ipv6(ROUTER_IPV6, LB_IPV6, PROTO_UDP, udp(1, 2), payload_length=9), ethertype=ETH_P_IPV6
    ),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "ipv6-icmp6-payload-beyond-frame",
    "ICMPv6 quoting GRE with a payload length beyond the frame: malformed, nothing learnt",
    _frame(
        ipv6(
            "2001:2::10:1",
            LB_IPV6,
            PROTO_ICMPV6,
            bytes([1]) + bytes(7) + ipv6(LB_IPV6, "2001:2::10:1", PROTO_GRE, GRE_WEB),
            payload_length=8 + 40 + len(GRE_WEB) + 9,
        ),
        ethertype=ETH_P_IPV6,
    ),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
SECTION.malformed_both_ways(
    "ipv6-payload-cuts-gre",
    "a payload length of 3 leaves no whole GRE header before the GRE end",
    encapsulate(inner_ipv4(WEB_FLOW), replace(OUTER_IPV6, payload_length=3)),
    Stat.GRE_MALFORMED,
)
SECTION.malformed_both_ways(
    "ipv6-payload-zero",
    "a payload length of 0 is taken as it reads: no GRE header",
    encapsulate(inner_ipv4(WEB_FLOW), replace(OUTER_IPV6, payload_length=0)),
    Stat.GRE_MALFORMED,
)
SECTION.malformed_both_ways(
    "ipv6-payload-cuts-inner",
    "the payload length ends inside the inner IPv4 header",
    encapsulate(inner_ipv4(WEB_FLOW), replace(OUTER_IPV6, payload_length=4 + 19)),
    Stat.INNER_MALFORMED,
)
for _name, _header in (("hop-by-hop", 0), ("routing", 43), ("fragment", 44), ("dest-opts", 60)):
    kept(
        f"ipv6-{_name}-then-gre",
        f"GRE behind an outer {_name} header: extension headers are not walked, not GRE",
        _frame(
            ipv6(ROUTER_IPV6, LB_IPV6, _header, bytes([PROTO_GRE, 0]) + bytes(6) + GRE_WEB),
            ethertype=ETH_P_IPV6,
        ),
        Stat.PASS_NOT_GRE,
        Verdict.PASS,
    )

# 2a. Outer IPv4

kept(
    "outer-19-bytes",
    "an IPv4 header one byte short",
    WEB_FRAME[: 14 + 19],
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-version-6",
    "version 6 behind EtherType IPv4",
    _frame(_outer_ipv4(GRE_WEB, version=6)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-ihl-4",
    "IHL below 5",
    _frame(_outer_ipv4(GRE_WEB, ihl=4)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-ihl-beyond-frame",
    "IHL 15 (60 bytes) in a 44-byte packet",
    _frame(_outer_ipv4(gre(ETH_P_IPV4, bytes(20)), ihl=15)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-total-length-below-header",
    "total length 19",
    _frame(_outer_ipv4(GRE_WEB, total_length=19)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-total-length-below-ihl",
    "total length 20 with a 24-byte header",
    _frame(_outer_ipv4(GRE_WEB, options=b"\x01" * 4, total_length=20)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-total-length-beyond-frame",
    "total length one byte more than the frame holds",
    _frame(_outer_ipv4(GRE_WEB, total_length=20 + len(GRE_WEB) + 1)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-malformed-before-not-gre",
    "malformed wins over not-GRE",
    _frame(_outer_ipv4(udp(1, 2), proto=PROTO_UDP, ihl=4)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-udp",
    "UDP to the LB is for the host",
    _frame(_outer_ipv4(udp(5000, 53), proto=PROTO_UDP)),
    Stat.PASS_NOT_GRE,
    Verdict.PASS,
)
kept(
    "outer-tcp-ssh",
    "the LB's own SSH",
    _frame(_outer_ipv4(tcp(50000, 22, src=ROUTER_IPV4, dst=LB_IPV4), proto=PROTO_TCP)),
    Stat.PASS_NOT_GRE,
    Verdict.PASS,
)
kept(
    "outer-not-gre-before-not-local",
    "not-GRE wins over not-local",
    _frame(_outer_ipv4(udp(1, 2), proto=PROTO_UDP, dst="198.18.0.3")),
    Stat.PASS_NOT_GRE,
    Verdict.PASS,
)
kept(
    "outer-not-local",
    "GRE to another address",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(dst="198.18.0.3")),
    Stat.PASS_NOT_LOCAL,
    Verdict.PASS,
)
kept(
    "outer-not-local-before-fragment",
    "not-local wins over fragment",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(dst="198.18.0.3", more_fragments=True)),
    Stat.PASS_NOT_LOCAL,
    Verdict.PASS,
)
kept(
    "outer-more-fragments",
    "first fragment of an outer datagram",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(more_fragments=True, dont_fragment=False)),
    Stat.PASS_OUTER_FRAGMENT,
    Verdict.PASS,
)
kept(
    "outer-fragment-offset",
    "last fragment of an outer datagram",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(frag_offset=185, dont_fragment=False)),
    Stat.PASS_OUTER_FRAGMENT,
    Verdict.PASS,
)
kept(
    "outer-fragment-offset-max",
    "offset 8191, no flags",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(frag_offset=0x1FFF, dont_fragment=False)),
    Stat.PASS_OUTER_FRAGMENT,
    Verdict.PASS,
)
forwarded(
    "outer-dont-fragment-clear",
    "DF clear is not a fragment",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(dont_fragment=False),
)
forwarded(
    "outer-reserved-flag",
    "the reserved flag is not a fragment flag",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(reserved_flag=True),
)
forwarded(
    "outer-options-4",
    "4 bytes of outer options, carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(options=b"\x94\x04\x00\x00"),  # router alert
)
forwarded(
    "outer-options-40",
    "40 bytes of outer options (IHL 15), carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(options=b"\x01" * 39 + b"\x00"),
)
forwarded(
    "outer-ttl-set",
    "the outer TTL is set to the configured value, not decremented",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(ttl=1),
    state=variant(settings={"outer_ttl": 17}),
)
forwarded(
    "eth-padding-zeros",
    "Ethernet padding after the IP packet is carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(pad_to=200),
)
forwarded(
    "eth-padding-garbage",
    "non-zero bytes after the IP packet are carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    trailer=b"\xde\xad\xbe\xef\x01",
)
forwarded(
    "eth-padding-short-frame",
    "a frame padded to the 60-byte minimum",
    WEB_ICMP_FLOW,
    WEB_ADDRESS_VIP,
    inner=ipv4(CLIENT, VIP_WEB, PROTO_ICMP, b""),
    outer=Outer(pad_to=60),
)

CASES = SECTION.cases
