"""Desired state to data-plane state: stable VIP indices and backend slots, Maglev tables,
and the ordered operations that move a running data plane from one state to the next.

Pure: no kernel, no files. The daemon and the tests drive it with a Config and a next-hop
resolver; the operations it returns are applied to the BPF maps by control.apply.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

import numpy as np
import numpy.typing as npt

from rusty_rail._types import IPAddress
from rusty_rail.config import (
    AdminState,
    Affinity,
    Backend,
    Config,
    Encap,
    Ingress,
    Protocol,
    VipKey,
)
from rusty_rail.control.health import Serving
from rusty_rail.model import state as model_state
from rusty_rail.model.maglev import MaglevTable, build_table
from rusty_rail.model.state import (
    NONE_INDEX,
    BackendEntry,
    BackendState,
    DataplaneState,
    Egress,
    NextHop,
    Settings,
)

NextHopResolver = Callable[[IPAddress], NextHop | None]

#: The name of the default backend set (the seed's RR_TARGET_IPS mode) among the services.
DEFAULT_SET = "default"
#: Sizes of the data plane's VIP and backend arrays; the loader sizes its maps with these.
MAX_VIPS = 1024
MAX_BACKENDS = 16384
#: How many egress interfaces the data plane can redirect to (its tx_ports devmap).
MAX_TX_PORTS = 64


class PlanError(ValueError):
    """The configuration is valid but cannot be put into the data plane (limits, families)."""


class NoFreeIndex(PlanError):
    """Every VIP index or backend slot is taken (by what stays, or by what this change
    frees: those are not handed out again in the same change)."""


def address_key(address: IPAddress) -> int:
    """A backend address as a dict key: an int (IPv6 above 2**128, so the families never
    meet). ipaddress objects hash through hex(), which dominated the time of a change at
    1000 backends; ints hash for free."""
    return int(address) if type(address) is IPv4Address else int(address) | (1 << 128)


@dataclass(frozen=True, slots=True)
class Service:
    """A VIP or the default set, as the data plane sees it."""

    name: str
    match: model_state.VipKey | None
    table_size: int
    backends: tuple[Backend, ...]
    #: address_key of each backend, in the same order.
    keys: tuple[int, ...] = ()
    #: The egress method and VNI of the backends that set none of their own.
    encap: Encap = Encap.GRE
    vni: int | None = None
    #: The flow fields its Maglev choice hashes (the default set: the 5-tuple).
    affinity: Affinity = Affinity.FIVE_TUPLE

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.backends):
            keys = tuple(address_key(backend.address) for backend in self.backends)
            object.__setattr__(self, "keys", keys)


def services_of(config: Config) -> list[Service]:
    """Every service of ``config``: the default set (if any) first, then the VIPs."""
    services = []
    if config.default_backends:
        services.append(Service(DEFAULT_SET, None, config.table_size, config.default_backends))
    for vip in config.vips:
        key = vip.key
        match = model_state.VipKey(
            key.address.packed,
            key.protocol.number if key.protocol is not None else 0,
            key.port or 0,
        )
        services.append(
            Service(
                str(key),
                match,
                config.table_size_for(vip),
                vip.backends,
                encap=vip.encap,
                vni=vip.vni,
                affinity=vip.affinity,
            )
        )
    return services


def egress_of(service: Service, backend: Backend) -> tuple[Egress, int]:
    """The data plane's egress method and VNI (0 when none) of ``backend`` of ``service``."""
    encap = backend.encap if backend.encap is not None else service.encap
    vni = backend.vni if backend.vni is not None else service.vni
    return Egress[encap.name], vni if vni is not None and encap.has_vni else 0


def data_plane_state(admin: AdminState, weight: int, serving: Serving) -> BackendState:
    """What a backend's admin state, weight and health mean to packets.

    UP takes new flows; DRAIN keeps its flows and takes no new ones (weight 0 counts as
    drain, and so does a backend a trusted ICMP report alone took out); DOWN loses its flows
    to re-decision.
    """
    if admin is AdminState.DOWN or serving is Serving.OUT:
        return BackendState.DOWN
    if admin is AdminState.DRAIN or weight == 0 or serving is Serving.DRAIN:
        return BackendState.DRAIN
    return BackendState.UP


