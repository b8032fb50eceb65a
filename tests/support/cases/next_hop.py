"""Section 8 of docs/packet-path.md, next hop and rewrite: TX, REDIRECT and the rewritten
outer header."""

from __future__ import annotations

from dataclasses import replace

from rusty_rail.model.state import Stat, Verdict
from rusty_rail.wire.constants import ETH_P_8021AD
from rusty_rail.wire.fields import VlanTag
from rusty_rail.wire.frames import Outer, inner_ipv4
from tests.support.cases._base import (
    _STANDARD,
    _WEB_PICK,
    DNS_FLOW,
    DNS_PORT_VIP,
    OTHER_IFINDEX,
    WEB_ADDRESS_VIP,
    WEB_FLOW,
    WEB_FRAME,
    WEB_OTHER_PORT_FLOW,
    WEB_PORT_VIP,
    Section,
    variant,
)

SECTION = Section()
kept, forwarded = SECTION.kept, SECTION.forwarded

# 8. Next hop and sending

kept(
    "nexthop-unresolved",
    "the picked backend has no next hop: dropped, nothing recorded",
    WEB_FRAME,
    Stat.DROP_NO_NEXTHOP,
    Verdict.DROP,
    state=variant(backends={_WEB_PICK: replace(_STANDARD.backends[_WEB_PICK], next_hop=None)}),
    flow=WEB_FLOW,
)
forwarded("send-tx-same-ifindex", "next hop on the ingress interface: TX", WEB_FLOW, WEB_PORT_VIP)
forwarded("send-tx-ifindex-0", "next hop ifindex 0: TX", WEB_OTHER_PORT_FLOW, WEB_ADDRESS_VIP)
forwarded("send-redirect", "next hop on another interface: REDIRECT", DNS_FLOW, DNS_PORT_VIP)
forwarded(
    "send-tx-other-ingress",
    "the same next hop seen from its own interface: TX",
    DNS_FLOW,
    DNS_PORT_VIP,
    ingress_ifindex=OTHER_IFINDEX,
)
forwarded(
    "send-redirect-from-other-ingress",
    "next hop on interface 1, packet in on interface 2: REDIRECT",
    WEB_FLOW,
    WEB_PORT_VIP,
    ingress_ifindex=OTHER_IFINDEX,
)
forwarded(
    "send-everything-carried",
    "VLANs, outer options, GRE C/K/S, inner options and padding all carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(
        vlans=(VlanTag(3, ETH_P_8021AD), 4),
        options=b"\x01\x01\x01\x00",
        gre_checksum=True,
        gre_key=42,
        gre_sequence=1,
        pad_to=300,
    ),
    inner=inner_ipv4(WEB_FLOW, b"payload", options=b"\x01\x01\x01\x01"),
)

CASES = SECTION.cases
