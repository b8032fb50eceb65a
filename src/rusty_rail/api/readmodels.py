"""What the API's reads answer, as the JSON-ready dicts that api/schemas.py types: VIPs with
their backends, tables and counters; tracked flows; one flow's decision; and the dry run of a
change (/v1/plan).

The decisions come from the reference pipeline (pipeline.lookup) run on the plan's state
with the live connection table, so they say what the data plane does, and why.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import ip_address
from typing import Final

import numpy as np

from rusty_rail._types import IPAddress
from rusty_rail.config import Affinity, Backend, Config
from rusty_rail.control.fingerprint import service_order
from rusty_rail.control.plan import Plan
from rusty_rail.dataplane.maps import VIP_DROP_REASONS, BalancerMaps
from rusty_rail.model import pipeline
from rusty_rail.model.affinity import AFFINITY_NAMES
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.maglev import moved_fraction
from rusty_rail.model.state import BackendState, CtEntry, DataplaneState, NextHop, VipFlow
from rusty_rail.wire.constants import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from rusty_rail.wire.fields import format_mac

from . import schemas
from .changes import Target
from .flow_counts import FlowCount, FlowCounts

PROTOCOL_NUMBERS: Final = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP}
PROTOCOL_NAMES: Final = {
    PROTO_TCP: "tcp",
    PROTO_UDP: "udp",
    PROTO_ICMP: "icmp",
    PROTO_ICMPV6: "icmpv6",
}


def next_hop_json(next_hop: NextHop | None) -> schemas.NextHop | None:
    if next_hop is None:
        return None
    return {
        "ifindex": next_hop.ifindex,
        "src_mac": format_mac(next_hop.src_mac),
        "dst_mac": format_mac(next_hop.dst_mac),
    }


def _stats(counter: tuple[int, int] | None) -> schemas.Stats:
    packets, size = counter or (0, 0)
    return {"packets": packets, "bytes": size}


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of a daemon for a read: the desired configuration, the plan in
    the maps, the next hops and the maps themselves (None when not loaded)."""

    config: Config
    plan: Plan
    next_hops: Mapping[IPAddress, NextHop | None]
    next_hop_problems: Mapping[IPAddress, str]
    maps: BalancerMaps | None
    fingerprints: Mapping[str, str | None]
    table_generations: Mapping[str, int]
    #: The shared count of tracked flows per backend (None: none counted, as without maps).
    flow_counts: FlowCounts | None = None


def targets(config: Config) -> list[tuple[Target, tuple[Backend, ...]]]:
    """Every service of ``config`` as an API target with its backends: default set first."""
    result: list[tuple[Target, tuple[Backend, ...]]] = []
    if config.default_backends:
        result.append((Target(None), config.default_backends))
    result += [(Target(vip.key), vip.backends) for vip in config.vips]
    return result


