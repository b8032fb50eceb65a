"""`rusty-rail bench curves --curve NAME`: how a cost grows with the work, one curve at a time,
as a table (or JSON) and, with ``--plot FILE``, a PNG (docs/benchmarks.md, "Scaling curves").

Packet curves (ns per packet under BPF_PROG_TEST_RUN, next to the floor program of the same
run; bench/curves_packet.py): ``flows`` (established flows in the connection table, the timed
packets drawn from them), ``table`` (connection-table size, the flows fixed), ``backends``
(per VIP) and ``vips``. Control curves: ``maglev`` (table build time vs N, then vs M, next to
np.sort of M random uint32 timed in the same loop, as `bench maglev`) and ``api`` (an API change
to a live table vs the VIP's backends, next to a no-op API write and a bare Maglev build, as
`bench control`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from rusty_rail.bench.curves_packet import PacketPoint, measure_point
from rusty_rail.config import MAX_TABLE_SIZE

#: The M of the N sweep and the N of the M sweep of the maglev curve.
MAGLEV_FIXED_M: Final = 65537
MAGLEV_FIXED_N: Final = 100
#: Connection-table size of the flows curve: 4 x its largest default point (2 x at 2^23 flows),
#: so that the sets hold every flow and the curve shows the working set, not evictions.
FLOWS_CONNTRACK: Final = 1 << 24
#: Established flows of the table curve, and of the backends and vips curves.
TABLE_FLOWS: Final = 100_000
SPREAD_FLOWS: Final = 10_000
DEFAULT_CONNTRACK: Final = 1 << 20
API_CHANGES: Final = 20


@dataclass(frozen=True)
class Curve:
    name: str
    x: str  # what the points are
    help: str
    low: int  # the smallest point allowed
    high: int  # the largest
    points: tuple[int, ...]
    quick: tuple[int, ...]
    baseline: str
    needs_root: bool = True
    passes: int = 3  # sweeps of a packet curve (default), each point's best kept


CURVES: Final = {
    curve.name: curve
    for curve in (
        Curve(
            "flows",
            "flows",
            "ns per packet vs established flows in the connection table "
            f"({FLOWS_CONNTRACK} entries), packets drawn at random from them",
            1,
            1 << 23,
            (1, 1000, 10_000, 100_000, 1_000_000, 4_000_000),
            (1, 1000),
            "the floor program (return XDP_TX), same rounds",
            passes=1,  # filling 4M flows is most of its minute and a half
        ),
        Curve(
            "table",
            "conntrack_size",
            f"ns per packet vs connection-table entries, {TABLE_FLOWS} established flows",
            1024,
            1 << 27,
            (131_072, 262_144, 1 << 20, 1 << 22, 1 << 24),
            (1 << 12, 1 << 16),
            "the floor program (return XDP_TX), same rounds",
        ),
        Curve(
            "backends",
            "backends",
            f"ns per packet vs backends of the VIP ({SPREAD_FLOWS} established flows; and a "
            "new flow every packet)",
            1,
            4096,
            (1, 16, 256, 1024, 4096),
            (1, 256),
            "the floor program (return XDP_TX), same rounds",
        ),
        Curve(
            "vips",
            "vips",
            f"ns per packet vs VIPs of 16 backends each ({SPREAD_FLOWS} established flows over "
            "them; and a new flow every packet)",
            1,
            1024,
            (1, 16, 128, 1024),
            (1, 16),
            "the floor program (return XDP_TX), same rounds",
        ),
        Curve(
            "maglev",
            "backends",
            f"Maglev build ms vs N (M = {MAGLEV_FIXED_M}), then vs M (N = {MAGLEV_FIXED_N}; "
            "--table-sizes)",
            1,
            16384,
            (1, 10, 100, 1000, 4096, 16384),
            (10, 100),
            "np.sort of M random uint32, same loop (bench maglev)",
            needs_root=False,
        ),
        Curve(
            "api",
            "backends",
            "API change to live table (p50, p99 ms) vs backends of the VIP (M = 65537)",
            1,
            16000,
            (10, 100, 1000, 4096),
            (10, 100),
            "a no-op API write and a bare Maglev build, same run (bench control)",
        ),
    )
}
MAGLEV_TABLE_SIZES: Final = (257, 4099, 65537, 655373, 4194301)
MAGLEV_QUICK_TABLE_SIZES: Final = (257, 4099)


def check_points(curve: Curve, points: Sequence[int]) -> tuple[int, ...]:
    """The points, sorted and unique, or ValueError naming the option and the value."""
    if not points:
        raise ValueError("--points: give at least one point")
    for point in points:
        if not curve.low <= point <= curve.high:
            raise ValueError(
                f"--points: {point} is outside {curve.low}..{curve.high}, the range of the "
                f"{curve.name} curve's {curve.x}"
            )
    return tuple(sorted(set(points)))


def check_table_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """The maglev curve's M values, or ValueError naming the option and the value."""
    for size in sizes:
        if not MAGLEV_FIXED_N <= size <= MAX_TABLE_SIZE or any(
            size % d == 0 for d in range(2, int(size**0.5) + 1)
        ):
            raise ValueError(
                f"--table-sizes: {size} is not a prime in {MAGLEV_FIXED_N}..{MAX_TABLE_SIZE} "
                f"(a Maglev table of N = {MAGLEV_FIXED_N} backends)"
            )
    return tuple(sorted(set(sizes)))


