"""`rusty-rail bench cluster`: a ``--cluster`` test bed of three balancers, measured by
testbed/cluster_measure.py (the same code as `rusty-rail demo --cluster`), next to issue 13's
budgets: a change live on every node within p99 250 ms, a dead balancer out of the router
within 3 s (docs/benchmarks.md, "bench cluster")."""

from __future__ import annotations

import os
import sys
from typing import Any

from rusty_rail.testbed.cluster_measure import (
    BUDGET_CHANGE_P99_MS,
    BUDGET_WITHDRAWAL_S,
    cluster_failed,
    measure_cluster,
)
from rusty_rail.testbed.topology import Testbed, TestbedSpec

__all__ = ["render_cluster_bench", "run_cluster_bench"]

NODES = 3


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_cluster_bench(
    *, changes: int = 50, outage: float = 10.0, ingress: str = "gre", long_lived: int = 30
) -> dict[str, Any]:
    """Bring up a cluster bed (three balancers), measure it, tear it down; the result is the
    JSON of `bench cluster --json`."""
    spec = TestbedSpec(clients=2, lbs=NODES, servers=3, ingress=ingress, cluster=True)
    load = os.getloadavg()[0]
    with Testbed.up(spec) as bed:
        measured = measure_cluster(bed, _say, changes=changes, outage=outage, long_lived=long_lived)
    change = measured["change_to_all_nodes"]
    budgets = {
        "change_p99_ms": {
            "budget": BUDGET_CHANGE_P99_MS,
            "measured": change["p99_ms"],
            "met": change["p99_ms"] <= BUDGET_CHANGE_P99_MS,
        },
        "withdrawal_s": {
            "budget": BUDGET_WITHDRAWAL_S,
            "measured": measured["withdrawal_s"],
            "met": measured["withdrawal_s"] <= BUDGET_WITHDRAWAL_S,
        },
    }
    problems = cluster_failed(measured)
    return {
        **measured,
        "ingress": ingress,
        "budgets": budgets,
        "budgets_met": all(budget["met"] for budget in budgets.values()),
        "problems": problems,
        "load_average": round(load, 2),
    }


def render_cluster_bench(result: dict[str, Any]) -> str:
    change = result["change_to_all_nodes"]
    store = result["etcd_outage"]
    kill = result["balancer_kill"]
    budgets = result["budgets"]

    def met(name: str) -> str:
        return "met" if budgets[name]["met"] else "MISSED"

    rows = [
        ("a change live on all nodes, p50", f"{change['p50_ms']} ms", ""),
        (
            "a change live on all nodes, p99",
            f"{change['p99_ms']} ms",
            f"<= {BUDGET_CHANGE_P99_MS:g} ms: {met('change_p99_ms')}",
        ),
        (
            "a killed balancer out of the router",
            f"{result['withdrawal_s']} s",
            f"<= {BUDGET_WITHDRAWAL_S:g} s: {met('withdrawal_s')}",
        ),
        ("established connections kept", f"{kill['survived']}/{kill['connections']}", "all"),
        (f"etcd frozen {store['seconds']} s: packets lost", str(store["lost_packets"]), "0"),
        (
            "  requests failed",
            f"{store['failed_requests']}/{store['requests']}",
            "0",
        ),
        ("  writes refused with 503", f"{store['writes_refused_503']}/{store['writes']}", "all"),
        ("  all nodes converged after", f"{store['converge_s']} s", ""),
    ]
    width = max(len(row[0]) for row in rows)
    lines = [
        f"rusty-rail bench cluster: {change['nodes']} balancers, {change['changes']} changes, "
        f"{result['ingress']} ingress, load average {result['load_average']}",
        *(f"  {name:<{width}}  {value:>12}  {budget}" for name, value, budget in rows),
    ]
    lines += [f"  PROBLEM: {problem}" for problem in result["problems"]]
    return "\n".join(lines)
