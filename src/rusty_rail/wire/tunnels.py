"""The tunnels the balancer sends a backend (docs/packet-path.md section 8): IPIP, VXLAN and
GENEVE around an inner IP packet, the outer family given by the addresses. Pure byte work: an
IP packet in, the outer IP packet out (wrap it with ``build.ethernet``).

The defaults are what the balancer writes: outer TTL 64, the inner TOS / traffic class copied,
an IPv4 outer with DF and identification 0, an IPv6 outer with flow label 0, and the outer
UDP checksum 0 for either family (RFC 6935 for IPv6; the server is told, see
docs/packet-path.md).
"""

from __future__ import annotations

import ipaddress
import struct

from rusty_rail.wire.build import ethernet, ipv4, ipv6
from rusty_rail.wire.checksum import internet_checksum
from rusty_rail.wire.constants import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    ETH_P_TEB,
    GENEVE_PORT,
    PROTO_IPIP,
    PROTO_IPV6,
    PROTO_UDP,
    TUNNEL_INNER_DST_MAC,
    TUNNEL_INNER_SRC_MAC,
    TUNNEL_SPORT_BASE,
    TUNNEL_SPORT_SPAN,
    VNI_MAX,
    VXLAN_FLAG_I,
    VXLAN_PORT,
)
from rusty_rail.wire.fields import MacLike

AddressLike = bytes | str


def _address(value: AddressLike) -> bytes:
    """4 or 16 bytes, from bytes or text; the length says the family."""
    if isinstance(value, bytes):
        if len(value) not in (4, 16):
            raise ValueError(f"an IP address is 4 or 16 bytes, got {len(value)}")
        return value
    return ipaddress.ip_address(value).packed


def inner_family(inner: bytes) -> int:
    """4 or 6, from the version nibble of an IP packet."""
    version = inner[0] >> 4 if inner else 0
    if version not in (4, 6):
        raise ValueError(f"not an IP packet: version {version}")
    return version


def inner_tos(inner: bytes) -> int:
    """The TOS byte of inner IPv4, the traffic class of inner IPv6 (DSCP and ECN)."""
    if inner_family(inner) == 4:
        return inner[1]
    return (inner[0] & 0x0F) << 4 | inner[1] >> 4


def tunnel_sport(flow_hash: int) -> int:
    """The outer UDP source port of a VXLAN or GENEVE packet: 49152 + (hash mod 16384)."""
    return TUNNEL_SPORT_BASE + (flow_hash % TUNNEL_SPORT_SPAN)


def outer_ip(
    proto: int, payload: bytes, *, src: AddressLike, dst: AddressLike, ttl: int, tos: int
) -> bytes:
    """The outer header the balancer writes around ``payload``, in the family of the addresses."""
    source, destination = _address(src), _address(dst)
    if len(source) != len(destination):
        raise ValueError("the outer source and destination are of different families")
    if len(source) == 4:
        return ipv4(source, destination, proto, payload, ttl=ttl, tos=tos, dont_fragment=True)
    return ipv6(source, destination, proto, payload, hop_limit=ttl, traffic_class=tos)


def ipip(
    inner: bytes, *, src: AddressLike, dst: AddressLike, ttl: int = 64, tos: int | None = None
) -> bytes:
    """IPv4 or IPv6 in IPv4 or IPv6 (4in4, 6in6, 4in6, 6in4): protocol 4 or 41 by the inner
    family. ``tos`` defaults to the inner packet's."""
    proto = PROTO_IPIP if inner_family(inner) == 4 else PROTO_IPV6
    return outer_ip(
        proto, inner, src=src, dst=dst, ttl=ttl, tos=inner_tos(inner) if tos is None else tos
    )


def inner_ethernet(
    inner: bytes,
    *,
    inner_src_mac: MacLike = TUNNEL_INNER_SRC_MAC,
    inner_dst_mac: MacLike = TUNNEL_INNER_DST_MAC,
) -> bytes:
    """The inner Ethernet frame of a VXLAN or GENEVE packet: the documented MACs by default."""
    ethertype = ETH_P_IPV4 if inner_family(inner) == 4 else ETH_P_IPV6
    return ethernet(inner_dst_mac, inner_src_mac, ethertype, inner)


