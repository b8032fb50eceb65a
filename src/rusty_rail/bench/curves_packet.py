"""The packet-cost points of `rusty-rail bench curves`: nanoseconds per packet of the balancer
under BPF_PROG_TEST_RUN (one packet per call, as `bench dataplane`), with the connection table
filled with N flows and the timed packets drawn at random from those N flows, so that the
cache and TLB misses of a large working set show; each point next to the floor program
(return XDP_TX) measured in the same rounds.

A point is one balancer object loaded with its own configuration (V VIPs of B backends each,
Maglev tables of M slots) and connection-table size; its flows are learnt by the balancer
itself (one call per flow, a new flow each: the program inserts it), then timed.
"""

from __future__ import annotations

import statistics
import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final

import numpy as np

from rusty_rail.config import config_from_toml_text
from rusty_rail.control.plan import Allocation, compile_plan
from rusty_rail.dataplane.libbpf import BpfObject, Program, bpf_object_path
from rusty_rail.dataplane.maps import BalancerMaps, prepare_object
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import NextHop, Stat, Verdict
from rusty_rail.wire.constants import PROTO_TCP
from rusty_rail.wire.frames import LB_IPV4, LB_IPV6, gre_frame

#: Offsets in the GRE frame gre_frame builds (Ethernet 14, outer IPv4 20, GRE 4, inner IPv4):
#: the inner source address's low 16 bits, the inner destination's last octet, the source port.
INNER_SRC_LOW: Final = 14 + 20 + 4 + 12 + 2
INNER_DST_LOW: Final = 14 + 20 + 4 + 16 + 2
INNER_SPORT: Final = 14 + 20 + 4 + 20
#: Flow numbers of the timed new flows start here, above any established flow's number.
NEW_FLOW_BASE: Final = 1 << 28
#: Calls are interleaved in this many rounds (floor, established, new flow, floor, ...).
ROUNDS: Final = 4


@dataclass(frozen=True)
class PacketPoint:
    """What one point of a packet curve runs."""

    flows: int  # established flows in the connection table, the timed packets' population
    conntrack_size: int  # connection-table entries (sets x 4 ways)
    vips: int = 1
    backends: int = 16  # per VIP
    table_size: int = 65537  # Maglev slots per VIP
    new_flow: bool = False  # also time a new flow every packet
    samples: int = 20_000  # timed calls per case


def vip_address(index: int) -> str:
    """VIP number ``index`` (0 .. 1023): 198.18.128.0/22, one address each."""
    return str(IPv4Address("198.18.128.0") + index)


def backend_address(index: int) -> str:
    """Backend number ``index`` of all the VIPs' (0 .. 16383): 198.18.192.0/18."""
    return str(IPv4Address("198.18.192.0") + index + 1)


def point_config(point: PacketPoint) -> str:
    """The configuration (TOML) of a point: V VIPs on tcp/80, B backends each of their own."""
    vips = []
    for v in range(point.vips):
        backends = ", ".join(
            f'"{backend_address(v * point.backends + b)}"' for b in range(point.backends)
        )
        vips.append(
            f'[[vips]]\naddress = "{vip_address(v)}"\nprotocol = "tcp"\nport = 80\n'
            f"backends = [{backends}]\n"
        )
    return f"table_size = {point.table_size}\nconntrack_size = {point.conntrack_size}\n" + "".join(
        vips
    )


def _frames(vips: int) -> Callable[[int], bytes]:
    """Frame for flow number n: VIP n mod V, inner source 198.18.0.0 + ((n // V) >> 16) (low
    16 bits), source port (n // V) & 0xffff. Every n < 2^32 x V names a flow of its own."""
    template = bytearray(gre_frame(Flow.of("198.18.0.0", vip_address(0), PROTO_TCP, 1, 80)))
    dst_high = struct.unpack_from("!H", template, INNER_DST_LOW)[0]

    def frame_for(n: int) -> bytes:
        vip, rest = n % vips, n // vips
        struct.pack_into("!H", template, INNER_DST_LOW, dst_high + vip)
        struct.pack_into("!H", template, INNER_SRC_LOW, (rest >> 16) & 0xFFFF)
        struct.pack_into("!H", template, INNER_SPORT, rest & 0xFFFF)
        return bytes(template)

    return frame_for


