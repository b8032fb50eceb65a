"""Build and describe the frames the balancer handles: Ethernet, VLAN, IPv4, IPv6, GRE, L4.

Pure byte work for the reference pipeline, the tests and the test bed; nothing here touches
the kernel. Builders take the fields a test cares about; ``describe`` never raises.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from rusty_rail.model.flowhash import PROTO_TCP, PROTO_UDP, Flow

ETH_HEADER_LEN = 14
VLAN_TAG_LEN = 4
ETH_MIN_FRAME = 60  # without the FCS: shorter frames are padded on the wire

ETH_P_IPV4 = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_TEB = 0x6558  # transparent Ethernet bridging, the GRE protocol of an encapsulated frame
VLAN_TPIDS = frozenset({ETH_P_8021Q, ETH_P_8021AD})

PROTO_ICMP = 1
PROTO_GRE = 47
PROTO_ICMPV6 = 58

IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
IPV4_FLAG_RESERVED = 0x8000
IPV4_FLAG_DF = 0x4000
IPV4_FLAG_MF = 0x2000
IPV4_OFFSET_MASK = 0x1FFF

GRE_FLAG_C = 0x8000  # checksum present
GRE_FLAG_R = 0x4000  # routing present (RFC 1701; must be 0 since RFC 2784)
GRE_FLAG_K = 0x2000  # key present (RFC 2890)
GRE_FLAG_S = 0x1000  # sequence number present (RFC 2890)
GRE_FLAG_STRICT = 0x0800  # strict source route (RFC 1701)
GRE_RECURSION_MASK = 0x0700  # recursion control (RFC 1701)
GRE_RESERVED0_MASK = 0x00F8
GRE_VERSION_MASK = 0x0007

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8

MacLike = bytes | str
Ipv4Like = bytes | str
Ipv6Like = bytes | str


# --- Addresses -------------------------------------------------------------------------------


def mac(value: MacLike) -> bytes:
    """A MAC address as 6 bytes, from bytes or "aa:bb:cc:dd:ee:ff"."""
    if isinstance(value, bytes):
        if len(value) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(value)}")
        return value
    parts = value.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {value!r}")
    return bytes(int(part, 16) for part in parts)


def format_mac(value: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in value)


def ipv4_address(value: Ipv4Like) -> bytes:
    """An IPv4 address as 4 bytes, from bytes or a dotted string."""
    if isinstance(value, bytes):
        if len(value) != 4:
            raise ValueError(f"an IPv4 address is 4 bytes, got {len(value)}")
        return value
    return ipaddress.IPv4Address(value).packed


def ipv6_address(value: Ipv6Like) -> bytes:
    """An IPv6 address as 16 bytes, from bytes or a string."""
    if isinstance(value, bytes):
        if len(value) != 16:
            raise ValueError(f"an IPv6 address is 16 bytes, got {len(value)}")
        return value
    return ipaddress.IPv6Address(value).packed


def format_ip(value: bytes) -> str:
    """An address of 4 or 16 bytes as text; anything else as hex (for descriptions of garbage)."""
    if len(value) in (4, 16):
        return str(ipaddress.ip_address(value))
    return value.hex()


# --- Checksums -------------------------------------------------------------------------------


def fold(total: int) -> int:
    """Fold the carries of a ones'-complement sum back into 16 bits (end-around carry)."""
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_complement_sum(data: bytes) -> int:
    """The 16-bit ones'-complement sum of ``data`` (RFC 1071); an odd length is padded with 0."""
    if len(data) % 2:
        data += b"\x00"
    return fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def internet_checksum(data: bytes) -> int:
    """The Internet checksum of ``data`` (RFC 1071): the complement of the ones'-complement sum.

    Computed over a header whose checksum field is zero it gives the value to store; computed
    over a header with its checksum in place it gives 0 when the checksum is valid.
    """
    return ~ones_complement_sum(data) & 0xFFFF