def vxlan_header(vni: int) -> bytes:
    """The 8-byte VXLAN header (RFC 7348): flags with I set, the 24-bit VNI, reserved zero."""
    _check_vni(vni)
    return struct.pack("!II", VXLAN_FLAG_I, vni << 8)


def geneve_header(vni: int) -> bytes:
    """The 8-byte GENEVE header (RFC 8926): version 0, no options (length 0), O and C clear,
    protocol 0x6558 (an Ethernet frame follows), the 24-bit VNI, reserved zero."""
    _check_vni(vni)
    return struct.pack("!BBHI", 0, 0, ETH_P_TEB, vni << 8)


def _check_vni(vni: int) -> None:
    if not 0 <= vni <= VNI_MAX:
        raise ValueError(f"a VNI is 24 bits (0..{VNI_MAX}), got {vni}")


def udp_tunnel(
    header: bytes,
    inner: bytes,
    *,
    dport: int,
    src: AddressLike,
    dst: AddressLike,
    sport: int,
    ttl: int = 64,
    tos: int | None = None,
    inner_src_mac: MacLike = TUNNEL_INNER_SRC_MAC,
    inner_dst_mac: MacLike = TUNNEL_INNER_DST_MAC,
    udp_checksum: bool = False,
) -> bytes:
    """Outer IP / UDP (``sport`` -> ``dport``) / ``header`` / inner Ethernet / ``inner``.

    The UDP checksum is 0 unless ``udp_checksum`` asks for the real one (either family)."""
    payload = header + inner_ethernet(
        inner, inner_src_mac=inner_src_mac, inner_dst_mac=inner_dst_mac
    )
    length = 8 + len(payload)
    datagram = struct.pack("!HHHH", sport, dport, length, 0) + payload
    if udp_checksum:
        source, destination = _address(src), _address(dst)
        if len(source) == 4:
            pseudo = source + destination + struct.pack("!BBH", 0, PROTO_UDP, length)
        else:
            pseudo = source + destination + struct.pack("!IxxxB", length, PROTO_UDP)
        value = internet_checksum(pseudo + datagram) or 0xFFFF
        datagram = datagram[:6] + struct.pack("!H", value) + datagram[8:]
    return outer_ip(
        PROTO_UDP,
        datagram,
        src=src,
        dst=dst,
        ttl=ttl,
        tos=inner_tos(inner) if tos is None else tos,
    )


def vxlan(
    inner: bytes,
    *,
    vni: int,
    src: AddressLike,
    dst: AddressLike,
    sport: int,
    ttl: int = 64,
    tos: int | None = None,
    inner_src_mac: MacLike = TUNNEL_INNER_SRC_MAC,
    inner_dst_mac: MacLike = TUNNEL_INNER_DST_MAC,
    udp_checksum: bool = False,
) -> bytes:
    """An inner IP packet in VXLAN (UDP 4789) with VNI ``vni``, in the addresses' family."""
    return udp_tunnel(
        vxlan_header(vni),
        inner,
        dport=VXLAN_PORT,
        src=src,
        dst=dst,
        sport=sport,
        ttl=ttl,
        tos=tos,
        inner_src_mac=inner_src_mac,
        inner_dst_mac=inner_dst_mac,
        udp_checksum=udp_checksum,
    )


def geneve(
    inner: bytes,
    *,
    vni: int,
    src: AddressLike,
    dst: AddressLike,
    sport: int,
    ttl: int = 64,
    tos: int | None = None,
    inner_src_mac: MacLike = TUNNEL_INNER_SRC_MAC,
    inner_dst_mac: MacLike = TUNNEL_INNER_DST_MAC,
    udp_checksum: bool = False,
) -> bytes:
    """An inner IP packet in GENEVE (UDP 6081) with VNI ``vni``, in the addresses' family."""
    return udp_tunnel(
        geneve_header(vni),
        inner,
        dport=GENEVE_PORT,
        src=src,
        dst=dst,
        sport=sport,
        ttl=ttl,
        tos=tos,
        inner_src_mac=inner_src_mac,
        inner_dst_mac=inner_dst_mac,
        udp_checksum=udp_checksum,
    )
