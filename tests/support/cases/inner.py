"""Section 4 of docs/packet-path.md, the inner IPv4 packet: its header, its protocol and ports,
and fragments."""

from __future__ import annotations

from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import Stat, Verdict
from rusty_rail.wire.build import ipv4, ipv4_fragments, ipv6, tcp, udp
from rusty_rail.wire.constants import PROTO_GRE, PROTO_ICMP, PROTO_TCP, PROTO_UDP
from rusty_rail.wire.frames import Outer, encapsulate, inner_ipv4
from tests.support.cases._base import (
    CLIENT,
    NOT_A_VIP,
    VIP_DNS,
    VIP_WEB,
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

CASES = SECTION.cases
