"""The JSON the API answers, as types: what the read models (readmodels.py), the daemon and
the health book build, and what the OpenAPI document's response schemas are generated from.

Each is a TypedDict (a plain dict on the wire, typed for the code that builds it); the ones
marked ``extra="forbid"`` say in the document that they have no other keys.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal, NotRequired

from pydantic import ConfigDict, Field, WithJsonSchema, with_config
from typing_extensions import TypedDict

from rusty_rail.config import (
    MAX_WEIGHT,
    AdminState,
    Affinity,
    CheckType,
    Config,
    Encap,
    IcmpPolicy,
    Protocol,
)
from rusty_rail.control.health import IcmpState, Status
from rusty_rail.model.state import BackendState

_CLOSED = ConfigDict(extra="forbid")


def value_of(kind: type[StrEnum]) -> WithJsonSchema:
    """The JSON schema of a field that holds one of ``kind``'s values as a plain string (the
    health book and the event log write ``.value``): the enum's values, from the enum."""
    return WithJsonSchema({"type": "string", "enum": [member.value for member in kind]})


Count = Annotated[int, Field(ge=0)]
#: A time in RFC 3339, UTC, to the millisecond (rusty_rail.timestamps).
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Fingerprint = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
Milliseconds = Annotated[float, Field(ge=0)]
#: A backend slot's state in the maps (dpstate.BackendState, lower case), or absent.
DataplaneState = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "enum": [*(state.name.lower() for state in BackendState), "absent"],
            "description": "up takes new flows; drain keeps its flows only; down forwards "
            "nothing; absent: not in the maps (the last change is not applied).",
        }
    ),
]


# --- VIPs and backends (GET /v1/vips, /v1/vips/{vip}, .../backends/{address}) ------------------


@with_config(_CLOSED)
class Stats(TypedDict):
    packets: Count
    bytes: Count


@with_config(_CLOSED)
class NextHop(TypedDict):
    ifindex: int
    src_mac: str
    dst_mac: str


@with_config(_CLOSED)
class BackendView(TypedDict):
    """A backend as configured (address, weight, state) and as the data plane holds it."""

    address: str
    weight: Annotated[int, Field(ge=0, le=MAX_WEIGHT)]
    state: AdminState
    dataplane_state: DataplaneState
    next_hop: NextHop | None
    next_hop_problem: str | None
    slots: Count
    slot_share: Annotated[float, Field(ge=0, le=1)]
    stats: Stats
    flows_tracked: Annotated[
        Count,
        Field(
            description="Valid connection-table entries naming this backend with its current "
            "generation: the flows the data plane keeps sending to it (counted at most every "
            "5 s; the data plane keeps no TCP state, so a closed connection stays counted "
            "until its entry is reused). A drained backend at 0 holds no flow."
        ),
    ]


@with_config(_CLOSED)
class TableView(TypedDict):
    size: int
    fingerprint: Fingerprint | None
    generation: Count
    backends_in_table: Count


@with_config(_CLOSED)
class VipDrops(TypedDict):
    """A VIP's packets dropped once the VIP was known, by reason (docs/metrics.md)."""

    no_backend: Annotated[
        Stats, Field(description="A new flow whose table slot had no forwarding backend.")
    ]
    no_nexthop: Annotated[Stats, Field(description="The backend's next hop was unresolved.")]
    too_big_limited: Annotated[
        Stats, Field(description="Too big for the path, the VIP's ICMP error rate spent.")
    ]
    too_big_no_df: Annotated[Stats, Field(description="Too big for the path, IPv4 without DF.")]


@with_config(_CLOSED)
class VipView(TypedDict):
    vip: Annotated[str, Field(description="The VIP key, or default.")]
    address: str | None
    protocol: Protocol | None
    port: int | None
    encap: Encap | None
    table_size: int | None
    table: TableView | None
    affinity: Annotated[
        Affinity,
        Field(description="The flow fields the table is indexed by (the default set: 5-tuple)."),
    ]
    stats: Stats
    new_flows: Annotated[
        Stats,
        Field(
            description="Flows the VIP's table decided (connection-table misses and stale "
            "entries sent to a backend), since the VIP was given its index."
        ),
    ]
    drops: VipDrops
    flows_tracked: Annotated[Count, Field(description="The sum of the backends' flows_tracked.")]
    backends: list[BackendView]


@with_config(_CLOSED)
class BackendList(TypedDict):
    vip: Annotated[str, Field(description="The VIP key, or default.")]
    backends: list[BackendView]


@with_config(_CLOSED)
class VipList(TypedDict):
    generation: Count
    vips: list[VipView]


# --- writes and errors ------------------------------------------------------------------------


class ChangeCounts(TypedDict):
    """What one change did (control.daemon.ChangeResult)."""

    generation: Count
    changed: bool
    map_updates: Count
    tables_rebuilt: list[str]
    build_ms: Milliseconds
    apply_ms: Milliseconds
    total_ms: Milliseconds
    unresolved_next_hops: Annotated[
        list[str],
        Field(
            description="The configuration's backends without a next hop after this change: "
            "they take no new flows until it resolves (the daemon keeps asking)."
        ),
    ]


