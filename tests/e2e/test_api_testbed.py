"""Run-time changes in the test bed, made the way an operator makes them: `rusty-rail ctl` and
the REST API of each balancer (`rusty-rail run` processes), with real TCP connections through
router, balancers and servers. Drain keeps established connections and takes no new ones;
removal moves only the removed backend's flows; both balancers agree on every table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from rusty_rail.api.client import ApiClient, backend_path
from rusty_rail.api.credentials import local_token
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.testbed.topology import (
    ECHO_PORT,
    HTTP_PORT,
    VIP,
    Testbed,
    TestbedSpec,
    server_address,
)
from rusty_rail.testbed.traffic import LongLived, http_requests

pytestmark = pytest.mark.e2e
API = "http://127.0.0.1:9180"


@pytest.fixture(scope="module")
def bed(require_root: None) -> Iterator[Testbed]:
    testbed = Testbed.up(TestbedSpec(clients=2, lbs=2, servers=3))
    try:
        yield testbed
    finally:
        assert testbed.down() == []


def ctl(bed: Testbed, lb: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`rusty-rail ctl ARGS` in balancer ``lb``'s network namespace."""
    namespace = bed.lbs[lb].name
    command = ["nsenter", f"--net=/run/netns/{namespace}", sys.executable, "-m", "rusty_rail",
               "ctl", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, f"ctl {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def on_every_lb(bed: Testbed, *args: str) -> None:
    for lb in range(bed.spec.lbs):
        result = ctl(bed, lb, *args)
        assert "applied: generation" in result.stdout, result.stdout


def api(bed: Testbed, lb: int, method: str, path: str, body: object = None) -> Any:
    """One API call to balancer ``lb`` (its API listens on its namespace's loopback)."""
    with in_netns(bed.lbs[lb].name):
        return ApiClient(API, local_token()).request(method, path, body).body


def health(bed: Testbed, lb: int) -> dict[str, Any]:
    result = ctl(bed, lb, "--json", "health")
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def assert_balancers_agree(bed: Testbed) -> None:
    first, second = health(bed, 0), health(bed, 1)
    assert first["status"] == second["status"] == "ok", (first["reasons"], second["reasons"])
    assert first["config_fingerprint"] == second["config_fingerprint"]
    assert {k: v["fingerprint"] for k, v in first["vips"].items()} == {
        k: v["fingerprint"] for k, v in second["vips"].items()
    }


def test_a_drained_backend_keeps_its_connections_and_gets_no_new_ones(bed: Testbed) -> None:
    echo = LongLived(bed.clients, VIP, ECHO_PORT, 24)
    try:
        assert set(echo.per_backend()) == {"s1", "s2", "s3"}
        on_every_lb(bed, "backend", "drain", VIP, server_address(0))
        assert_balancers_agree(bed)
        assert echo.check() == []  # every connection, s1's included, still answers
        during = http_requests(bed.clients, VIP, HTTP_PORT, 300)
        assert during.errors == []
        assert set(during.per_backend) == {"s2", "s3"}
        assert echo.check() == []
        on_every_lb(bed, "up", VIP, server_address(0))
        after = http_requests(bed.clients, VIP, HTTP_PORT, 300)
        assert set(after.per_backend) == {"s1", "s2", "s3"}
        assert echo.check() == []
    finally:
        for lb in range(bed.spec.lbs):
            ctl(bed, lb, "up", VIP, server_address(0), check=False)
        echo.close()


def test_a_removed_backend_loses_only_its_own_flows(bed: Testbed) -> None:
    echo = LongLived(bed.clients, VIP, ECHO_PORT, 30)
    removed = server_address(2)
    try:
        assert set(echo.per_backend()) == {"s1", "s2", "s3"}
        plan = json.loads(ctl(bed, 0, "--json", "plan", "backend", "del", VIP, removed).stdout)
        view = plan["vips"][VIP]
        assert 0.25 < view["table_slots_moved"] < 0.42
        # Tracked flows on the balancer that carries them; the dry run changed nothing.
        assert api(bed, 0, "GET", f"/v1/vips/{VIP}")["backends"][2]["state"] == "up"

        on_every_lb(bed, "remove", VIP, removed)
        assert_balancers_agree(bed)
        failed = echo.check()
        assert {c.backend for c in failed} == {"s3"}, [c.backend for c in failed]
        assert all(c.alive for c in echo.connections if c.backend != "s3")
        after = http_requests(bed.clients, VIP, HTTP_PORT, 300)
        assert after.errors == []
        assert set(after.per_backend) == {"s1", "s2"}

        # Back through the API itself: the same write on each balancer.
        for lb in range(bed.spec.lbs):
            result = api(bed, lb, "PUT", backend_path(VIP, removed), {"weight": 1})
            assert result["changed"]
        assert_balancers_agree(bed)
        again = http_requests(bed.clients, VIP, HTTP_PORT, 300)
        assert set(again.per_backend) == {"s1", "s2", "s3"}
        assert all(c.alive for c in echo.connections if c.backend != "s3")
    finally:
        for lb in range(bed.spec.lbs):
            api(bed, lb, "PUT", backend_path(VIP, removed), {"weight": 1})
        echo.close()


def test_ctl_shows_backends_explains_flows_and_watches_rates(bed: Testbed) -> None:
    echo = LongLived(bed.clients, VIP, ECHO_PORT, 6)
    try:
        listing = ctl(bed, 0, "list").stdout
        assert VIP in listing
        for i in range(3):
            assert server_address(i) in listing
        entries = json.loads(ctl(bed, 0, "--json", "vip", "list").stdout)
        assert [b["address"] for b in entries[0]["backends"]] == [
            server_address(i) for i in range(3)
        ]
        names = {server_address(i): f"s{i + 1}" for i in range(3)}
        for connection in echo.connections:
            flow = connection.flow
            text = f"{connection.sock.getsockname()[0]}:{flow.sport}->{VIP}:{flow.dport}/tcp"
            # The new spelling on the first balancer, the old one (`lookup`) on the others.
            lookup = [("flow", "lookup"), *[("lookup",)] * (bed.spec.lbs - 1)]
            answers = [json.loads(ctl(bed, lb, "--json", *lookup[lb], text).stdout)
                       for lb in range(bed.spec.lbs)]  # fmt: skip
            # Both balancers pick the same backend, the one the connection reached.
            assert {names[a["backend"]] for a in answers} == {connection.backend}
        watched = ctl(bed, 0, "watch", "--count", "1", "--interval", "0.3").stdout
        assert "packets/s" in watched and server_address(0) in watched
        missing = ctl(bed, 0, "--api", "http://127.0.0.1:1", "list", check=False)
        assert missing.returncode == 3
        assert "cannot reach the rusty-rail API" in missing.stderr
        refused = ctl(bed, 0, "backend", "weight", VIP, server_address(0), "-1", check=False)
        assert refused.returncode == 1
        assert "weight: -1: must be between 0 and 65535" in refused.stderr
    finally:
        echo.close()
