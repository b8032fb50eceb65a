"""Sections 1-4b of docs/packet-path.md: from the Ethernet header, through the outer IPv4 or
IPv6 header and GRE, to the inner IPv4 or IPv6 flow; or the ``Stat`` of the early exit that ends the
packet path. Section 2c's routed ingress reads a packet that is not GRE to this node as an inner
one (``parse_routed``).

The reference pipeline (``pipeline.process``) runs this first; plain values, no kernel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import Settings, Stat
from rusty_rail.wire.constants import (
    ETH_HEADER_LEN,
    ETH_P_IPV4,
    ETH_P_IPV6,
    GRE_FLAG_C,
    GRE_FLAG_K,
    GRE_FLAG_R,
    GRE_FLAG_S,
    GRE_FLAG_STRICT,
    GRE_RECURSION_MASK,
    GRE_VERSION_MASK,
    IPV4_FLAG_MF,
    IPV4_HEADER_LEN,
    IPV4_OFFSET_MASK,
    IPV6_EXT_DEST_OPTIONS,
    IPV6_EXT_FRAGMENT,
    IPV6_EXT_HEADER_MIN,
    IPV6_EXT_HOP_BY_HOP,
    IPV6_EXT_ROUTING,
    IPV6_FRAGMENT_MF,
    IPV6_FRAGMENT_OFFSET_MASK,
    IPV6_HEADER_LEN,
    PROTO_GRE,
    PROTO_TCP,
    PROTO_UDP,
    VLAN_TAG_LEN,
    VLAN_TPIDS,
)

MAX_VLAN_TAGS = 2
IPV4_FRAGMENT_MASK = IPV4_FLAG_MF | IPV4_OFFSET_MASK  # 0x3FFF: a fragment if any bit is set
GRE_BASE_HEADER_LEN = 4
GRE_MUST_BE_ZERO = GRE_FLAG_R | GRE_FLAG_STRICT | GRE_RECURSION_MASK  # RFC 2784: discard if set
#: Section 4b: the extension headers walked, and how many at most (bpf/lib/parse.h,
#: IPV6_EXT_MAX, must agree).
IPV6_WALKED_EXTENSIONS = frozenset(
    {IPV6_EXT_HOP_BY_HOP, IPV6_EXT_ROUTING, IPV6_EXT_DEST_OPTIONS, IPV6_EXT_FRAGMENT}
)
IPV6_EXT_MAX = 4
IPV6_FRAGMENT_MASK = IPV6_FRAGMENT_OFFSET_MASK | IPV6_FRAGMENT_MF  # a fragment if any bit is set


class Stop(Exception):
    """An early exit of the packet path: the packet is counted under ``stat`` and not forwarded.
    ``routable``: its outer header was sane and it was not balanced as GRE, so routed ingress
    may still take it (section 2c)."""

    def __init__(self, stat: Stat, *, routable: bool = False) -> None:
        super().__init__(stat.name)
        self.stat = stat
        self.routable = routable


def u16(frame: bytes, offset: int) -> int:
    value: int = struct.unpack_from("!H", frame, offset)[0]
    return value


@dataclass(frozen=True, slots=True)
class Parsed:
    """What the parse hands to the decision: where the outer header is and its family (4 or 6),
    and the flow."""

    l3: int
    flow: Flow
    fragment: bool
    outer_family: int = 4
    #: The inner packet: its offset, its end (its own length) and family (section 8b).
    inner: int = 0
    inner_end: int = 0
    inner_family: int = 4
    #: Routed ingress (section 2c): the inner packet is the packet itself, at ``l3``.
    routed: bool = False


def parse_ethernet(frame: bytes) -> tuple[int, int]:
    """Section 1. Returns (EtherType, offset of the L3 header)."""
    if len(frame) < ETH_HEADER_LEN:
        raise Stop(Stat.PASS_NOT_IP)
    ethertype = u16(frame, 12)
    l3 = ETH_HEADER_LEN
    tags = 0
    while ethertype in VLAN_TPIDS:
        if tags == MAX_VLAN_TAGS:
            raise Stop(Stat.PASS_NOT_IP)  # a third tag
        if len(frame) < l3 + VLAN_TAG_LEN:
            raise Stop(Stat.PASS_NOT_IP)  # a tag cut short
        ethertype = u16(frame, l3 + 2)
        l3 += VLAN_TAG_LEN
        tags += 1
    return ethertype, l3


def _parse_outer_ipv4(settings: Settings, frame: bytes, l3: int) -> tuple[int, int]:
    """Section 2a. Returns (offset of the GRE header, the GRE end)."""
    l3_len = len(frame) - l3
    if l3_len < IPV4_HEADER_LEN:
        raise Stop(Stat.PASS_OUTER_MALFORMED)
    version, ihl = frame[l3] >> 4, frame[l3] & 0x0F
    if version != 4 or ihl < 5:
        raise Stop(Stat.PASS_OUTER_MALFORMED)
    header_len = ihl * 4
    if header_len > l3_len:
        raise Stop(Stat.PASS_OUTER_MALFORMED)
    total_length = u16(frame, l3 + 2)
    if total_length < header_len or total_length > l3_len:
        raise Stop(Stat.PASS_OUTER_MALFORMED)
    if frame[l3 + 9] != PROTO_GRE:
        raise Stop(Stat.PASS_NOT_GRE, routable=True)
    if frame[l3 + 16 : l3 + 20] != settings.lb_ipv4:
        raise Stop(Stat.PASS_NOT_LOCAL, routable=True)
    if u16(frame, l3 + 6) & IPV4_FRAGMENT_MASK:
        raise Stop(Stat.PASS_OUTER_FRAGMENT)
    return l3 + header_len, l3 + total_length


def _parse_outer_ipv6(settings: Settings, frame: bytes, l3: int) -> tuple[int, int]:
    """Section 2b. Returns (offset of the GRE header, the GRE end). Extension headers are not
    walked: GRE behind one is PASS_NOT_GRE."""
    l3_len = len(frame) - l3
    if l3_len < IPV6_HEADER_LEN or frame[l3] >> 4 != 6:
        raise Stop(Stat.PASS_OUTER_MALFORMED)
    gre_end = l3 + IPV6_HEADER_LEN + u16(frame, l3 + 4)
    if gre_end > len(frame):
        raise Stop(Stat.PASS_OUTER_MALFORMED)
    if frame[l3 + 6] != PROTO_GRE:
        raise Stop(Stat.PASS_NOT_GRE, routable=True)
    if frame[l3 + 24 : l3 + 40] != settings.lb_ipv6 or not any(settings.lb_ipv6):
        raise Stop(Stat.PASS_NOT_LOCAL, routable=True)
    return l3 + IPV6_HEADER_LEN, gre_end


def _parse_gre(frame: bytes, gre: int, gre_end: int) -> tuple[int, int]:
    """Section 3. Returns (the GRE protocol, the offset of the inner packet)."""
    if gre_end - gre < GRE_BASE_HEADER_LEN:
        raise Stop(Stat.GRE_MALFORMED)
    flags = u16(frame, gre)
    if flags & GRE_VERSION_MASK:
        raise Stop(Stat.PASS_UNSUPPORTED)
    if flags & GRE_MUST_BE_ZERO:
        raise Stop(Stat.GRE_MALFORMED)
    header_len = GRE_BASE_HEADER_LEN
    for optional_field in (GRE_FLAG_C, GRE_FLAG_K, GRE_FLAG_S):
        if flags & optional_field:
            header_len += 4
    if header_len > gre_end - gre:
        raise Stop(Stat.GRE_MALFORMED)
    protocol = u16(frame, gre + 2)
    if protocol not in (ETH_P_IPV4, ETH_P_IPV6):
        raise Stop(Stat.PASS_UNSUPPORTED)
    return protocol, gre + header_len


def _parse_inner_ipv4(frame: bytes, inner: int, gre_end: int) -> tuple[Flow, bool, int]:
    """Section 4. Returns (the flow, whether the inner packet is a fragment, its end)."""
    avail = gre_end - inner
    if avail < IPV4_HEADER_LEN:
        raise Stop(Stat.INNER_MALFORMED)
    version, ihl = frame[inner] >> 4, frame[inner] & 0x0F
    if version != 4 or ihl < 5:
        raise Stop(Stat.INNER_MALFORMED)
    header_len = ihl * 4
    total_length = u16(frame, inner + 2)
    if total_length < header_len or total_length > avail:
        raise Stop(Stat.INNER_MALFORMED)
    proto = frame[inner + 9]
    src, dst = frame[inner + 12 : inner + 16], frame[inner + 16 : inner + 20]
    fragment = (u16(frame, inner + 6) & IPV4_FRAGMENT_MASK) != 0
    end = inner + total_length
    if fragment or proto not in (PROTO_TCP, PROTO_UDP):
        return Flow(src, dst, proto), fragment, end
    if header_len + 4 > total_length:
        raise Stop(Stat.INNER_L4_TRUNCATED)
    l4 = inner + header_len
    return Flow(src, dst, proto, u16(frame, l4), u16(frame, l4 + 2)), False, end


def _walk_ipv6_extensions(
    frame: bytes, offset: int, end: int, next_header: int
) -> tuple[int, int, bool]:
    """Section 4b's walk from the first header after the fixed one, at ``offset``, to the
    upper-layer header, within ``end`` (the payload length's end). Returns (its protocol, its
    offset, whether the packet is a fragment); a fragment ends the walk, its protocol the
    fragment header's next header."""
    for _ in range(IPV6_EXT_MAX):
        if next_header not in IPV6_WALKED_EXTENSIONS:
            return next_header, offset, False
        if offset + IPV6_EXT_HEADER_MIN > end:
            raise Stop(Stat.INNER_MALFORMED)
        if next_header == IPV6_EXT_FRAGMENT:
            length = IPV6_EXT_HEADER_MIN  # byte 1 is reserved, not a length
            if u16(frame, offset + 2) & IPV6_FRAGMENT_MASK:
                return frame[offset], offset + length, True
        else:
            length = (frame[offset + 1] + 1) * 8
            if offset + length > end:
                raise Stop(Stat.INNER_MALFORMED)
        next_header = frame[offset]
        offset += length
    if next_header in IPV6_WALKED_EXTENSIONS:
        raise Stop(Stat.INNER_EXT_TOO_DEEP)
    return next_header, offset, False