@with_config(_CLOSED)
class ChangeResult(ChangeCounts):
    """What a write did. generation counts changes of the desired state."""

    config_fingerprint: Fingerprint


class _ProblemRequired(TypedDict):
    path: Annotated[
        str,
        Field(
            description="Where: a key path in the request body (backends[1].weight), a "
            "parameter name, or config.… for the rest of the configuration."
        ),
    ]
    reason: str


@with_config(_CLOSED)
class Problem(_ProblemRequired, total=False):
    value: Annotated[str, Field(description="The value found there, as written.")]


class _ErrorRequired(TypedDict):
    type: Annotated[str, Field(description="about:blank: the status says what went wrong.")]
    title: Annotated[str, Field(description="The status phrase.")]
    status: int
    detail: Annotated[str, Field(description="What went wrong, in one line.")]
    error: Annotated[str, Field(description="The status phrase (as title).")]
    message: Annotated[str, Field(description="What went wrong (as detail).")]
    problems: Annotated[
        list[Problem], Field(description="Bad input: each problem with its field and value.")
    ]


class Error(_ErrorRequired, total=False):
    """An RFC 9457 problem details object (application/problem+json); error, message and
    problems are this API's extension members."""

    instance: Annotated[str, Field(description="The request's path.")]
    known_vips: Annotated[
        list[str], Field(description="With a 404 for a VIP: every VIP key there is.")
    ]


# --- node health (GET /healthz) ---------------------------------------------------------------


class LastChange(TypedDict):
    generation: int
    source: str
    at: Timestamp
    map_updates: int


class TableHealth(TypedDict):
    fingerprint: Fingerprint | None
    generation: Count
    table_size: int
    backends_in_table: int


@with_config(_CLOSED)
class VipHealth(TypedDict):
    backends: Count
    unhealthy: list[str]
    suspect: list[str]
    all_unhealthy: Annotated[
        bool, Field(description="Every backend that is not admin down is unhealthy.")
    ]
    fail_open: Annotated[
        bool,
        Field(
            description="All unhealthy, and all_unhealthy is fail-open: traffic goes to "
            "every backend."
        ),
    ]
    icmp_floor_held: Count


class FailedReload(TypedDict):
    file: Annotated[str | None, Field(description="The configuration file (null: none).")]
    error: Annotated[str, Field(description="The first problem found.")]
    errors: Annotated[Count, Field(description="How many problems were found.")]
    at: Annotated[Timestamp, Field(description="When the reload was refused.")]


class ConfigReload(TypedDict):
    failed: Annotated[
        FailedReload | None,
        Field(
            description="The last SIGHUP reload, when it was refused (the running "
            "configuration stays); null once a reload succeeds."
        ),
    ]
    failures_total: Annotated[Count, Field(description="Refused reloads since start.")]
    last_success_at: Annotated[
        Timestamp,
        Field(
            description="When the configuration was last read into the running state: the "
            "start, or the last good reload."
        ),
    ]


class NodeHealth(TypedDict):
    status: Literal["ok", "unavailable"]
    reasons: list[str]
    warnings: Annotated[
        list[str],
        Field(
            description="What runs differs from what is configured (e.g. an adopted "
            "connection table of another size); the node stays healthy."
        ),
    ]
    device: str
    attached: bool
    generation: Count
    config_fingerprint: Fingerprint
    last_change: LastChange | None
    vips: Annotated[
        dict[str, TableHealth],
        Field(
            description="Per VIP key (and default): the live table's fingerprint and "
            "how many times it was swapped in since this daemon started."
        ),
    ]
    unresolved_next_hops: list[str]
    config_reload: ConfigReload
    backend_health: Annotated[
        dict[str, VipHealth],
        Field(description="Per VIP key (and default): its backends' health."),
    ]
    store: NotRequired[
        Annotated[
            StoreHealth,
            Field(description="With run --store only: the cluster's store (docs/cluster.md)."),
        ]
    ]
    drained: Annotated[
        bool,
        Field(
            description="Drained (POST /v1/node/drain): the VIPs are not announced over BGP; "
            "what still reaches the node is forwarded. Not a reason against health."
        ),
    ]
    bgp: NotRequired[
        Annotated[
            BgpHealth,
            Field(description="With a [bgp] section only: the VIPs' announcements."),
        ]
    ]


@with_config(_CLOSED)
class BgpPeerHealth(TypedDict):
    address: str
    port: int
    asn: int
    state: Annotated[
        str, Field(description="BIRD's state of the session: Established, Active, Connect, ...")
    ]
    established: bool


@with_config(_CLOSED)
class BgpHealth(TypedDict):
    asn: int
    router_id: str
    speaker_running: Annotated[bool, Field(description="The BIRD process runs.")]
    error: Annotated[str | None, Field(description="The speaker's last failure, while it stands.")]
    withheld: Annotated[
        str | None,
        Field(
            description="Why no route is announced (drained, detached, stopping); null: the "
            "VIPs are."
        ),
    ]
    announced: Annotated[list[str], Field(description="The VIP addresses announced (host routes).")]
    peers: list[BgpPeerHealth]