def _samples(quick: bool) -> int:
    return 400 if quick else 20_000


def _packet_points(curve: str, x: int, quick: bool) -> PacketPoint:
    samples = _samples(quick)
    if curve == "flows":
        size = 1 << 16 if quick else FLOWS_CONNTRACK
        return PacketPoint(flows=x, conntrack_size=max(size, 4 * x), samples=samples)
    if curve == "table":
        return PacketPoint(flows=1000 if quick else TABLE_FLOWS, conntrack_size=x, samples=samples)
    flows = 100 if quick else SPREAD_FLOWS
    if curve == "backends":
        return PacketPoint(
            flows=flows, conntrack_size=DEFAULT_CONNTRACK, backends=x, new_flow=True,
            samples=samples,
        )  # fmt: skip
    return PacketPoint(
        flows=flows, conntrack_size=DEFAULT_CONNTRACK, vips=x, new_flow=True, samples=samples
    )


def best_of_passes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One point measured in several passes: each case's figures from the pass where that
    case was fastest (a noisy neighbour only ever slows a pass down), with every pass's
    median beside them (``<case>_ns_passes``)."""
    best = dict(runs[0])
    for case in ("established", "new_flow"):
        if f"{case}_ns" not in best:
            continue
        fastest = min(runs, key=lambda run: float(run[f"{case}_ns"]))
        for key in (f"{case}_ns", f"{case}_mean_ns", f"{case}_ratio"):
            best[key] = fastest[key]
        if case == "established":
            best["floor_ns"] = fastest["floor_ns"]
            best["established_hit_share"] = fastest["established_hit_share"]
        best[f"{case}_ns_passes"] = [run[f"{case}_ns"] for run in runs]
    return best


def _maglev_points(points: Sequence[int], sizes: Sequence[int], quick: bool) -> list[Any]:
    from rusty_rail.bench.maglev import bench_backends, best_against_baseline
    from rusty_rail.model.maglev import build_table

    rows = []
    sweeps = [("backends", n, MAGLEV_FIXED_M) for n in points if n <= MAGLEV_FIXED_M]
    sweeps += [("table_size", MAGLEV_FIXED_N, m) for m in sizes if m >= MAGLEV_FIXED_N]
    for sweep, n, m in sweeps:
        build_ms, baseline_ms, table = best_against_baseline(
            partial(build_table, bench_backends(n, "equal"), m), m
        )
        rows.append(
            {
                "sweep": sweep,
                "backends": n,
                "table_size": m,
                "build_ms": round(build_ms, 6),
                "baseline_ms": round(baseline_ms, 6),
                "ratio": round(build_ms / baseline_ms, 3),
                "impl": table.impl,
            }
        )
    return rows


def _api_points(points: Sequence[int], quick: bool) -> list[Any]:
    import tempfile

    from rusty_rail.bench.control import _bench_namespace, _change_to_live
    from rusty_rail.dataplane.netlink import in_netns

    changes = 4 if quick else API_CHANGES
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="rusty-rail-curves-") as scratch,
        _bench_namespace() as (namespace, pins),
        in_netns(namespace),
    ):
        for backends in points:
            live = _change_to_live(
                pins / str(backends), Path(scratch) / f"{backends}.json", changes, backends
            )
            rows.append(live)
    return rows


def run_curve(
    name: str,
    points: Sequence[int] | None = None,
    *,
    quick: bool = False,
    table_sizes: Sequence[int] | None = None,
    passes: int | None = None,
) -> dict[str, Any]:
    """Measure one curve; the JSON-ready result (docs/benchmarks.md, "Scaling curves").
    A packet curve is swept ``passes`` times (default: the curve's own), every point once a
    pass, and each point keeps its best pass per case."""
    curve = CURVES[name]
    if curve.needs_root and os.geteuid() != 0:
        raise PermissionError(f"bench curves --curve {name} needs root: it loads BPF programs")
    chosen = check_points(curve, points or (curve.quick if quick else curve.points))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows: list[Any]
    if name == "maglev":
        sizes = check_table_sizes(table_sizes) if table_sizes else None
        sizes = sizes or (MAGLEV_QUICK_TABLE_SIZES if quick else MAGLEV_TABLE_SIZES)
        rows = _maglev_points(chosen, sizes, quick)
    elif name == "api":
        rows = _api_points(chosen, quick)
    else:
        count = passes or (1 if quick else curve.passes)
        sweeps = [[measure_point(_packet_points(name, x, quick)) for x in chosen]]
        sweeps += [
            [measure_point(_packet_points(name, x, quick), seed=1 + n) for x in chosen]
            for n in range(1, count)
        ]
        rows = [best_of_passes(list(runs)) for runs in zip(*sweeps, strict=True)]
    return {
        "curve": name,
        "x": curve.x,
        "what": curve.help,
        "baseline": curve.baseline,
        "quick": quick,
        "points": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": os.uname().release,
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
        },
    }


def _packet_table(result: dict[str, Any]) -> list[str]:
    x = result["x"]
    has_new = any("new_flow_ns" in row for row in result["points"])
    header = f"  {x:>14} {'floor ns':>9} {'estab. ns':>9} {'x floor':>8} {'hits':>7}"
    if has_new:
        header += f" {'new ns':>8} {'x floor':>8}"
    lines = [header]
    for row in result["points"]:
        line = (
            f"  {row[x]:>14} {row['floor_ns']:>9.1f} {row['established_ns']:>9.1f} "
            f"{row['established_ratio']:>8.2f} {row['established_hit_share']:>7.1%}"
        )
        if has_new:
            line += f" {row['new_flow_ns']:>8.1f} {row['new_flow_ratio']:>8.2f}"
        if len(row["established_ns_passes"]) > 1:
            line += "  passes " + "/".join(f"{ns:.0f}" for ns in row["established_ns_passes"])
        lines.append(line)
    lines.append(
        "  ns: median of the kernel's per-call durations, the best pass's; hits: timed "
        "established calls that found their flow; passes: each pass's established ns"
    )
    return lines


def _maglev_table(result: dict[str, Any]) -> list[str]:
    lines = [f"  {'sweep':>10} {'N':>6} {'M':>8} {'build ms':>9} {'baseline ms':>11} {'ratio':>7}"]
    for row in result["points"]:
        lines.append(
            f"  {row['sweep']:>10} {row['backends']:>6} {row['table_size']:>8} "
            f"{row['build_ms']:>9.3f} {row['baseline_ms']:>11.3f} {row['ratio']:>7.2f}"
        )
    lines.append("  best of 5 each; ratio = build / baseline")
    return lines


def _api_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"  {'backends':>8} {'p50 ms':>7} {'p99 ms':>7} {'no-op ms':>8} {'Maglev ms':>9} "
        f"{'p50/no-op':>9} {'p50/Maglev':>10}"
    ]
    for row in result["points"]:
        lines.append(
            f"  {row['backends']:>8} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} "
            f"{row['baseline_noop_write_ms_p50']:>8.2f} {row['baseline_maglev_build_ms']:>9.2f} "
            f"{row['p50_over_noop_write']:>9.2f} {row['p50_over_maglev_build']:>10.2f}"
        )
    lines.append("  live: the new table's pointer swapped in, seen by a watcher process")
    return lines


RENDERERS: Final[dict[str, Callable[[dict[str, Any]], list[str]]]] = {
    "maglev": _maglev_table,
    "api": _api_table,
}


def render_curve(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"curve {result['curve']}: {result['what']}",
        f"  baseline: {result['baseline']}; {machine['cpus']} CPUs, load average "
        f"{machine['load_average_before']} before, {machine['load_average_after']} after, "
        f"{result['seconds']} s",
    ]
    lines += RENDERERS.get(result["curve"], _packet_table)(result)
    return "\n".join(lines)
