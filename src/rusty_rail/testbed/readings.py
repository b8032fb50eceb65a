"""What the test bed's balancers' pinned maps say (their counters and connection tables): a
part of Testbed, kept in a module of its own."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rusty_rail.dataplane.maps import BalancerMaps
from rusty_rail.model.flowhash import Flow
from rusty_rail.testbed.spec import TestbedSpec

__all__ = ["BalancerReadings"]


class BalancerReadings:
    """Reads of every balancer's pinned maps (Testbed's ``spec`` and ``lb_pin_root``)."""

    spec: TestbedSpec

    def lb_pin_root(self, i: int) -> Path:
        raise NotImplementedError

    def lbs_holding(self, flow: Flow) -> list[int]:
        """The balancers (indices) whose connection tables hold ``flow``."""
        holding = []
        for i in range(self.spec.lbs):
            maps = BalancerMaps.from_pinned(self.lb_pin_root(i) / "eth0")
            try:
                if maps.lookup_conntrack(flow) is not None:
                    holding.append(i)
            finally:
                maps.close()
        return holding

    def lb_stats(self, i: int) -> dict[str, tuple[int, int]]:
        """The balancer's per-reason counters, read from its pinned maps."""
        maps = BalancerMaps.from_pinned(self.lb_pin_root(i) / "eth0")
        try:
            return {stat.name: value for stat, value in maps.read_stats().items()}
        finally:
            maps.close()

    def lb_packets(self, stats: Iterable[str]) -> list[int]:
        """Per balancer, the packets counted under any of ``stats`` so far (e.g. CT_HIT,
        CT_MISS, CT_STALE for what it forwarded); each balancer's maps are read once."""
        wanted = tuple(stats)
        counters = [self.lb_stats(i) for i in range(self.spec.lbs)]
        return [sum(c.get(name, (0, 0))[0] for name in wanted) for c in counters]