def checksum_update(checksum: int, old_words: Sequence[int], new_words: Sequence[int]) -> int:
    """Update ``checksum`` for 16-bit words that changed, by RFC 1624 equation 3.

    HC' = ~(~HC + ~m + m') for each old word m and new word m', summed with end-around carry.
    The sum is taken over every word given, changed or not (an unchanged word adds 0xFFFF,
    which is zero in ones' complement but keeps the sum away from the all-zero case).
    """
    if len(old_words) != len(new_words):
        raise ValueError(f"{len(old_words)} old words but {len(new_words)} new words")
    total = ~checksum & 0xFFFF
    for old, new in zip(old_words, new_words, strict=True):
        total += (~old & 0xFFFF) + (new & 0xFFFF)
    return ~fold(total) & 0xFFFF


def words16(data: bytes) -> list[int]:
    """``data`` (an even number of bytes) as big-endian 16-bit words."""
    if len(data) % 2:
        raise ValueError(f"expected an even number of bytes, got {len(data)}")
    return list(struct.unpack(f"!{len(data) // 2}H", data))


def checksum_update_bytes(checksum: int, old: bytes, new: bytes) -> int:
    """:func:`checksum_update` for a run of bytes that changed from ``old`` to ``new``."""
    return checksum_update(checksum, words16(old), words16(new))


def ipv4_pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The IPv4 pseudo-header that TCP and UDP checksums cover (RFC 793, RFC 768)."""
    return src + dst + struct.pack("!BBH", 0, proto, length)


# --- Ethernet --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VlanTag:
    """One 802.1Q (TPID 0x8100) or 802.1ad (TPID 0x88A8) tag."""

    vid: int
    tpid: int = ETH_P_8021Q
    pcp: int = 0
    dei: bool = False

    @property
    def tci(self) -> int:
        return (self.pcp & 0x7) << 13 | int(self.dei) << 12 | (self.vid & 0xFFF)

    def to_bytes(self) -> bytes:
        return struct.pack("!HH", self.tpid, self.tci)

    @classmethod
    def from_bytes(cls, tpid: int, tci: int) -> VlanTag:
        return cls(vid=tci & 0xFFF, tpid=tpid, pcp=tci >> 13, dei=bool(tci & 0x1000))


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


# --- The balancer's input: Ethernet / outer IPv4 / GRE / inner IPv4 / L4 ---------------------

#: Addresses of the examples and tests (RFC 2544 benchmarking range, never routed).
ROUTER_MAC = "02:00:00:00:00:01"
LB_MAC = "02:00:00:00:00:02"
ROUTER_IPV4 = "198.18.0.1"
LB_IPV4 = "198.18.0.2"


@dataclass(frozen=True, slots=True)
class Outer:
    """Everything around the inner packet of a GRE frame: Ethernet, outer IPv4 and GRE.

    Defaults describe a router sending to the LB; ``dataclasses.replace`` makes variants.
    """

    eth_dst: MacLike = LB_MAC
    eth_src: MacLike = ROUTER_MAC
    vlans: tuple[VlanTag | int, ...] = ()
    src: Ipv4Like = ROUTER_IPV4
    dst: Ipv4Like = LB_IPV4
    ttl: int = 64
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
    ip_packet = ipv4(
        outer.src,
        outer.dst,
        PROTO_GRE,
        gre_packet,
        ttl=outer.ttl,
        ident=outer.ident,
        dont_fragment=outer.dont_fragment,
        more_fragments=outer.more_fragments,
        frag_offset=outer.frag_offset,
        reserved_flag=outer.reserved_flag,
        options=outer.options,
        checksum=outer.ip_checksum,
        total_length=outer.total_length,
    )
    return ethernet(
        outer.eth_dst, outer.eth_src, ETH_P_IPV4, ip_packet, vlans=outer.vlans, pad_to=outer.pad_to
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


# --- Describing a frame ----------------------------------------------------------------------


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
