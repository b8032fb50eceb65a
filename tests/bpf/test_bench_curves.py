"""`rusty-rail bench curves --quick`, the smoke run of the packet curves: the JSON shape, every
point measured beside its floor, the flows found in the connection table, the PNG written. No
time is asserted (the machine is shared; docs/benchmarks.md holds the figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rusty_rail.bench.curves import CURVES
from rusty_rail.bench.curves_packet import PacketPoint, measure_point

pytestmark = pytest.mark.bpf

POINT_KEYS = {
    "flows", "conntrack_size", "vips", "backends", "table_size", "samples", "floor_ns",
    "established_hit_share", "established_ns", "established_mean_ns", "established_ratio",
    "established_ns_passes",
}  # fmt: skip
NEW_FLOW_KEYS = {"new_flow_ns", "new_flow_mean_ns", "new_flow_ratio", "new_flow_ns_passes"}


def _curve(name: str, plot: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "rusty_rail", "bench", "curves", "--curve", name, "--quick",
         "--json", "--plot", str(plot)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return result


@pytest.mark.parametrize("name", ["flows", "vips"])
def test_a_quick_packet_curve_measures_every_point_beside_the_floor(
    require_root: None, tmp_path: Path, name: str
) -> None:
    result = _curve(name, tmp_path / f"{name}.png")
    curve = CURVES[name]
    assert result["curve"] == name and result["x"] == curve.x and result["quick"] is True
    points = result["points"]
    assert isinstance(points, list)
    assert [point[curve.x] for point in points] == list(curve.quick)
    for point in points:
        keys = POINT_KEYS | (NEW_FLOW_KEYS if name == "vips" else set())
        assert set(point) == keys, point
        assert point["samples"] == 400
        assert point["established_ns_passes"] == [point["established_ns"]]  # --quick: 1 pass
        assert point["floor_ns"] > 0 and point["established_ns"] > 0
        ratio = point["established_ratio"]
        assert ratio == pytest.approx(point["established_ns"] / point["floor_ns"])
        # The flows were learnt before the timed calls: every timed call found its flow.
        assert point["established_hit_share"] == 1.0
        if name == "vips":
            assert point["new_flow_ns"] > 0
    machine = result["machine"]
    assert isinstance(machine, dict) and machine["load_average_before"] >= 0


def test_flows_evicted_from_a_full_connection_table_are_counted_as_misses(
    require_root: None,
) -> None:
    # 4096 flows in 1024 entries (256 sets of 4 ways): most are evicted by later ones.
    result = measure_point(PacketPoint(flows=4096, conntrack_size=1024, samples=400))
    assert 0 < result["established_hit_share"] < 0.5
    assert result["established_ns"] > 0
