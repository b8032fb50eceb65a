"""`rusty-rail demo --json` end to end: the demo runs its scenarios for the IPv4 VIP and the IPv6
VIP at once and reports each family under ``families``, beside the keys it always had (the
IPv4 VIP's); every connection that should survive the balancer failure and the backend
removal survives, in both families, and the exit status says so.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rusty_rail.testbed.demo import demo_failed
from rusty_rail.testbed.topology import VIPS

pytestmark = pytest.mark.e2e

SURVIVAL_KEYS = ("lb_failover_connections_survived", "backend_removal_survivors_survived")


def test_the_demo_reports_both_families_and_keeps_every_surviving_connection() -> None:
    command = [sys.executable, "-m", "rusty_rail", "demo", "--json", "--requests", "300",
               "--long-lived", "12"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["errors"] == []
    assert set(summary["families"]) == {"ipv4", "ipv6"}
    for family, report in summary["families"].items():
        assert report["vip"] == VIPS[family]
        assert set(report["requests_per_backend"]) == {"s1", "s2", "s3"}, family
        assert sum(report["requests_per_backend"].values()) == 300, family
        assert all(report[key] == 1.0 for key in SURVIVAL_KEYS), (family, report)
        assert set(report["requests_after_removal_per_backend"]) == {"s1", "s2"}, family
        # Every request was balanced by one of the two balancers, none bypassed them.
        assert sum(report["requests_per_lb"].values()) == 300, family
    for key in ("requests_per_backend", *SURVIVAL_KEYS, "replies", "requests_per_lb"):
        assert summary[key] == summary["families"]["ipv4"][key], key


def test_a_lost_connection_in_either_family_fails_the_demo() -> None:
    good = {key: 1.0 for key in SURVIVAL_KEYS}
    summary = {"errors": [], "families": {"ipv4": dict(good), "ipv6": dict(good)}}
    assert not demo_failed(summary)
    for family in ("ipv4", "ipv6"):
        for key in SURVIVAL_KEYS:
            broken = json.loads(json.dumps(summary))
            broken["families"][family][key] = 0.9
            assert demo_failed(broken), (family, key)
    assert demo_failed({**summary, "errors": ["x"]})


def test_the_demo_over_the_ipv6_underlay_with_mixed_backends() -> None:
    """`rusty-rail demo --underlay ipv6 --backends mixed`: outer IPv6 GRE from the router, s2
    an IPv6 backend behind both VIPs; every connection that should survive survives."""
    command = [sys.executable, "-m", "rusty_rail", "demo", "--json", "--requests", "300",
               "--long-lived", "12", "--underlay", "ipv6", "--backends", "mixed"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["errors"] == []
    assert summary["underlay"] == "ipv6"
    assert summary["backends"] == {
        "s1": "198.18.0.21",
        "s2": "2001:2:0:3::22",
        "s3": "198.18.0.23",
    }
    for family, report in summary["families"].items():
        assert set(report["requests_per_backend"]) == {"s1", "s2", "s3"}, family
        assert all(report[key] == 1.0 for key in SURVIVAL_KEYS), (family, report)
        assert set(report["router_packets_per_lb"]) == {"2001:2:0:3::11", "2001:2:0:3::12"}
        assert report["non_gre_packets_seen_by_lbs"] == 0, family


@pytest.mark.parametrize("egress", ["ipip", "vxlan"])
def test_the_demo_with_routed_ingress(egress: str) -> None:
    """`rusty-rail demo --json --ingress routed --egress ipip` (and vxlan, kernel VXLAN on the
    servers): the router routes the VIPs to the balancers by kernel ECMP; the same keys (plus
    ingress and egress), the router's counters per balancer address of each family, and every
    connection that should survive survives."""
    command = [sys.executable, "-m", "rusty_rail", "demo", "--json", "--requests", "200",
               "--long-lived", "12", "--ingress", "routed", "--egress", egress]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["errors"] == []
    assert (summary["ingress"], summary["egress"]) == ("routed", egress)
    lbs = {"ipv4": ["198.18.0.11", "198.18.0.12"], "ipv6": ["2001:2:0:3::11", "2001:2:0:3::12"]}
    for family, report in summary["families"].items():
        assert set(report["requests_per_backend"]) == {"s1", "s2", "s3"}, family
        assert all(report[key] == 1.0 for key in SURVIVAL_KEYS), (family, report)
        assert report["long_lived_through_failed_lb"] > 0, family
        sent = [report["router_packets_per_lb"][address] for address in lbs[family]]
        assert sent == list(report["packets_per_lb"].values()), family
        assert report["non_gre_packets_seen_by_lbs"] == 0, family
