"""Carries a plan's operations into the BPF maps, in the order the plan gives them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from rusty_rail.control.plan import (
    ClearBackend,
    DeleteTable,
    DeleteTxPort,
    DeleteVip,
    Operation,
    ResetVipCounters,
    SetAffinity,
    SetBackend,
    SetSettings,
    SetTable,
    SetVip,
)
from rusty_rail.dataplane.maps import BalancerMaps

#: Tables swapped in at once: each swap waits for an RCU grace period in the kernel (a
#: map-in-map update, ~9 ms here), and waits that overlap share it.
PARALLEL_SWAPS: Final = 16


def _set_tables(maps: BalancerMaps, tables: Sequence[SetTable]) -> None:
    """Consecutive table swaps: independent of each other (one VIP each), so done together."""
    if len(tables) == 1:
        maps.set_table(tables[0].vip_index, tables[0].slots)
        return
    with ThreadPoolExecutor(max_workers=min(PARALLEL_SWAPS, len(tables))) as pool:
        for done in [pool.submit(maps.set_table, op.vip_index, op.slots) for op in tables]:
            done.result()  # the first failure is raised, after every swap has ended


def apply_operations(maps: BalancerMaps, operations: Iterable[Operation]) -> int:
    """Apply ``operations`` one by one; returns how many were applied.

    Each operation leaves the data plane consistent on its own (diff orders them so), so a
    failure part-way leaves a state that is a mix of old and new per backend or per table,
    never a table that names a backend slot that is not set up. Consecutive table swaps run
    together (their order among themselves does not matter: one VIP each)."""
    operations = list(operations)
    ports = {
        op.entry.next_hop.ifindex
        for op in operations
        if isinstance(op, SetBackend) and op.entry.next_hop is not None
    }
    ports.discard(0)
    for ifindex in sorted(ports - maps.tx_port_ifindexes()):
        maps.set_tx_port(ifindex)
    tables: list[SetTable] = []
    for op in operations:
        if isinstance(op, SetTable):
            tables.append(op)
            continue
        if tables:
            _set_tables(maps, tables)
            tables = []
        match op:
            case SetBackend(index, entry):
                maps.set_backend(index, entry)
            case ClearBackend(index):
                maps.clear_backend(index)
            case DeleteTable(vip_index):
                maps.delete_table(vip_index)
            case SetVip(key, vip_index):
                maps.set_vip(key, vip_index)
            case DeleteVip(key):
                maps.delete_vip(key)
            case SetSettings(settings):
                maps.set_settings(settings)
            case DeleteTxPort(ifindex):
                maps.delete_tx_port(ifindex)
            case SetAffinity(vip_index, mode):
                maps.set_affinity(vip_index, mode)
            case ResetVipCounters(vip_index):
                maps.reset_vip_counters(vip_index)
    if tables:
        _set_tables(maps, tables)
    return len(operations)
