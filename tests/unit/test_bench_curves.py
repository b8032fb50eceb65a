"""`rusty-rail bench curves`: its arguments refused with the option and value named, the maglev
curve (no root) measured beside its baseline, and its plot written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rusty_rail.bench.curves import (
    CURVES,
    MAGLEV_FIXED_M,
    MAGLEV_FIXED_N,
    best_of_passes,
    check_points,
)
from rusty_rail.bench.curves_plot import write_plot


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rusty_rail", "bench", "curves", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--curve", "vips", "--points", "0,16"], "--points: 0 is outside 1..1024"),
        (["--curve", "vips", "--points", "2048"], "--points: 2048 is outside 1..1024"),
        (["--curve", "backends", "--points", "4097"], "--points: 4097 is outside 1..4096"),
        (["--curve", "flows", "--table-sizes", "257"], "--table-sizes: only the maglev curve"),
        (["--curve", "maglev", "--table-sizes", "4096"], "--table-sizes: 4096 is not a prime"),
        (["--curve", "maglev", "--table-sizes", "97"], "--table-sizes: 97 is not a prime in 100"),
        (["--curve", "maglev", "--plot", "/nonexistent/dir/c.png"], "--plot: no directory"),
        (["--curve", "maglev", "--points", "1,x"], "not a whole number: x"),
        (["--curve", "nope"], "invalid choice: 'nope'"),
        (["--curve", "api", "--passes", "2"], "--passes: only the packet curves take it"),
        (["--curve", "vips", "--passes", "0"], "must be at least 1, not 0"),
    ],
)
def test_a_bad_argument_is_a_usage_error_naming_it(args: list[str], named: str) -> None:
    done = _bench(*args)
    assert done.returncode == 2
    assert named in done.stderr
    assert done.stdout == ""


def test_points_are_sorted_and_unique() -> None:
    assert check_points(CURVES["flows"], [1000, 1, 1000]) == (1, 1000)
    with pytest.raises(ValueError, match="give at least one point"):
        check_points(CURVES["flows"], [])


def test_the_quick_maglev_curve_sweeps_n_then_m_beside_its_baseline(tmp_path: Path) -> None:
    plot = tmp_path / "maglev.png"
    done = _bench("--curve", "maglev", "--quick", "--json", "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = result["points"]
    assert [(r["sweep"], r["backends"], r["table_size"]) for r in rows] == [
        ("backends", 10, MAGLEV_FIXED_M),
        ("backends", 100, MAGLEV_FIXED_M),
        ("table_size", MAGLEV_FIXED_N, 257),
        ("table_size", MAGLEV_FIXED_N, 4099),
    ]
    for row in rows:
        assert row["build_ms"] > 0 and row["baseline_ms"] > 0
        assert row["ratio"] == pytest.approx(row["build_ms"] / row["baseline_ms"], rel=1e-2)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = _bench("--curve", "maglev", "--quick", "--points", "7", "--table-sizes", "101")
    assert text.returncode == 0, text.stderr
    assert "backends      7    65537" in text.stdout and "table_size    100      101" in text.stdout


def test_a_packet_curve_and_the_api_curve_plot_from_their_results(tmp_path: Path) -> None:
    machine = {"cpus": 2, "load_average_before": 1.0, "load_average_after": 1.5}
    point = {"flows": 1, "floor_ns": 40.0, "established_ns": 100.0, "new_flow_ns": 800.0}
    packet = {"curve": "flows", "x": "flows", "points": [point], "machine": machine}
    api_row = {
        "backends": 10, "p50_ms": 5.0, "p99_ms": 9.0, "baseline_noop_write_ms_p50": 2.0,
        "baseline_maglev_build_ms": 1.0,
    }  # fmt: skip
    api = {"curve": "api", "x": "backends", "points": [api_row], "machine": machine}
    for result in (packet, api):
        path = tmp_path / f"{result['curve']}.png"
        write_plot(result, path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; from rusty_rail.cli import main; "
        f"sys.exit(main(['bench', 'curves', '--curve', 'maglev', '--plot', '{tmp_path}/m.png']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "--plot needs matplotlib: pip install 'rusty-rail[plot]'" in done.stderr
    assert not (tmp_path / "m.png").exists()


def test_each_case_keeps_its_fastest_pass_with_every_pass_beside_it() -> None:
    def run(floor: float, established: float, new: float, hits: float) -> dict[str, float]:
        return {
            "floor_ns": floor, "established_ns": established, "established_mean_ns": established,
            "established_ratio": established / floor, "established_hit_share": hits,
            "new_flow_ns": new, "new_flow_mean_ns": new, "new_flow_ratio": new / floor,
        }  # fmt: skip

    best = best_of_passes([run(40, 600, 700, 1.0), run(50, 300, 900, 0.9), run(45, 500, 650, 1)])
    assert best["established_ns"] == 300 and best["established_ratio"] == 6.0
    assert best["floor_ns"] == 50 and best["established_hit_share"] == 0.9  # that pass's
    assert best["new_flow_ns"] == 650 and best["new_flow_ratio"] == 650 / 45
    assert best["established_ns_passes"] == [600, 300, 500]
    assert best["new_flow_ns_passes"] == [700, 900, 650]
