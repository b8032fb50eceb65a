"""Section 8c of docs/packet-path.md, path MTU: a packet that an egress method of section 8b
would make longer than the next hop's MTU is not sent. The client is told the MTU it must use
(ICMP fragmentation needed, ICMPv6 packet too big, rate-limited per VIP), or the packet is
dropped (IPv4 without DF). Plain values, no kernel: the XDP program's twin is bpf/pmtu.h."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from rusty_rail.model.parse import Parsed
from rusty_rail.model.state import BackendEntry, Egress, Stat, Verdict
from rusty_rail.wire.checksum import internet_checksum
from rusty_rail.wire.constants import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    ICMP_CODE_FRAGMENTATION_NEEDED,
    ICMP_DEST_UNREACHABLE,
    ICMPV6_PACKET_TOO_BIG,
    IPV4_FLAG_DF,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    PROTO_ICMP,
    PROTO_ICMPV6,
)

#: The token bucket of a VIP on one CPU: at most this many tokens, one more every 2^20 ns.
TOO_BIG_BURST = 64
TOO_BIG_REFILL_SHIFT = 20
#: The ICMP error's IPv4 TOS (precedence "internetwork control", as routers send errors), and
#: its TTL or hop limit.
ICMP_ERROR_TOS = 0xC0
ICMP_ERROR_TTL = 64
ICMP_HEADER_LEN = 8
#: IPv4 quotes the inner header and 8 bytes; IPv6 as much as fits in 1280 bytes (RFC 4443).
IPV4_QUOTE_AFTER_HEADER = 8
IPV6_QUOTE_MAX = 1280 - IPV6_HEADER_LEN - ICMP_HEADER_LEN

#: What the method adds in front of the inner packet, for an IPv4 / IPv6 backend (section 8b).
_ADDED_AFTER_OUTER_IP = {Egress.GRE: 4, Egress.IPIP: 0, Egress.VXLAN: 30, Egress.GENEVE: 30}


class TooBig(IntEnum):
    """Why a too-big packet was not sent: the reason of ``vip_too_big`` (index vip * 3 +
    reason)."""

    ICMP = 0  # the client was sent an ICMP error instead
    LIMITED = 1  # the VIP's bucket on this CPU was empty: dropped
    NO_DF = 2  # inner IPv4 without DF: dropped


TOO_BIG_COUNT = len(TooBig)
TOO_BIG_STATS = {
    TooBig.ICMP: Stat.TOO_BIG_ICMP,
    TooBig.LIMITED: Stat.TOO_BIG_LIMITED,
    TooBig.NO_DF: Stat.TOO_BIG_NO_DF,
}
TOO_BIG_VERDICTS = {
    Stat.TOO_BIG_ICMP: Verdict.TX,
    Stat.TOO_BIG_LIMITED: Verdict.DROP,
    Stat.TOO_BIG_NO_DF: Verdict.DROP,
}


@dataclass(slots=True)
class Bucket:
    """One VIP's bucket on one CPU (struct too_big_bucket); all zero is full at first use."""

    stamp_ns: int = 0
    tokens: int = 0


@dataclass
class TooBigLimiter:
    """The VIPs' buckets on the CPU a packet runs on, and the time it runs at. The reference
    has no clock: ``now_ns`` is what bpf_ktime_get_ns would say. A VIP without a bucket here
    has a full one (the program's all-zero bucket is full at first use)."""

    buckets: dict[int, Bucket] = field(default_factory=dict)
    now_ns: int = 1 << 62

    def take(self, vip_index: int) -> bool:
        """Refill the VIP's bucket, then take a token if one is left."""
        bucket = self.buckets.setdefault(vip_index, Bucket(self.now_ns, TOO_BIG_BURST))
        if self.now_ns > bucket.stamp_ns:
            added = (self.now_ns - bucket.stamp_ns) >> TOO_BIG_REFILL_SHIFT
            if added:
                bucket.tokens = min(TOO_BIG_BURST, bucket.tokens + added)
                bucket.stamp_ns = self.now_ns
        if bucket.tokens == 0:
            return False
        bucket.tokens -= 1
        return True