@dataclass
class Allocation:
    """Which index each VIP and which slot each (service, backend) holds, kept across changes
    so that unchanged backends keep their slots and their flows; generations tell a reused
    slot from its previous owner."""

    vip_index: dict[str, int] = field(default_factory=dict)
    #: (service name, address_key(backend address)) -> slot.
    slots: dict[tuple[str, int], int] = field(default_factory=dict)
    generations: dict[int, int] = field(default_factory=dict)
    max_vips: int = MAX_VIPS
    max_backends: int = MAX_BACKENDS

    def slot_of(self, service: str, address: IPAddress) -> int | None:
        """The slot of ``address`` in ``service``, or None."""
        return self.slots.get((service, address_key(address)))

    def copy(self) -> Allocation:
        """A copy whose dicts can change without touching this one (keys and values are
        immutable, so copying the dicts is enough)."""
        return Allocation(
            dict(self.vip_index),
            dict(self.slots),
            dict(self.generations),
            self.max_vips,
            self.max_backends,
        )


def service_name(match: model_state.VipKey) -> str:
    """The canonical name of a VIP match key, as services_of names it."""
    protocols = {protocol.number: protocol for protocol in Protocol}
    address = ip_address(match.addr)
    if match.proto == 0 and match.port == 0:
        return str(VipKey(address))
    if match.proto not in protocols:
        raise PlanError(f"VIP key {address} proto {match.proto} port {match.port} is not valid")
    return str(VipKey(address, protocols[match.proto], match.port))


def allocation_from_state(
    state: DataplaneState, *, max_vips: int = MAX_VIPS, max_backends: int = MAX_BACKENDS
) -> Allocation:
    """The allocation a running data plane embodies: how a restarted control plane takes over
    the slots (and so the flows) of the one before it."""
    names = {vip_index: service_name(match) for match, vip_index in state.vips.items()}
    if state.settings.default_vip != NONE_INDEX:
        names[state.settings.default_vip] = DEFAULT_SET
    allocation = Allocation(max_vips=max_vips, max_backends=max_backends)
    allocation.vip_index = {name: vip_index for vip_index, name in names.items()}
    for slot, entry in state.backends.items():
        allocation.generations[slot] = entry.generation
        name = names.get(entry.vip_index)
        if name is not None and entry.state is not BackendState.UNUSED:
            allocation.slots[(name, address_key(ip_address(entry.addr)))] = slot
    return allocation


def _free_indices(taken: set[int], limit: int, what: str) -> Iterator[int]:
    """The indices below ``limit`` not in ``taken``, lowest first; ``taken`` is read as the
    iteration goes, so indices added to it meanwhile are skipped. PlanError when none is left."""
    for index in range(limit):
        if index not in taken:
            yield index
    raise NoFreeIndex(f"too many {what}: the data plane holds at most {limit}")


@dataclass(frozen=True)
class Plan:
    """The data-plane state a configuration asks for, the Maglev tables behind it (by service
    name) and the allocation it used."""

    state: DataplaneState
    tables: dict[str, MaglevTable]
    allocation: Allocation
    #: Backends (addresses) without a next hop: out of their tables unless that would leave
    #: a table empty.
    unresolved: tuple[IPAddress, ...]


def removals_only(current: Config, wanted: Config) -> Config:
    """``current`` with only the removals of the change to ``wanted``: VIPs and backends
    that ``wanted`` no longer has are gone, nothing is added or otherwise changed. Applied
    first, it frees the slots that ``wanted`` may then reuse (Daemon.change)."""
    kept = {service.name: set(service.keys) for service in services_of(wanted)}

    def keep(name: str, backends: tuple[Backend, ...]) -> tuple[Backend, ...]:
        keys = kept.get(name, set())
        return tuple(b for b in backends if address_key(b.address) in keys)

    vips = tuple(
        vip.model_copy(update={"backends": keep(str(vip.key), vip.backends)})
        for vip in current.vips
        if str(vip.key) in kept
    )
    default = keep(DEFAULT_SET, current.default_backends) if DEFAULT_SET in kept else ()
    return current.model_copy(update={"vips": vips, "default_backends": default})


