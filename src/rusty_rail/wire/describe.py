"""Describe a frame layer by layer (Ethernet, VLAN, IPv4, IPv6, GRE, L4) as far as it parses:
what tests and the test bed print and compare. ``describe`` never raises on any bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from rusty_rail.model.flowhash import Flow
from rusty_rail.wire.checksum import internet_checksum
from rusty_rail.wire.constants import (
    ETH_HEADER_LEN,
    ETH_P_IPV4,
    ETH_P_IPV6,
    GRE_FLAG_C,
    GRE_FLAG_K,
    GRE_FLAG_S,
    GRE_VERSION_MASK,
    IPV4_FLAG_DF,
    IPV4_FLAG_MF,
    IPV4_HEADER_LEN,
    IPV4_OFFSET_MASK,
    IPV6_HEADER_LEN,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    VLAN_TAG_LEN,
    VLAN_TPIDS,
)
from rusty_rail.wire.fields import VlanTag, format_ip, format_mac


@dataclass(frozen=True, slots=True)
class EthernetInfo:
    dst: bytes
    src: bytes
    vlans: tuple[VlanTag, ...]
    ethertype: int
    header_len: int


@dataclass(frozen=True, slots=True)
class Ipv4Info:
    offset: int
    version: int
    ihl: int
    tos: int
    total_length: int
    ident: int
    flags_offset: int
    ttl: int
    proto: int
    checksum: int
    src: bytes
    dst: bytes
    options: bytes
    checksum_ok: bool

    @property
    def header_len(self) -> int:
        return self.ihl * 4

    @property
    def more_fragments(self) -> bool:
        return bool(self.flags_offset & IPV4_FLAG_MF)

    @property
    def dont_fragment(self) -> bool:
        return bool(self.flags_offset & IPV4_FLAG_DF)

    @property
    def frag_offset(self) -> int:
        return self.flags_offset & IPV4_OFFSET_MASK

    @property
    def is_fragment(self) -> bool:
        return self.more_fragments or self.frag_offset != 0


@dataclass(frozen=True, slots=True)
class Ipv6Info:
    offset: int
    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes

    @property
    def proto(self) -> int:
        return self.next_header

    @property
    def header_len(self) -> int:
        return IPV6_HEADER_LEN


@dataclass(frozen=True, slots=True)
class GreInfo:
    offset: int
    flags: int
    protocol: int
    header_len: int
    checksum: int | None
    key: int | None
    sequence: int | None

    @property
    def version(self) -> int:
        return self.flags & GRE_VERSION_MASK


@dataclass(frozen=True, slots=True)
class L4Info:
    offset: int
    proto: int
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


IpInfo = Ipv4Info | Ipv6Info


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What :func:`describe` found in a frame, outermost first; ``problem`` names the first
    thing that did not parse (None when the frame parsed as far as it goes)."""

    length: int
    ethernet: EthernetInfo | None = None
    outer: IpInfo | None = None
    gre: GreInfo | None = None
    inner: IpInfo | None = None
    l4: L4Info | None = None
    problem: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def flow(self) -> Flow | None:
        """The 5-tuple (3-tuple for fragments and port-less protocols) of the innermost IP
        packet, as the balancer would see it; None when a GRE frame's inner packet did not parse."""
        ip = self.inner if self.gre is not None else self.outer
        if ip is None:
            return None
        fragment = isinstance(ip, Ipv4Info) and ip.is_fragment
        l4 = self.l4
        if fragment or l4 is None or l4.sport is None or l4.dport is None:
            return Flow(ip.src, ip.dst, ip.proto)
        return Flow(ip.src, ip.dst, ip.proto, l4.sport, l4.dport)

    def summary(self) -> str:
        """One line, outermost layer first, for test failures and the test bed's logs."""
        parts = [f"{self.length}B"]
        if self.ethernet is not None:
            eth = self.ethernet
            vlans = "".join(f" vlan {tag.vid}" for tag in eth.vlans)
            addresses = f"{format_mac(eth.src)} > {format_mac(eth.dst)}"
            parts.append(f"eth {addresses}{vlans} type 0x{eth.ethertype:04x}")
        if self.outer is not None:
            parts.append(_ip_summary(self.outer))
        if self.gre is not None:
            parts.append(_gre_summary(self.gre))
        if self.inner is not None:
            parts.append(_ip_summary(self.inner))
        if self.l4 is not None and self.l4.sport is not None:
            parts.append(f"proto {self.l4.proto} {self.l4.sport} > {self.l4.dport}")
        elif self.l4 is not None and self.l4.icmp_type is not None:
            parts.append(f"icmp type {self.l4.icmp_type} code {self.l4.icmp_code}")
        if self.problem is not None:
            parts.append(f"PROBLEM: {self.problem}")
        return " | ".join(parts)


