"""The balancer's ICMP maps as the control plane sees them: which backend addresses are watched
and armed (IPv4 and IPv6, a watch map each), what the program counted, and the reader of its
reports (docs/packet-path.md, 9).

Kept apart from BalancerMaps: these maps belong to one loaded program and are not pinned, so a
restarted control plane starts them afresh (and writes the watched addresses again).
"""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv6Address

from rusty_rail.dataplane import structs
from rusty_rail.dataplane.libbpf import BPF_EXIST, BpfObject, LibbpfError, Map, RingBuffer
from rusty_rail.model.icmp import IcmpReport, IcmpStat, IcmpWatch

ICMP_MAP_NAMES = ("icmp_watch", "icmp_watch_v6", "icmp_stats", "icmp_reports")
FAMILY_IPV4 = 4
FAMILY_IPV6 = 6
REPORT_SIZE = ctypes.sizeof(structs.CIcmpReport)

PacketsBytes = tuple[int, int]


def _key(address: IPv4Address | IPv6Address | bytes) -> bytes:
    key = address if isinstance(address, bytes) else address.packed
    if len(key) not in (4, 16):
        raise ValueError(
            f"a watched backend is a 4-byte IPv4 or 16-byte IPv6 address, got {len(key)} bytes"
        )
    return key


def _value(armed: bool) -> bytes:
    return bytes(structs.CIcmpWatch(armed=int(armed)))


def decode_report(data: bytes) -> IcmpReport:
    """A ring-buffer record (struct icmp_report) as an IcmpReport."""
    if len(data) < REPORT_SIZE:
        raise ValueError(f"an ICMP report is {len(data)} bytes, too short")
    value = structs.CIcmpReport.from_buffer_copy(data)
    if value.family not in (FAMILY_IPV4, FAMILY_IPV6):
        raise ValueError(f"an ICMP report of family {value.family}, not 4 or 6")
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
        family=FAMILY_IPV4 if len(report.backend) == 4 else FAMILY_IPV6,
        type=report.type,
        code=report.code,
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
        self.watch_v6 = maps["icmp_watch_v6"]
        self.stats = maps["icmp_stats"]
        self.reports = maps["icmp_reports"]

    @classmethod
    def of_object(cls, obj: BpfObject) -> IcmpMaps:
        return cls({name: obj.map(name) for name in ICMP_MAP_NAMES})

    # --- the watched addresses -------------------------------------------------------------

    def _watch_map(self, key: bytes) -> Map:
        """The watch of ``key``'s family: icmp_watch (IPv4) or icmp_watch_v6 (IPv6)."""
        return self.watch if len(key) == 4 else self.watch_v6

    def _present(self) -> set[bytes]:
        return {
            key
            for watch in (self.watch, self.watch_v6)
            for key, _ in watch.items(batch_size=4096)  # batched read
        }

    def sync_watch(self, addresses: Iterable[IPv4Address | IPv6Address | bytes]) -> tuple[int, int]:
        """Watch exactly ``addresses`` (either family): new ones armed, the others keep their
        arm state (a report may be outstanding). Returns (added, removed)."""
        wanted = {_key(a) for a in addresses}
        present = self._present()
        for address in sorted(wanted - present):
            self._watch_map(address).update(address, _value(True))
        for address in present - wanted:
            self._watch_map(address).delete(address)
        return len(wanted - present), len(present - wanted)

    def set_watch(self, watch: IcmpWatch) -> None:
        """Make the maps say exactly what ``watch`` says (tests, and the reference's twin)."""
        for address in self._present() - set(watch.armed):
            self._watch_map(address).delete(address)
        for address, armed in watch.armed.items():
            key = _key(address)
            self._watch_map(key).update(key, _value(armed))

    def arm(self, address: IPv4Address | IPv6Address | bytes) -> bool:
        """Let ``address`` report again; False when it is not watched (any more)."""
        key = _key(address)
        try:
            self._watch_map(key).update(key, _value(True), BPF_EXIST)
        except LibbpfError as error:
            if error.errno == errno.ENOENT:
                return False
            raise
        return True

    def read_watch(self) -> IcmpWatch:
        watch = IcmpWatch()
        for watch_map in (self.watch, self.watch_v6):
            for key, value in watch_map.items():
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
