"""Build frames from the fields a test or a probe cares about: Ethernet (with VLAN tags), IPv4
(and its fragments), IPv6, GRE, TCP, UDP and ICMP. Pure byte work; nothing here touches the
kernel.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from rusty_rail.model.flowhash import Flow
from rusty_rail.wire.checksum import internet_checksum, ipv4_pseudo_header
from rusty_rail.wire.constants import (
    ETH_P_IPV6,
    GRE_FLAG_C,
    GRE_FLAG_K,
    GRE_FLAG_S,
    GRE_VERSION_MASK,
    ICMP_ECHO_REQUEST,
    IPV4_FLAG_DF,
    IPV4_FLAG_MF,
    IPV4_FLAG_RESERVED,
    IPV4_HEADER_LEN,
    IPV4_OFFSET_MASK,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_SYN,
)
from rusty_rail.wire.fields import (
    Ipv4Like,
    Ipv6Like,
    MacLike,
    VlanTag,
    ipv4_address,
    ipv6_address,
    mac,
)

# --- Ethernet --------------------------------------------------------------------------------


def ethernet(
    dst: MacLike,
    src: MacLike,
    ethertype: int,
    payload: bytes,
    *,
    vlans: Sequence[VlanTag | int] = (),
    pad_to: int = 0,
) -> bytes:
    """An Ethernet frame (no FCS). ``vlans`` are outermost first; an int is an 802.1Q VID.

    ``pad_to`` appends zero bytes until the frame is that long (``ETH_MIN_FRAME`` for wire
    padding); padding beyond the IP total length is what a receiver must ignore.
    """
    tags = b"".join((VlanTag(tag) if isinstance(tag, int) else tag).to_bytes() for tag in vlans)
    frame = mac(dst) + mac(src) + tags + struct.pack("!H", ethertype) + payload
    return frame + bytes(max(0, pad_to - len(frame)))


# --- IPv4 / IPv6 -----------------------------------------------------------------------------


def ipv4(
    src: Ipv4Like,
    dst: Ipv4Like,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    tos: int = 0,
    ident: int = 0,
    dont_fragment: bool = False,
    more_fragments: bool = False,
    frag_offset: int = 0,
    reserved_flag: bool = False,
    options: bytes = b"",
    version: int = 4,
    ihl: int | None = None,
    total_length: int | None = None,
    checksum: int | None = None,
) -> bytes:
    """An IPv4 packet. ``frag_offset`` is in 8-byte units, as on the wire.

    ``options`` are padded with zeros (End of Options List) to a multiple of 4 bytes. For
    malformed packets ``version``, ``ihl`` and ``total_length`` override the header fields
    without changing what is actually built, and ``checksum`` replaces the computed one
    (otherwise the checksum is computed over the header as built, overrides included).
    """
    options = options + bytes(-len(options) % 4)
    header_len = IPV4_HEADER_LEN + len(options)
    ihl_field = header_len // 4 if ihl is None else ihl
    length_field = header_len + len(payload) if total_length is None else total_length
    flags = (
        (IPV4_FLAG_RESERVED if reserved_flag else 0)
        | (IPV4_FLAG_DF if dont_fragment else 0)
        | (IPV4_FLAG_MF if more_fragments else 0)
    )
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            (version & 0xF) << 4 | (ihl_field & 0xF),
            tos,
            length_field & 0xFFFF,
            ident & 0xFFFF,
            flags | (frag_offset & IPV4_OFFSET_MASK),
            ttl,
            proto,
            0,
            ipv4_address(src),
            ipv4_address(dst),
        )
        + options
    )
    header_checksum = internet_checksum(bytes(header)) if checksum is None else checksum
    header[10:12] = struct.pack("!H", header_checksum)
    return bytes(header) + payload


def ipv4_fragments(packet: bytes, fragment_payload: int) -> list[bytes]:
    """Split an IPv4 packet (built by :func:`ipv4`, without padding) into fragments.

    Each fragment carries at most ``fragment_payload`` bytes (a multiple of 8) of the
    original payload; options are copied into every fragment (fine for tests: the balancer
    does not look at their copy bits), header checksums are recomputed.
    """
    if fragment_payload <= 0 or fragment_payload % 8:
        raise ValueError(
            f"fragment payload must be a positive multiple of 8, got {fragment_payload}"
        )
    header_len = (packet[0] & 0xF) * 4
    total_length = struct.unpack_from("!H", packet, 2)[0]
    header, payload = packet[:header_len], packet[header_len:total_length]
    fragments = []
    for start in range(0, len(payload), fragment_payload):
        chunk = payload[start : start + fragment_payload]
        last = start + fragment_payload >= len(payload)
        fragment = bytearray(header + chunk)
        fragment[2:4] = struct.pack("!H", header_len + len(chunk))
        flags_offset = struct.unpack_from("!H", header, 6)[0] & IPV4_FLAG_DF
        flags_offset |= (0 if last else IPV4_FLAG_MF) | (start // 8)
        fragment[6:8] = struct.pack("!H", flags_offset)
        fragment[10:12] = b"\x00\x00"
        fragment[10:12] = struct.pack("!H", internet_checksum(bytes(fragment[:header_len])))
        fragments.append(bytes(fragment))
    return fragments


def ipv6(
    src: Ipv6Like,
    dst: Ipv6Like,
    next_header: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
    payload_length: int | None = None,
    version: int = 6,
) -> bytes:
    """An IPv6 packet with the fixed header only (no extension headers are built)."""
    length_field = len(payload) if payload_length is None else payload_length
    first_word = (version & 0xF) << 28 | (traffic_class & 0xFF) << 20 | (flow_label & 0xFFFFF)
    header = struct.pack(
        "!IHBB16s16s",
        first_word,
        length_field & 0xFFFF,
        next_header,
        hop_limit,
        ipv6_address(src),
        ipv6_address(dst),
    )
    return header + payload


# --- GRE -------------------------------------------------------------------------------------


def gre(
    protocol: int,
    payload: bytes,
    *,
    checksum: bool | int = False,
    key: int | None = None,
    sequence: int | None = None,
    version: int = 0,
    extra_flags: int = 0,
    reserved1: int = 0,
) -> bytes:
    """A GRE header (RFC 2784, with the RFC 2890 key and sequence fields) and its payload.

    ``checksum=True`` sets C and computes the GRE checksum over header and payload; an int
    sets C and stores that value. ``extra_flags`` is OR-ed into the first word (for the R, s,
    recursion and reserved bits of malformed cases); ``version`` goes in the low 3 bits.
    """
    has_checksum = checksum is not False
    flags = (
        (GRE_FLAG_C if has_checksum else 0)
        | (GRE_FLAG_K if key is not None else 0)
        | (GRE_FLAG_S if sequence is not None else 0)
        | extra_flags
        | (version & GRE_VERSION_MASK)
    )
    header = bytearray(struct.pack("!HH", flags & 0xFFFF, protocol))
    if has_checksum:
        header += struct.pack("!HH", 0, reserved1)
    if key is not None:
        header += struct.pack("!I", key)
    if sequence is not None:
        header += struct.pack("!I", sequence)
    if checksum is True:
        header[4:6] = struct.pack("!H", internet_checksum(bytes(header) + payload))
    elif has_checksum:
        header[4:6] = struct.pack("!H", int(checksum) & 0xFFFF)
    return bytes(header) + payload


# --- L4 --------------------------------------------------------------------------------------


def tcp(
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    flags: int = TCP_SYN,
    window: int = 65535,
    src: Ipv4Like | None = None,
    dst: Ipv4Like | None = None,
) -> bytes:
    """A TCP segment (20-byte header). The checksum is computed when ``src`` and ``dst`` (IPv4)
    are given, else left 0."""
    header = bytearray(
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    )
    segment = bytes(header) + payload
    if src is not None and dst is not None:
        pseudo = ipv4_pseudo_header(ipv4_address(src), ipv4_address(dst), PROTO_TCP, len(segment))
        header[16:18] = struct.pack("!H", internet_checksum(pseudo + segment))
    return bytes(header) + payload


def udp(
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    src: Ipv4Like | None = None,
    dst: Ipv4Like | None = None,
) -> bytes:
    """A UDP datagram. The checksum is computed when ``src`` and ``dst`` (IPv4) are given."""
    length = 8 + len(payload)
    value = 0
    if src is not None and dst is not None:
        pseudo = ipv4_pseudo_header(ipv4_address(src), ipv4_address(dst), PROTO_UDP, length)
        value = internet_checksum(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + payload)
        value = value or 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    return struct.pack("!HHHH", sport, dport, length, value) + payload


def icmp(type_: int, code: int = 0, payload: bytes = b"", *, rest: int = 0) -> bytes:
    """An ICMP (v4) message with its checksum; ``rest`` is the 4-byte "rest of header"."""
    header = bytearray(struct.pack("!BBHI", type_, code, 0, rest))
    header[2:4] = struct.pack("!H", internet_checksum(bytes(header) + payload))
    return bytes(header) + payload


def l4_for(flow: Flow, payload: bytes = b"") -> bytes:
    """The transport header a flow implies: TCP or UDP with its ports (valid checksum), an ICMP
    echo request for ICMP, the bare payload for anything else."""
    if flow.proto == PROTO_TCP:
        return tcp(flow.sport, flow.dport, payload, src=flow.src, dst=flow.dst)
    if flow.proto == PROTO_UDP:
        return udp(flow.sport, flow.dport, payload, src=flow.src, dst=flow.dst)
    if flow.proto == PROTO_ICMP:
        return icmp(ICMP_ECHO_REQUEST, 0, payload, rest=0x00010001)
    return payload


# --- GRE over IPv6, and UDP over IPv6 (decap) ------------------------------------------------


def gre_in_ipv6(
    eth_dst: MacLike,
    eth_src: MacLike,
    src: Ipv6Like,
    dst: Ipv6Like,
    inner: bytes,
    *,
    protocol: int = ETH_P_IPV6,
    vlans: Sequence[VlanTag | int] = (),
    traffic_class: int = 0,
    payload_length: int | None = None,
    gre_checksum: bool | int = False,
    gre_key: int | None = None,
    gre_sequence: int | None = None,
) -> bytes:
    """An Ethernet frame of outer IPv6 (fixed header, next header 47 directly), GRE with
    ``protocol`` (0x86DD for inner IPv6, 0x0800 for inner IPv4) and ``inner``: what an LB
    sends a server over IPv6. ``payload_length`` overrides the outer field for malformed
    cases."""
    packet = gre(protocol, inner, checksum=gre_checksum, key=gre_key, sequence=gre_sequence)
    outer = ipv6(
        src,
        dst,
        PROTO_GRE,
        packet,
        traffic_class=traffic_class,
        payload_length=payload_length,
    )
    return ethernet(eth_dst, eth_src, ETH_P_IPV6, outer, vlans=vlans)


def udp6(sport: int, dport: int, payload: bytes, *, src: Ipv6Like, dst: Ipv6Like) -> bytes:
    """A UDP datagram for IPv6, with the checksum IPv6 requires (RFC 8200 section 8.1)."""
    length = 8 + len(payload)
    pseudo = ipv6_address(src) + ipv6_address(dst) + struct.pack("!IxxxB", length, PROTO_UDP)
    value = internet_checksum(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + payload)
    return struct.pack("!HHHH", sport, dport, length, value or 0xFFFF) + payload


def icmp6(
    type_: int, code: int, payload: bytes, *, src: Ipv6Like, dst: Ipv6Like, rest: int = 0
) -> bytes:
    """An ICMPv6 message with the checksum over the IPv6 pseudo-header (RFC 4443 section 2.3);
    ``rest`` is the 4-byte rest of the header (an echo's identifier and sequence)."""
    header = bytearray(struct.pack("!BBHI", type_, code, 0, rest))
    length = len(header) + len(payload)
    pseudo = ipv6_address(src) + ipv6_address(dst) + struct.pack("!IxxxB", length, PROTO_ICMPV6)
    header[2:4] = struct.pack("!H", internet_checksum(pseudo + bytes(header) + payload))
    return bytes(header) + payload


# --- IPv6 extension headers (appended for inner IPv6, docs/packet-path.md section 4b) --------


def ipv6_option_header(next_header: int, length_units: int = 0, fill: int = 0) -> bytes:
    """A hop-by-hop, routing or destination-options header (RFC 8200): next header, the length
    in 8-byte units after the first 8, then ``fill`` bytes (the balancer never reads them)."""
    return bytes([next_header, length_units]) + bytes([fill]) * (6 + 8 * length_units)


def ipv6_fragment_header(
    next_header: int, *, offset: int = 0, more: bool = False, ident: int = 0
) -> bytes:
    """An IPv6 fragment header: ``offset`` in 8-byte units, ``more`` the M flag."""
    return struct.pack("!BBHI", next_header, 0, (offset << 3) | int(more), ident)


def ipv6_chain(kinds: Sequence[int], upper: int) -> bytes:
    """Extension headers of ``kinds`` in order (protocol numbers 0, 43, 60 or 44), each naming
    the next, the last naming ``upper``. A fragment header here is an atomic fragment (offset
    0, M clear), which ends no walk."""
    headers = b""
    for index, kind in enumerate(kinds):
        following = kinds[index + 1] if index + 1 < len(kinds) else upper
        if kind == 44:
            headers += ipv6_fragment_header(following)
        else:
            headers += ipv6_option_header(following)
    return headers
