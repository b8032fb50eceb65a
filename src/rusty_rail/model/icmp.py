"""The ICMP part of the data-plane state as plain values: which backend addresses the balancer
watches for "destination unreachable" about the GRE it sent them, what it counts, what it reports.

docs/packet-path.md section 9 is the contract; the reference pipeline reads this model directly
and rusty_rail.dataplane.icmp_maps encodes it into the BPF maps (bpf/balancer_types.h).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

#: RFC 792 and RFC 1812 names of the destination-unreachable codes.
UNREACHABLE_CODES: Final[dict[int, str]] = {
    0: "network unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    3: "port unreachable",
    4: "fragmentation needed",
    5: "source route failed",
    6: "destination network unknown",
    7: "destination host unknown",
    8: "source host isolated",
    9: "network administratively prohibited",
    10: "host administratively prohibited",
    11: "network unreachable for TOS",
    12: "host unreachable for TOS",
    13: "communication administratively prohibited",
    14: "host precedence violation",
    15: "precedence cutoff in effect",
}


#: RFC 4443 names of the ICMPv6 destination-unreachable codes.
UNREACHABLE_CODES_V6: Final[dict[int, str]] = {
    0: "no route to destination",
    1: "administratively prohibited",
    2: "beyond scope of source address",
    3: "address unreachable",
    4: "port unreachable",
    5: "source address failed policy",
    6: "reject route",
}


def code_name(code: int, *, ipv6: bool = False) -> str:
    return (UNREACHABLE_CODES_V6 if ipv6 else UNREACHABLE_CODES).get(code, f"code {code}")


class IcmpStat(IntEnum):
    """What the balancer made of an ICMP or ICMPv6 destination unreachable (or ICMPv6 packet too
    big) addressed to it; the index in the BPF icmp_stats array. Such a packet also counts
    PASS_NOT_GRE like any other host traffic."""

    REPORTED = 0  # about a watched backend: reported to the control plane
    HELD = 1  # about a watched backend whose previous report is not re-armed yet
    LOST = 2  # about a watched backend, but the report ring was full (stays armed)
    FRAG_NEEDED = 3  # code 4 about a watched backend: path MTU, counted, never reported
    UNKNOWN_BACKEND = 4  # quotes GRE from this node to an address it does not watch
    NOT_OUR_GRE = 5  # quotes something else: not GRE, or GRE from another source
    MALFORMED = 6  # the quoted IPv4 or IPv6 header is cut short or invalid
    PACKET_TOO_BIG = 7  # ICMPv6 type 2 about a watched backend: path MTU, never reported


ICMP_STAT_COUNT: Final = len(IcmpStat)


@dataclass(frozen=True, slots=True)
class IcmpReport:
    """One report through the ring buffer: the backend the quoted GRE packet was sent to, who
    sent the ICMP (the backend itself or a router on the way), and its type and code."""

    backend: bytes
    reporter: bytes
    type: int
    code: int

    @property
    def backend_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.backend)

    @property
    def reporter_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.reporter)

    @property
    def protocol(self) -> str:
        return "ICMPv6" if len(self.backend) == 16 else "ICMP"

    def __str__(self) -> str:
        return (
            f"{self.protocol} type {self.type} code {self.code} "
            f"({code_name(self.code, ipv6=len(self.backend) == 16)}) about "
            f"{self.backend_address} from {self.reporter_address}"
        )


@dataclass
class IcmpWatch:
    """The watched backend addresses (4 bytes for IPv4, 16 for IPv6) and whether each may
    report: a report disarms its address until the control plane arms it again (the
    per-backend rate limit)."""

    armed: dict[bytes, bool] = field(default_factory=dict)
    #: How many more reports the ring buffer takes (None: as many as come); a report that
    #: finds no room is LOST and leaves its backend armed.
    ring_free: int | None = None

    @classmethod
    def of(cls, addresses: list[bytes] | set[bytes], *, armed: bool = True) -> IcmpWatch:
        return cls(dict.fromkeys(addresses, armed))
