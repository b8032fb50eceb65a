"""`rusty-rail bench maglev`: Maglev table build time, balance and disruption.

Build times are best of 5, each row next to a baseline timed in the same loop (np.sort of M
random uint32, see docs/maglev.md): the ratio, not the raw time, compares across runs.
"""

from __future__ import annotations

import ipaddress
import platform
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from rusty_rail.model.maglev import (
    DEFAULT_TABLE_SIZE,
    Address,
    MaglevTable,
    build_table,
    c_library_available,
    moved_fraction,
)

REPEATS = 5
#: (backends, table size, weights): the four equal-weight rows, then one weighted row.
CASES: tuple[tuple[int, int, str], ...] = (
    (10, DEFAULT_TABLE_SIZE, "equal"),
    (100, DEFAULT_TABLE_SIZE, "equal"),
    (1000, DEFAULT_TABLE_SIZE, "equal"),
    (1000, 655373, "equal"),
    (1000, DEFAULT_TABLE_SIZE, "1..100"),
)
#: The pure-Python population is timed once, on this case, to show what the fallback costs.
PYTHON_FALLBACK_CASE = (1000, DEFAULT_TABLE_SIZE)
BASELINE_NAME = "np.sort of M random uint32 (fixed seed)"


def run_maglev_bench() -> dict[str, Any]:
    """Measure every case of CASES; returns the JSON-ready result (see docs/maglev.md)."""
    results = []
    baselines: dict[int, float] = {}
    for count, size, weights in CASES:
        backends = bench_backends(count, weights)
        build_ms, baseline_ms, table = best_against_baseline(
            partial(build_table, backends, size), size
        )
        baselines[size] = min(baseline_ms, baselines.get(size, baseline_ms))
        # Remove the backend in the middle of the sorted order: any one would do.
        removed = table.backends[len(table.backends) // 2]
        smaller = build_table([b for b in backends if b[0] != removed], size)
        results.append(
            {
                "backends": count,
                "table_size": size,
                "weights": weights,
                "build_ms": round(build_ms, 4),
                "baseline_ms": round(baseline_ms, 4),
                "ratio_to_baseline": round(build_ms / baseline_ms, 3),
                "max_min_ratio": round(_balance(table), 5),
                "moved_on_remove_one": round(moved_fraction(table, smaller), 5),
                "impl": table.impl,
            }
        )

    count, size = PYTHON_FALLBACK_CASE
    backends = bench_backends(count, "equal")
    started = time.perf_counter()
    build_table(backends, size, impl="python")
    python_ms = (time.perf_counter() - started) * 1e3
    return {
        "table_size": DEFAULT_TABLE_SIZE,
        "repeats": REPEATS,
        "c_library": c_library_available(),
        "results": results,
        "baseline": {
            "name": BASELINE_NAME,
            "ms_by_table_size": {str(size): round(ms, 4) for size, ms in baselines.items()},
        },
        "python_fallback": {
            "backends": count,
            "table_size": size,
            "build_ms": round(python_ms, 2),
            "ratio_to_baseline": round(python_ms / baselines[size], 1),
        },
        "machine": {"python": platform.python_version(), "numpy": np.__version__},
    }


def render_maglev_bench(result: dict[str, Any]) -> str:
    """The result of run_maglev_bench as a table for people."""
    lines = [
        f"Maglev table build, best of {result['repeats']}; "
        f"baseline (same loop): {result['baseline']['name']}",
        "",
        f"{'backends':>8}  {'M':>7}  {'weights':>7}  {'build ms':>8}  {'baseline ms':>11}  "
        f"{'ratio':>6}  {'max/min':>7}  {'moved on remove 1':>17}  impl",
    ]
    for row in result["results"]:
        lines.append(
            f"{row['backends']:>8}  {row['table_size']:>7}  {row['weights']:>7}  "
            f"{row['build_ms']:>8.3f}  {row['baseline_ms']:>11.3f}  "
            f"{row['ratio_to_baseline']:>6.2f}  {row['max_min_ratio']:>7.4f}  "
            f"{row['moved_on_remove_one']:>17.2%}  {row['impl']}"
        )
    fallback = result["python_fallback"]
    lines += [
        "",
        "max/min: most over fewest slots per unit of weight; moved: share of slots whose",
        "backend changes when the middle backend (in key order) is removed.",
        f"pure-Python population ({fallback['backends']} backends, M={fallback['table_size']}, "
        f"one run): {fallback['build_ms']:.1f} ms, {fallback['ratio_to_baseline']:.0f}x the "
        "baseline",
    ]
    return "\n".join(lines)


def bench_backends(count: int, weights: str) -> list[tuple[Address, int]]:
    """``count`` addresses from 198.18.0.0/15, as a validated configuration holds them."""
    rng = random.Random(count)
    return [
        (
            ipaddress.IPv4Address(0xC612_0000 + i + 1),
            1 if weights == "equal" else rng.randint(1, 100),
        )
        for i in range(count)
    ]


def _balance(table: MaglevTable) -> float:
    per_weight = table.slot_counts() / np.array(table.weights, dtype=np.float64)
    return float(per_weight.max() / per_weight.min())


def best_against_baseline(
    build: Callable[[], MaglevTable], size: int
) -> tuple[float, float, MaglevTable]:
    """Best of REPEATS for ``build`` and for the baseline, taken in turns so that both see
    the same machine; one untimed warm-up of each first. Milliseconds, and the last table."""
    values = np.random.default_rng(1).integers(0, 2**32, size=size, dtype=np.uint32)
    np.sort(values)
    table = build()
    best_build = best_baseline = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        np.sort(values)
        best_baseline = min(best_baseline, time.perf_counter() - started)
        started = time.perf_counter()
        table = build()
        best_build = min(best_build, time.perf_counter() - started)
    return best_build * 1e3, best_baseline * 1e3, table
