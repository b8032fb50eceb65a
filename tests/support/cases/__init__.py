"""Hand-built packet cases, one or more for every rule of docs/packet-path.md, one module per
section of it.

Each case is a frame, a fresh data-plane state and the outcome the spec asks for (stat,
verdict, output bytes, VIP and backend counted). The reference pipeline's unit tests and the
BPF differential tests both run them, in the order of ``CASES``.
"""

from __future__ import annotations

from tests.support.cases import (
    affinity,
    conntrack,
    egress,
    ethernet,
    gre,
    icmp,
    inner,
    maglev,
    next_hop,
    outer,
    pmtu,
    vip,
)
from tests.support.cases._base import (
    CLIENT,
    DEFAULT_VIP_INDEX,
    DNS_FLOW,
    DNS_PORT_VIP,
    NO_VIP_FLOW,
    OTHER_IFINDEX,
    VIP_WEB,
    WEB_ADDRESS_VIP,
    WEB_FLOW,
    WEB_FRAME,
    WEB_OTHER_PORT_FLOW,
    WEB_PORT_VIP,
    PacketCase,
    standard_state,
    table_pick,
    variant,
)

__all__ = [
    "CASES",
    "CLIENT",
    "DEFAULT_VIP_INDEX",
    "DNS_FLOW",
    "DNS_PORT_VIP",
    "NO_VIP_FLOW",
    "OTHER_IFINDEX",
    "VIP_WEB",
    "WEB_ADDRESS_VIP",
    "WEB_FLOW",
    "WEB_FRAME",
    "WEB_OTHER_PORT_FLOW",
    "WEB_PORT_VIP",
    "PacketCase",
    "case_by_name",
    "standard_state",
    "table_pick",
    "variant",
]

#: Every case, section by section in the order the cases were first written (the VIP match
#: before the connection table); test ids and the tests that take the first cases follow it.
CASES: list[PacketCase] = [
    *ethernet.CASES,
    *outer.CASES,
    *gre.CASES,
    *inner.CASES,
    *vip.CASES,
    *conntrack.CASES,
    *maglev.CASES,
    *next_hop.CASES,
    *icmp.CASES,
    *egress.CASES,
    *pmtu.CASES,
    *affinity.CASES,
]


def case_by_name(name: str) -> PacketCase:
    return next(case for case in CASES if case.name == name)


def _check_unique_names() -> None:
    names = [case.name for case in CASES]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise AssertionError(f"duplicate case names: {sorted(duplicates)}")


_check_unique_names()