def service_view(snapshot: Snapshot, target: Target, *, with_stats: bool = True) -> schemas.VipView:
    """A VIP (or the default set): its configuration, its live table and its backends."""
    config, plan = snapshot.config, snapshot.plan
    name = target.name
    vip = next((v for v in config.vips if v.key == target.key), None)
    backends = config.default_backends if target.is_default else vip.backends if vip else ()
    vip_index = plan.allocation.vip_index.get(name)
    slots = {
        backend.address: plan.allocation.slot_of(name, backend.address) for backend in backends
    }
    vip_stats: dict[int, tuple[int, int]] = {}
    new_flows: tuple[int, int] | None = None
    drops = dict.fromkeys(VIP_DROP_REASONS, (0, 0))
    backend_stats: dict[int, tuple[int, int]] = {}
    flow_count = FlowCount()
    if with_stats and snapshot.maps is not None:
        if snapshot.flow_counts is not None:
            flow_count = snapshot.flow_counts.read()
        if vip_index is not None:
            vip_stats = snapshot.maps.read_vip_stats([vip_index])
            new_flows = snapshot.maps.read_vip_flows([vip_index]).get((vip_index, VipFlow.NEW))
            drops = snapshot.maps.read_vip_drops(vip_index)
        backend_stats = snapshot.maps.read_backend_stats(
            slot for slot in slots.values() if slot is not None
        )
    table = plan.tables.get(name)
    table_counts: dict[IPAddress, int] = {}
    if table is not None and table.backends:
        counts = table.slot_counts()
        table_counts = {
            address: int(count) for address, count in zip(table.backends, counts, strict=True)
        }
    backend_views: list[schemas.BackendView] = []
    for backend in backends:
        slot = slots[backend.address]
        entry = plan.state.backends.get(slot) if slot is not None else None
        held = table_counts.get(backend.address, 0)
        problem = snapshot.next_hop_problems.get(backend.address)
        backend_views.append(
            {
                "address": str(backend.address),
                "weight": backend.weight,
                "state": backend.state,
                "dataplane_state": "absent" if entry is None else entry.state.name.lower(),
                "next_hop": next_hop_json(snapshot.next_hops.get(backend.address)),
                "next_hop_problem": problem,
                "slots": held,
                "slot_share": held / table.size if table is not None else 0.0,
                "stats": _stats(backend_stats.get(slot) if slot is not None else None),
                "flows_tracked": flow_count.of_slot(plan, slot),
            }
        )
    return {
        "vip": name,
        "address": str(vip.address) if vip else None,
        "protocol": vip.protocol if vip and vip.protocol else None,
        "port": vip.port if vip else None,
        "encap": vip.encap if vip else None,
        "table_size": vip.table_size if vip else None,
        "table": None
        if table is None
        else {
            "size": table.size,
            "fingerprint": snapshot.fingerprints.get(name),
            "generation": snapshot.table_generations.get(name, 0),
            "backends_in_table": len(table.backends),
        },
        "affinity": vip.affinity if vip else Affinity.FIVE_TUPLE,
        "stats": _stats(vip_stats.get(vip_index) if vip_index is not None else None),
        "new_flows": _stats(new_flows),
        "drops": {
            "no_backend": _stats(drops["no_backend"]),
            "no_nexthop": _stats(drops["no_nexthop"]),
            "too_big_limited": _stats(drops["too_big_limited"]),
            "too_big_no_df": _stats(drops["too_big_no_df"]),
        },
        "flows_tracked": sum(view["flows_tracked"] for view in backend_views),
        "backends": backend_views,
    }


def backend_view(
    snapshot: Snapshot, target: Target, address: IPAddress
) -> schemas.BackendView | None:
    view = service_view(snapshot, target)
    return next((b for b in view["backends"] if b["address"] == str(address)), None)


# --- flows ------------------------------------------------------------------------------------

_FLOW = re.compile(
    r"^\s*(?P<src>\[[^\]]+\]|[^\s:\[\]>-][^\s\[\]>]*?)(?::(?P<sport>\d+))?\s*->\s*"
    r"(?P<dst>\[[^\]]+\]|[^\s:\[\]/][^\s\[\]/]*?)(?::(?P<dport>\d+))?\s*"
    r"(?:/\s*(?P<proto>[A-Za-z0-9]+)|\s+proto\s+(?P<proto_number>\d+))?\s*$",
    re.ASCII,
)
FLOW_SYNTAX: Final = (
    "SOURCE[:PORT]->DESTINATION[:PORT]/PROTOCOL, e.g. 198.18.5.5:40000->198.18.100.1:80/tcp, "
    "[2001:2::5]:40000->[2001:2::1]:80/udp or 198.18.5.5->198.18.100.1/icmp"
)


def parse_flow(text: str) -> Flow:
    """A flow written as FLOW_SYNTAX describes; raises ValueError saying what is wrong."""
    match = _FLOW.match(text)
    if match is None:
        raise ValueError(f"not a flow: write {FLOW_SYNTAX}")
    sides = []
    for host, port in ((match["src"], match["sport"]), (match["dst"], match["dport"])):
        if not host.startswith("[") and ":" in host:
            # An IPv6 address without brackets: its last group is not a port.
            host, port = host + (f":{port}" if port else ""), None
            unbracketed_ipv6 = True
        else:
            unbracketed_ipv6 = False
        try:
            address = ip_address(host.strip("[]"))
        except ValueError as error:
            raise ValueError(_unbracketed_port(host) or f"{error}; write {FLOW_SYNTAX}") from None
        if address.version == 4 and host.startswith("["):
            raise ValueError("only IPv6 addresses are written in brackets")
        if address.version == 6 and address.scope_id is not None:
            raise ValueError(
                f"{host}: a zone index (%{address.scope_id}) is not part of a packet: write the"
                " address without it"
            )
        sides.append((address, port, unbracketed_ipv6))
    (src, sport_text, src_bare), (dst, dport_text, dst_bare) = sides
    if src.version != dst.version:
        raise ValueError("the source and destination must both be IPv4 or both IPv6")
    protocol_text = match["proto"] or match["proto_number"] or "tcp"
    if protocol_text.isascii() and protocol_text.isdigit():
        proto = int(protocol_text)
    elif protocol_text.lower() in PROTOCOL_NUMBERS:
        proto = PROTOCOL_NUMBERS[protocol_text.lower()]
        if proto == PROTO_ICMP and src.version == 6:
            proto = PROTO_ICMPV6
    elif protocol_text.lower() == "icmpv6":
        proto = PROTO_ICMPV6
    else:
        raise ValueError(f"protocol {protocol_text!r}: use tcp, udp, icmp, icmpv6 or a number")
    if not 0 <= proto <= 255:
        raise ValueError(f"protocol {proto}: must be 0 to 255")
    ports = (sport_text, dport_text)
    if proto in (PROTO_TCP, PROTO_UDP):
        if src_bare or dst_bare:
            raise ValueError("with a port, an IPv6 address is written in brackets: [address]:port")
        if None in ports:
            raise ValueError("a TCP or UDP flow needs both ports")
    elif ports != (None, None):
        raise ValueError(f"protocol {proto} has no ports: only TCP and UDP flows have them")
    sport, dport = (int(port) if port is not None else 0 for port in ports)
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        raise ValueError("ports must be 0 to 65535")
    return Flow(src.packed, dst.packed, proto, sport, dport)


