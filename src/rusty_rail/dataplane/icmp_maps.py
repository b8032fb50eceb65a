"""The balancer's ICMP maps as the control plane sees them: which backend addresses are watched
and armed, what the program counted, and the reader of its reports (docs/packet-path.md, 9).

Kept apart from BalancerMaps: these maps belong to one loaded program and are not pinned, so a
restarted control plane starts them afresh (and writes the watched addresses again).
"""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address

from rusty_rail.dataplane import structs
from rusty_rail.dataplane.libbpf import BPF_EXIST, BpfObject, LibbpfError, Map, RingBuffer
from rusty_rail.model.icmp import IcmpReport, IcmpStat, IcmpWatch

ICMP_MAP_NAMES = ("icmp_watch", "icmp_stats", "icmp_reports")
FAMILY_IPV4 = 4
REPORT_SIZE = ctypes.sizeof(structs.CIcmpReport)

PacketsBytes = tuple[int, int]


def _key(address: bytes) -> bytes:
    if len(address) != 4:
        raise ValueError(f"a watched backend is a 4-byte IPv4 address, got {len(address)} bytes")
    return address


def _value(armed: bool) -> bytes:
    return bytes(structs.CIcmpWatch(armed=int(armed)))


def decode_report(data: bytes) -> IcmpReport:
    """A ring-buffer record (struct icmp_report) as an IcmpReport."""
    if len(data) < REPORT_SIZE:
        raise ValueError(f"an ICMP report is {len(data)} bytes, too short")
    value = structs.CIcmpReport.from_buffer_copy(data)
    size = 4 if value.family == FAMILY_IPV4 else 16
    return IcmpReport(
        backend=bytes(value.backend_be[:size]),
        reporter=bytes(value.reporter_be[:size]),
        type=value.type,
        code=value.code,
    )


def encode_report(report: IcmpReport) -> bytes:
    """The record the program would write for ``report`` (for tests)."""
    value = structs.CIcmpReport(
        family=FAMILY_IPV4 if len(report.backend) == 4 else 6, type=report.type, code=report.code
    )
    value.backend_be[: len(report.backend)] = report.backend
    value.reporter_be[: len(report.reporter)] = report.reporter
    return bytes(value)


class IcmpMaps:
    """The ICMP maps of one loaded balancer."""

    def __init__(self, maps: Mapping[str, Map]) -> None:
        missing = [name for name in ICMP_MAP_NAMES if name not in maps]
        if missing:
            raise ValueError(f"ICMP maps missing: {', '.join(missing)}")
        self.watch = maps["icmp_watch"]
        self.stats = maps["icmp_stats"]
        self.reports = maps["icmp_reports"]

    @classmethod
    def of_object(cls, obj: BpfObject) -> IcmpMaps:
        return cls({name: obj.map(name) for name in ICMP_MAP_NAMES})

    # --- the watched addresses -------------------------------------------------------------

    def sync_watch(self, addresses: Iterable[IPv4Address | bytes]) -> tuple[int, int]:
        """Watch exactly ``addresses``: new ones armed, the others keep their arm state (a
        report may be outstanding). Returns (added, removed)."""
        wanted = {_key(a.packed if isinstance(a, IPv4Address) else a) for a in addresses}
        present = {key for key, _ in self.watch.items(batch_size=4096)}  # batched read
        for address in sorted(wanted - present):
            self.watch.update(address, _value(True))
        for address in present - wanted:
            self.watch.delete(address)
        return len(wanted - present), len(present - wanted)

    def set_watch(self, watch: IcmpWatch) -> None:
        """Make the map say exactly what ``watch`` says (tests, and the reference's twin)."""
        for address in set(self.watch.keys()) - set(watch.armed):
            self.watch.delete(address)
        for address, armed in watch.armed.items():
            self.watch.update(_key(address), _value(armed))

    def arm(self, address: IPv4Address | bytes) -> bool:
        """Let ``address`` report again; False when it is not watched (any more)."""
        key = _key(address.packed if isinstance(address, IPv4Address) else address)
        try:
            self.watch.update(key, _value(True), BPF_EXIST)
        except LibbpfError as error:
            if error.errno == errno.ENOENT:
                return False
            raise
        return True

    def read_watch(self) -> IcmpWatch:
        watch = IcmpWatch()
        for key, value in self.watch.items():
            watch.armed[key] = bool(structs.CIcmpWatch.from_buffer_copy(value).armed)
        return watch

    # --- counters and reports --------------------------------------------------------------

    def read_stats(self) -> dict[IcmpStat, PacketsBytes]:
        """Every ICMP outcome's (packets, bytes), summed over the CPUs."""
        result = {}
        for stat in IcmpStat:
            packets = size = 0
            for value in self.stats.lookup_percpu(struct.pack("=I", stat)) or []:
                cpu_packets, cpu_bytes = structs.decode_counter(value)
                packets += cpu_packets
                size += cpu_bytes
            result[stat] = (packets, size)
        return result

    def reader(self, callback: Callable[[IcmpReport], object]) -> RingBuffer:
        """A reader of the reports: poll() or consume() hands each to ``callback``; fileno()
        is readable when reports wait (for asyncio's add_reader)."""
        return RingBuffer(self.reports, lambda data: callback(decode_report(data)))
