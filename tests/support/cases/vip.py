"""Section 6 of docs/packet-path.md, VIP match: port VIP, address VIP, the default set, and no
VIP at all (passed or dropped)."""

from __future__ import annotations

from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import Action, Stat, Verdict
from rusty_rail.wire.constants import PROTO_TCP
from rusty_rail.wire.frames import OUTER_INNER_IPV6, encapsulate, inner_ipv4, inner_ipv6
from tests.support.cases._base import (
    CLIENT6,
    DEFAULT_VIP_INDEX,
    DNS_TCP_FLOW,
    NO_VIP6_FLOW,
    NO_VIP_FLOW,
    VIP_WEB,
    WEB_ADDRESS_VIP,
    WEB_FLOW,
    WEB_OTHER_PORT_FLOW,
    WEB_PORT_VIP,
    Section,
    variant,
)

SECTION = Section()
kept, forwarded = SECTION.kept, SECTION.forwarded

# 6. VIP match

forwarded(
    "vip-port-over-address",
    "TCP/80 takes the port VIP over the address VIP",
    WEB_FLOW,
    WEB_PORT_VIP,
)
forwarded("vip-address", "TCP/443 takes the address VIP", WEB_OTHER_PORT_FLOW, WEB_ADDRESS_VIP)
_WITH_DEFAULT = variant(settings={"default_vip": DEFAULT_VIP_INDEX})
forwarded(
    "vip-default", "no VIP, the default set", NO_VIP_FLOW, DEFAULT_VIP_INDEX, state=_WITH_DEFAULT
)
forwarded(
    "vip-address-over-default",
    "the address VIP wins over the default set",
    WEB_OTHER_PORT_FLOW,
    WEB_ADDRESS_VIP,
    state=_WITH_DEFAULT,
)
forwarded(
    "vip-default-for-wrong-proto",
    "TCP to the UDP-only VIP: the default set",
    DNS_TCP_FLOW,
    DEFAULT_VIP_INDEX,
    state=_WITH_DEFAULT,
)
NO_VIP_FRAME = encapsulate(inner_ipv4(NO_VIP_FLOW))
kept(
    "vip-none-pass",
    "no VIP: passed to the host (default)",
    NO_VIP_FRAME,
    Stat.NO_VIP,
    Verdict.PASS,
    flow=NO_VIP_FLOW,
)
kept(
    "vip-none-drop",
    "no VIP with no_vip_action DROP",
    NO_VIP_FRAME,
    Stat.NO_VIP,
    Verdict.DROP,
    state=variant(settings={"no_vip_action": Action.DROP}),
    flow=NO_VIP_FLOW,
)
kept(
    "vip-none-wrong-proto",
    "TCP to the UDP-only VIP without a default set",
    encapsulate(inner_ipv4(DNS_TCP_FLOW)),
    Stat.NO_VIP,
    Verdict.PASS,
)

# Inner IPv6 flows match the IPv6 VIPs (their own map) in the same order.
NO_VIP6_FRAME = encapsulate(inner_ipv6(NO_VIP6_FLOW), OUTER_INNER_IPV6)
kept(
    "vip6-none-pass",
    "inner IPv6 to no IPv6 VIP: passed to the host (default)",
    NO_VIP6_FRAME,
    Stat.NO_VIP,
    Verdict.PASS,
    flow=NO_VIP6_FLOW,
)
kept(
    "vip6-none-drop",
    "inner IPv6 to no IPv6 VIP with no_vip_action DROP",
    NO_VIP6_FRAME,
    Stat.NO_VIP,
    Verdict.DROP,
    state=variant(settings={"no_vip_action": Action.DROP}),
    flow=NO_VIP6_FLOW,
)
forwarded(
    "vip6-default",
    "inner IPv6 to no IPv6 VIP: the default set",
    NO_VIP6_FLOW,
    DEFAULT_VIP_INDEX,
    outer=OUTER_INNER_IPV6,
    inner=inner_ipv6(NO_VIP6_FLOW),
    state=_WITH_DEFAULT,
)
_MAPPED_FLOW = Flow.of(CLIENT6, f"::ffff:{VIP_WEB}", PROTO_TCP, 40000, 80)
kept(
    "vip6-ipv4-mapped-is-not-the-ipv4-vip",
    "inner IPv6 to ::ffff:<IPv4 VIP>: families never match each other's VIPs",
    encapsulate(inner_ipv6(_MAPPED_FLOW), OUTER_INNER_IPV6),
    Stat.NO_VIP,
    Verdict.PASS,
    flow=_MAPPED_FLOW,
)

CASES = SECTION.cases
