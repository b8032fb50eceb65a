"""`rusty-rail bench soak` for half a minute, in JSON: the report has every part the budget
needs, and what it measures is real (the counters balance the veth's received frames, the
churn's writes are answered, the flapped server goes unhealthy, the ICMP bursts reach the
balancers, s4 takes requests while it is in, no 5xx, no connection to s1 or s2 broken).
RSS and fd growth are printed, not asserted: half a minute is the daemon's youth.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rusty_rail.bench.soak import BUDGETS
from rusty_rail.testbed.topology import server_address

pytestmark = pytest.mark.e2e


def test_a_half_minute_soak_reports_every_budget_and_measures_for_real() -> None:
    command = [sys.executable, "-m", "rusty_rail", "bench", "soak", "--minutes", "0.5", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    print(json.dumps({k: v for k, v in report.items() if k != "daemons"}, indent=1))

    checks = report["checks"]
    assert set(checks) == set(BUDGETS)
    assert report["ok"] == all(check["ok"] for check in checks.values())
    assert (done.returncode == 0) == report["ok"]
    assert checks["http_5xx"]["value"] == 0
    assert checks["surviving_connections_broken"]["value"] == 0
    assert checks["counters_unbalanced"]["value"] == 0

    assert set(report["daemons"]) == {"lb1", "lb2"}
    for name, daemon in report["daemons"].items():
        print(name, json.dumps({k: v for k, v in daemon.items() if k != "samples"}))
        samples = daemon["samples"]
        assert len(samples) >= 10  # one every 2 s
        assert all(s["rss_kib"] > 0 and s["fds"] > 0 for s in samples)
        assert daemon["rss_kib"]["after_warmup"] > 0 and "growth_ratio" in daemon["rss_kib"]
        assert daemon["conntrack"]["max_entries"] > 0 and daemon["conntrack"]["capacity"] > 0
        packets = daemon["packets"]
        assert packets["balanced"] and packets["in"] == packets["counted"] > 0
        assert sum(packets["by_reason"].values()) == packets["counted"]
        assert sum(packets["by_action"].values()) == packets["counted"]
        assert packets["by_action"]["forward"] > 0 and packets["by_action"]["pass"] > 0
        # the forged ICMP reached the balancer and was looked at
        assert sum(daemon["icmp_packets"].values()) > 0
        # s3's checks failed and it was taken out, by the checks
        flapped = f"{server_address(2)} health unhealthy (check)"
        assert daemon["events"].get(flapped, 0) >= 1, daemon["events"]
        for survivor in (server_address(0), server_address(1)):
            assert f"{survivor} health unhealthy (check)" not in daemon["events"]

    api = report["api"]
    assert api["writes"] > 0 and set(api["by_status"]) <= {"200", "201"}
    assert 0 < api["p50_ms"] <= api["p99_ms"]
    traffic = report["traffic"]
    assert set(traffic["requests_by_status"]) == {"200"}
    assert {"s1", "s2", "s4"} <= set(traffic["requests_by_backend"])
    assert report["flaps"] >= 1 and report["icmp"]["sent"] > 0
    # The only errors a soak may see are requests caught by a flap; never the daemons', the
    # API's or the workload's own.
    assert all(error.startswith("request:") for error in report["errors"]), report["errors"]
