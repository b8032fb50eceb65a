"""The balancer's maps as the control plane sees them: write a DataplaneState (whole or piece
by piece), swap Maglev tables atomically, read counters and flows back.

Encoding model.state values into the structs of bpf/balancer_types.h happens here and in structs.py
only.
"""

from __future__ import annotations

import errno
import mmap
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rusty_rail.dataplane import structs
from rusty_rail.dataplane.conntrack_maps import (
    CONNTRACK_MAPS,
    FLOW6_SET_SIZE,
    FLOW_SET_SIZE,
    ConntrackTables,
    _FlowTable,
    conntrack_sets_for,
)
from rusty_rail.dataplane.libbpf import (
    BPF_F_INNER_MAP,
    BPF_F_MMAPABLE,
    BpfObject,
    LibbpfError,
    Map,
    MapType,
    create_map,
    num_possible_cpus,
)
from rusty_rail.model.pmtu import TooBig
from rusty_rail.model.state import (
    NONE_INDEX,
    VIP_FLOW_COUNT,
    Affinity,
    BackendEntry,
    DataplaneState,
    Settings,
    Stat,
    VipFlow,
    VipKey,
)

#: Why a VIP's packets were dropped once the VIP was known: its table had no forwarding backend
#: for a new flow, the backend's next hop was not resolved, or (section 8c) too big with the
#: VIP's ICMP rate spent or without DF (TooBig.LIMITED, TooBig.NO_DF).
VIP_DROP_REASONS = ("no_backend", "no_nexthop", "too_big_limited", "too_big_no_df")

#: How often a table read follows a swap that freed the table it was about to read.
TABLE_READ_TRIES = 8

#: Must equal the flags of `struct maglev_table` in bpf/balancer_maps.h: the kernel only accepts
#: inner maps whose type, sizes and flags match the template.
TABLE_MAP_FLAGS = BPF_F_INNER_MAP | BPF_F_MMAPABLE

#: An array map stores each value in an 8-byte-aligned element, so a u32 table entry takes
#: 8 bytes in the map's memory and in its mmap (the value in the first 4).
ARRAY_ELEMENT_STRIDE = 8

MAP_NAMES = (
    "settings",
    "vips",
    "vips_v6",
    "tables",
    "backends",
    "backend_tunnels",
    "backend_mtu",
    "conntrack",
    "conntrack_v6",
    "stats",
    "vip_stats",
    "backend_stats",
    "tx_ports",
    "vip_flows",
    "vip_affinity",
)

PacketsBytes = tuple[int, int]


def prepare_object(obj: BpfObject, *, conntrack_entries: int) -> None:
    """Size the connection table of an opened, not yet loaded balancer object."""
    for name in CONNTRACK_MAPS:
        obj.set_max_entries(name, conntrack_sets_for(conntrack_entries))


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


ZERO_KEY = _u32(0)
EMPTY_BACKEND = bytes(structs.CBackend())


def _pages(size: int) -> int:
    """``size`` rounded up to whole pages: how much of an array map mmap() covers."""
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


def _table_memory(entries: int) -> int:
    """Bytes of a Maglev table's mmap."""
    return _pages(entries * ARRAY_ELEMENT_STRIDE)


def _table_values(slots: Sequence[int] | npt.NDArray[np.integer]) -> npt.NDArray[np.uint32]:
    """Element 0 = M, then the M slots; every slot a backend index or NONE_INDEX."""
    array = np.asarray(slots, dtype=np.int64).reshape(-1)
    bad = (array != NONE_INDEX) & ((array < 0) | (array >= structs.MAX_BACKENDS))
    if bad.any():
        raise ValueError(
            f"table slot {int(np.flatnonzero(bad)[0])} holds {int(array[bad][0])}: a backend "
            f"index must be 0..{structs.MAX_BACKENDS - 1} or NONE_INDEX"
        )
    return np.concatenate(([array.size], array)).astype(np.uint32)