def _unbracketed_port(host: str) -> str | None:
    """What to write instead of an IPv6 address followed by ``:port`` outside brackets
    (``2001:2::1:40000``, whose last group is too long to be one), or None."""
    address, _, port = host.rpartition(":")
    if not (port.isascii() and port.isdigit()) or ":" not in address:
        return None
    try:
        ip_address(address)
    except ValueError:
        return None
    return f"with a port, an IPv6 address is written in brackets: [{address}]:{port}"


def flow_text(flow: Flow) -> str:
    """The flow as parse_flow reads it."""
    src, dst = ip_address(flow.src), ip_address(flow.dst)
    host = (lambda a: f"[{a}]") if flow.is_ipv6 else str
    protocol = PROTOCOL_NAMES.get(flow.proto, str(flow.proto))
    if flow.proto in (PROTO_TCP, PROTO_UDP):
        return f"{host(src)}:{flow.sport}->{host(dst)}:{flow.dport}/{protocol}"
    return f"{host(src)}->{host(dst)}/{protocol}"


def tracked_flows(maps: BalancerMaps, limit: int) -> list[tuple[Flow, CtEntry]]:
    """Up to ``limit`` entries of the live connection table, in the table's order."""
    return list(maps.dump_conntrack(limit=limit).items())


def _names(plan: Plan) -> dict[int, str]:
    return {index: name for name, index in plan.allocation.vip_index.items()}


def _with_conntrack(state: DataplaneState, conntrack: Mapping[Flow, CtEntry]) -> DataplaneState:
    return replace(state, conntrack=dict(conntrack))


def decision_json(plan: Plan, decision: pipeline.Decision) -> schemas.Decision:
    """A decision with the names an operator knows: VIP key, backend address and state."""
    backend = (
        plan.state.backends.get(decision.backend_index)
        if decision.backend_index is not None
        else None
    )
    names = _names(plan)
    conntrack: schemas.ConntrackMatch = (
        "valid"
        if decision.match is pipeline.Match.CONNTRACK
        else "stale"
        if decision.stale_entry is not None
        else "none"
    )
    return {
        "flow": flow_text(decision.flow),
        "hash": decision.flow_hash,
        "outcome": decision.stat.name.lower(),
        "forwards": decision.forwards,
        "match": decision.match.value,
        "vip": names.get(decision.vip_index) if decision.vip_index is not None else None,
        "table_slot": decision.table_slot,
        "table_size": decision.table_size,
        "affinity": None
        if decision.affinity is None
        else Affinity(AFFINITY_NAMES[decision.affinity]),
        "table_hash": decision.pick_hash,
        "backend": str(ip_address(backend.addr)) if backend is not None else None,
        "backend_state": backend.state.name.lower() if backend is not None else None,
        "conntrack": conntrack,
        "explanation": decision.explain(),
    }


def lookup(plan: Plan, maps: BalancerMaps | None, flow: Flow) -> schemas.Decision:
    """Which backend ``flow`` gets now, and why: its live connection-table entry (if any),
    else the VIP's table."""
    conntrack: dict[Flow, CtEntry] = {}
    entry = maps.lookup_conntrack(flow) if maps is not None else None
    if entry is not None:
        conntrack[flow] = entry
    state = _with_conntrack(plan.state, conntrack)
    return decision_json(plan, pipeline.lookup(state, flow))