def _run(program: Program, frame: bytes, what: str) -> int:
    run = program.test_run(frame)
    if run.retval != Verdict.TX:
        raise RuntimeError(
            f"curve point: {what} returned verdict {run.retval}, expected XDP_TX: the "
            "measurement would be of the wrong path"
        )
    return run.duration_ns


def _outcomes(maps: BalancerMaps) -> dict[Stat, int]:
    return {stat: packets for stat, (packets, _) in maps.read_stats().items()}


def measure_point(point: PacketPoint, seed: int = 1) -> dict[str, Any]:
    """Load, fill and time one point. Returns ns (median and mean) of the floor, of the
    established flows and (when asked) of new flows, the ratios to the floor, and the share
    of the established calls that hit the connection table (the rest were evicted flows,
    learnt again)."""
    config = config_from_toml_text(point_config(point), "bench curves")
    hop = NextHop(0, bytes.fromhex("020000000010"), bytes.fromhex("020000000020"))
    plan = compile_plan(
        config,
        Allocation(),
        lb_ipv4=IPv4Address(LB_IPV4),
        lb_ipv6=IPv6Address(LB_IPV6),
        resolve_next_hop=lambda address: hop,
    )
    frame_for = _frames(point.vips)
    draws = np.random.default_rng(seed).integers(0, point.flows, size=point.samples)
    with (
        BpfObject.open(bpf_object_path("bench_floor")) as floor_obj,
        BpfObject.open(bpf_object_path("balancer")) as balancer_obj,
    ):
        floor_obj.load()
        prepare_object(balancer_obj, conntrack_entries=point.conntrack_size)
        balancer_obj.load()
        maps = BalancerMaps.of_object(balancer_obj)
        maps.sync(plan.state)
        balancer = balancer_obj.program("xdp_balancer")
        floor = floor_obj.program("xdp_floor")
        for n in range(point.flows):  # the balancer learns every flow
            _run(balancer, frame_for(n), f"flow {n} (filling the connection table)")
        floor_frame = frame_for(0)
        times: dict[str, list[int]] = {"floor": [], "established": [], "new_flow": []}
        hits = calls = 0
        per_round = -(-point.samples // ROUNDS)
        for start in range(0, point.samples, per_round):
            chunk = draws[start : start + per_round]
            for _ in chunk:
                times["floor"].append(_run(floor, floor_frame, "the floor"))
            before = _outcomes(maps)
            for n in chunk:
                times["established"].append(_run(balancer, frame_for(int(n)), f"flow {n}"))
            hits += _outcomes(maps)[Stat.CT_HIT] - before[Stat.CT_HIT]
            calls += len(chunk)
            if point.new_flow:
                for i in range(start, start + len(chunk)):
                    new = frame_for(NEW_FLOW_BASE + i)
                    times["new_flow"].append(_run(balancer, new, "a new flow"))
    floor_ns = statistics.median(times["floor"])
    result: dict[str, Any] = {
        "flows": point.flows,
        "conntrack_size": point.conntrack_size,
        "vips": point.vips,
        "backends": point.backends,
        "table_size": point.table_size,
        "samples": point.samples,
        "floor_ns": floor_ns,
        "established_hit_share": hits / calls if calls else 0.0,
    }
    for case in ("established", "new_flow"):
        if times[case]:
            ns = statistics.median(times[case])
            result[f"{case}_ns"] = ns
            result[f"{case}_mean_ns"] = statistics.fmean(times[case])
            result[f"{case}_ratio"] = ns / floor_ns if floor_ns else float("inf")
    return result
