"""`rusty-rail testbed up --cluster` end to end (issue 13, item 4), with real TCP: a real etcd
holds the balancers' one desired state, BIRD 2 on the router learns the VIPs from each
balancer daemon's own BGP speaker (its [bgp] section) and installs ECMP routes, and the
router's balancer set is those routes: GRE ingress through the XDP router's FIB lookups,
routed ingress through the kernel.

Per ingress method one bed of three balancers (a module-scoped fixture with parameters): the
store and the sessions are real, both VIPs' connections spread over every balancer, a drained
balancer's withdrawal moves the router away and a session gone silent (the balancer's daemon
and speaker frozen) is dropped at the hold time, each with every established connection kept
(the other balancers' Maglev tables and connection state agree on the backend). Tests that
change the bed put it back. And the command itself: what `testbed up --cluster` starts
outlives it, and `down --tag` stops it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from rusty_rail.api.client import ApiClient, backend_path
from rusty_rail.api.credentials import local_token
from rusty_rail.control.store import EtcdClient, parse_store
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.testbed import bgp, cluster
from rusty_rail.testbed.demo import FORWARD_STATS
from rusty_rail.testbed.lb_segment import lb_address6
from rusty_rail.testbed.processes import alive
from rusty_rail.testbed.topology import (
    ECHO_PORT,
    HTTP_PORT,
    VIP,
    VIP6,
    VIPS,
    Testbed,
    TestbedSpec,
    lb_address,
    running_testbeds,
)
from rusty_rail.testbed.traffic import LongLived, http_requests

pytestmark = pytest.mark.e2e

LBS = 3


@pytest.fixture(scope="module", params=["gre", "routed"])
def bed(request: pytest.FixtureRequest, require_root: None) -> Iterator[Testbed]:
    testbed = Testbed.up(TestbedSpec(clients=2, lbs=LBS, servers=3, ingress=request.param,
                                     cluster=True))  # fmt: skip
    try:
        yield testbed
    finally:
        assert testbed.down() == []


@pytest.fixture(params=sorted(VIPS))
def vip(request: pytest.FixtureRequest) -> str:
    return VIPS[request.param]


def addresses_of(vip: str) -> list[str]:
    """The balancers' addresses of the VIP's family: its BGP next hops."""
    family = lb_address6 if ":" in vip else lb_address
    return [family(i) for i in range(LBS)]


def test_the_store_and_the_bgp_sessions_are_real(bed: Testbed) -> None:
    """One desired state in etcd, every balancer registered under its node name; the
    router's route to each VIP has a next hop per balancer, learnt by BGP (proto bird)."""
    address = parse_store(cluster.store_url())
    with in_netns(bed.lbs[0].name):
        client = EtcdClient(address)
        config = client.get(address.config_key)
        nodes = client.get_prefix(address.nodes_prefix)
    assert config.data is not None and VIP in config.data.decode()
    assert sorted(json.loads(value)["name"] for value in nodes.values()) == ["lb1", "lb2", "lb3"]
    router = bed.ns("rt")
    for vip in (VIP, VIP6):
        assert bgp.fib_next_hops(router, vip) == set(addresses_of(vip))
        family = "-6" if ":" in vip else "-4"
        (route,) = json.loads(router.ip(family, "-j", "route", "show", "exact", vip))
        assert route["protocol"] == "bird"


def _store_revisions(bed: Testbed) -> list[int]:
    revisions = []
    for lb in bed.lbs:
        with in_netns(lb.name):
            revisions.append(int(ApiClient().get("/healthz")["store"]["revision"]))
    return revisions


def _wait_store_revision(bed: Testbed, revision: int) -> None:
    deadline = time.monotonic() + 15
    while _store_revisions(bed) != [revision] * LBS:
        assert time.monotonic() < deadline, _store_revisions(bed)
        time.sleep(0.05)


def test_a_change_through_one_balancer_reaches_every_balancer(bed: Testbed) -> None:
    """A write to lb2's API goes through the bed's etcd to lb1 and lb3 (and back)."""
    (before,) = set(_store_revisions(bed))
    path = backend_path(VIP, bed.spec.backend_address(2))
    for weight in (2, 1):
        with in_netns(bed.lbs[1].name):
            ApiClient(token=local_token()).patch(path, {"weight": weight})
        # lb2 answered once it had applied its write: its revision is the new one.
        written = _store_revisions(bed)[1]
        assert written > before
        _wait_store_revision(bed, written)
        before = written
        for lb in bed.lbs:
            with in_netns(lb.name):
                assert ApiClient().get(path)["weight"] == weight


def test_connections_spread_over_every_balancer(bed: Testbed, vip: str) -> None:
    forwarded_before = bed.lb_packets(FORWARD_STATS)
    router_before = bed.router_lb_counters()
    result = http_requests(bed.clients, vip, HTTP_PORT, 300)
    assert result.errors == [] and result.ok == 300
    assert set(result.per_backend) == {"s1", "s2", "s3"}
    router_after = bed.router_lb_counters()
    sent = [
        router_after[a]["packets"] - router_before.get(a, {"packets": 0})["packets"]
        for a in addresses_of(vip)
    ]
    forwarded = [
        a - b for a, b in zip(bed.lb_packets(FORWARD_STATS), forwarded_before, strict=True)
    ]
    # The router's ECMP (the kernel's multipath hash) used every balancer, and each balancer
    # forwarded exactly what the router sent it.
    assert sent == forwarded
    assert all(count > 0 for count in forwarded), forwarded


