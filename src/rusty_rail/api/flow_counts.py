"""Tracked flows per backend (ipvsadm's ActiveConn/InActConn, as far as a balancer that keeps
no TCP state can say): the connection table counted by the entries' targets, at most once per
COUNT_INTERVAL and shared by /metrics and the API's views.

A backend's count is the number of valid connection-table entries (whole, in the set their
hash names: what dump_conntrack finds) that name the backend's slot with its current
generation: the flows the data plane keeps sending to it. The data plane does not follow TCP
state, so a closed connection stays counted until its entry is overwritten by a new flow; a
drained backend whose count stays at 0 has no flow that could still reach it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from rusty_rail.control.plan import Plan

if TYPE_CHECKING:
    from rusty_rail.control.daemon import Daemon

#: Counting a connection table of a million flows takes a while: at most once per this long.
COUNT_INTERVAL: Final = 5.0


@dataclass(frozen=True)
class FlowCount:
    """One count of the connection table: its valid entries by (backend slot, generation)."""

    total: int = 0
    by_target: Mapping[tuple[int, int], int] = field(default_factory=dict)

    def of_slot(self, plan: Plan, slot: int | None) -> int:
        """The flows tracked for ``slot`` with the generation ``plan`` gives it (0 for none)."""
        if slot is None or (entry := plan.state.backends.get(slot)) is None:
            return 0
        return self.by_target.get((slot, entry.generation & 0xFFFFFFFF), 0)


def count(targets: npt.NDArray[np.uint32]) -> FlowCount:
    """``targets``: one (backend index, generation) row per valid entry."""
    if len(targets) == 0:
        return FlowCount()
    keys = targets[:, 0].astype(np.uint64) << np.uint64(32) | targets[:, 1]
    values, counts = np.unique(keys, return_counts=True)
    return FlowCount(
        total=len(targets),
        by_target={
            (int(key) >> 32, int(key) & 0xFFFFFFFF): int(n)
            for key, n in zip(values, counts, strict=True)
        },
    )


class FlowCounts:
    """The daemon's connection table counted at most once per ``interval`` seconds (None:
    COUNT_INTERVAL as it is at each read), one count at a time: a second caller waits for the
    first's."""

    def __init__(self, daemon: Daemon, interval: float | None = None) -> None:
        self.daemon = daemon
        self.interval = interval
        self._lock = threading.Lock()
        self._last: tuple[float, FlowCount] | None = None

    def read(self) -> FlowCount:
        balancer = self.daemon.balancer
        if balancer is None:
            return FlowCount()
        with self._lock:
            now = time.monotonic()
            interval = COUNT_INTERVAL if self.interval is None else self.interval
            if self._last is None or now - self._last[0] >= interval:
                self._last = (now, count(balancer.maps.conntrack_targets()))
            return self._last[1]
