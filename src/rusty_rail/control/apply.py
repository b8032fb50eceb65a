"""Carries a plan's operations into the BPF maps, in the order the plan gives them."""

from __future__ import annotations

from collections.abc import Iterable

from rusty_rail.control.plan import (
    ClearBackend,
    DeleteTable,
    DeleteTxPort,
    DeleteVip,
    Operation,
    SetBackend,
    SetSettings,
    SetTable,
    SetVip,
)
from rusty_rail.dataplane.maps import BalancerMaps


def apply_operations(maps: BalancerMaps, operations: Iterable[Operation]) -> int:
    """Apply ``operations`` one by one; returns how many were applied.

    Each operation leaves the data plane consistent on its own (diff orders them so), so a
    failure part-way leaves a state that is a mix of old and new per backend or per table,
    never a table that names a backend slot that is not set up."""
    operations = list(operations)
    ports = {
        op.entry.next_hop.ifindex
        for op in operations
        if isinstance(op, SetBackend) and op.entry.next_hop is not None
    }
    ports.discard(0)
    for ifindex in sorted(ports - maps.tx_port_ifindexes()):
        maps.set_tx_port(ifindex)
    for op in operations:
        match op:
            case SetBackend(index, entry):
                maps.set_backend(index, entry)
            case ClearBackend(index):
                maps.clear_backend(index)
            case SetTable(vip_index, slots):
                maps.set_table(vip_index, slots)
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
    return len(operations)
