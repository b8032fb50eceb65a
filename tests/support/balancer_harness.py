"""The balancer under test: loaded from the built object, fed a DataplaneState and an ICMP
watch, run through BPF_PROG_TEST_RUN, its counter deltas, connection-table entries and ICMP
reports read back for comparison.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rusty_rail.dataplane.icmp_maps import IcmpMaps
from rusty_rail.dataplane.libbpf import BpfObject, Program, RingBuffer, TestRun, bpf_object_path
from rusty_rail.dataplane.maps import BalancerMaps, prepare_object
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.dataplane.too_big_maps import TooBigMaps
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.icmp import IcmpReport, IcmpStat, IcmpWatch
from rusty_rail.model.pipeline import Counters
from rusty_rail.model.pmtu import Bucket, TooBig
from rusty_rail.model.state import CtEntry, DataplaneState, Stat, VipFlow

#: Small enough to load fast, big enough that the tests' flows never fill a set.
TEST_CONNTRACK_ENTRIES = 1 << 16

#: The interfaces of the test namespace that can be XDP_REDIRECT targets (a veth pair; 1 is
#: its loopback). tests/support/cases/ sends its REDIRECT cases to ifindex 2.
REDIRECT_IFINDEXES = (2, 3)

PacketsBytes = tuple[int, int]


@contextmanager
def redirect_namespace() -> Iterator[str]:
    """A network namespace with a veth pair at ifindexes 2 and 3, removed afterwards.

    The devmap only takes interfaces that exist in the caller's namespace; the tests enter this
    one to write it, and no frame is ever sent (BPF_PROG_TEST_RUN does not transmit)."""
    name = f"rr-bal-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "rrb0", "type", "veth", "peer", "name", "rrb1"],
            check=True,
        )
        found = subprocess.run(
            ["ip", "-n", name, "-o", "link", "show"], check=True, capture_output=True, text=True
        ).stdout
        indexes = {int(line.split(":", 1)[0]) for line in found.splitlines()}
        assert set(REDIRECT_IFINDEXES) <= indexes, f"veth pair not at {REDIRECT_IFINDEXES}: {found}"
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@dataclass
class CounterSnapshot:
    stats: dict[Stat, PacketsBytes]
    vips: dict[int, PacketsBytes]
    backends: dict[int, PacketsBytes]
    icmp: dict[IcmpStat, PacketsBytes]
    too_big: dict[tuple[int, TooBig], PacketsBytes]
    vip_flows: dict[tuple[int, VipFlow], PacketsBytes]

    def delta_since(self, before: CounterSnapshot) -> Counters:
        """What changed since ``before``, as the reference reports it (non-zero entries)."""

        def delta(
            after: dict[int, PacketsBytes], earlier: dict[int, PacketsBytes]
        ) -> dict[int, PacketsBytes]:
            result = {}
            for key, (packets, size) in after.items():
                old_packets, old_size = earlier.get(key, (0, 0))
                if (packets, size) != (old_packets, old_size):
                    result[key] = (packets - old_packets, size - old_size)
            return result

        stats = delta(
            {int(k): v for k, v in self.stats.items()}, {int(k): v for k, v in before.stats.items()}
        )
        icmp = delta(
            {int(k): v for k, v in self.icmp.items()}, {int(k): v for k, v in before.icmp.items()}
        )
        too_big = {
            key: (
                packets - before.too_big.get(key, (0, 0))[0],
                size - before.too_big.get(key, (0, 0))[1],
            )
            for key, (packets, size) in self.too_big.items()
            if (packets, size) != before.too_big.get(key, (0, 0))
        }
        vip_flows = {
            key: (
                packets - before.vip_flows.get(key, (0, 0))[0],
                size - before.vip_flows.get(key, (0, 0))[1],
            )
            for key, (packets, size) in self.vip_flows.items()
            if (packets, size) != before.vip_flows.get(key, (0, 0))
        }
        return Counters(
            stats={Stat(k): v for k, v in stats.items()},
            vips=delta(self.vips, before.vips),
            backends=delta(self.backends, before.backends),
            icmp={IcmpStat(k): v for k, v in icmp.items()},
            too_big=too_big,
            vip_flows=vip_flows,
        )


@dataclass
class Balancer:
    """A loaded balancer object, its maps, and the namespace its redirect ports live in."""

    bpf_object: BpfObject
    program: Program
    maps: BalancerMaps
    icmp: IcmpMaps
    ring: RingBuffer
    netns: str
    too_big: TooBigMaps
    vip_indexes: list[int] = field(default_factory=list)
    backend_indexes: list[int] = field(default_factory=list)
    received: list[IcmpReport] = field(default_factory=list)

    def load_state(self, state: DataplaneState, watch: IcmpWatch | None = None) -> None:
        """Write ``state`` whole (connection table included) and the ICMP watch (default: none
        watched), drop reports not read yet, and note which VIP and backend counters the
        tests will compare (every index the state names, and one past them)."""
        self.maps.sync(state)
        self.icmp.set_watch(watch or IcmpWatch())
        self.reports()
        vips = set(state.vips.values()) | set(state.tables) | {0}
        vips |= {backend.vip_index for backend in state.backends.values()}
        backends = set(state.backends) | {0}
        for table in state.tables.values():
            backends |= {index for index in table if index < 1 << 20}
        self.vip_indexes = sorted(vips | {max(vips) + 1})
        for vip_index in self.vip_indexes:  # section 8c: every bucket full at first use
            self.too_big.set_bucket(vip_index, Bucket())
        self.backend_indexes = sorted(backends | {max(backends) + 1})

    def run(self, frame: bytes, ingress_ifindex: int = 1) -> TestRun:
        return self.program.test_run(frame, ingress_ifindex=ingress_ifindex)

    def counters(self) -> CounterSnapshot:
        return CounterSnapshot(
            self.maps.read_stats(),
            self.maps.read_vip_stats(self.vip_indexes),
            self.maps.read_backend_stats(self.backend_indexes),
            self.icmp.read_stats(),
            self.too_big.read_counts(self.vip_indexes),
            self.maps.read_vip_flows(self.vip_indexes),
        )

    def reports(self) -> list[IcmpReport]:
        """The ICMP reports submitted since the last call, oldest first."""
        self.ring.consume()
        taken = list(self.received)
        self.received.clear()  # the reader appends to this very list
        return taken

    def conntrack_entry(self, flow: Flow) -> CtEntry | None:
        """The program's entry for one flow (a cheap look at one set, not a dump)."""
        return self.maps.lookup_conntrack(flow)


@contextmanager
def loaded_balancer(conntrack_entries: int = TEST_CONNTRACK_ENTRIES) -> Iterator[Balancer]:
    """The built balancer (scripts/setup compiles it), loaded with a test-sized table, with
    the calling thread (and threads it starts) inside the redirect namespace throughout, so
    that devmap writes and test runs name its interfaces."""
    with (
        redirect_namespace() as netns,
        in_netns(netns),
        BpfObject.open(bpf_object_path("balancer")) as obj,
    ):
        prepare_object(obj, conntrack_entries=conntrack_entries)
        obj.load()
        icmp = IcmpMaps.of_object(obj)
        received: list[IcmpReport] = []
        with icmp.reader(received.append) as ring:
            yield Balancer(
                obj,
                obj.program("xdp_balancer"),
                BalancerMaps.of_object(obj),
                icmp,
                ring,
                netns,
                TooBigMaps.of_object(obj),
                received=received,
            )