def _table_view(memory: mmap.mmap, entries: int) -> npt.NDArray[np.uint32]:
    words = np.frombuffer(memory, dtype=np.uint32, count=entries * ARRAY_ELEMENT_STRIDE // 4)
    return words.reshape(entries, ARRAY_ELEMENT_STRIDE // 4)[:, 0]


def _sum_percpu(values: Iterable[bytes]) -> PacketsBytes:
    packets = size = 0
    for value in values:
        cpu_packets, cpu_bytes = structs.decode_counter(value)
        packets += cpu_packets
        size += cpu_bytes
    return packets, size


class BalancerMaps(ConntrackTables):
    """The maps of one loaded balancer (from its BpfObject, or from pins for a hot restart).

    Every write is idempotent: writing the same value twice leaves the same maps."""

    def __init__(self, maps: Mapping[str, Map], *, owned: bool = False) -> None:
        missing = [name for name in MAP_NAMES if name not in maps]
        if missing:
            raise ValueError(f"balancer maps missing: {', '.join(missing)}")
        self.settings = maps["settings"]
        self.vips = maps["vips"]
        self.vips_v6 = maps["vips_v6"]
        self.tables = maps["tables"]
        self.backends = maps["backends"]
        self.backend_tunnels = maps["backend_tunnels"]
        self.backend_mtu = maps["backend_mtu"]
        self.conntrack = maps["conntrack"]
        self.conntrack_v6 = maps["conntrack_v6"]
        self.stats = maps["stats"]
        self.vip_stats = maps["vip_stats"]
        self.backend_stats = maps["backend_stats"]
        self.tx_ports = maps["tx_ports"]
        self.vip_flows = maps["vip_flows"]
        self.vip_affinity = maps["vip_affinity"]
        #: Section 8c's per-VIP counts (too_big_maps.py reads them): zeroed with the VIP's own.
        self.vip_too_big = maps.get("vip_too_big")
        self._owned = list(maps.values()) if owned else []
        sets = self.conntrack.max_entries
        if sets & (sets - 1) or self.conntrack.value_size != FLOW_SET_SIZE:
            raise ValueError(
                f"the conntrack map has {sets} sets of {self.conntrack.value_size} bytes: "
                f"expected a power of two of {FLOW_SET_SIZE}-byte sets (bpf/balancer_maps.h)"
            )
        if self.conntrack_v6.max_entries != sets or self.conntrack_v6.value_size != FLOW6_SET_SIZE:
            raise ValueError(
                f"the conntrack_v6 map has {self.conntrack_v6.max_entries} sets of "
                f"{self.conntrack_v6.value_size} bytes: expected {sets} sets (as conntrack) of "
                f"{FLOW6_SET_SIZE} bytes (bpf/balancer_maps.h)"
            )
        self.conntrack_mask = sets - 1
        self._flow_tables = (
            _FlowTable(self.conntrack, structs.CFlowSet, structs.CFlowEntry),
            _FlowTable(self.conntrack_v6, structs.CFlow6Set, structs.CFlow6Entry),
        )

    @classmethod
    def of_object(cls, obj: BpfObject) -> BalancerMaps:
        """The maps of a loaded balancer object (the object owns them)."""
        return cls({name: obj.map(name) for name in (*MAP_NAMES, "vip_too_big")})

    @classmethod
    def from_pinned(cls, directory: str | Path) -> BalancerMaps:
        """The maps pinned in ``directory`` under their own names; close() releases them."""
        directory = Path(directory)
        return cls({name: Map.from_pinned(directory / name) for name in MAP_NAMES}, owned=True)

    def close(self) -> None:
        """Release descriptors this object opened (maps of a BpfObject stay with it)."""
        for bpf_map in self._owned:
            bpf_map.close()

    # --- the whole state -------------------------------------------------------------------

    def sync(self, state: DataplaneState, *, conntrack: bool = True) -> None:
        """Make the maps say exactly what ``state`` says (counters are left alone); with
        ``conntrack=False`` the connection table keeps whatever flows it has.

        Everything is encoded (and so validated) before the first write. Writes go make before
        break: next hops, backends, tables and VIPs are added before the settings, and
        removals come last, so a live program never meets a VIP without its table or a
        table slot without its backend that neither the old nor the new state had."""
        structs.encode_settings(state.settings, self.conntrack_mask)  # validates
        vips = {
            (self._vip_map(k), structs.encode_vip_key(k)): structs.encode_vip_value(v)
            for k, v in state.vips.items()
        }
        for index in state.backends:
            structs.require_index(index, structs.MAX_BACKENDS, "backend index")
        backends = {_u32(i): structs.encode_backend(b) for i, b in state.backends.items()}
        tunnels = {_u32(i): structs.encode_backend_tunnel(b) for i, b in state.backends.items()}
        mtus = {_u32(i): structs.encode_backend_mtu(b) for i, b in state.backends.items()}
        for vip_index in state.tables:
            structs.require_index(vip_index, structs.MAX_VIPS, "table VIP index")
        tables = {vip_index: _table_values(slots) for vip_index, slots in state.tables.items()}
        for vip_index in state.affinity:
            structs.require_index(vip_index, structs.MAX_VIPS, "affinity VIP index")
        affinity = {_u32(i): structs.encode_affinity(mode) for i, mode in state.affinity.items()}
        five_tuple = structs.encode_affinity(Affinity.FIVE_TUPLE)
        for flow in state.conntrack:
            structs.encode_flow_key(flow)  # validates
        ports = {b.next_hop.ifindex for b in state.backends.values() if b.next_hop is not None}
        ports.discard(0)

        for ifindex in sorted(ports):
            self.set_tx_port(ifindex)
        current_backends = {
            key: value for key, value in self._array_items(self.backends) if value != EMPTY_BACKEND
        }
        for key, value in backends.items():  # a slot's VNI and MTU before the method
            for side, side_value in ((self.backend_tunnels, tunnels), (self.backend_mtu, mtus)):
                if side.lookup(key) != side_value[key]:
                    side.update(key, side_value[key])
            if current_backends.get(key) != value:
                self.backends.update(key, value)
        for key, value in self._array_items(self.vip_affinity):  # with the tables
            wanted = affinity.get(key, five_tuple)
            if value != wanted:
                self.vip_affinity.update(key, wanted)
        for vip_index, values in tables.items():
            installed = self._read_table_values(vip_index)
            if installed is None or not np.array_equal(installed, values):
                self._swap_table(vip_index, values)
        for (vip_map, key), value in vips.items():
            if vip_map.lookup(key) != value:
                vip_map.update(key, value)
        self.set_settings(state.settings)
        if conntrack:
            recorded = self.dump_conntrack()
            for flow in recorded.keys() - state.conntrack.keys():
                self.delete_conntrack(flow)
            for flow, entry in state.conntrack.items():
                if recorded.get(flow) != entry:
                    self.set_conntrack(flow, entry)

        for vip_map in (self.vips, self.vips_v6):
            for key in list(vip_map.keys()):
                if (vip_map, key) not in vips:
                    vip_map.delete(key)
        for vip_index in range(structs.MAX_VIPS):
            if vip_index not in tables and self.tables.inner_id(_u32(vip_index)) is not None:
                self.delete_table(vip_index)
        for key in current_backends:
            if key not in backends:
                self.backends.update(key, EMPTY_BACKEND)
        for key in list(self.tx_ports.keys()):
            if struct.unpack("=I", key)[0] not in ports:
                self.tx_ports.delete(key)

    def read_state(self, *, conntrack: bool = True) -> DataplaneState:
        """What the maps say, as a DataplaneState (counters aside): for adoption after a
        restart, and for tests that a sync wrote what it should. ``conntrack=False`` skips
        the connection table, which can hold a million flows."""
        state = DataplaneState(settings=self.read_settings())
        for vip_map in (self.vips, self.vips_v6):
            for key, vip in vip_map.items():
                state.vips[structs.decode_vip_key(key)] = structs.decode_vip_value(vip)
        for vip_index in range(structs.MAX_VIPS):
            values = self._read_table_values(vip_index)
            if values is not None:
                state.tables[vip_index] = values[1:]
        for key, raw in self._array_items(self.vip_affinity):
            mode = structs.decode_affinity(raw)
            if mode is not Affinity.FIVE_TUPLE:
                state.affinity[struct.unpack("=I", key)[0]] = mode
        for key, raw in self._array_items(self.backends):
            backend = self._decode_backend(key, raw)
            if backend is not None:
                state.backends[struct.unpack("=I", key)[0]] = backend
        if conntrack:
            state.conntrack = self.dump_conntrack()
        return state

    # --- settings, VIPs, backends --------------------------------------------------------

    def read_settings(self) -> Settings:
        value = self.settings.lookup(ZERO_KEY)
        assert value is not None  # an array always has its entries
        return structs.decode_settings(value)

    def set_settings(self, settings: Settings) -> None:
        """Write the settings. A new hash seed moves every flow to another connection-table
        set, so the recorded flows are moved along (they keep their backends)."""
        value = structs.encode_settings(settings, self.conntrack_mask)
        old = self.settings.lookup(ZERO_KEY)
        if old == value:
            return
        old_seed = None if old is None else structs.CSettings.from_buffer_copy(old).hash_seed
        flows = self.dump_conntrack() if old_seed not in (None, settings.hash_seed) else {}
        self.settings.update(ZERO_KEY, value)
        if flows:
            self.clear_conntrack()
            for flow, entry in flows.items():
                self.set_conntrack(flow, entry)

    def _vip_map(self, key: VipKey) -> Map:
        return self.vips_v6 if structs.is_vip6_key(key) else self.vips

    def set_vip(self, key: VipKey, vip_index: int) -> None:
        """Add or change a VIP match (an IPv6 address goes in ``vips_v6``)."""
        value = structs.encode_vip_value(vip_index)
        self._vip_map(key).update(structs.encode_vip_key(key), value)

    def delete_vip(self, key: VipKey) -> bool:
        """Remove a VIP match; False if it was not there."""
        return self._vip_map(key).delete(structs.encode_vip_key(key))

    def set_backend(self, backend_index: int, entry: BackendEntry) -> None:
        structs.require_index(backend_index, structs.MAX_BACKENDS, "backend index")
        key = _u32(backend_index)
        self.backend_tunnels.update(key, structs.encode_backend_tunnel(entry))
        self.backend_mtu.update(key, structs.encode_backend_mtu(entry))
        self.backends.update(key, structs.encode_backend(entry))

    def clear_backend(self, backend_index: int) -> None:
        """Zero the slot: state UNUSED, no next hop; its flows become stale."""
        structs.require_index(backend_index, structs.MAX_BACKENDS, "backend index")
        self.backends.update(_u32(backend_index), EMPTY_BACKEND)

    def read_backend(self, backend_index: int) -> BackendEntry | None:
        structs.require_index(backend_index, structs.MAX_BACKENDS, "backend index")
        raw = self.backends.lookup(_u32(backend_index))
        return None if raw is None else self._decode_backend(_u32(backend_index), raw)

    def _decode_backend(self, key: bytes, raw: bytes) -> BackendEntry | None:
        tunnel, mtu = self.backend_tunnels.lookup(key), self.backend_mtu.lookup(key)
        return structs.decode_backend(raw, tunnel, mtu)

    def set_affinity(self, vip_index: int, mode: Affinity) -> None:
        """The flow fields the VIP's Maglev pick hashes (bpf/affinity.h)."""
        structs.require_index(vip_index, structs.MAX_VIPS, "affinity VIP index")
        self.vip_affinity.update(_u32(vip_index), structs.encode_affinity(mode))

    def read_affinity(self, vip_index: int) -> Affinity:
        structs.require_index(vip_index, structs.MAX_VIPS, "affinity VIP index")
        raw = self.vip_affinity.lookup(_u32(vip_index))
        return Affinity.FIVE_TUPLE if raw is None else structs.decode_affinity(raw)

    # --- Maglev tables --------------------------------------------------------------------

    def set_table(self, vip_index: int, slots: Sequence[int] | npt.NDArray[np.integer]) -> None:
        """Give a VIP a new table: a new inner map, filled, then swapped in with one update.

        A packet sees the old table or the new one, with its own size. The old inner map goes
        away when the last packet using it is done (the kernel holds it until then)."""
        structs.require_index(vip_index, structs.MAX_VIPS, "table VIP index")
        self._swap_table(vip_index, _table_values(slots))

    def _swap_table(self, vip_index: int, values: npt.NDArray[np.uint32]) -> None:
        inner = create_map(
            MapType.ARRAY,
            4,
            4,
            len(values),
            name=f"rr_table_{vip_index}",
            flags=TABLE_MAP_FLAGS,
        )
        with inner:
            memory = mmap.mmap(inner.fd, _table_memory(len(values)))
            try:
                view = _table_view(memory, len(values))
                view[:] = values
                del view  # the mmap cannot close while numpy still holds its buffer
            finally:
                memory.close()
            self.tables.set_inner(_u32(vip_index), inner)

    def delete_table(self, vip_index: int) -> bool:
        """Remove a VIP's table (its packets then count DROP_NO_BACKEND); False if none."""
        structs.require_index(vip_index, structs.MAX_VIPS, "table VIP index")
        return self.tables.delete(_u32(vip_index))

    def read_table(self, vip_index: int) -> list[int] | None:
        """The VIP's table as the program sees it (without the size element), or None."""
        values = self._read_table_values(vip_index)
        return None if values is None else [int(slot) for slot in values[1:]]

    def _read_table_values(self, vip_index: int) -> npt.NDArray[np.uint32] | None:
        """The live inner map's values. A swap between reading its id and opening it frees
        the old map (ENOENT): the id is read again, and the new table read."""
        for _ in range(TABLE_READ_TRIES):
            inner_id = self.tables.inner_id(_u32(vip_index))
            if inner_id is None:
                return None
            try:
                inner = Map.from_id(inner_id)
            except LibbpfError as error:
                if error.errno != errno.ENOENT:
                    raise
                continue  # swapped meanwhile
            with inner:
                size = _table_memory(inner.max_entries)
                memory = mmap.mmap(inner.fd, size, prot=mmap.PROT_READ)
                try:
                    values = _table_view(memory, inner.max_entries).copy()
                finally:
                    memory.close()
            return values
        raise LibbpfError(errno.ENOENT, f"VIP index {vip_index}: its table kept changing")

    # --- egress ports ---------------------------------------------------------------------

    def set_tx_port(self, ifindex: int) -> None:
        """Allow XDP_REDIRECT to ``ifindex`` (an interface of this network namespace)."""
        if ifindex <= 0:
            raise ValueError(f"a redirect port needs a real ifindex, got {ifindex}")
        self.tx_ports.update(_u32(ifindex), _u32(ifindex))

    def delete_tx_port(self, ifindex: int) -> bool:
        return self.tx_ports.delete(_u32(ifindex))

    def tx_port_ifindexes(self) -> set[int]:
        return {struct.unpack("=I", key)[0] for key in self.tx_ports.keys()}  # noqa: SIM118 (a Map)

    # --- counters -------------------------------------------------------------------------

    def read_stats(self) -> dict[Stat, PacketsBytes]:
        """Every outcome's (packets, bytes), summed over the CPUs."""
        result = {}
        for stat in Stat:
            values = self.stats.lookup_percpu(_u32(stat))
            result[stat] = _sum_percpu(values or [])
        return result

    def read_vip_stats(self, indices: Iterable[int] | None = None) -> dict[int, PacketsBytes]:
        """(packets, bytes) per VIP index, summed over the CPUs; only non-zero counters."""
        return self._read_counters(self.vip_stats, indices, structs.MAX_VIPS)

    def read_backend_stats(self, indices: Iterable[int] | None = None) -> dict[int, PacketsBytes]:
        """(packets, bytes) per backend slot, summed over the CPUs; only non-zero counters."""
        return self._read_counters(self.backend_stats, indices, structs.MAX_BACKENDS)

    def read_vip_flows(self, indices: Iterable[int]) -> dict[tuple[int, VipFlow], PacketsBytes]:
        """(packets, bytes) per (VIP index, VipFlow), summed over the CPUs; only non-zero ones."""
        result = {}
        for vip_index in indices:
            structs.require_index(vip_index, structs.MAX_VIPS, "VIP index")
            for what in VipFlow:
                key = _u32(vip_index * VIP_FLOW_COUNT + what)
                total = _sum_percpu(self.vip_flows.lookup_percpu(key) or [])
                if total != (0, 0):
                    result[(vip_index, what)] = total
        return result

    def read_vip_drops(self, vip_index: int) -> dict[str, PacketsBytes]:
        """The VIP's drops by reason (VIP_DROP_REASONS, every one, zeros included): its own
        (vip_flows) and section 8c's (vip_too_big, when this object has it)."""
        flows = self.read_vip_flows([vip_index])
        drops = {
            "no_backend": flows.get((vip_index, VipFlow.DROP_NO_BACKEND), (0, 0)),
            "no_nexthop": flows.get((vip_index, VipFlow.DROP_NO_NEXTHOP), (0, 0)),
        }
        per_vip = (
            0 if self.vip_too_big is None else self.vip_too_big.max_entries // structs.MAX_VIPS
        )
        for reason, offset in (
            ("too_big_limited", TooBig.LIMITED),
            ("too_big_no_df", TooBig.NO_DF),
        ):
            key = _u32(vip_index * per_vip + offset)
            values = self.vip_too_big.lookup_percpu(key) if self.vip_too_big and per_vip else None
            drops[reason] = _sum_percpu(values or [])
        return drops

    def reset_vip_counters(self, vip_index: int) -> None:
        """Zero the VIP index's counters (its packets, new flows, drops and too-big packets):
        a VIP given an index starts from 0, whichever VIP had it before."""
        structs.require_index(vip_index, structs.MAX_VIPS, "VIP index")
        zero = [bytes(structs.CCounter())] * num_possible_cpus()
        self.vip_stats.update_percpu(_u32(vip_index), zero)
        others = [] if self.vip_too_big is None else [self.vip_too_big]
        for counters in (self.vip_flows, *others):
            per_vip = counters.max_entries // structs.MAX_VIPS
            for reason in range(per_vip):
                counters.update_percpu(_u32(vip_index * per_vip + reason), zero)

    @staticmethod
    def _read_counters(
        counters: Map, indices: Iterable[int] | None, limit: int
    ) -> dict[int, PacketsBytes]:
        result = {}
        for index in range(limit) if indices is None else indices:
            values = counters.lookup_percpu(_u32(index))
            total = _sum_percpu(values or [])
            if total != (0, 0):
                result[index] = total
        return result

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _array_items(array: Map) -> Iterable[tuple[bytes, bytes]]:
        # Batched: one system call per 256 elements instead of one per element.
        return array.items(batch_size=4096)