def overhead(backend: BackendEntry) -> int:
    """The bytes ``backend``'s method (not GRE passthrough) puts in front of the inner packet."""
    if backend.egress == Egress.ROUTE:
        return 0
    outer = IPV6_HEADER_LEN if len(backend.addr) == 16 else IPV4_HEADER_LEN
    return outer + _ADDED_AFTER_OUTER_IP[backend.egress]


def passthrough_overhead(frame: bytes, parsed: Parsed, backend: BackendEntry) -> int | None:
    """What GRE passthrough puts in front of the inner packet when it changes the outer family
    (the new outer header and the GRE header as it came); None when it keeps the family: the
    packet leaves as long as it came, and is not checked."""
    backend_family = 6 if len(backend.addr) == 16 else 4
    if backend_family == parsed.outer_family:
        return None
    if parsed.outer_family == 4:
        gre = parsed.l3 + (frame[parsed.l3] & 0x0F) * 4
    else:
        gre = parsed.l3 + IPV6_HEADER_LEN
    outer = IPV6_HEADER_LEN if backend_family == 6 else IPV4_HEADER_LEN
    return outer + parsed.inner - gre


def too_big(
    frame: bytes,
    parsed: Parsed,
    backend: BackendEntry,
    vip_index: int,
    limiter: TooBigLimiter | None = None,
) -> tuple[TooBig, bytes] | None:
    """None when the packet fits the next hop's MTU (or the MTU is unknown, or GRE passthrough
    keeps the outer family); else why it is not sent and the frame that leaves instead (the
    ICMP error for ``TooBig.ICMP``, else the frame unchanged). ``limiter`` None: every bucket
    full."""
    mtu = 0 if backend.next_hop is None else backend.next_hop.mtu
    if backend.egress == Egress.GRE and not parsed.routed:
        added = passthrough_overhead(frame, parsed, backend)
    else:
        added = overhead(backend)
    if mtu == 0 or added is None or parsed.inner_end - parsed.inner + added <= mtu:
        return None
    flags = struct.unpack_from("!H", frame, parsed.inner + 6)[0]
    if parsed.inner_family == 4 and not flags & IPV4_FLAG_DF:
        return TooBig.NO_DF, frame
    if not (limiter or TooBigLimiter()).take(vip_index):
        return TooBig.LIMITED, frame
    return TooBig.ICMP, icmp_error(frame, parsed, mtu - added)


def icmp_error(frame: bytes, parsed: Parsed, client_mtu: int) -> bytes:
    """The frame that tells the client its packet was too big (section 8c's table): back to the
    Ethernet address it came from, from the inner destination (the VIP) to the inner source."""
    l3 = parsed.l3
    link = bytearray(frame[:l3])
    link[0:6], link[6:12] = frame[6:12], frame[0:6]
    inner = frame[parsed.inner : parsed.inner_end]
    if parsed.inner_family == 4:
        quote_len = min(len(inner), (inner[0] & 0x0F) * 4 + IPV4_QUOTE_AFTER_HEADER) & ~3
        body = struct.pack(
            "!BBHHH", ICMP_DEST_UNREACHABLE, ICMP_CODE_FRAGMENTATION_NEEDED, 0, 0, client_mtu
        )
        body += inner[:quote_len]
        body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
        ip = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s", 0x45, ICMP_ERROR_TOS, IPV4_HEADER_LEN + len(body), 0,
                IPV4_FLAG_DF, ICMP_ERROR_TTL, PROTO_ICMP, 0, inner[16:20], inner[12:16],
            )
        )  # fmt: skip
        ip[10:12] = struct.pack("!H", internet_checksum(bytes(ip)))
        link[l3 - 2 : l3] = struct.pack("!H", ETH_P_IPV4)
        return bytes(link) + bytes(ip) + body
    quote_len = min(len(inner), IPV6_QUOTE_MAX) & ~3
    src, dst = inner[24:40], inner[8:24]
    body = struct.pack("!BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, client_mtu) + inner[:quote_len]
    pseudo = src + dst + struct.pack("!IxxxB", len(body), PROTO_ICMPV6)
    body = body[:2] + struct.pack("!H", internet_checksum(pseudo + body)) + body[4:]
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body), PROTO_ICMPV6, ICMP_ERROR_TTL, src, dst)
    link[l3 - 2 : l3] = struct.pack("!H", ETH_P_IPV6)
    return bytes(link) + header + body
