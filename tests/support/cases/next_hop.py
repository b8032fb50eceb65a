"""Section 8 of docs/packet-path.md, next hop and rewrite: TX, REDIRECT and the rewritten
outer header."""

from __future__ import annotations

from dataclasses import replace

from rusty_rail.model.state import BackendEntry, BackendState, Stat, Verdict, VipFlow
from rusty_rail.wire.constants import ETH_P_8021AD, ETH_P_IPV6
from rusty_rail.wire.fields import VlanTag, ipv6_address
from rusty_rail.wire.frames import OUTER_IPV6, Outer, inner_ipv4, inner_ipv6
from tests.support.cases._base import (
    _STANDARD,
    _WEB_PICK,
    DNS_FLOW,
    DNS_PORT_VIP,
    OTHER_IFINDEX,
    WEB6_FLOW,
    WEB_ADDRESS_VIP,
    WEB_FLOW,
    WEB_FRAME,
    WEB_OTHER_PORT_FLOW,
    WEB_PORT_VIP,
    Section,
    StateBuilder,
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
    vip_flow=(WEB_PORT_VIP, VipFlow.DROP_NO_NEXTHOP),
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

# 8. The rewrite by the backend's family: the web flow's pick (and every other web port VIP
# slot) made an IPv6 backend, behind the same next hops.


def _ipv6_backends(**settings: object) -> StateBuilder:
    backends: dict[int, BackendEntry | None] = {
        index: BackendEntry(
            ipv6_address(f"2001:2:0:10::{index + 1}"),
            WEB_PORT_VIP,
            1,
            BackendState.UP,
            _STANDARD.backends[index].next_hop,
        )
        for index in (0, 1, 2)
    }
    return variant(settings=settings, backends=backends)


_V6_BACKENDS = _ipv6_backends()
_TOS = 0xB9  # DSCP 46 and ECN 01: the traffic class carries both
forwarded(
    "send-ipv4-to-ipv6-backend",
    "outer IPv4 to an IPv6 backend: a new IPv6 header, TOS as traffic class, flow label 0",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(tos=_TOS),
    state=_V6_BACKENDS,
)
forwarded(
    "send-ipv4-options-to-ipv6-backend",
    "outer IPv4 options dropped, VLANs, GRE C/K/S and padding carried, to an IPv6 backend",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(
        vlans=(VlanTag(3, ETH_P_8021AD), 4),
        options=b"\x01\x01\x01\x00" * 3,
        gre_checksum=True,
        gre_key=42,
        gre_sequence=1,
        pad_to=300,
    ),
    state=_V6_BACKENDS,
)
forwarded(
    "send-ipv6-to-ipv6-backend",
    "outer IPv6 to an IPv6 backend: addresses and hop limit; traffic class, flow label kept",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=replace(OUTER_IPV6, tos=_TOS, flow_label=0xABCDE, ttl=3),
    state=_ipv6_backends(outer_ttl=17),
)
forwarded(
    "send-ipv6-to-ipv4-backend",
    "outer IPv6 to an IPv4 backend: a new IPv4 header, traffic class as TOS, ID 0 and DF",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=replace(OUTER_IPV6, tos=_TOS, flow_label=0xABCDE, ttl=3),
    state=variant(settings={"outer_ttl": 17}),
)
forwarded(
    "send-ipv6-everything-carried",
    "outer IPv6 in two VLANs, GRE C/K/S, padding, to an IPv4 backend on another port",
    DNS_FLOW,
    DNS_PORT_VIP,
    outer=replace(
        OUTER_IPV6,
        vlans=(VlanTag(3, ETH_P_8021AD), 4),
        gre_checksum=True,
        gre_key=42,
        gre_sequence=1,
        pad_to=300,
    ),
)
forwarded(
    "send-ipv6-inner-ipv6-to-ipv6-backend",
    "inner IPv6 in outer IPv6 to an IPv6 backend",
    WEB6_FLOW,
    WEB_PORT_VIP,
    outer=replace(OUTER_IPV6, gre_protocol=ETH_P_IPV6),
    inner=inner_ipv6(WEB6_FLOW),
    state=_V6_BACKENDS,
)
forwarded(
    "send-ipv4-inner-ipv6-to-ipv6-backend",
    "inner IPv6 in outer IPv4 to an IPv6 backend, in a VLAN",
    WEB6_FLOW,
    WEB_PORT_VIP,
    outer=Outer(gre_protocol=ETH_P_IPV6, vlans=(5,)),
    inner=inner_ipv6(WEB6_FLOW),
    state=_V6_BACKENDS,
)

CASES = SECTION.cases