def flows(
    plan: Plan, maps: BalancerMaps, *, vip: str | None, limit: int, scan: int
) -> schemas.FlowList:
    """A sample of tracked flows (of one VIP: the entries naming one of its backend slots; or
    all), each with its backend: at most ``limit`` flows from at most ``scan`` entries, and
    how many entries there are to sample from (``total``, counted over the whole table)."""
    result = []
    scanned = 0
    backends = None
    if vip is not None:
        # Only entries that name one of the VIP's backend slots are decoded and looked at.
        index = plan.allocation.vip_index.get(vip)
        backends = {slot for slot, entry in plan.state.backends.items() if entry.vip_index == index}
    for flow, entry in itertools.islice(maps.iter_conntrack(backends), min(limit, scan)):
        scanned += 1
        decision = pipeline.lookup(_with_conntrack(plan.state, {flow: entry}), flow)
        result.append(decision_json(plan, decision))
    slots = maps.conntrack_targets()[:, 0]
    if backends is not None:
        slots = slots[np.isin(slots, np.fromiter(backends, dtype=np.uint32))]
    # Counted a moment after the sample was taken: never fewer than it shows.
    total = max(len(slots), len(result))
    return {"flows": result, "scanned": scanned, "total": total, "complete": len(result) == total}


# --- dry run ----------------------------------------------------------------------------------


def _address_of(state: DataplaneState, decision: pipeline.Decision) -> bytes | None:
    if not decision.forwards or decision.backend_index is None:
        return None
    backend = state.backends.get(decision.backend_index)
    return None if backend is None else backend.addr


def _affinity(plan: Plan, service: str) -> object:
    index = plan.allocation.vip_index.get(service)
    return None if index is None else plan.state.affinity.get(index)


def dry_run(
    before: Plan,
    after: Plan,
    conntrack: Iterable[tuple[Flow, CtEntry]],
    *,
    seconds: float | None = None,
) -> tuple[dict[str, schemas.VipPlan], bool]:
    """Per service, what ``after`` would change: whether the table changes, the share of
    table slots whose backend moves (maglev.moved_fraction; None when there is no table to
    compare with, as for a new VIP, a new table size or a new session affinity), and how many
    of the tracked flows (``conntrack``) would go to another backend or be dropped. The flows
    are counted for at most ``seconds`` (None: all of them); the second value says whether all
    were counted."""
    names_before, names_after = _names(before), _names(after)
    services = sorted(before.tables.keys() | after.tables.keys(), key=service_order)
    result: dict[str, schemas.VipPlan] = {}
    for name in services:
        old, new = before.tables.get(name), after.tables.get(name)
        change: schemas.TableChange
        moved: float | None
        if old is None:
            change, moved = "added", None
        elif new is None:
            change, moved = "removed", 1.0
        elif _affinity(before, name) != _affinity(after, name):
            # New flows are hashed otherwise: slots cannot be compared (tracked flows stay).
            change, moved = "changed", None
        else:
            change = "unchanged" if old == new else "changed"
            moved = moved_fraction(old, new) if old.size == new.size else None
        result[name] = {
            "change": change,
            "table_slots_moved": moved,
            "flows_tracked": 0,
            "flows_moved": 0,
            "flows_moved_share": 0.0,
            "fingerprint_before": old.fingerprint() if old is not None else None,
            "fingerprint_after": new.fingerprint() if new is not None else None,
        }
    entries = dict(conntrack)
    state_before = _with_conntrack(before.state, entries)
    state_after = _with_conntrack(after.state, entries)
    deadline = None if seconds is None else time.monotonic() + seconds
    complete = True
    for counted, flow in enumerate(entries):
        if deadline is not None and counted % 1024 == 0 and time.monotonic() > deadline:
            complete = False
            break
        then = pipeline.lookup(state_before, flow)
        if not then.forwards or then.vip_index is None:
            continue  # a stale entry of a flow that would be re-decided anyway
        service = names_before.get(then.vip_index)
        if service is None or service not in result:
            continue
        now = pipeline.lookup(state_after, flow)
        moved_flow = _address_of(state_after, now) != _address_of(state_before, then)
        if now.vip_index is not None and names_after.get(now.vip_index) != service:
            moved_flow = True
        view = result[service]
        view["flows_tracked"] += 1
        view["flows_moved"] += int(moved_flow)
    for view in result.values():
        if view["flows_tracked"]:
            view["flows_moved_share"] = view["flows_moved"] / view["flows_tracked"]
    return result, complete


def backend_state_name(state: BackendState) -> str:
    return state.name.lower()
