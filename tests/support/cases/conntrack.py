"""Section 5 of docs/packet-path.md, the connection table: hits, stale entries and misses."""

from __future__ import annotations

from dataclasses import replace

from rusty_rail.model.state import NONE_INDEX, BackendState, CtEntry, Stat, Verdict, VipFlow
from rusty_rail.wire.frames import OUTER_INNER_IPV6, encapsulate, inner_ipv4, inner_ipv6
from tests.support.cases._base import (
    _STANDARD,
    _WEB_PICK,
    DNS_PORT_VIP,
    NO_VIP6_FLOW,
    NO_VIP_FLOW,
    TABLE_SIZE,
    WEB6_FLOW,
    WEB_ADDRESS_VIP,
    WEB_FLOW,
    WEB_FRAME,
    WEB_PORT_VIP,
    Section,
    table_pick,
    variant,
    with_state,
)

SECTION = Section()
kept, forwarded = SECTION.kept, SECTION.forwarded

# 5. Connection table

_WEB_OTHER = next(index for index in (0, 1, 2) if index != _WEB_PICK)  # not the table's pick
_WEB_OTHER_BACKEND = _STANDARD.backends[_WEB_OTHER]

forwarded(
    "ct-miss",
    "a new flow is recorded",
    WEB_FLOW,
    WEB_PORT_VIP,
)
forwarded(
    "ct-hit",
    "a valid entry wins over the table",
    WEB_FLOW,
    WEB_PORT_VIP,
    state=variant(conntrack={WEB_FLOW: CtEntry(_WEB_OTHER, 1)}),
    stat=Stat.CT_HIT,
    backend_index=_WEB_OTHER,
)
forwarded(
    "ct-hit-drain",
    "a draining backend keeps its flows (it is out of the table)",
    WEB_FLOW,
    WEB_PORT_VIP,
    state=variant(
        conntrack={WEB_FLOW: CtEntry(_WEB_OTHER, 1)},
        backends={_WEB_OTHER: with_state(_WEB_OTHER_BACKEND, BackendState.DRAIN)},
        tables={WEB_PORT_VIP: [_WEB_PICK] * TABLE_SIZE},
    ),
    stat=Stat.CT_HIT,
    backend_index=_WEB_OTHER,
)
forwarded(
    "ct-hit-vip-gone",
    "a valid entry wins even when the flow's VIP is gone",
    NO_VIP_FLOW,
    WEB_ADDRESS_VIP,
    state=variant(conntrack={NO_VIP_FLOW: CtEntry(3, 1)}),
    stat=Stat.CT_HIT,
    backend_index=3,
)
forwarded(
    "ct-hit-counts-slot-vip",
    "a hit counts the slot's VIP, not the VIP the flow would match now",
    WEB_FLOW,
    DNS_PORT_VIP,
    state=variant(conntrack={WEB_FLOW: CtEntry(4, 1)}),
    stat=Stat.CT_HIT,
    backend_index=4,
)
for _why, _backends in (
    ("removed", {_WEB_OTHER: None}),
    ("unused", {_WEB_OTHER: with_state(_WEB_OTHER_BACKEND, BackendState.UNUSED)}),
    ("down", {_WEB_OTHER: with_state(_WEB_OTHER_BACKEND, BackendState.DOWN)}),
    ("generation", {_WEB_OTHER: with_state(_WEB_OTHER_BACKEND, BackendState.UP, generation=2)}),
):
    # The table must not hand the flow back to the stale slot.
    _tables = {WEB_PORT_VIP: [_WEB_PICK] * TABLE_SIZE}
    forwarded(
        f"ct-stale-{_why}",
        f"an entry whose backend slot is {_why} is decided again",
        WEB_FLOW,
        WEB_PORT_VIP,
        state=variant(
            conntrack={WEB_FLOW: CtEntry(_WEB_OTHER, 1)}, backends=_backends, tables=_tables
        ),
        stat=Stat.CT_STALE,
        backend_index=_WEB_PICK,
    )