@with_config(_CLOSED)
class DrainState(TypedDict):
    drained: bool
    announced: Annotated[
        list[str], Field(description="The VIP addresses announced now (empty without [bgp]).")
    ]


@with_config(_CLOSED)
class RejectedRevision(TypedDict):
    revision: int
    error: str


@with_config(_CLOSED)
class StoreHealth(TypedDict):
    address: str
    node: str
    reachable: bool
    error: str | None
    unreachable_since: str | None
    revision: Annotated[
        int, Field(description="The store revision (of PREFIX/config) whose state is applied.")
    ]
    seen_revision: Annotated[
        int, Field(description="The newest revision seen, applied or refused.")
    ]
    rejected: RejectedRevision | None


# --- backend health and events (GET /v1/health, /v1/events) ----------------------------------


@with_config(_CLOSED)
class CheckState(TypedDict):
    type: Annotated[str, value_of(CheckType)]
    ok: bool
    successes: Count
    failures: Count
    last: str | None


@with_config(_CLOSED)
class IcmpView(TypedDict):
    policy: Annotated[str, value_of(IcmpPolicy)]
    state: Annotated[str, value_of(IcmpState)]
    confirmed: bool
    probe_successes: Count
    last_report: str | None


@with_config(_CLOSED)
class BackendHealthView(TypedDict):
    vip: str
    backend: str
    status: Annotated[str, value_of(Status)]
    admin: Annotated[str, value_of(AdminState)]
    check: CheckState
    icmp: IcmpView


@with_config(_CLOSED)
class HealthList(TypedDict):
    vips: dict[str, VipHealth]
    backends: list[BackendHealthView]


#: What an Event is about (control.events.Event's kind).
EVENT_KINDS: Final = ["health", "admin", "fail-open", "floor", "next-hop", "change"]

# Functional syntax: "from" is a Python keyword.
Event = TypedDict(
    "Event",
    {
        "id": Annotated[int, Field(ge=1)],
        "at": Timestamp,
        "kind": Annotated[str, WithJsonSchema({"type": "string", "enum": EVENT_KINDS})],
        "vip": str,
        "backend": str | None,
        "from": str | None,
        "to": str | None,
        "cause": str,
        "detail": str,
    },
)
with_config(_CLOSED)(Event)


@with_config(_CLOSED)
class EventList(TypedDict):
    events: list[Event]
    last_id: Count


# --- dry runs, flows and lookups (POST /v1/plan, GET /v1/flows, /v1/lookup) -------------------


class _ChangeRequired(TypedDict):
    op: Literal["put_vip", "delete_vip", "put_backend", "patch_backend", "delete_backend"]
    vip: str


@with_config(_CLOSED)
class Change(_ChangeRequired, total=False):
    """One write, as the route of the same name would do it."""

    backend: str
    body: dict[str, object]


@with_config(_CLOSED)
class PlanRequest(TypedDict, total=False):
    """Either config (the whole new desired state) or changes (writes applied in order to the
    current one)."""

    config: Config
    changes: Annotated[list[Change], Field(min_length=1)]
    max_flows: Annotated[int, Field(ge=0, le=10_000_000)]


#: What a change does to a service's table.
TableChange = Literal["added", "removed", "changed", "unchanged"]
#: Whether a flow's decision came from a valid connection-table entry, a stale one, or none.
ConntrackMatch = Literal["valid", "stale", "none"]


class VipPlan(TypedDict):
    change: TableChange
    table_slots_moved: float | None
    flows_tracked: int
    flows_moved: int
    flows_moved_share: float
    fingerprint_before: Fingerprint | None
    fingerprint_after: Fingerprint | None


class PlanResult(TypedDict):
    generation: int
    config_fingerprint: Fingerprint
    flows_examined: Count
    flows_complete: bool
    vips: dict[str, VipPlan]


class Decision(TypedDict):
    flow: str
    hash: int
    outcome: str
    forwards: bool
    match: str
    vip: str | None
    table_slot: int | None
    table_size: int | None
    affinity: Annotated[
        Affinity | None, Field(description="The VIP's affinity, when its table was read.")
    ]
    table_hash: Annotated[
        int | None,
        Field(description="The hash the table was indexed with: hash unless the affinity "
              "hashes fewer fields."),
    ]  # fmt: skip
    backend: str | None
    backend_state: str | None
    conntrack: ConntrackMatch
    explanation: str


class FlowList(TypedDict):
    flows: list[Decision]
    scanned: Count
    total: Annotated[
        Count,
        Field(
            description="The entries the sample was taken from: every valid one, or those "
            "naming one of the VIP's backend slots, counted over the whole table."
        ),
    ]
    complete: Annotated[bool, Field(description="Every one of the total is in flows.")]
