"""The balancer's path-MTU maps (docs/packet-path.md section 8c): the too-big packets of each
VIP by reason (``vip_too_big``) and each VIP's token bucket for the ICMP errors, per CPU
(``too_big_buckets``).

Kept apart from BalancerMaps, like the ICMP maps: they belong to one loaded program and are not
pinned, so a new program starts them afresh. The next hops' MTUs are part of the state and go
with the backends (BalancerMaps, ``backend_mtu``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from rusty_rail.dataplane import structs
from rusty_rail.dataplane.libbpf import BpfObject, Map, num_possible_cpus
from rusty_rail.model.pmtu import TOO_BIG_COUNT, Bucket, TooBig

TOO_BIG_MAP_NAMES = ("vip_too_big", "too_big_buckets")

PacketsBytes = tuple[int, int]


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


class TooBigMaps:
    """``vip_too_big`` and ``too_big_buckets`` of one loaded balancer."""

    def __init__(self, maps: Mapping[str, Map]) -> None:
        missing = [name for name in TOO_BIG_MAP_NAMES if name not in maps]
        if missing:
            raise ValueError(f"path-MTU maps missing: {', '.join(missing)}")
        self.counters = maps["vip_too_big"]
        self.buckets = maps["too_big_buckets"]

    @classmethod
    def of_object(cls, obj: BpfObject) -> TooBigMaps:
        return cls({name: obj.map(name) for name in TOO_BIG_MAP_NAMES})

    def read_counts(self, vip_indexes: Iterable[int]) -> dict[tuple[int, TooBig], PacketsBytes]:
        """(packets, bytes) by (VIP index, reason), summed over the CPUs; only non-zero ones."""
        result = {}
        for vip_index in vip_indexes:
            structs.require_index(vip_index, structs.MAX_VIPS, "VIP index")
            for reason in TooBig:
                values = self.counters.lookup_percpu(_u32(vip_index * TOO_BIG_COUNT + reason))
                packets = size = 0
                for value in values or []:
                    cpu_packets, cpu_bytes = structs.decode_counter(value)
                    packets, size = packets + cpu_packets, size + cpu_bytes
                if (packets, size) != (0, 0):
                    result[(vip_index, reason)] = (packets, size)
        return result

    def set_bucket(self, vip_index: int, bucket: Bucket) -> None:
        """The VIP's bucket on every CPU (all zero: full at first use)."""
        structs.require_index(vip_index, structs.MAX_VIPS, "VIP index")
        value = bytes(structs.CTooBigBucket(stamp_ns=bucket.stamp_ns, tokens=bucket.tokens))
        self.buckets.update_percpu(_u32(vip_index), [value] * num_possible_cpus())

    def read_buckets(self, vip_index: int) -> list[Bucket]:
        """The VIP's bucket on each CPU."""
        structs.require_index(vip_index, structs.MAX_VIPS, "VIP index")
        values = self.buckets.lookup_percpu(_u32(vip_index)) or []
        decoded = [structs.CTooBigBucket.from_buffer_copy(value) for value in values]
        return [Bucket(stamp_ns=value.stamp_ns, tokens=value.tokens) for value in decoded]