def _ip_summary(ip: IpInfo) -> str:
    if isinstance(ip, Ipv4Info):
        frag = f" frag mf={int(ip.more_fragments)} off={ip.frag_offset}" if ip.is_fragment else ""
        opts = f" options {len(ip.options)}B" if ip.options else ""
        bad = "" if ip.checksum_ok else " BAD-CSUM"
        return (
            f"ipv4 {format_ip(ip.src)} > {format_ip(ip.dst)} proto {ip.proto} ttl {ip.ttl} "
            f"len {ip.total_length}{opts}{frag}{bad}"
        )
    return (
        f"ipv6 {format_ip(ip.src)} > {format_ip(ip.dst)} nh {ip.next_header} "
        f"hlim {ip.hop_limit} plen {ip.payload_length}"
    )


def _gre_summary(info: GreInfo) -> str:
    optional = (("csum", info.checksum), ("key", info.key), ("seq", info.sequence))
    fields = "".join(f" {name} {value}" for name, value in optional if value is not None)
    return f"gre flags 0x{info.flags:04x} proto 0x{info.protocol:04x}{fields}"


class _Problem(Exception):
    """Raised inside :class:`_Describer` to stop at the first thing that does not parse."""


class _Describer:
    """Walks a frame layer by layer, keeping what it finds; stops at the first problem."""

    def __init__(self, frame: bytes, max_vlans: int) -> None:
        self.frame = frame
        self.max_vlans = max_vlans
        self.ethernet: EthernetInfo | None = None
        self.outer: IpInfo | None = None
        self.gre: GreInfo | None = None
        self.inner: IpInfo | None = None
        self.l4: L4Info | None = None
        self.notes: list[str] = []

    def run(self) -> FrameInfo:
        try:
            self.walk()
            problem = None
        except _Problem as stop:
            problem = str(stop)
        return FrameInfo(
            length=len(self.frame),
            ethernet=self.ethernet,
            outer=self.outer,
            gre=self.gre,
            inner=self.inner,
            l4=self.l4,
            problem=problem,
            notes=tuple(self.notes),
        )

    def walk(self) -> None:
        self.ethernet = self.parse_ethernet()
        self.outer = self.parse_ip(
            self.ethernet.ethertype, self.ethernet.header_len, len(self.frame)
        )
        outer_end = _ip_end(self.outer)
        if _is_later_fragment(self.outer):
            return  # no transport header in a later fragment
        payload = self.outer.offset + self.outer.header_len
        if self.outer.proto != PROTO_GRE:
            self.l4 = self.parse_l4(self.outer.proto, payload, outer_end)
            return
        self.gre = self.parse_gre(payload, outer_end)
        if self.gre.protocol not in (ETH_P_IPV4, ETH_P_IPV6):
            return  # a payload this parser does not look into; not a problem
        inner_offset = payload + self.gre.header_len
        try:
            self.inner = self.parse_ip(self.gre.protocol, inner_offset, outer_end)
        except _Problem as stop:
            raise _Problem(f"inner: {stop}") from None
        if _is_later_fragment(self.inner):
            return
        self.l4 = self.parse_l4(
            self.inner.proto, self.inner.offset + self.inner.header_len, _ip_end(self.inner)
        )

    def u16(self, offset: int) -> int:
        value: int = struct.unpack_from("!H", self.frame, offset)[0]
        return value

    def u32(self, offset: int) -> int:
        value: int = struct.unpack_from("!I", self.frame, offset)[0]
        return value

    def parse_ethernet(self) -> EthernetInfo:
        frame = self.frame
        if len(frame) < ETH_HEADER_LEN:
            raise _Problem(f"Ethernet header needs {ETH_HEADER_LEN} bytes, frame has {len(frame)}")
        ethertype = self.u16(12)
        offset = ETH_HEADER_LEN
        vlans: list[VlanTag] = []
        while ethertype in VLAN_TPIDS:
            if len(vlans) == self.max_vlans:
                raise _Problem(f"more than {self.max_vlans} VLAN tags")
            if len(frame) < offset + VLAN_TAG_LEN:
                raise _Problem("VLAN tag cut short")
            vlans.append(VlanTag.from_bytes(ethertype, self.u16(offset)))
            ethertype = self.u16(offset + 2)
            offset += VLAN_TAG_LEN
        return EthernetInfo(frame[0:6], frame[6:12], tuple(vlans), ethertype, offset)

    def parse_ip(self, ethertype: int, offset: int, end: int) -> IpInfo:
        if ethertype == ETH_P_IPV4:
            return self.parse_ipv4(offset, end)
        if ethertype == ETH_P_IPV6:
            return self.parse_ipv6(offset, end)
        raise _Problem(f"not IP: type 0x{ethertype:04x}")

    def parse_ipv4(self, offset: int, end: int) -> Ipv4Info:
        frame = self.frame
        if end - offset < IPV4_HEADER_LEN:
            raise _Problem(f"IPv4 header needs 20 bytes, {end - offset} left")
        version, ihl = frame[offset] >> 4, frame[offset] & 0xF
        if version != 4:
            raise _Problem(f"IPv4 header with version {version}")
        if ihl < 5:
            raise _Problem(f"IPv4 header with IHL {ihl}")
        header_len = ihl * 4
        if header_len > end - offset:
            raise _Problem(f"IPv4 header of {header_len} bytes, {end - offset} left")
        total_length = self.u16(offset + 2)
        if total_length < header_len:
            raise _Problem(f"IPv4 total length {total_length} shorter than its header")
        if total_length > end - offset:
            raise _Problem(f"IPv4 total length {total_length}, {end - offset} bytes left")
        if total_length < end - offset:
            self.notes.append(
                f"{end - offset - total_length} bytes after the IPv4 packet at {offset}"
            )
        return Ipv4Info(
            offset=offset,
            version=version,
            ihl=ihl,
            tos=frame[offset + 1],
            total_length=total_length,
            ident=self.u16(offset + 4),
            flags_offset=self.u16(offset + 6),
            ttl=frame[offset + 8],
            proto=frame[offset + 9],
            checksum=self.u16(offset + 10),
            src=frame[offset + 12 : offset + 16],
            dst=frame[offset + 16 : offset + 20],
            options=frame[offset + IPV4_HEADER_LEN : offset + header_len],
            checksum_ok=internet_checksum(frame[offset : offset + header_len]) == 0,
        )

    def parse_ipv6(self, offset: int, end: int) -> Ipv6Info:
        frame = self.frame
        if end - offset < IPV6_HEADER_LEN:
            raise _Problem(f"IPv6 header needs 40 bytes, {end - offset} left")
        first_word = self.u32(offset)
        if first_word >> 28 != 6:
            raise _Problem(f"IPv6 header with version {first_word >> 28}")
        payload_length = self.u16(offset + 4)
        if IPV6_HEADER_LEN + payload_length > end - offset:
            raise _Problem(f"IPv6 payload length {payload_length}, {end - offset - 40} bytes left")
        return Ipv6Info(
            offset=offset,
            traffic_class=(first_word >> 20) & 0xFF,
            flow_label=first_word & 0xFFFFF,
            payload_length=payload_length,
            next_header=frame[offset + 6],
            hop_limit=frame[offset + 7],
            src=frame[offset + 8 : offset + 24],
            dst=frame[offset + 24 : offset + 40],
        )

    def parse_gre(self, offset: int, end: int) -> GreInfo:
        if end - offset < 4:
            raise _Problem(f"GRE header needs 4 bytes, {end - offset} left")
        flags, protocol = self.u16(offset), self.u16(offset + 2)
        header_len = 4
        fields: dict[int, int] = {}
        for flag in (GRE_FLAG_C, GRE_FLAG_K, GRE_FLAG_S):
            if flags & flag:
                if end - offset < header_len + 4:
                    raise _Problem(f"GRE optional field 0x{flag:04x} cut short")
                fields[flag] = self.u32(offset + header_len)
                header_len += 4
        checksum = fields[GRE_FLAG_C] >> 16 if GRE_FLAG_C in fields else None
        return GreInfo(
            offset=offset,
            flags=flags,
            protocol=protocol,
            header_len=header_len,
            checksum=checksum,
            key=fields.get(GRE_FLAG_K),
            sequence=fields.get(GRE_FLAG_S),
        )

    def parse_l4(self, proto: int, offset: int, end: int) -> L4Info:
        if proto in (PROTO_TCP, PROTO_UDP):
            if end - offset < 4:
                raise _Problem(f"ports need 4 bytes, {end - offset} left")
            return L4Info(offset, proto, sport=self.u16(offset), dport=self.u16(offset + 2))
        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            if end - offset < 2:
                raise _Problem(f"ICMP type and code need 2 bytes, {end - offset} left")
            return L4Info(
                offset, proto, icmp_type=self.frame[offset], icmp_code=self.frame[offset + 1]
            )
        return L4Info(offset, proto)


def _ip_end(ip: IpInfo) -> int:
    if isinstance(ip, Ipv4Info):
        return ip.offset + ip.total_length
    return ip.offset + IPV6_HEADER_LEN + ip.payload_length


def _is_later_fragment(ip: IpInfo) -> bool:
    return isinstance(ip, Ipv4Info) and ip.frag_offset != 0


def describe(frame: bytes, *, max_vlans: int = 2) -> FrameInfo:
    """Describe ``frame`` layer by layer as far as it parses. Never raises on any bytes.

    Unlike the balancer this looks into any IP packet (plain TCP to the host, IPv6, outer
    fragments' first pieces), so tests and the test bed can say what a frame was.
    """
    return _Describer(bytes(frame), max_vlans).run()
