"""Sections 4 and 4b of docs/packet-path.md, the inner IPv4 and IPv6 packets: their headers
(IPv6's extension headers), their protocol and ports, and fragments."""

from __future__ import annotations

from dataclasses import replace

from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import Stat, Verdict
from rusty_rail.wire.build import (
    ipv4,
    ipv4_fragments,
    ipv6,
    ipv6_chain,
    ipv6_fragment_header,
    ipv6_option_header,
    tcp,
    udp,
)
from rusty_rail.wire.constants import (
    IPV6_EXT_DEST_OPTIONS,
    IPV6_EXT_FRAGMENT,
    IPV6_EXT_HOP_BY_HOP,
    IPV6_EXT_ROUTING,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
)
from rusty_rail.wire.frames import OUTER_INNER_IPV6, Outer, encapsulate, inner_ipv4, inner_ipv6
from tests.support.cases._base import (
    CLIENT,
    CLIENT6,
    NO_VIP6_FLOW,
    NOT_A_VIP,
    VIP6_WEB,
    VIP_DNS,
    VIP_WEB,
    WEB6_FLOW,
    WEB6_OTHER_PORT_FLOW,
    WEB6_UDP_FLOW,
    WEB_ADDRESS_VIP,
    WEB_FLOW,
    WEB_ICMP_FLOW,
    WEB_PORT_VIP,
    WEB_UDP_FLOW,
    Section,
)

SECTION = Section()
kept, forwarded = SECTION.kept, SECTION.forwarded
_malformed_both_ways = SECTION.malformed_both_ways

# 4. Inner IPv4

_INNER_WEB = inner_ipv4(WEB_FLOW)
_malformed_both_ways(
    "inner-19-bytes",
    "19 bytes after the GRE header",
    encapsulate(_INNER_WEB[:19]),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner-0-bytes", "nothing after the GRE header", encapsulate(b""), Stat.INNER_MALFORMED
)
_malformed_both_ways(
    "inner-version-6",
    "an IPv6 packet labelled 0x0800",
    encapsulate(ipv6("2001:2::1", "2001:2::2", PROTO_TCP, tcp(1, 80))),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner-ihl-4",
    "inner IHL below 5",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(1, 80), ihl=4)),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner-total-length-below-header",
    "inner total length 24 with a 28-byte header",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(1, 80), options=bytes(8), total_length=24)),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner-total-length-beyond-gre-end",
    "inner total length one more than the GRE packet holds",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(1, 80), total_length=41)),
    Stat.INNER_MALFORMED,
)
kept(
    "inner-checked-against-gre-end",
    "the inner packet runs into Ethernet padding: bounds are the GRE end, not the frame end",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(1, 80), total_length=44), Outer(pad_to=200)),
    Stat.INNER_MALFORMED,
    Verdict.DROP,
)
forwarded(
    "inner-options-4",
    "inner options: the ports are read after them",
    WEB_FLOW,
    WEB_PORT_VIP,
    inner=inner_ipv4(WEB_FLOW, options=b"\x94\x04\x00\x00"),
)
forwarded(
    "inner-options-40",
    "40 bytes of inner options",
    WEB_FLOW,
    WEB_PORT_VIP,
    inner=inner_ipv4(WEB_FLOW, options=b"\x01" * 40),
)
forwarded(
    "inner-padding",
    "bytes after the inner packet inside the GRE packet are carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    inner=inner_ipv4(WEB_FLOW) + b"\xff" * 6,
)
forwarded(
    "inner-ports-only",
    "TCP with exactly the 4 port bytes after the header",
    WEB_FLOW,
    WEB_PORT_VIP,
    inner=ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(40000, 80)[:4]),
)
_malformed_both_ways(
    "inner-tcp-3-bytes",
    "TCP with 3 bytes after the IP header",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(40000, 80)[:3])),
    Stat.INNER_L4_TRUNCATED,
)
kept(
    "inner-udp-0-bytes",
    "UDP with nothing after the IP header (the frame goes on: padding)",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_UDP, b""), Outer(pad_to=120)),
    Stat.INNER_L4_TRUNCATED,
    Verdict.DROP,
)
kept(
    "inner-truncation-before-vip",
    "a truncated TCP header to no VIP is truncated, not NO_VIP",
    encapsulate(ipv4(CLIENT, NOT_A_VIP, PROTO_TCP, b"\x00")),
    Stat.INNER_L4_TRUNCATED,
    Verdict.DROP,
)
forwarded(
    "inner-icmp",
    "ICMP is a 3-tuple flow: the address VIP",
    WEB_ICMP_FLOW,
    WEB_ADDRESS_VIP,
)
forwarded(
    "inner-icmp-empty",
    "ICMP with no ICMP header is not checked",
    WEB_ICMP_FLOW,
    WEB_ADDRESS_VIP,
    inner=ipv4(CLIENT, VIP_WEB, PROTO_ICMP, b""),
)
for _proto in (PROTO_GRE, 132, 0, 255):
    _flow = Flow.of(CLIENT, VIP_WEB, _proto)
    forwarded(
        f"inner-proto-{_proto}",
        f"IP protocol {_proto} is a 3-tuple flow",
        _flow,
        WEB_ADDRESS_VIP,
        inner=ipv4(CLIENT, VIP_WEB, _proto, b"\x12\x34\x56\x78"),
    )
