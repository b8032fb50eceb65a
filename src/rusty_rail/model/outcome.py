"""What the reference pipeline (model/pipeline.py) says about a packet: the counter deltas it
caused, how its flow found a backend (Decision: also the API's flow explanation) and the whole
Result the XDP program is compared with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from rusty_rail.model.affinity import AFFINITY_NAMES
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.icmp import IcmpReport, IcmpStat
from rusty_rail.model.pmtu import TooBig
from rusty_rail.model.state import Affinity, CtEntry, Stat, Verdict, VipFlow

FORWARD_STATS = frozenset({Stat.CT_HIT, Stat.CT_MISS, Stat.CT_STALE})

PacketsBytes = tuple[int, int]
K = TypeVar("K")


def _summed(
    first: Mapping[K, PacketsBytes], second: Mapping[K, PacketsBytes]
) -> dict[K, PacketsBytes]:
    result = dict(first)
    for key, (packets, size) in second.items():
        old_packets, old_size = result.get(key, (0, 0))
        result[key] = (old_packets + packets, old_size + size)
    return result


@dataclass(frozen=True, slots=True)
class Counters:
    """Counter deltas as (packets, bytes), only the non-zero entries: what the BPF per-CPU
    arrays gain, summed over CPUs."""

    stats: dict[Stat, PacketsBytes] = field(default_factory=dict)
    vips: dict[int, PacketsBytes] = field(default_factory=dict)
    backends: dict[int, PacketsBytes] = field(default_factory=dict)
    icmp: dict[IcmpStat, PacketsBytes] = field(default_factory=dict)
    too_big: dict[tuple[int, TooBig], PacketsBytes] = field(default_factory=dict)
    #: ``vip_flows``: (VIP index, VipFlow) -> (packets, bytes).
    vip_flows: dict[tuple[int, VipFlow], PacketsBytes] = field(default_factory=dict)

    def merge(self, other: Counters) -> Counters:
        """The sum of two sets of deltas."""
        return Counters(
            stats=_summed(self.stats, other.stats),
            vips=_summed(self.vips, other.vips),
            backends=_summed(self.backends, other.backends),
            icmp=_summed(self.icmp, other.icmp),
            too_big=_summed(self.too_big, other.too_big),
            vip_flows=_summed(self.vip_flows, other.vip_flows),
        )

    @classmethod
    def total(cls, many: Iterable[Counters]) -> Counters:
        """The sum of many deltas (for tests that run many packets)."""
        result = cls()
        for counters in many:
            result = result.merge(counters)
        return result

    def packets(self, stat: Stat) -> int:
        return self.stats.get(stat, (0, 0))[0]


class Match(StrEnum):
    """How a flow found its backend set."""

    CONNTRACK = "conntrack"  # a valid connection-table entry; no VIP was looked up
    PORT_VIP = "port VIP"  # (destination, protocol, destination port)
    ADDRESS_VIP = "address VIP"  # (destination, any, any)
    DEFAULT_VIP = "default VIP"  # settings.default_vip
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Decision:
    """Which backend a flow gets and why (sections 5-8 of docs/packet-path.md).

    ``stat`` is the outcome: CT_HIT, CT_MISS or CT_STALE when the flow is forwarded, else
    NO_VIP, DROP_NO_BACKEND or DROP_NO_NEXTHOP. ``stale_entry`` is a connection-table entry
    that was found and not valid. ``table_slot`` and ``backend_index`` are set as far as the
    decision got (a DROP_NO_NEXTHOP decision still names its backend).
    """

    flow: Flow
    flow_hash: int
    stat: Stat
    match: Match
    vip_index: int | None = None
    table_size: int | None = None
    table_slot: int | None = None
    backend_index: int | None = None
    stale_entry: CtEntry | None = None
    #: The VIP's session affinity and the hash its table was indexed with (``flow_hash``, the
    #: 5-tuple's, unless the affinity names fewer fields); None when no table was read.
    affinity: Affinity | None = None
    pick_hash: int | None = None

    @property
    def forwards(self) -> bool:
        return self.stat in FORWARD_STATS

    def explain(self) -> str:
        """One sentence for operators (the API's flow view)."""
        where = f"backend {self.backend_index}" if self.backend_index is not None else "no backend"
        how = {
            Match.CONNTRACK: "a valid connection-table entry",
            Match.PORT_VIP: f"port VIP {self.vip_index}",
            Match.ADDRESS_VIP: f"address VIP {self.vip_index}",
            Match.DEFAULT_VIP: f"the default set (VIP {self.vip_index})",
            Match.NONE: "no VIP",
        }[self.match]
        slot = "" if self.table_slot is None else f", slot {self.table_slot} of {self.table_size}"
        if self.table_slot is not None and self.affinity not in (None, Affinity.FIVE_TUPLE):
            assert self.affinity is not None
            slot += f" (affinity {AFFINITY_NAMES[self.affinity]})"
        stale = "" if self.stale_entry is None else " (its connection-table entry was stale)"
        return f"{self.flow}: {self.stat.name}, {where} by {how}{slot}{stale}"


@dataclass(frozen=True, slots=True)
class Result:
    """What one packet did: the verdict, the bytes that leave (the input when not forwarded),
    the one stat it counted, where it was redirected, the counter deltas, and the ICMP report
    it sent to the control plane (section 9)."""

    verdict: Verdict
    frame: bytes
    stat: Stat
    redirect_ifindex: int | None
    counters: Counters
    flow: Flow | None = None
    decision: Decision | None = None
    report: IcmpReport | None = None
