"""Section 9 of docs/packet-path.md, learning from ICMP: 9a ICMPv4 unreachables about GRE this
node sent, 9b the same in ICMPv6 about GRE over IPv6."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rusty_rail.model.icmp import IcmpReport, IcmpStat, IcmpWatch
from rusty_rail.model.state import Stat, Verdict
from rusty_rail.wire.build import ethernet, icmp, ipv4, ipv6, tcp, udp
from rusty_rail.wire.constants import ETH_P_IPV4, ETH_P_IPV6, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6
from rusty_rail.wire.fields import VlanTag, ipv4_address, ipv6_address
from rusty_rail.wire.frames import LB_IPV4, LB_IPV6, LB_MAC, ROUTER_IPV4, ROUTER_MAC
from tests.support.cases._base import (
    GRE_WEB,
    PacketCase,
    Section,
    WatchBuilder,
    _frame,
    standard_watch,
)

SECTION = Section()

# 9. Learning from ICMP: destination unreachable about GRE this node sent. Every such frame
# passes to the host unchanged (PASS_NOT_GRE); the ICMP counters and the report tell the rest.

BACKEND = "198.18.10.1"  # a watched backend of the standard state
UNKNOWN_BACKEND = "198.18.99.1"
SENT_GRE = ipv4(LB_IPV4, BACKEND, PROTO_GRE, GRE_WEB, ident=7)  # what the LB sent the backend


def icmp_frame(
    code: int,
    quoted: bytes,
    *,
    reporter: str = BACKEND,
    dst: str = LB_IPV4,
    type_: int = 3,
    rest: int = 0,
    vlans: Sequence[VlanTag | int] = (),
    **ip_fields: Any,
) -> bytes:
    """An ICMP message from ``reporter`` to ``dst`` quoting ``quoted``."""
    message = icmp(type_, code, quoted, rest=rest)
    return _frame(ipv4(reporter, dst, PROTO_ICMP, message, **ip_fields), vlans=vlans)


def _sent(
    dst: str = BACKEND, *, src: str = LB_IPV4, proto: int = PROTO_GRE, **fields: Any
) -> bytes:
    return ipv4(src, dst, proto, GRE_WEB, ident=7, **fields)


def learnt(
    name: str,
    description: str,
    frame: bytes,
    icmp_stat: IcmpStat | None,
    *,
    report: IcmpReport | None = None,
    watch: WatchBuilder = standard_watch,
    stat: Stat = Stat.PASS_NOT_GRE,
) -> PacketCase:
    """A case of section 9: passed unchanged, counted ``icmp_stat`` (None: no ICMP counter)."""
    case = PacketCase(
        name, description, frame, stat, Verdict.PASS, watch=watch, icmp_stat=icmp_stat,
        report=report,
    )  # fmt: skip
    SECTION.cases.append(case)
    return case


def _report(code: int, backend: str = BACKEND, reporter: str = BACKEND) -> IcmpReport:
    return IcmpReport(ipv4_address(backend), ipv4_address(reporter), 3, code)


for _code in [code for code in range(16) if code != 4]:
    learnt(
        f"icmp-code-{_code}-reported",
        f"destination unreachable code {_code} about a watched backend is reported",
        icmp_frame(_code, SENT_GRE),
        IcmpStat.REPORTED,
        report=_report(_code),
    )
learnt(
    "icmp-unknown-code-reported",
    "a code RFC 792 does not name is reported too: the control plane judges it",
    icmp_frame(200, SENT_GRE),
    IcmpStat.REPORTED,
    report=_report(200),
)
learnt(
    "icmp-frag-needed",
    "fragmentation needed is path-MTU information: counted, never reported",
    icmp_frame(4, SENT_GRE, rest=1400),
    IcmpStat.FRAG_NEEDED,
)
learnt(
    "icmp-from-router",
    "a router on the way reports the backend unreachable",
    icmp_frame(1, SENT_GRE, reporter=ROUTER_IPV4),
    IcmpStat.REPORTED,
    report=_report(1, reporter=ROUTER_IPV4),
)
learnt(
    "icmp-minimal-quote",
    "the quoted IPv4 header and 8 bytes of GRE are enough",
    icmp_frame(2, SENT_GRE[:28]),
    IcmpStat.REPORTED,
    report=_report(2),
)
learnt(
    "icmp-quote-with-options",
    "a quoted header with options, then 8 bytes",
    icmp_frame(2, _sent(options=b"\x01\x01\x01\x00")[:32]),
    IcmpStat.REPORTED,
    report=_report(2),
)
learnt(
    "icmp-vlan",
    "an unreachable behind VLAN tags",
    icmp_frame(3, SENT_GRE, vlans=(VlanTag(5), 6)),
    IcmpStat.REPORTED,
    report=_report(3),
)
learnt(
    "icmp-outer-options",
    "an unreachable whose own header has options",
    icmp_frame(2, SENT_GRE, options=b"\x01\x01\x01\x01"),
    IcmpStat.REPORTED,
    report=_report(2),
)
for _cut in (27, 20, 19, 1, 0):
    learnt(
        f"icmp-quote-cut-{_cut}",
        f"a quote of {_cut} bytes holds no IPv4 header and 8 bytes after it",
        icmp_frame(2, SENT_GRE[:_cut]),
        IcmpStat.MALFORMED,
    )
learnt(
    "icmp-quote-options-cut",
    "a quoted header with options and only 4 bytes after it",
    icmp_frame(2, _sent(options=b"\x01\x01\x01\x00")[:28]),
    IcmpStat.MALFORMED,
)
learnt(
    "icmp-quote-cut-by-total-length",
    "the quote ends where the ICMP's total length says, not where the padded frame does",
    ethernet(
        LB_MAC, ROUTER_MAC, ETH_P_IPV4,
        ipv4(BACKEND, LB_IPV4, PROTO_ICMP, icmp(3, 2, SENT_GRE[:24])) + SENT_GRE[24:], pad_to=120,
    ),
    IcmpStat.MALFORMED,
)  # fmt: skip
for _why, _quoted in (
    ("version", bytes([0x65]) + SENT_GRE[1:]),
    ("ihl", bytes([0x44]) + SENT_GRE[1:]),
):
    learnt(
        f"icmp-quote-bad-{_why}",
        f"the quoted IPv4 header has a bad {_why}",
        icmp_frame(2, _quoted),
        IcmpStat.MALFORMED,
    )
learnt(
    "icmp-quotes-udp",
    "an unreachable quoting UDP: the host's own business",
    icmp_frame(3, ipv4(LB_IPV4, BACKEND, 17, udp(5353, 53, b"query"))),
    IcmpStat.NOT_OUR_GRE,
)
learnt(
    "icmp-quotes-tcp",
    "an unreachable quoting TCP from this node",
    icmp_frame(1, ipv4(LB_IPV4, BACKEND, 6, tcp(40000, 22))),
    IcmpStat.NOT_OUR_GRE,
)
learnt(
    "icmp-quotes-gre-from-elsewhere",
    "GRE from another source (the router's own tunnel, say) is not this node's",
    icmp_frame(2, _sent(src=ROUTER_IPV4)),
    IcmpStat.NOT_OUR_GRE,
)
learnt(
    "icmp-unknown-backend",
    "GRE from this node to an address it does not watch",
    icmp_frame(2, _sent(UNKNOWN_BACKEND), reporter=UNKNOWN_BACKEND),
    IcmpStat.UNKNOWN_BACKEND,
)
learnt(
    "icmp-frag-needed-unknown-backend",
    "fragmentation needed about an address not watched",
    icmp_frame(4, _sent(UNKNOWN_BACKEND), rest=1400),
    IcmpStat.UNKNOWN_BACKEND,
)
learnt(
    "icmp-nothing-watched",
    "nothing watched: every address is unknown",
    icmp_frame(2, SENT_GRE),
    IcmpStat.UNKNOWN_BACKEND,
    watch=IcmpWatch,
)
learnt(
    "icmp-held",
    "the backend's report is out and not re-armed: counted, held back",
    icmp_frame(2, SENT_GRE),
    IcmpStat.HELD,
    watch=lambda: IcmpWatch({ipv4_address(BACKEND): False}),
)
learnt(
    "icmp-ring-full",
    "no room in the ring: lost, and the backend stays armed",
    icmp_frame(2, SENT_GRE),
    IcmpStat.LOST,
    watch=lambda: IcmpWatch({ipv4_address(BACKEND): True}, ring_free=0),
)
for _name, _description, _frame_bytes in (
    (
        "icmp-not-to-us",
        "an unreachable to another address",
        icmp_frame(2, SENT_GRE, dst=ROUTER_IPV4),
    ),
    ("icmp-echo", "an echo request to this node", icmp_frame(0, SENT_GRE, type_=8)),
    (
        "icmp-time-exceeded",
        "time exceeded is no liveness signal",
        icmp_frame(0, SENT_GRE, type_=11),
    ),
    (
        "icmp-fragment",
        "a fragment of an ICMP message",
        icmp_frame(2, SENT_GRE, more_fragments=True),
    ),
    (
        "icmp-header-cut",
        "fewer than 8 bytes of ICMP header",
        _frame(ipv4(BACKEND, LB_IPV4, PROTO_ICMP, bytes([3, 2, 0, 0, 0, 0, 0]))),
    ),
):
    learnt(_name, _description, _frame_bytes, None)  # fmt: skip

BACKEND_IPV6 = "2001:2::10:1"  # watched in the cases below
UNKNOWN_BACKEND_IPV6 = "2001:2::99:1"
ROUTER_IPV6_REPORTER = "2001:2::fe"
SENT_GRE6 = ipv6(LB_IPV6, BACKEND_IPV6, PROTO_GRE, GRE_WEB)  # what the LB sent the backend


def watch6(armed: bool = True, *, ring_free: int | None = None) -> WatchBuilder:
    """The standard watch and the IPv6 backend, armed or not."""

    def build() -> IcmpWatch:
        watch = standard_watch()
        watch.armed[ipv6_address(BACKEND_IPV6)] = armed
        watch.ring_free = ring_free
        return watch

    return build


def _icmp6_frame(
    type_: int,
    quoted: bytes,
    code: int = 0,
    *,
    reporter: str = BACKEND_IPV6,
    dst: str = LB_IPV6,
    next_header: int = PROTO_ICMPV6,
) -> bytes:
    # The ICMPv6 checksum is not verified by the balancer; zero is as good as any.
    message = bytes([type_, code, 0, 0, 0, 0, 0, 0]) + quoted
    return _frame(ipv6(reporter, dst, next_header, message), ethertype=ETH_P_IPV6)


def _report6(code: int, reporter: str = BACKEND_IPV6) -> IcmpReport:
    return IcmpReport(ipv6_address(BACKEND_IPV6), ipv6_address(reporter), 1, code)


for _code in (0, 1, 3, 4, 5, 6, 200):
    learnt(
        f"icmp6-unreachable-code-{_code}",
        f"ICMPv6 unreachable code {_code} quoting IPv6 GRE to a watched backend: reported",
        _icmp6_frame(1, SENT_GRE6, _code),
        IcmpStat.REPORTED,
        report=_report6(_code),
        watch=watch6(),
    )
learnt(
    "icmp6-unreachable-from-router",
    "a router on the way reports the backend: the reporter is the router",
    _icmp6_frame(1, SENT_GRE6, 3, reporter=ROUTER_IPV6_REPORTER),
    IcmpStat.REPORTED,
    report=_report6(3, ROUTER_IPV6_REPORTER),
    watch=watch6(),
)
learnt(
    "icmp6-unreachable-minimal-quote",
    "the quote is the IPv6 header and 8 bytes: enough",
    _icmp6_frame(1, SENT_GRE6[:48], 3),
    IcmpStat.REPORTED,
    report=_report6(3),
    watch=watch6(),
)
learnt(
    "icmp6-too-big",
    "packet too big quoting IPv6 GRE to a watched backend: path MTU, counted, not reported",
    _icmp6_frame(2, SENT_GRE6[:48]),
    IcmpStat.PACKET_TOO_BIG,
    watch=watch6(),
)
learnt(
    "icmp6-held",
    "the IPv6 backend's report is out and not re-armed: held",
    _icmp6_frame(1, SENT_GRE6, 3),
    IcmpStat.HELD,
    watch=watch6(False),
)
learnt(
    "icmp6-ring-full",
    "no room in the ring: lost, and the IPv6 backend stays armed",
    _icmp6_frame(1, SENT_GRE6, 3),
    IcmpStat.LOST,
    watch=watch6(ring_free=0),
)
learnt(
    "icmp6-unknown-backend",
    "quotes GRE from this node to an IPv6 address it does not watch",
    _icmp6_frame(1, ipv6(LB_IPV6, UNKNOWN_BACKEND_IPV6, PROTO_GRE, GRE_WEB), 3),
    IcmpStat.UNKNOWN_BACKEND,
    watch=watch6(),
)
for _name, _description, _quoted in (
    (
        "icmp6-quotes-udp",
        "quotes UDP, not GRE",
        ipv6(LB_IPV6, BACKEND_IPV6, 17, udp(1, 2, bytes(8))),
    ),
    (
        "icmp6-quotes-other-source",
        "quotes GRE from another source",
        ipv6(ROUTER_IPV6_REPORTER, BACKEND_IPV6, PROTO_GRE, GRE_WEB),
    ),
):
    learnt(_name, _description, _icmp6_frame(1, _quoted, 3), IcmpStat.NOT_OUR_GRE, watch=watch6())
for _name, _description, _quoted in (
    ("icmp6-quote-cut", "a quote shorter than an IPv6 header", SENT_GRE6[:39]),
    ("icmp6-quote-no-gre", "the IPv6 header quoted without 8 bytes after it", SENT_GRE6[:47]),
    ("icmp6-quote-empty", "an ICMPv6 header and no quote", b""),
    ("icmp6-quote-version-4", "the quoted header says version 4", bytes([0x45]) + SENT_GRE6[1:]),
):
    learnt(_name, _description, _icmp6_frame(1, _quoted, 3), IcmpStat.MALFORMED, watch=watch6())
for _name, _description, _frame_bytes in (
    ("icmp6-echo", "an ICMPv6 echo request", _icmp6_frame(128, SENT_GRE6)),
    ("icmp6-time-exceeded", "time exceeded is no liveness signal", _icmp6_frame(3, SENT_GRE6)),
    (
        "icmp6-not-to-us",
        "an unreachable to another address",
        _icmp6_frame(1, SENT_GRE6, 3, dst=ROUTER_IPV6_REPORTER),
    ),
    (
        "icmp6-not-icmp",
        "UDP to this node carrying the same bytes",
        _icmp6_frame(1, SENT_GRE6, 3, next_header=17),
    ),
    (
        "icmp6-header-cut",
        "fewer than 8 bytes of ICMPv6 header",
        _frame(
            ipv6(BACKEND_IPV6, LB_IPV6, PROTO_ICMPV6, bytes([1, 3, 0, 0])), ethertype=ETH_P_IPV6
        ),
    ),
):
    learnt(_name, _description, _frame_bytes, None, watch=watch6())  # fmt: skip

CASES = SECTION.cases