forwarded(
    "inner-udp-to-tcp-port",
    "UDP to the TCP port VIP's port: the address VIP",
    WEB_UDP_FLOW,
    WEB_ADDRESS_VIP,
)

# Inner fragments: every fragment is the 3-tuple, so the port VIP never matches them.
_DATAGRAM = ipv4(CLIENT, VIP_WEB, PROTO_UDP, udp(40000, 80, bytes(100)), ident=77)
_FRAGMENTS = ipv4_fragments(_DATAGRAM, 48)
WEB_UDP_FRAGMENT_FLOW = Flow.of(CLIENT, VIP_WEB, PROTO_UDP)
for _index, _fragment in enumerate(_FRAGMENTS):
    forwarded(
        f"inner-fragment-{_index}",
        f"fragment {_index} of {len(_FRAGMENTS)} of a UDP datagram: 3-tuple, address VIP",
        WEB_UDP_FRAGMENT_FLOW,
        WEB_ADDRESS_VIP,
        inner=_fragment,
    )
WEB_TCP_FRAGMENT_FLOW = Flow.of(CLIENT, VIP_WEB, PROTO_TCP)
forwarded(
    "inner-fragment-tcp-first",
    "the first fragment of a TCP segment to port 80 is a 3-tuple: address VIP, not port VIP",
    WEB_TCP_FRAGMENT_FLOW,
    WEB_ADDRESS_VIP,
    inner=ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(40000, 80), more_fragments=True),
)
forwarded(
    "inner-fragment-no-l4",
    "a later TCP fragment of 0 bytes is not L4-truncated",
    WEB_TCP_FRAGMENT_FLOW,
    WEB_ADDRESS_VIP,
    inner=ipv4(CLIENT, VIP_WEB, PROTO_TCP, b"", frag_offset=3),
)
kept(
    "inner-fragment-port-only-vip",
    "fragments to a port-only VIP match no VIP",
    encapsulate(ipv4_fragments(ipv4(CLIENT, VIP_DNS, PROTO_UDP, udp(5353, 53, bytes(64))), 32)[0]),
    Stat.NO_VIP,
    Verdict.PASS,
)

# 4b. Inner IPv6 (in outer IPv4 GRE, protocol 0x86DD)

HBH, ROUTING, DEST, FRAG = (
    IPV6_EXT_HOP_BY_HOP,
    IPV6_EXT_ROUTING,
    IPV6_EXT_DEST_OPTIONS,
    IPV6_EXT_FRAGMENT,
)
V6 = OUTER_INNER_IPV6


def _encap6(inner: bytes, outer: Outer = V6) -> bytes:
    return encapsulate(inner, outer)


