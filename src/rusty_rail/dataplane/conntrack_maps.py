"""The balancer's connection tables as the control plane sees them (bpf/conntrack.h):
set-associative arrays, one per family; the high half of a flow's mix64 picks its set, a way
holds the flow, its target and a check digest (0 = empty). Read whole with numpy straight from
the maps' memory; written way by way as the program would. A part of BalancerMaps (maps.py).
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import struct
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rusty_rail.dataplane import structs
from rusty_rail.dataplane.libbpf import Map
from rusty_rail.model.flowhash import MASK64, Flow, mix64, mix64_vectorised
from rusty_rail.model.state import CtEntry, Settings

#: The multiplier of an entry's check digest (bpf/conntrack.h).
CONNTRACK_CHECK_MULTIPLIER = 0x9E3779B97F4A7C15
FLOW_ENTRY_SIZE = ctypes.sizeof(structs.CFlowEntry)
FLOW_SET_SIZE = ctypes.sizeof(structs.CFlowSet)
FLOW6_SET_SIZE = ctypes.sizeof(structs.CFlow6Set)
#: The connection tables, by family: the IPv4 flows' and the IPv6 flows' (same sets, same mask).
CONNTRACK_MAPS = ("conntrack", "conntrack_v6")


def conntrack_sets_for(entries: int) -> int:
    """The number of sets of a connection table for ``entries`` flows: a power of two."""
    if entries < 1:
        raise ValueError(f"a connection table needs at least one entry, got {entries}")
    sets = -(-entries // structs.CONNTRACK_WAYS)
    return 1 << (sets - 1).bit_length()


def conntrack_check(flow_mix: int, entry: CtEntry) -> int:
    """The digest a connection-table way carries for ``entry`` (bpf/conntrack.h)."""
    target = entry.backend_index | (entry.generation << 32)
    return ((((flow_mix ^ target) * CONNTRACK_CHECK_MULTIPLIER) & MASK64) >> 32) | 1


@dataclass(frozen=True, slots=True)
class _FlowTable:
    """One connection table as userspace reads it: its map and the layout of its ways."""

    map: Map
    set_type: type[structs.CFlowSet] | type[structs.CFlow6Set]
    entry_type: type[structs.CFlowEntry] | type[structs.CFlow6Entry]

    @property
    def key_words(self) -> int:
        """32-bit words of a way's flow key; backend index, generation, check and recent
        follow (bpf/balancer_types.h)."""
        return ctypes.sizeof(self.entry_type) // 4 - 4


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _pages(size: int) -> int:
    """``size`` rounded up to whole pages: how much of an array map mmap() covers."""
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


class ConntrackTables:
    """The connection-table half of BalancerMaps: needs ``_flow_tables``, ``conntrack_mask``
    and ``read_settings`` from it."""

    _flow_tables: tuple[_FlowTable, _FlowTable]
    conntrack_mask: int

    def read_settings(self) -> Settings:
        raise NotImplementedError

    def _locate(self, flow: Flow) -> tuple[_FlowTable, bytes, int]:
        """(the flow's table, the key of its set, its mix64) under the current seed."""
        flow_mix = mix64(self.read_settings().hash_seed, flow.words())
        table = self._flow_tables[1 if flow.is_ipv6 else 0]
        return table, _u32((flow_mix >> 32) & self.conntrack_mask), flow_mix

    @staticmethod
    def _read_set(table: _FlowTable, key: bytes) -> structs.CFlowSet | structs.CFlow6Set:
        value = table.map.lookup(key)
        assert value is not None  # an array always has its entries
        return table.set_type.from_buffer_copy(value)

    @staticmethod
    def _find_way(flow_set: structs.CFlowSet | structs.CFlow6Set, flow_key: bytes) -> int | None:
        for index, way in enumerate(flow_set.way):
            if way.check and bytes(way.flow) == flow_key:
                return index
        return None

    @staticmethod
    def _victim_way(flow_set: structs.CFlowSet | structs.CFlow6Set, flow_mix: int) -> int:
        """The way a new flow takes; the program's rule (conntrack_victim)."""
        ways = list(flow_set.way)
        for index, way in enumerate(ways):
            if not way.check:
                return index
        start = flow_mix & (structs.CONNTRACK_WAYS - 1)
        for step in range(structs.CONNTRACK_WAYS):
            index = (start + step) % structs.CONNTRACK_WAYS
            if not ways[index].recent:
                return index
        for way in ways:
            way.recent = 0
        return start

    def set_conntrack(self, flow: Flow, entry: CtEntry) -> None:
        """Record ``flow`` -> ``entry`` as the program would (it may evict a way of a full set)."""
        flow_key = structs.encode_flow_key(flow)
        table, key, flow_mix = self._locate(flow)
        flow_set = self._read_set(table, key)
        index = self._find_way(flow_set, flow_key)
        if index is None:
            index = self._victim_way(flow_set, flow_mix)
            flow_set.way[index] = table.entry_type.from_buffer_copy(
                flow_key + bytes(ctypes.sizeof(table.entry_type) - len(flow_key))
            )
        way = flow_set.way[index]
        way.target = structs.CConntrackEntry.from_buffer_copy(structs.encode_conntrack_entry(entry))
        way.check = conntrack_check(flow_mix, entry)
        table.map.update(key, bytes(flow_set))

    def lookup_conntrack(self, flow: Flow) -> CtEntry | None:
        """The flow's recorded entry, if its way is whole."""
        table, key, flow_mix = self._locate(flow)
        flow_set = self._read_set(table, key)
        index = self._find_way(flow_set, structs.encode_flow_key(flow))
        if index is None:
            return None
        way = flow_set.way[index]
        entry = structs.decode_conntrack_entry(bytes(way.target))
        return entry if way.check == conntrack_check(flow_mix, entry) else None

    def delete_conntrack(self, flow: Flow) -> bool:
        """Forget ``flow``; False if it was not recorded."""
        table, key, _ = self._locate(flow)
        flow_set = self._read_set(table, key)
        index = self._find_way(flow_set, structs.encode_flow_key(flow))
        if index is None:
            return False
        flow_set.way[index] = table.entry_type()
        table.map.update(key, bytes(flow_set))
        return True

    @staticmethod
    @contextmanager
    def _conntrack_words(table: _FlowTable, *, write: bool) -> Iterator[npt.NDArray[np.uint32]]:
        """A whole table as 32-bit words, one row per way (the flow's key words, then backend
        index, generation, check, recent), straight from the map's memory."""
        sets = table.map.max_entries
        size = sets * ctypes.sizeof(table.set_type)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
        memory = mmap.mmap(table.map.fd, _pages(size), prot=prot)
        try:
            words = np.frombuffer(memory, dtype=np.uint32, count=size // 4)
            yield words.reshape(sets * structs.CONNTRACK_WAYS, ctypes.sizeof(table.entry_type) // 4)
            del words
        finally:
            memory.close()

    def clear_conntrack(self) -> None:
        """Forget every flow, of both families."""
        for table in self._flow_tables:
            with self._conntrack_words(table, write=True) as rows:
                rows[:] = 0
                del rows

    def dump_conntrack(self, limit: int | None = None) -> dict[Flow, CtEntry]:
        """Every recorded flow whose way is whole and in the set its hash names (the first
        ``limit`` of them in the table's order, when given)."""
        return dict(itertools.islice(self.iter_conntrack(), limit))

    def iter_conntrack(
        self, backends: Collection[int] | None = None
    ) -> Iterator[tuple[Flow, CtEntry]]:
        """The recorded flows as dump_conntrack finds them (only those whose entry names one
        of ``backends``' slots, when given), decoded one at a time as they are taken: IPv4
        flows first, then IPv6. Each table is read and checked whole with numpy, but a caller
        that stops after a few flows decodes only those."""
        seed = self.read_settings().hash_seed
        for table in self._flow_tables:
            yield from self._iter_table(table, seed, backends)

    def conntrack_targets(self) -> npt.NDArray[np.uint32]:
        """The (backend index, generation) of every entry dump_conntrack would find, both
        families, one row each: counted with numpy, nothing decoded."""
        seed = self.read_settings().hash_seed
        parts = [
            self._whole_rows(t, seed, None)[:, t.key_words :][:, :2] for t in self._flow_tables
        ]
        return np.concatenate(parts)

    def _iter_table(
        self, table: _FlowTable, seed: int, backends: Collection[int] | None
    ) -> Iterator[tuple[Flow, CtEntry]]:
        words = table.key_words
        for row in self._whole_rows(table, seed, backends):
            raw = row.tobytes()
            key_end = words * 4
            yield (
                structs.decode_flow_key(raw[:key_end]),
                structs.decode_conntrack_entry(raw[key_end : key_end + 8]),
            )

    def _whole_rows(
        self, table: _FlowTable, seed: int, backends: Collection[int] | None
    ) -> npt.NDArray[np.uint32]:
        """The table's ways that hold a whole entry in its set (of ``backends``, if given)."""
        words = table.key_words
        with self._conntrack_words(table, write=False) as rows:
            used = np.flatnonzero(rows[:, words + 2])
            entries: npt.NDArray[np.uint32] = rows[used].copy()
            del rows
        flow_mix = mix64_vectorised(seed, entries[:, :words])
        target = entries[:, words].astype(np.uint64) | (
            entries[:, words + 1].astype(np.uint64) << np.uint64(32)
        )
        with np.errstate(over="ignore"):
            check = ((flow_mix ^ target) * np.uint64(CONNTRACK_CHECK_MULTIPLIER)) >> np.uint64(32)
        check |= np.uint64(1)
        in_place = ((flow_mix >> np.uint64(32)) & np.uint64(self.conntrack_mask)) == (
            used // structs.CONNTRACK_WAYS
        ).astype(np.uint64)
        whole = (check == entries[:, words + 2]) & in_place
        if backends is not None:
            whole &= np.isin(entries[:, words], np.fromiter(backends, dtype=np.uint32))
        whole_rows: npt.NDArray[np.uint32] = entries[whole]
        return whole_rows
