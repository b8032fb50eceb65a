"""Section 7 of docs/packet-path.md, the Maglev table: missing, empty and one-slot tables, and
slots whose backend is down, unused, missing or draining."""

from __future__ import annotations

from rusty_rail.model.state import NONE_INDEX, BackendState, Stat, Verdict, VipFlow
from tests.support.cases._base import (
    _STANDARD,
    _WEB_PICK,
    TABLE_SIZE,
    WEB_FLOW,
    WEB_FRAME,
    WEB_PORT_VIP,
    Section,
    variant,
    with_state,
)

SECTION = Section()
kept, forwarded = SECTION.kept, SECTION.forwarded

# 7. Maglev table

kept(
    "table-empty-slot",
    "the flow's slot is empty",
    WEB_FRAME,
    Stat.DROP_NO_BACKEND,
    Verdict.DROP,
    state=variant(tables={WEB_PORT_VIP: [NONE_INDEX] * TABLE_SIZE}),
    flow=WEB_FLOW,
    vip_flow=(WEB_PORT_VIP, VipFlow.DROP_NO_BACKEND),
)
kept(
    "table-missing",
    "the VIP has no table",
    WEB_FRAME,
    Stat.DROP_NO_BACKEND,
    Verdict.DROP,
    state=variant(tables={WEB_PORT_VIP: None}),
    flow=WEB_FLOW,
    vip_flow=(WEB_PORT_VIP, VipFlow.DROP_NO_BACKEND),
)
kept(
    "table-size-0",
    "the VIP's table has no slots",
    WEB_FRAME,
    Stat.DROP_NO_BACKEND,
    Verdict.DROP,
    state=variant(tables={WEB_PORT_VIP: []}),
    flow=WEB_FLOW,
    vip_flow=(WEB_PORT_VIP, VipFlow.DROP_NO_BACKEND),
)
for _why, _entry in (
    ("down", with_state(_STANDARD.backends[_WEB_PICK], BackendState.DOWN)),
    ("unused", with_state(_STANDARD.backends[_WEB_PICK], BackendState.UNUSED)),
    ("missing", None),
):
    kept(
        f"table-slot-{_why}",
        f"the flow's slot names a backend that is {_why}",
        WEB_FRAME,
        Stat.DROP_NO_BACKEND,
        Verdict.DROP,
        state=variant(backends={_WEB_PICK: _entry}),
        flow=WEB_FLOW,
        vip_flow=(WEB_PORT_VIP, VipFlow.DROP_NO_BACKEND),
    )
forwarded(
    "table-slot-drain",
    "a DRAIN backend still in a table forwards",
    WEB_FLOW,
    WEB_PORT_VIP,
    state=variant(
        backends={_WEB_PICK: with_state(_STANDARD.backends[_WEB_PICK], BackendState.DRAIN)}
    ),
)
forwarded(
    "table-size-1",
    "a table of one slot",
    WEB_FLOW,
    WEB_PORT_VIP,
    state=variant(tables={WEB_PORT_VIP: [2]}),
    backend_index=2,
)

CASES = SECTION.cases