def allocate(services: Sequence[Service], previous: Allocation) -> Allocation:
    """Keep every index still in use, free the rest, give new ones the lowest free index.

    A slot freed by this change is not handed out again in the same change, so no table that
    is still live can point at a slot that now belongs to another backend.
    """
    allocation = previous.copy()
    wanted_vips = {service.name for service in services}
    wanted_slots = {(service.name, key) for service in services for key in service.keys}
    allocation.vip_index = {n: i for n, i in previous.vip_index.items() if n in wanted_vips}
    allocation.slots = {k: i for k, i in previous.slots.items() if k in wanted_slots}
    vips_taken = set(previous.vip_index.values())
    slots_taken = set(previous.slots.values())
    free_vips = _free_indices(vips_taken, allocation.max_vips, "VIPs")
    free_slots = _free_indices(slots_taken, allocation.max_backends, "backends")
    for service in services:
        if service.name not in allocation.vip_index:
            index = next(free_vips)
            vips_taken.add(index)
            allocation.vip_index[service.name] = index
        for address_id in service.keys:
            key = (service.name, address_id)
            if key not in allocation.slots:
                slot = next(free_slots)
                slots_taken.add(slot)
                allocation.slots[key] = slot
                allocation.generations[slot] = allocation.generations.get(slot, 0) + 1
    return allocation


#: table -> (its inputs, its backends' keys), for as long as the table lives (a soak found the
#: bounded cache of strong references it replaces holding a gigabyte of dead tables).
_TABLE_FACTS: weakref.WeakKeyDictionary[MaglevTable, tuple[object, list[int]]] = (
    weakref.WeakKeyDictionary()
)


def _table_facts(table: MaglevTable) -> tuple[object, list[int]]:
    """A table's inputs (see table_inputs) and its backends' address keys, computed once."""
    facts = _TABLE_FACTS.get(table)
    if facts is None:
        keys = [address_key(address) for address in table.backends]
        inputs = (table.size, table.seed, frozenset(zip(keys, table.weights, strict=True)))
        facts = _TABLE_FACTS[table] = (inputs, keys)
    return facts


def table_inputs(table: MaglevTable) -> object:
    """Everything a Maglev table depends on, comparable: equal inputs, equal tables."""
    return _table_facts(table)[0]


