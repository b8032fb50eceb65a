"""`rusty-rail demo --cluster` and `rusty-rail bench cluster` end to end (issue 13, items 5 and
6): a cluster bed of three balancers announcing by BGP and sharing one etcd. Behaviour only,
never times: every change reaches every node with the nodes agreeing, etcd frozen under
traffic loses no packet and no request while writes are refused with 503 and every node
reports the outage, and a balancer daemon killed with SIGKILL leaves the router's FIB while
every established connection survives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from rusty_rail.testbed.cluster_measure import cluster_failed, percentile

pytestmark = pytest.mark.e2e

COMMAND = [sys.executable, "-m", "rusty_rail"]


def _check_cluster(cluster: dict[str, Any], changes: int) -> None:
    change, store, kill = (
        cluster["change_to_all_nodes"],
        cluster["etcd_outage"],
        cluster["balancer_kill"],
    )
    assert change["nodes"] == 3 and change["changes"] == changes
    assert change["converged"] == changes
    assert store["requests"] > 0 and store["failed_requests"] == 0
    assert store["packets_sent_to_balancers"] > 0 and store["lost_packets"] == 0
    assert store["writes"] >= 1 and store["write_statuses"] == [503] * store["writes"]
    assert store["nodes_saw_outage"] == 3
    assert kill["balancer"] == "lb1" and kill["through_killed"] > 0
    # Its BIRD died with the daemon: the session closed, the router did not wait for it.
    assert kill["session"] == "closed"
    assert kill["survived"] == kill["connections"] > 0 and kill["survival"] == 1.0
    assert cluster["withdrawal_s"] == kill["withdrawal_s"]
    assert cluster_failed(cluster) == []


def test_demo_cluster_keeps_every_connection_and_packet(require_root: None) -> None:
    command = [*COMMAND, "demo", "--cluster", "--json", "--requests", "60", "--long-lived",
               "8", "--changes", "5", "--outage-seconds", "10"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["errors"] == []
    # The demo's own keys are all there, from a bed of three balancers.
    assert summary["lb_failover_connections_survived"] == 1.0
    assert set(summary["families"]["ipv4"]["requests_per_lb"]) == {"lb1", "lb2", "lb3"}
    _check_cluster(summary["cluster"], 5)


def test_bench_cluster_json_has_the_issues_shape(require_root: None) -> None:
    """A smoke run on routed ingress: the shape, the budgets reported, the exit status
    following them (the times themselves are not asserted)."""
    command = [*COMMAND, "bench", "cluster", "--json", "--changes", "3", "--outage-seconds",
               "5", "--ingress", "routed"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    bench = json.loads(result.stdout)
    assert set(bench["change_to_all_nodes"]) >= {"p50_ms", "p99_ms", "nodes"}
    assert isinstance(bench["withdrawal_s"], float)
    assert set(bench["budgets"]) == {"change_p99_ms", "withdrawal_s"}
    assert bench["budgets"]["change_p99_ms"]["budget"] == 250
    assert bench["budgets"]["withdrawal_s"]["budget"] == 3
    assert bench["problems"] == []
    assert result.returncode == (0 if bench["budgets_met"] else 1)
    _check_cluster(bench, 3)


@pytest.mark.parametrize(
    "extra",
    [
        ["--changes", "50"],
        ["--outage-seconds", "10"],
        ["--cluster", "--changes", "0"],
        ["--cluster", "--outage-seconds", "4"],
    ],
)
def test_demo_cluster_options_are_checked_before_anything_is_built(
    require_root: None, extra: list[str]
) -> None:
    result = subprocess.run([*COMMAND, "demo", *extra], capture_output=True, text=True)
    assert result.returncode == 2
    assert "--changes" in result.stderr and "rusty-rail demo" in result.stderr


def test_bench_cluster_refuses_an_outage_too_short_to_be_seen(require_root: None) -> None:
    command = [*COMMAND, "bench", "cluster", "--outage-seconds", "2"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert "--outage-seconds 2: give at least 5 s" in result.stderr


def test_a_broken_promise_is_reported() -> None:
    good = {
        "change_to_all_nodes": {"changes": 2, "converged": 2, "nodes": 3},
        "etcd_outage": {"lost_packets": 0, "failed_requests": 0, "nodes_saw_outage": 3,
                        "writes": 1, "writes_refused_503": 1, "write_statuses": [503]},
        "balancer_kill": {"connections": 4, "survived": 4, "session": "closed"},
    }  # fmt: skip
    assert cluster_failed(good) == []
    for part, key, value, named in (
        ("change_to_all_nodes", "converged", 1, "disagreeing"),
        ("etcd_outage", "lost_packets", 1, "packets lost"),
        ("etcd_outage", "failed_requests", 2, "requests failed"),
        ("etcd_outage", "nodes_saw_outage", 2, "only 2 nodes"),
        ("etcd_outage", "writes_refused_503", 0, "not all 503"),
        ("balancer_kill", "survived", 3, "1 connections broke"),
        ("balancer_kill", "session", "hold timer expired", "not closed"),
    ):
        broken = json.loads(json.dumps(good))
        broken[part][key] = value
        (problem,) = cluster_failed(broken)
        assert named in problem, problem
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
