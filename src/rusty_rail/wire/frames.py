"""The balancer's input frames in one call: Ethernet / outer IPv4 / GRE / inner IPv4 (or IPv6)
/ L4 of a flow, with the example addresses of the docs, tests, self-check and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rusty_rail.model.flowhash import Flow
from rusty_rail.wire.build import ethernet, gre, ipv4, ipv6, ipv6_chain, l4_for, tcp, udp
from rusty_rail.wire.constants import ETH_P_IPV4, ETH_P_IPV6, PROTO_GRE, PROTO_TCP, PROTO_UDP
from rusty_rail.wire.fields import Ipv4Like, MacLike, VlanTag

#: Addresses of the examples and tests (RFC 2544 benchmarking range, never routed).
ROUTER_MAC = "02:00:00:00:00:01"
LB_MAC = "02:00:00:00:00:02"
ROUTER_IPV4 = "198.18.0.1"
LB_IPV4 = "198.18.0.2"
ROUTER_IPV6 = "2001:2::1"
LB_IPV6 = "2001:2::2"


@dataclass(frozen=True, slots=True)
class Outer:
    """Everything around the inner packet of a GRE frame: Ethernet, outer IPv4 (or IPv6, with
    ``ipv6``: then ``ttl`` is the hop limit, ``tos`` the traffic class, and the IPv4-only fields
    are not used) and GRE.

    Defaults describe a router sending to the LB; ``dataclasses.replace`` makes variants
    (``OUTER_IPV6`` is the outer IPv6 one).
    """

    eth_dst: MacLike = LB_MAC
    eth_src: MacLike = ROUTER_MAC
    vlans: tuple[VlanTag | int, ...] = ()
    src: Ipv4Like = ROUTER_IPV4
    dst: Ipv4Like = LB_IPV4
    ttl: int = 64
    tos: int = 0
    ipv6: bool = False
    flow_label: int = 0
    payload_length: int | None = None
    ident: int = 0x1234
    dont_fragment: bool = True
    more_fragments: bool = False
    frag_offset: int = 0
    reserved_flag: bool = False
    options: bytes = b""
    ip_checksum: int | None = None
    total_length: int | None = None
    gre_checksum: bool | int = False
    gre_key: int | None = None
    gre_sequence: int | None = None
    gre_version: int = 0
    gre_extra_flags: int = 0
    gre_protocol: int = ETH_P_IPV4
    pad_to: int = 0


def encapsulate(inner: bytes, outer: Outer = Outer()) -> bytes:
    """Wrap an inner packet in GRE, outer IPv4 and Ethernet as ``outer`` describes."""
    gre_packet = gre(
        outer.gre_protocol,
        inner,
        checksum=outer.gre_checksum,
        key=outer.gre_key,
        sequence=outer.gre_sequence,
        version=outer.gre_version,
        extra_flags=outer.gre_extra_flags,
    )
    if outer.ipv6:
        ip_packet = ipv6(
            outer.src,
            outer.dst,
            PROTO_GRE,
            gre_packet,
            hop_limit=outer.ttl,
            traffic_class=outer.tos,
            flow_label=outer.flow_label,
            payload_length=outer.payload_length,
        )
        ethertype = ETH_P_IPV6
    else:
        ip_packet = ipv4(
            outer.src,
            outer.dst,
            PROTO_GRE,
            gre_packet,
            ttl=outer.ttl,
            tos=outer.tos,
            ident=outer.ident,
            dont_fragment=outer.dont_fragment,
            more_fragments=outer.more_fragments,
            frag_offset=outer.frag_offset,
            reserved_flag=outer.reserved_flag,
            options=outer.options,
            checksum=outer.ip_checksum,
            total_length=outer.total_length,
        )
        ethertype = ETH_P_IPV4
    return ethernet(
        outer.eth_dst, outer.eth_src, ethertype, ip_packet, vlans=outer.vlans, pad_to=outer.pad_to
    )


def inner_ipv4(
    flow: Flow,
    payload: bytes = b"",
    *,
    options: bytes = b"",
    ttl: int = 64,
    ident: int = 0x4321,
) -> bytes:
    """The inner IPv4 packet of ``flow``: an IPv4 header and the flow's transport header."""
    return ipv4(
        flow.src, flow.dst, flow.proto, l4_for(flow, payload), ttl=ttl, ident=ident, options=options
    )


def gre_frame(
    flow: Flow,
    payload: bytes = b"",
    *,
    outer: Outer = Outer(),
    inner_options: bytes = b"",
) -> bytes:
    """A whole balancer input frame in one call: Ethernet / IPv4 / GRE / IPv4 / L4 of ``flow``."""
    return encapsulate(inner_ipv4(flow, payload, options=inner_options), outer)


def inner_ipv6(
    flow: Flow,
    payload: bytes = b"",
    *,
    extensions: Sequence[int] = (),
    hop_limit: int = 64,
) -> bytes:
    """The inner IPv6 packet of ``flow``: the fixed header, extension headers of the kinds
    ``extensions`` names (``ipv6_chain``), and the transport header (TCP or UDP with its ports,
    checksum 0: the balancer reads the ports only; the bare payload for anything else)."""
    if flow.proto == PROTO_TCP:
        upper = tcp(flow.sport, flow.dport, payload)
    elif flow.proto == PROTO_UDP:
        upper = udp(flow.sport, flow.dport, payload)
    else:
        upper = payload
    first = extensions[0] if extensions else flow.proto
    packet = ipv6_chain(extensions, flow.proto) + upper
    return ipv6(flow.src, flow.dst, first, packet, hop_limit=hop_limit)


#: Outer IPv6 from the router to the LB's IPv6 address (docs/packet-path.md section 2b).
OUTER_IPV6 = Outer(ipv6=True, src=ROUTER_IPV6, dst=LB_IPV6)

#: An outer header around inner IPv6: GRE protocol 0x86DD.
OUTER_INNER_IPV6 = Outer(gre_protocol=ETH_P_IPV6)
