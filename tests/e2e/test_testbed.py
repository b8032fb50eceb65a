"""The product's promises end to end, in the test bed: clients -> router (GRE, ECMP) ->
balancers (`rusty-rail run`) -> servers (`rusty-rail decap`, DSR), for the IPv4 VIP and the
IPv6 VIP (inner IPv6 in outer IPv4 GRE, IPv4 backends), each alone and both at once.

One test bed serves the module; tests that change it (an LB out, a backend out) put it back.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.testbed.demo import FORWARD_STATS
from rusty_rail.testbed.netns import leftover_namespaces
from rusty_rail.testbed.processes import alive
from rusty_rail.testbed.router import choose_lb
from rusty_rail.testbed.topology import (
    ECHO_PORT,
    HTTP_PORT,
    VIPS,
    Testbed,
    TestbedSpec,
    lb_address,
    running_testbeds,
)
from rusty_rail.testbed.traffic import LongLived, http_requests

pytestmark = pytest.mark.e2e


@pytest.fixture(params=sorted(VIPS))
def vip(request: pytest.FixtureRequest) -> str:
    """The VIP of each address family in turn."""
    return VIPS[request.param]


@pytest.fixture(scope="module")
def bed(require_root: None) -> Iterator[Testbed]:
    testbed = Testbed.up(TestbedSpec(clients=2, lbs=2, servers=3))
    try:
        yield testbed
    finally:
        assert testbed.down() == []


def test_new_connections_spread_evenly_over_the_backends(bed: Testbed, vip: str) -> None:
    result = http_requests(bed.clients, vip, HTTP_PORT, 3000)
    assert result.errors == []
    assert set(result.per_backend) == {"s1", "s2", "s3"}
    for name, count in result.per_backend.items():
        assert abs(count - 1000) <= 150, f"{name} got {count} of 3000"


def test_replies_bypass_the_balancers(bed: Testbed, vip: str) -> None:
    assert bed.router is not None
    before_fwd = bed.lb_packets(FORWARD_STATS)
    before_not_gre = sum(bed.lb_packets(["PASS_NOT_GRE"]))
    before_router = bed.router.lb_counters()
    result = http_requests(bed.clients, vip, HTTP_PORT, 300)
    assert result.errors == [] and result.ok == 300
    after_router = bed.router.lb_counters()
    sent_by_router = sum(
        after_router[a]["packets"] - before_router.get(a, {"packets": 0})["packets"]
        for a in after_router
    )
    # Every packet the router wrapped was forwarded by a balancer, and the balancers saw no
    # plain (reply) traffic: the servers' answers went around them.
    assert sum(bed.lb_packets(FORWARD_STATS)) - sum(before_fwd) == sent_by_router
    assert sent_by_router >= 300 * 3  # at least SYN, ACK + request, FIN per connection
    assert sum(bed.lb_packets(["PASS_NOT_GRE"])) - before_not_gre == 0


def test_balancer_failure_keeps_every_established_connection(bed: Testbed, vip: str) -> None:
    echo = LongLived(bed.clients, vip, ECHO_PORT, 24)
    try:
        assert echo.check() == []
        bed.set_lbs([1])  # lb1 dies: the router moves its flows to lb2
        assert echo.check() == []
        after = http_requests(bed.clients, vip, HTTP_PORT, 100)
        assert after.errors == []
        bed.set_lbs([0, 1])  # and comes back
        assert echo.check() == []
    finally:
        bed.set_lbs(list(range(bed.spec.lbs)))
        echo.close()


def test_backend_removal_keeps_connections_to_the_survivors(bed: Testbed, vip: str) -> None:
    echo = LongLived(bed.clients, vip, ECHO_PORT, 30)
    try:
        assert set(echo.per_backend()) == {"s1", "s2", "s3"}
        bed.set_backends([0, 1])
        echo.check()
        survivors = [c for c in echo.connections if c.backend != "s3"]
        assert all(c.alive for c in survivors)
        after = http_requests(bed.clients, vip, HTTP_PORT, 300)
        assert after.errors == []
        assert set(after.per_backend) == {"s1", "s2"}
    finally:
        bed.set_backends([0, 1, 2])
        echo.close()


def test_both_families_at_once_through_a_failover_and_a_removal(bed: Testbed) -> None:
    """IPv4 and IPv6 connections on the same balancers at the same time: lb1 dies while both
    carry traffic, then a backend leaves both VIPs; every connection that may survive does."""
    families = {family: LongLived(bed.clients, vip, ECHO_PORT, 20) for family, vip in VIPS.items()}
    try:
        lbs = [lb_address(i) for i in range(bed.spec.lbs)]
        for family, echo in families.items():
            expected = socket.AF_INET if family == "ipv4" else socket.AF_INET6
            assert {c.sock.family for c in echo.connections} == {expected}
            assert set(echo.per_backend()) == {"s1", "s2", "s3"}
            # lb1 carries connections of both families when it dies.
            assert {str(choose_lb(c.flow, lbs)) for c in echo.connections} == set(lbs), family
        bed.set_lbs([1])
        for family, echo in families.items():
            assert echo.check() == [], family
        for family, vip in VIPS.items():
            assert http_requests(bed.clients, vip, HTTP_PORT, 60).errors == [], family
        bed.set_lbs([0, 1])
        bed.set_backends([0, 1])
        for family, echo in families.items():
            echo.check()
            survivors = [c for c in echo.connections if c.backend != "s3"]
            assert survivors and all(c.alive for c in survivors), family
            after = http_requests(bed.clients, VIPS[family], HTTP_PORT, 100)
            assert after.errors == [] and set(after.per_backend) == {"s1", "s2"}, family
    finally:
        bed.set_lbs(list(range(bed.spec.lbs)))
        bed.set_backends([0, 1, 2])
        for echo in families.values():
            echo.close()


def test_host_traffic_to_the_balancer_still_works(bed: Testbed) -> None:
    router = bed.ns("rt")
    ping = subprocess.run(
        ["ip", "netns", "exec", router.name, "ping", "-c", "2", "-W", "2", lb_address(0)],
        capture_output=True,
        text=True,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    with in_netns(bed.lbs[0].name):
        listener = socket.create_server((lb_address(0), 2222))
    with listener:
        with in_netns(router.name):
            client = socket.create_connection((lb_address(0), 2222), timeout=5)
        with client:
            client.sendall(b"hello")
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.recv(5) == b"hello"


def test_down_leaves_no_namespace_process_or_pin(require_root: None) -> None:
    small = Testbed.up(TestbedSpec(clients=1, lbs=1, servers=1))
    names, pins = list(small.namespaces), small.pin_root
    pids = list(small.pids.values())
    assert small.down() == []
    assert not set(names) & set(leftover_namespaces())
    assert not pins.exists()
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def test_down_with_a_tag_removes_only_that_test_bed(require_root: None) -> None:
    """Another run's test bed (or another engineer's) is left alone by `down --tag`."""
    command = [sys.executable, "-m", "rusty_rail", "testbed"]
    up = subprocess.run(
        [*command, "up", "--clients", "1", "--lbs", "1", "--servers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode == 0, up.stderr
    status = json.loads(up.stdout)
    tag, namespaces = status["tag"], list(status["namespaces"])
    try:
        wrong = subprocess.run([*command, "down", "--tag", "nosuchtag"], capture_output=True,
                               text=True)  # fmt: skip
        assert wrong.returncode == 2 and "no test bed nosuchtag" in wrong.stderr
        assert tag in running_testbeds()
        assert all(Path(f"/run/netns/{name}").exists() for name in namespaces)
        # `testbed ctl` reaches a balancer's API inside its namespace (issue 15, item 9).
        listed = subprocess.run([*command, "ctl", "--tag", tag, "lb1", "--json", "vip", "list"],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert [vip["vip"] for vip in json.loads(listed.stdout)] == [VIPS["ipv4"], VIPS["ipv6"]]
        done = subprocess.run([*command, "down", "--tag", tag], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert tag not in running_testbeds()
        assert not set(namespaces) & set(leftover_namespaces())
    finally:
        if tag in running_testbeds():
            Testbed.load(tag).down()


def test_a_zombie_that_is_not_ours_is_not_alive() -> None:
    """`testbed down` after `testbed up` has exited: the servers are init's children, and a
    zombie init has not reaped yet has stopped all the same (issue 15, item 9)."""
    parent = subprocess.Popen(
        ["sh", "-c", "sleep 0 & echo $!; exec sleep 30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        zombie = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while "Z" not in Path(f"/proc/{zombie}/stat").read_text().rsplit(")", 1)[1][:3]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not alive(zombie)
        assert alive(parent.pid)
    finally:
        parent.kill()
        parent.wait()