kept(
    "ct-stale-no-vip",
    "a stale entry and no VIP: NO_VIP, the entry is left for the LRU",
    encapsulate(inner_ipv4(NO_VIP_FLOW)),
    Stat.NO_VIP,
    Verdict.PASS,
    state=variant(conntrack={NO_VIP_FLOW: CtEntry(3, 9)}),
    flow=NO_VIP_FLOW,
    conntrack_after=CtEntry(3, 9),
)
kept(
    "ct-stale-no-backend",
    "a stale entry and an empty slot: dropped, the entry is left",
    WEB_FRAME,
    Stat.DROP_NO_BACKEND,
    Verdict.DROP,
    state=variant(
        conntrack={WEB_FLOW: CtEntry(_WEB_OTHER, 5)},
        tables={WEB_PORT_VIP: [NONE_INDEX] * TABLE_SIZE},
    ),
    flow=WEB_FLOW,
    vip_flow=(WEB_PORT_VIP, VipFlow.DROP_NO_BACKEND),
    conntrack_after=CtEntry(_WEB_OTHER, 5),
)
kept(
    "ct-hit-no-nexthop",
    "a valid hit whose next hop is unresolved is dropped, the entry is left",
    WEB_FRAME,
    Stat.DROP_NO_NEXTHOP,
    Verdict.DROP,
    state=variant(
        conntrack={WEB_FLOW: CtEntry(_WEB_OTHER, 1)},
        backends={_WEB_OTHER: replace(_WEB_OTHER_BACKEND, next_hop=None)},
    ),
    flow=WEB_FLOW,
    vip_flow=(WEB_PORT_VIP, VipFlow.DROP_NO_NEXTHOP),
    conntrack_after=CtEntry(_WEB_OTHER, 1),
)

# The IPv6 flows' table (conntrack_v6): the same rules, its own entries.
_WEB6_PICK = table_pick(_STANDARD, WEB_PORT_VIP, WEB6_FLOW)
_WEB6_OTHER = next(index for index in (0, 1, 2) if index != _WEB6_PICK)
forwarded(
    "ct6-hit",
    "inner IPv6: a valid entry of the IPv6 table wins over the table",
    WEB6_FLOW,
    WEB_PORT_VIP,
    outer=OUTER_INNER_IPV6,
    inner=inner_ipv6(WEB6_FLOW),
    state=variant(conntrack={WEB6_FLOW: CtEntry(_WEB6_OTHER, 1)}),
    stat=Stat.CT_HIT,
    backend_index=_WEB6_OTHER,
)
forwarded(
    "ct6-stale-generation",
    "inner IPv6: an entry whose slot changed generation is decided again",
    WEB6_FLOW,
    WEB_PORT_VIP,
    outer=OUTER_INNER_IPV6,
    inner=inner_ipv6(WEB6_FLOW),
    state=variant(
        conntrack={WEB6_FLOW: CtEntry(_WEB6_OTHER, 2)},
        tables={WEB_PORT_VIP: [_WEB6_PICK] * TABLE_SIZE},
    ),
    stat=Stat.CT_STALE,
    backend_index=_WEB6_PICK,
)
forwarded(
    "ct6-hit-vip-gone",
    "inner IPv6: a valid entry wins even when the flow has no VIP",
    NO_VIP6_FLOW,
    WEB_ADDRESS_VIP,
    outer=OUTER_INNER_IPV6,
    inner=inner_ipv6(NO_VIP6_FLOW),
    state=variant(conntrack={NO_VIP6_FLOW: CtEntry(3, 1)}),
    stat=Stat.CT_HIT,
    backend_index=3,
)
kept(
    "ct6-stale-no-vip",
    "inner IPv6: a stale entry and no VIP: NO_VIP, the entry is left",
    encapsulate(inner_ipv6(NO_VIP6_FLOW), OUTER_INNER_IPV6),
    Stat.NO_VIP,
    Verdict.PASS,
    state=variant(conntrack={NO_VIP6_FLOW: CtEntry(3, 9)}),
    flow=NO_VIP6_FLOW,
    conntrack_after=CtEntry(3, 9),
)

CASES = SECTION.cases
