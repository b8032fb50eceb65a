"""Sections 2b and 2a of docs/packet-path.md, the outer header: IPv6 handed to the host, then
IPv4 checked, addressed to this node, and cut at its total length (Ethernet padding)."""

from __future__ import annotations

from rusty_rail.model.state import Stat, Verdict
from rusty_rail.wire.build import gre, ipv4, ipv6, tcp, udp
from rusty_rail.wire.constants import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
)
from rusty_rail.wire.frames import LB_IPV4, ROUTER_IPV4, Outer, encapsulate, inner_ipv4
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

_V6_GRE = ipv6("2001:2::1", "2001:2::2", PROTO_GRE, GRE_WEB)
kept(
    "ipv6-gre",
    "GRE over IPv6 is not balanced yet",
    _frame(_V6_GRE, ethertype=ETH_P_IPV6),
    Stat.PASS_UNSUPPORTED,
    Verdict.PASS,
)
kept(
    "ipv6-gre-vlan",
    "GRE over IPv6 in a VLAN",
    _frame(_V6_GRE, ethertype=ETH_P_IPV6, vlans=(7,)),
    Stat.PASS_UNSUPPORTED,
    Verdict.PASS,
)
kept(
    "ipv6-udp",
    "IPv6 UDP is for the host",
    _frame(ipv6("2001:2::1", "2001:2::2", PROTO_UDP, udp(1, 2)), ethertype=ETH_P_IPV6),
    Stat.PASS_NOT_GRE,
    Verdict.PASS,
)
kept(
    "ipv6-39-bytes",
    "an IPv6 header one byte short",
    _frame(_V6_GRE[:39], ethertype=ETH_P_IPV6),
    Stat.PASS_OUTER_MALFORMED,
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