def compile_plan(
    config: Config,
    previous: Allocation,
    *,
    lb_ipv4: IPv4Address,
    lb_ipv6: IPv6Address | None = None,
    resolve_next_hop: NextHopResolver,
    serving: Callable[[str, IPAddress], Serving] = lambda service, address: Serving.SERVE,
    previous_tables: Mapping[str, MaglevTable] | None = None,
    previous_state: DataplaneState | None = None,
    max_tx_ports: int = MAX_TX_PORTS,
    max_build_slots: int | None = None,
) -> Plan:
    """The data-plane state for ``config``. Tables whose inputs did not change are reused
    from ``previous_tables`` instead of being built again, and backend entries that did not
    change are taken over from ``previous_state`` (so diff() skips them at once).

    Raises PlanError for what the data plane cannot hold (VIPs, backends, egress
    interfaces beyond ``max_tx_ports``), and when the tables to build would have more than
    ``max_build_slots`` slots in all (None: no bound), before building any of them."""
    earlier = previous_state.backends if previous_state is not None else {}
    services = services_of(config)
    for service in services:
        for backend in service.backends:
            if backend.address.version == 6 and lb_ipv6 is None:
                raise PlanError(
                    f"backend {backend.address} of {service.name}: an IPv6 backend needs the "
                    "node's IPv6 address (the source of the outer IPv6 header): set "
                    "lb_address_ipv6 (or RR_LB_ADDRESS_IPV6), or give the device exactly one "
                    "global IPv6 address"
                )
    allocation = allocate(services, previous)
    default_vip = allocation.vip_index.get(DEFAULT_SET, NONE_INDEX)
    settings = Settings(
        lb_ipv4=lb_ipv4.packed,
        outer_ttl=config.outer_ttl,
        no_vip_action=model_state.Action[config.no_vip_action.name],
        malformed_action=model_state.Action[config.malformed_action.name],
        default_vip=default_vip,
        hash_seed=config.hash_seed,
        lb_ipv6=lb_ipv6.packed if lb_ipv6 is not None else bytes(16),
        gre_ingress=Ingress.GRE in config.ingress,
        routed_ingress=Ingress.ROUTED in config.ingress,
    )
    state = DataplaneState(settings=settings)
    tables: dict[str, MaglevTable] = {}
    to_build: list[tuple[Service, list[Backend]]] = []
    unresolved: list[IPAddress] = []
    next_hops: dict[int, NextHop | None] = {}
    for service in services:
        vip_index = allocation.vip_index[service.name]
        if service.match is not None:
            state.vips[service.match] = vip_index
        if service.affinity is not Affinity.FIVE_TUPLE:
            state.affinity[vip_index] = model_state.Affinity[service.affinity.name]
        eligible = []
        eligible_keys = []
        # UP, but no next hop yet: out of the table like an unhealthy backend (its new flows
        # would be dropped), unless none would be left (fail-open, as for health).
        held = []
        held_keys = []
        for backend, address_id in zip(service.backends, service.keys, strict=True):
            slot = allocation.slots[(service.name, address_id)]
            backend_state = data_plane_state(
                backend.state, backend.weight, serving(service.name, backend.address)
            )
            if address_id in next_hops:
                next_hop = next_hops[address_id]
            else:
                next_hop = next_hops[address_id] = resolve_next_hop(backend.address)
                if next_hop is None:
                    unresolved.append(backend.address)
            egress, vni = egress_of(service, backend)
            if egress is Egress.ROUTE and next_hop is not None and not next_hop.on_link:
                raise PlanError(
                    f"backend {backend.address} of {service.name}: encap route needs a backend on "
                    "a directly connected network, and its next hop is a gateway: use ipip, "
                    "gre, vxlan or geneve for it"
                )
            generation = allocation.generations[slot]
            entry = earlier.get(slot)
            # Same slot and generation means the same address (the allocation says so).
            if (
                entry is None
                or entry.generation != generation
                or entry.vip_index != vip_index
                or entry.state is not backend_state
                or entry.next_hop != next_hop
                or (entry.egress, entry.vni) != (egress, vni)
            ):
                entry = BackendEntry(
                    addr=backend.address.packed,
                    vip_index=vip_index,
                    generation=generation,
                    state=backend_state,
                    next_hop=next_hop,
                    egress=egress,
                    vni=vni,
                )
            state.backends[slot] = entry
            if backend_state is BackendState.UP and next_hop is None:
                held.append(backend)
                held_keys.append((address_id, backend.weight))
            elif backend_state is BackendState.UP:
                eligible.append(backend)
                eligible_keys.append((address_id, backend.weight))
        if not eligible:
            eligible, eligible_keys = held, held_keys
        reuse = (previous_tables or {}).get(service.name)
        wanted = (service.table_size, config.hash_seed, frozenset(eligible_keys))
        if reuse is not None and wanted == table_inputs(reuse):
            tables[service.name] = reuse
        else:
            to_build.append((service, eligible))
    ports = {hop.ifindex for hop in next_hops.values() if hop is not None and hop.ifindex}
    if len(ports) > max_tx_ports:
        raise PlanError(
            f"the backends are reached through {len(ports)} egress interfaces; the data plane "
            f"redirects to at most {max_tx_ports} (MAX_TX_PORTS)"
        )
    slots_to_build = sum(service.table_size for service, _ in to_build)
    if max_build_slots is not None and slots_to_build > max_build_slots:
        raise PlanError(
            f"this would build {len(to_build)} tables of {slots_to_build} slots in all; at "
            f"most {max_build_slots} slots are built for one plan"
        )
    for service, eligible in to_build:
        tables[service.name] = build_table(
            ((b.address, b.weight) for b in eligible), service.table_size, config.hash_seed
        )
    tables = {service.name: tables[service.name] for service in services}  # services' order
    for service in services:
        vip_index = allocation.vip_index[service.name]
        state.tables[vip_index] = slot_table(tables[service.name], service.name, allocation)
    return Plan(state, tables, allocation, tuple(unresolved))


def slot_table(table: MaglevTable, service: str, allocation: Allocation) -> npt.NDArray[np.uint32]:
    """A Maglev table in data-plane terms: each slot names a backend slot index."""
    if not table.backends:
        return np.full(table.size, NONE_INDEX, dtype=np.uint32)
    slot_of = np.array(
        [allocation.slots[(service, key)] for key in _table_facts(table)[1]],
        dtype=np.uint32,
    )
    return slot_of[table.slots]


# ---------------------------------------------------------------------------------------------
# Operations: how a running data plane gets from one state to the next without a packet
# seeing a table that points at a backend slot not yet (or no longer) set up.


@dataclass(frozen=True, slots=True)
class SetBackend:
    index: int
    entry: BackendEntry


@dataclass(frozen=True, slots=True)
class ClearBackend:
    index: int


@dataclass(frozen=True, slots=True)
class SetTable:
    vip_index: int
    slots: npt.NDArray[np.uint32]