_INNER6_WEB = inner_ipv6(WEB6_FLOW)
_malformed_both_ways(
    "inner6-39-bytes",
    "39 bytes after a GRE header of protocol 0x86dd",
    _encap6(_INNER6_WEB[:39]),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner6-0-bytes", "nothing after the GRE header (0x86dd)", _encap6(b""), Stat.INNER_MALFORMED
)
_malformed_both_ways(
    "inner6-version-4",
    "an IPv4 packet labelled 0x86dd",
    _encap6(inner_ipv4(WEB_FLOW) + bytes(20)),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner6-payload-length-beyond-gre-end",
    "payload length one more than the GRE packet holds",
    _encap6(ipv6(CLIENT6, VIP6_WEB, PROTO_TCP, tcp(40000, 80), payload_length=21)),
    Stat.INNER_MALFORMED,
)
kept(
    "inner6-checked-against-gre-end",
    "the payload length runs into Ethernet padding: bounds are the GRE end, not the frame end",
    _encap6(
        ipv6(CLIENT6, VIP6_WEB, PROTO_TCP, tcp(40000, 80), payload_length=40),
        replace(V6, pad_to=200),
    ),
    Stat.INNER_MALFORMED,
    Verdict.DROP,
)
kept(
    "inner6-payload-length-0-tcp",
    "payload length 0 (no jumbograms in GRE over IPv4): TCP's ports lie beyond it",
    _encap6(ipv6(CLIENT6, VIP6_WEB, PROTO_TCP, tcp(40000, 80), payload_length=0)),
    Stat.INNER_L4_TRUNCATED,
    Verdict.DROP,
)
kept(
    "inner6-payload-length-0-hop-by-hop",
    "payload length 0 with a hop-by-hop header (a jumbogram's shape): the header lies beyond it",
    _encap6(
        ipv6(CLIENT6, VIP6_WEB, HBH, ipv6_option_header(PROTO_TCP) + tcp(1, 80), payload_length=0)
    ),
    Stat.INNER_MALFORMED,
    Verdict.DROP,
)
forwarded(
    "inner6-tcp",
    "inner IPv6 TCP/80: the IPv6 port VIP, an IPv4 backend, the inner packet untouched",
    WEB6_FLOW,
    WEB_PORT_VIP,
    outer=V6,
    inner=_INNER6_WEB,
)
forwarded(
    "inner6-address-vip",
    "inner IPv6 TCP/443: the IPv6 address VIP",
    WEB6_OTHER_PORT_FLOW,
    WEB_ADDRESS_VIP,
    outer=V6,
    inner=inner_ipv6(WEB6_OTHER_PORT_FLOW),
)
forwarded(
    "inner6-udp-to-tcp-port",
    "inner IPv6 UDP to the TCP port VIP's port: the address VIP",
    WEB6_UDP_FLOW,
    WEB_ADDRESS_VIP,
    outer=V6,
    inner=inner_ipv6(WEB6_UDP_FLOW),
)
forwarded(
    "inner6-padding",
    "bytes after the payload length inside the GRE packet are carried through",
    WEB6_FLOW,
    WEB_PORT_VIP,
    outer=V6,
    inner=_INNER6_WEB + b"\xff" * 6,
)
forwarded(
    "inner6-ports-only",
    "TCP with exactly the 4 port bytes after the fixed header",
    WEB6_FLOW,
    WEB_PORT_VIP,
    outer=V6,
    inner=ipv6(CLIENT6, VIP6_WEB, PROTO_TCP, tcp(40000, 80)[:4]),
)
_malformed_both_ways(
    "inner6-tcp-3-bytes",
    "inner IPv6 TCP with 3 bytes after the headers",
    _encap6(ipv6(CLIENT6, VIP6_WEB, PROTO_TCP, tcp(40000, 80)[:3])),
    Stat.INNER_L4_TRUNCATED,
)
kept(
    "inner6-truncation-before-vip",
    "a truncated UDP header to no VIP is truncated, not NO_VIP",
    _encap6(ipv6(CLIENT6, NO_VIP6_FLOW.dst, PROTO_UDP, b"\x00")),
    Stat.INNER_L4_TRUNCATED,
    Verdict.DROP,
)
for _proto in (PROTO_ICMPV6, 51, 59, PROTO_GRE):  # ICMPv6, AH (not walked), no next header
    _flow = Flow.of(CLIENT6, VIP6_WEB, _proto)
    forwarded(
        f"inner6-proto-{_proto}",
        f"inner IPv6 protocol {_proto} is a 3-tuple flow: the address VIP",
        _flow,
        WEB_ADDRESS_VIP,
        outer=V6,
        inner=ipv6(CLIENT6, VIP6_WEB, _proto, b"\x12\x34\x56\x78"),
    )

# Extension headers: walked up to four, each within the payload length.
for _name, _kinds in (
    ("hop-by-hop", (HBH,)),
    ("routing", (ROUTING,)),
    ("destination-options", (DEST,)),
    ("atomic-fragment", (FRAG,)),
    ("four", (HBH, DEST, ROUTING, FRAG)),
):
    forwarded(
        f"inner6-ext-{_name}",
        f"extension headers {_kinds} are walked to TCP's ports: the port VIP",
        WEB6_FLOW,
        WEB_PORT_VIP,
        outer=V6,
        inner=inner_ipv6(WEB6_FLOW, extensions=_kinds),
    )