def _parse_inner_ipv6(frame: bytes, inner: int, gre_end: int) -> tuple[Flow, bool, int]:
    """Section 4b. Returns (the flow, whether the inner packet is a fragment, its end)."""
    avail = gre_end - inner
    if avail < IPV6_HEADER_LEN or frame[inner] >> 4 != 6:
        raise Stop(Stat.INNER_MALFORMED)
    end = inner + IPV6_HEADER_LEN + u16(frame, inner + 4)
    if end > gre_end:
        raise Stop(Stat.INNER_MALFORMED)
    src, dst = frame[inner + 8 : inner + 24], frame[inner + 24 : inner + 40]
    proto, l4, fragment = _walk_ipv6_extensions(
        frame, inner + IPV6_HEADER_LEN, end, frame[inner + 6]
    )
    if fragment or proto not in (PROTO_TCP, PROTO_UDP):
        return Flow(src, dst, proto), fragment, end
    if l4 + 4 > end:
        raise Stop(Stat.INNER_L4_TRUNCATED)
    return Flow(src, dst, proto, u16(frame, l4), u16(frame, l4 + 2)), False, end


def parse(settings: Settings, frame: bytes) -> Parsed:
    """Sections 1-4b: from the Ethernet header to the inner flow, or a Stop."""
    ethertype, l3 = parse_ethernet(frame)
    if ethertype == ETH_P_IPV6:
        outer_family = 6
        gre, gre_end = _parse_outer_ipv6(settings, frame, l3)
    elif ethertype == ETH_P_IPV4:
        outer_family = 4
        gre, gre_end = _parse_outer_ipv4(settings, frame, l3)
    else:
        raise Stop(Stat.PASS_NOT_IP)
    if not settings.gre_ingress:
        raise Stop(Stat.PASS_UNSUPPORTED, routable=True)  # section 2c: GRE ingress off
    protocol, inner = _parse_gre(frame, gre, gre_end)
    if protocol == ETH_P_IPV6:
        flow, fragment, end = _parse_inner_ipv6(frame, inner, gre_end)
    else:
        flow, fragment, end = _parse_inner_ipv4(frame, inner, gre_end)
    inner_family = 6 if protocol == ETH_P_IPV6 else 4
    return Parsed(l3, flow, fragment, outer_family, inner, end, inner_family)


def parse_routed(frame: bytes) -> Parsed | None:
    """Section 2c: a routable packet (its outer header sane) read as an inner packet, from
    ``l3`` to the frame's end; None when section 4 or 4b would stop it (the host judges it)."""
    ethertype, l3 = parse_ethernet(frame)
    family = 6 if ethertype == ETH_P_IPV6 else 4
    parser = _parse_inner_ipv6 if family == 6 else _parse_inner_ipv4
    try:
        flow, fragment, end = parser(frame, l3, len(frame))
    except Stop:
        return None
    return Parsed(l3, flow, fragment, family, l3, end, family, routed=True)
