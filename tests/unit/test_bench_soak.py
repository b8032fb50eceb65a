"""`rusty-rail bench soak` without a test bed: its length refused when it is no soak's, the
counter balance, growth after the warm-up, percentiles and the budget's checks.
(tests/e2e/test_soak.py runs a short soak.)"""

from __future__ import annotations

import pytest

from rusty_rail.bench.soak import (
    BUDGETS,
    CounterSnapshot,
    SoakSettings,
    budget_checks,
    check_minutes,
    counter_balance,
    growth,
)
from rusty_rail.bench.soak_load import forged_unreachables, percentile
from rusty_rail.cli import EXIT_USAGE, main


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("0", "more than 0 and at most 1440 (a day), got 0"),
        ("-1", "got -1"),
        ("1441", "got 1441"),
        ("nan", "got nan"),
        ("inf", "got inf"),
        ("ten", "not a number of minutes: ten"),
    ],
)
def test_the_cli_refuses_a_length_that_is_no_soak(
    value: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "soak", "--minutes", value])
    assert exited.value.code == EXIT_USAGE
    error = capsys.readouterr().err
    assert "--minutes" in error and named in error


def test_fractions_of_a_minute_are_a_soak_and_the_warm_up_is_a_fifth_up_to_a_minute() -> None:
    assert check_minutes(0.5) == 0.5
    assert SoakSettings(minutes=0.5).warmup == 6.0
    assert SoakSettings(minutes=10).warmup == 60.0
    with pytest.raises(ValueError, match="got 0"):
        SoakSettings(minutes=0)


def _snapshot(received: int, **by_reason: int) -> CounterSnapshot:
    return CounterSnapshot(received, 0, by_reason)


ACTIONS = {"ct_hit": "forward", "ct_miss": "forward", "pass_not_gre": "pass", "no_vip": "drop"}


def test_the_counters_balance_when_every_frame_in_is_counted_once() -> None:
    start = _snapshot(100, CT_HIT=50, CT_MISS=10, PASS_NOT_GRE=40, NO_VIP=0)
    end = _snapshot(180, CT_HIT=100, CT_MISS=20, PASS_NOT_GRE=55, NO_VIP=5)
    balance = counter_balance(start, end, ACTIONS)
    assert balance["balanced"] and balance["in"] == balance["counted"] == 80
    assert balance["by_action"] == {"drop": 5, "forward": 60, "pass": 15}
    assert balance["by_reason"] == {"ct_hit": 50, "ct_miss": 10, "no_vip": 5, "pass_not_gre": 15}

    # A frame in that no reason counted (or one counted twice) is off balance, by its number.
    missed = counter_balance(start, _snapshot(181, CT_HIT=100, CT_MISS=20, PASS_NOT_GRE=55), {})
    assert not missed["balanced"] and missed["difference"] == 6
    assert missed["by_action"] == {"unknown": 75}


def test_growth_is_from_the_end_of_the_warm_up_and_ignores_one_sample_in_flight() -> None:
    samples = [
        {"t_s": t, "rss": rss}
        for t, rss in [(0, 50), (2, 90), (4, 100), (6, 130), (8, 100), (10, 104), (12, 103)]
    ]
    measured = growth(samples, "rss", since=4)
    # after the warm-up: min(100, 130, 100); at the end: min(100, 104, 103)
    assert measured["after_warmup"] == 100 and measured["end"] == 100
    assert measured["growth"] == 0 and measured["max"] == 130
    samples += [{"t_s": 14, "rss": 110}, {"t_s": 16, "rss": 112}]
    assert growth(samples, "rss", since=4)["growth_ratio"] == 0.03


def test_percentiles() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.99) == 7.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5, abs=0.5)
    assert percentile(values, 0.99) == pytest.approx(99, abs=1)


def test_each_check_fails_past_its_budget() -> None:
    within = budget_checks(**BUDGETS)
    assert all(check["ok"] for check in within.values())
    for name, budget in BUDGETS.items():
        over = budget_checks(**{name: budget + 1e-3 if isinstance(budget, float) else budget + 1})
        assert over[name] == {"value": over[name]["value"], "budget": budget, "ok": False}


def test_forged_unreachables_name_each_backend_to_each_balancer() -> None:
    packets = forged_unreachables(["198.18.0.21", "198.18.0.22"], lbs=2, count=8)
    sources = {(packet[12:16], lb) for packet, lb in packets}
    assert len(sources) == 4  # every backend to every balancer
    assert all(packet[9] == 1 for packet, _ in packets)  # ICMP
