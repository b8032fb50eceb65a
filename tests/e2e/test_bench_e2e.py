"""`rusty-rail bench e2e --quick`, the smoke run: the JSON shape the issue fixes, frames that
reached the sink, and the sink's count equal to what the balancer forwarded. No rate is
asserted (the bench holds them to their budgets; the exit status says whether it did)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rusty_rail.bench.e2e import CASES, QUICK_FRAMES_PER_CPU

pytestmark = pytest.mark.e2e

CASE_KEYS = {"mpps", "floor_mpps", "ratio", "cpus", "drops"}


def test_bench_e2e_quick_sends_every_case_through_the_balancer_to_the_sink() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rusty_rail", "bench", "e2e", "--quick", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    result = json.loads(done.stdout)
    assert (done.returncode == 0) is result["budgets_met"]
    names = [*CASES, *(f"{case}_2cpu" for case in CASES)]
    assert list(result["cases"]) == names
    for name in names:
        case, detail = result["cases"][name], result["details"][name]
        assert set(case) == CASE_KEYS, name
        assert case["cpus"] == (2 if name.endswith("_2cpu") else 1)
        assert case["mpps"] > 0 and case["floor_mpps"] > 0
        assert case["ratio"] == pytest.approx(case["mpps"] / case["floor_mpps"], abs=2e-3)
        assert all(isinstance(count, int) for count in case["drops"].values())
        # Every frame was made, the sink counted frames, and exactly those the balancer sent.
        assert detail["generated"] == QUICK_FRAMES_PER_CPU * case["cpus"]
        assert detail["sunk"] > 0
        assert detail["sunk"] == detail["forwarded"], name
        assert case["drops"]["after_balancer"] == 0
    for name in ("established_100k", "established_1m_2cpu"):
        # Prepopulated: the timed frames found their flows in the connection table.
        assert result["details"][name]["ct_hit"] > result["details"][name]["ct_miss"]
    assert result["details"]["new_flow"]["ct_miss"] == QUICK_FRAMES_PER_CPU


@pytest.mark.parametrize(("option", "value"), [("--frames", "0"), ("--rounds", "-1")])
def test_a_bad_count_is_a_usage_error_naming_the_option(option: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rusty_rail", "bench", "e2e", option, value],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"argument {option}: must be at least 1, not {value}" in done.stderr