forwarded(
    "inner6-ext-long",
    "a 24-byte hop-by-hop header (length 2): its length is honoured",
    WEB6_FLOW,
    WEB_PORT_VIP,
    outer=V6,
    inner=ipv6(CLIENT6, VIP6_WEB, HBH, ipv6_option_header(PROTO_TCP, 2) + tcp(40000, 80)),
)
forwarded(
    "inner6-ext-fragment-reserved-byte",
    "an atomic fragment whose reserved length byte is set is still 8 bytes long",
    WEB6_FLOW,
    WEB_PORT_VIP,
    outer=V6,
    inner=ipv6(CLIENT6, VIP6_WEB, FRAG, bytes([PROTO_TCP, 9]) + bytes(6) + tcp(40000, 80)),
)
_malformed_both_ways(
    "inner6-ext-five",
    "five extension headers: more than the walk's four",
    _encap6(inner_ipv6(WEB6_FLOW, extensions=(HBH, DEST, ROUTING, FRAG, DEST))),
    Stat.INNER_EXT_TOO_DEEP,
)
kept(
    "inner6-ext-fifth-is-a-fragment",
    "four headers then a fragment header: too deep, even for a fragment",
    _encap6(
        ipv6(
            CLIENT6,
            VIP6_WEB,
            HBH,
            ipv6_chain((HBH, DEST, ROUTING, DEST), FRAG)
            + ipv6_fragment_header(PROTO_TCP, offset=3),
        )
    ),
    Stat.INNER_EXT_TOO_DEEP,
    Verdict.DROP,
)
_malformed_both_ways(
    "inner6-ext-cut-short",
    "a hop-by-hop header with 4 of its 8 bytes inside the payload length",
    _encap6(ipv6(CLIENT6, VIP6_WEB, HBH, ipv6_option_header(PROTO_TCP)[:4])),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner6-ext-length-beyond-payload",
    "a routing header of length 1 (16 bytes) with 12 inside the payload length",
    _encap6(ipv6(CLIENT6, VIP6_WEB, ROUTING, ipv6_option_header(PROTO_TCP, 1)[:12])),
    Stat.INNER_MALFORMED,
)
kept(
    "inner6-ext-fragment-cut-short",
    "a fragment header with 7 bytes",
    _encap6(ipv6(CLIENT6, VIP6_WEB, FRAG, ipv6_fragment_header(PROTO_TCP, offset=1)[:7])),
    Stat.INNER_MALFORMED,
    Verdict.DROP,
)
kept(
    "inner6-ext-then-tcp-3-bytes",
    "TCP cut to 3 bytes after a destination-options header",
    _encap6(ipv6(CLIENT6, VIP6_WEB, DEST, ipv6_option_header(PROTO_TCP) + tcp(1, 80)[:3])),
    Stat.INNER_L4_TRUNCATED,
    Verdict.DROP,
)

# Inner IPv6 fragments: 3-tuples whose protocol is the fragment header's next header.
WEB6_TCP_FRAGMENT_FLOW = Flow.of(CLIENT6, VIP6_WEB, PROTO_TCP)
forwarded(
    "inner6-fragment-first",
    "the first fragment of a TCP segment to port 80 (offset 0, M set): 3-tuple, address VIP",
    WEB6_TCP_FRAGMENT_FLOW,
    WEB_ADDRESS_VIP,
    outer=V6,
    inner=ipv6(
        CLIENT6,
        VIP6_WEB,
        FRAG,
        ipv6_fragment_header(PROTO_TCP, more=True, ident=7) + tcp(40000, 80),
    ),
)
forwarded(
    "inner6-fragment-later",
    "a later fragment of 0 bytes (offset 3): the same 3-tuple, not L4-truncated",
    WEB6_TCP_FRAGMENT_FLOW,
    WEB_ADDRESS_VIP,
    outer=V6,
    inner=ipv6(CLIENT6, VIP6_WEB, FRAG, ipv6_fragment_header(PROTO_TCP, offset=3, ident=7)),
)
forwarded(
    "inner6-fragment-after-hop-by-hop",
    "a last fragment after a hop-by-hop header: the same 3-tuple",
    WEB6_TCP_FRAGMENT_FLOW,
    WEB_ADDRESS_VIP,
    outer=V6,
    inner=ipv6(
        CLIENT6,
        VIP6_WEB,
        HBH,
        ipv6_option_header(FRAG) + ipv6_fragment_header(PROTO_TCP, offset=5, ident=7) + bytes(16),
    ),
)
forwarded(
    "inner6-fragment-of-destination-options",
    "a fragment whose fragmentable part starts with destination options: protocol 60",
    Flow.of(CLIENT6, VIP6_WEB, DEST),
    WEB_ADDRESS_VIP,
    outer=V6,
    inner=ipv6(CLIENT6, VIP6_WEB, FRAG, ipv6_fragment_header(DEST, offset=2) + bytes(8)),
)

CASES = SECTION.cases