def _holders(bed: Testbed, echo: LongLived) -> list[list[int]]:
    return [bed.lbs_holding(connection.flow) for connection in echo.connections]


def test_a_withdrawn_announcement_moves_the_router_away_and_keeps_every_connection(
    bed: Testbed, vip: str
) -> None:
    echo = LongLived(bed.clients, vip, ECHO_PORT, 24)
    try:
        before = _holders(bed, echo)
        on_lb1 = [i for i, holders in enumerate(before) if holders == [0]]
        assert on_lb1, f"no connection runs through lb1 ({before}): the withdrawal tests nothing"
        bed.set_lbs([1, 2])  # lb1 drained; waits for the router's FIB to follow
        with in_netns(bed.lbs[0].name):
            health = ApiClient().get("/healthz")
        assert health["drained"] is True and health["bgp"]["announced"] == []
        assert bgp.fib_next_hops(bed.ns("rt"), vip) == set(addresses_of(vip)[1:])
        assert echo.check() == []
        # lb1's connections went on through the others, which found their backend by Maglev.
        after = _holders(bed, echo)
        assert all(set(after[i]) - {0} for i in on_lb1), after
        lb1_before = bed.lb_packets(FORWARD_STATS)[0]
        fresh = http_requests(bed.clients, vip, HTTP_PORT, 60)
        assert fresh.errors == []
        assert bed.lb_packets(FORWARD_STATS)[0] == lb1_before
        bed.set_lbs([0, 1, 2])
        assert echo.check() == []
    finally:
        bed.set_lbs([0, 1, 2])
        echo.close()


def test_a_silent_session_is_dropped_at_the_hold_time(bed: Testbed) -> None:
    """lb2's daemon and its BGP speaker frozen (SIGSTOP), as when the host hangs: the session
    stays open but says nothing; the router's hold timer drops lb2's next hops, and every
    established connection keeps working (the data plane runs on in the kernel)."""
    echo = LongLived(bed.clients, VIP, ECHO_PORT, 16)
    frozen = [bed.pids["lb2"], cluster.speaker_pid(bed, 1)]
    router_log = bed.log("bird-rt")
    expired_before = router_log.read_text().count("Hold timer expired")
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        router = bed.ns("rt")
        bgp.wait_next_hops(router, VIP, {lb_address(0), lb_address(2)})
        bgp.wait_next_hops(router, VIP6, {lb_address6(0), lb_address6(2)})
        # lb2's one session (both families) ended by the hold timer, not by a close.
        assert router_log.read_text().count("Hold timer expired") - expired_before == 1
        assert echo.check() == []
        assert Counter(len(holders) > 0 for holders in _holders(bed, echo))[True] == 16
    finally:
        for pid in reversed(frozen):
            os.kill(pid, signal.SIGCONT)
        # Thawed, it finds its sessions gone and opens them again.
        bgp.wait_next_hops(bed.ns("rt"), VIP, set(addresses_of(VIP)))
        bgp.wait_next_hops(bed.ns("rt"), VIP6, set(addresses_of(VIP6)))
        assert echo.check() == []
        echo.close()


def test_testbed_up_cluster_outlives_its_command_and_down_stops_etcd_and_bird(
    require_root: None,
) -> None:
    """`rusty-rail testbed up --cluster` leaves etcd, the router's BIRD and the balancer (with
    its own BIRD) running after it exits, the route learnt by BGP; `testbed down --tag` stops
    them (the balancer's BIRD with it) and removes etcd's data."""
    command = [sys.executable, "-m", "rusty_rail", "testbed"]
    small = ["--clients", "1", "--lbs", "1", "--servers", "1"]
    up = subprocess.run(
        [*command, "up", "--cluster", *small], capture_output=True, text=True, timeout=120
    )
    assert up.returncode == 0, up.stderr
    status = json.loads(up.stdout)
    tag = status["tag"]
    try:
        assert status["spec"]["cluster"] is True
        processes = status["processes"]
        assert {"etcd", "bird-rt", "lb1"} <= set(processes)
        assert all(process["alive"] for process in processes.values())
        bed = Testbed.load(tag)
        assert bgp.fib_next_hops(bed.ns("rt"), VIP) == {lb_address(0)}
        speaker = cluster.speaker_pid(bed, 0)
        workdir = bed.workdir
        assert (workdir / "etcd").is_dir()
        done = subprocess.run([*command, "down", "--tag", tag], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert not any(alive(process["pid"]) for process in processes.values())
        assert not alive(speaker)
        assert not workdir.exists()
    finally:
        if tag in running_testbeds():
            Testbed.load(tag).down()