@dataclass(frozen=True, slots=True)
class SetAffinity:
    """A VIP index's session affinity: part of its table (a change moves new flows as a new
    table would), written just before it."""

    vip_index: int
    mode: model_state.Affinity


@dataclass(frozen=True, slots=True)
class ResetVipCounters:
    """A VIP index given to a VIP it did not hold before: its counters start from 0."""

    vip_index: int


@dataclass(frozen=True, slots=True)
class DeleteTable:
    vip_index: int


@dataclass(frozen=True, slots=True)
class SetVip:
    key: model_state.VipKey
    vip_index: int


@dataclass(frozen=True, slots=True)
class DeleteVip:
    key: model_state.VipKey


@dataclass(frozen=True, slots=True)
class SetSettings:
    settings: Settings


@dataclass(frozen=True, slots=True)
class DeleteTxPort:
    """An egress interface no backend uses any more (control.apply adds the ones new
    backends need before it sets them)."""

    ifindex: int


Operation = (
    SetBackend | ClearBackend | SetTable | DeleteTable | SetVip | DeleteVip | SetSettings
    | DeleteTxPort | SetAffinity | ResetVipCounters
)  # fmt: skip


def tx_ports(state: DataplaneState) -> set[int]:
    """The egress interfaces ``state``'s backends are sent through."""
    return {
        entry.next_hop.ifindex
        for entry in state.backends.values()
        if entry.next_hop is not None and entry.next_hop.ifindex
    }


def _same_table(a: model_state.Table | None, b: model_state.Table) -> bool:
    return a is not None and len(a) == len(b) and bool(np.array_equal(a, b))


def diff(old: DataplaneState | None, new: DataplaneState) -> list[Operation]:
    """The operations that turn ``old`` (None: empty maps) into ``new``, in a safe order:

    1. backend slots that forward in ``new`` (new ones, ones coming back, changed next hops),
    2. the counters of VIP indices new to ``old`` (not when ``old`` is None: new maps, or a
    sync), each VIP's affinity then its table, 3. VIP keys, 4. settings (the default set's
    index), then the removals: 5. VIP keys, 6. slots that stop forwarding (DOWN), 7. tables
    (their affinity back to the 5-tuple) and slots no longer used, 8. egress interfaces no
    backend uses any more.
    A packet therefore never finds a table slot or VIP whose backend is not set up yet, and a
    backend is marked DOWN only after no table sends new flows to it.
    """
    before = old or DataplaneState(settings=new.settings)
    ops: list[Operation] = []
    late_backends: list[Operation] = []
    for index, entry in sorted(new.backends.items()):
        if old is not None:
            earlier = before.backends.get(index)
            if earlier is entry or earlier == entry:
                continue
        if entry.state in model_state.FORWARDING_STATES:
            ops.append(SetBackend(index, entry))
        else:
            late_backends.append(SetBackend(index, entry))
    if old is not None:
        ops += [ResetVipCounters(i) for i in sorted(new.tables.keys() - before.tables.keys())]
    five_tuple = model_state.Affinity.FIVE_TUPLE
    for vip_index, slots in sorted(new.tables.items()):
        mode = new.affinity.get(vip_index, five_tuple)
        if old is None or before.affinity.get(vip_index, five_tuple) is not mode:
            ops.append(SetAffinity(vip_index, mode))
        if not _same_table(before.tables.get(vip_index) if old else None, slots):
            ops.append(SetTable(vip_index, np.asarray(slots, dtype=np.uint32)))
    for key, vip_index in sorted(new.vips.items(), key=lambda item: item[1]):
        if old is None or before.vips.get(key) != vip_index:
            ops.append(SetVip(key, vip_index))
    if old is None or before.settings != new.settings:
        ops.append(SetSettings(new.settings))
    for key in sorted(before.vips.keys() - new.vips.keys(), key=lambda k: before.vips[k]):
        ops.append(DeleteVip(key))
    ops += late_backends
    for vip_index in sorted(before.tables.keys() - new.tables.keys()):
        ops.append(DeleteTable(vip_index))
        if before.affinity.get(vip_index, model_state.Affinity.FIVE_TUPLE) is not five_tuple:
            ops.append(SetAffinity(vip_index, five_tuple))
    for index in sorted(before.backends.keys() - new.backends.keys()):
        ops.append(ClearBackend(index))
    if old is not None:
        ops += [DeleteTxPort(ifindex) for ifindex in sorted(tx_ports(old) - tx_ports(new))]
    return ops
