"""The test bed with an IPv6 underlay and mixed-family backends, real TCP end to end: the
router wraps the IPv4 VIP's and the IPv6 VIP's traffic in outer IPv6 GRE to the balancers'
lb_address_ipv6; behind both VIPs s1 and s3 are IPv4 backends and s2 an IPv6 one, so the
balancers send outer IPv4 to some and outer IPv6 to the other. Connections survive a
balancer failure and a backend removal, all of them; the balancers still see nothing but GRE.
Then mixed backends over the IPv4 underlay (outer IPv4 in, outer IPv6 out to s2).

One test bed serves each underlay; tests that change it (an LB out, a backend out) put it back.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from ipaddress import IPv6Address, ip_address

import pytest

from rusty_rail.testbed.demo import FORWARD_STATS
from rusty_rail.testbed.lb_segment import lb_address6, server_address6
from rusty_rail.testbed.router import choose_lb
from rusty_rail.testbed.topology import (
    ECHO_PORT,
    HTTP_PORT,
    VIPS,
    Testbed,
    TestbedSpec,
    balancer_config,
    lb_address,
    server_address,
)
from rusty_rail.testbed.traffic import LongLived, http_requests

pytestmark = pytest.mark.e2e

#: The servers of each family behind both VIPs with mixed backends (3 servers).
IPV4_BACKENDS = {"s1", "s3"}
IPV6_BACKENDS = {"s2"}
ALL = IPV4_BACKENDS | IPV6_BACKENDS


@pytest.fixture(scope="module")
def bed(require_root: None) -> Iterator[Testbed]:
    testbed = Testbed.up(
        TestbedSpec(clients=2, lbs=2, servers=3, underlay="ipv6", backends="mixed")
    )
    try:
        yield testbed
    finally:
        assert testbed.down() == []


@pytest.fixture(params=sorted(VIPS))
def vip(request: pytest.FixtureRequest) -> str:
    """The VIP of each address family in turn."""
    return VIPS[request.param]


def lbs_of(bed: Testbed) -> list[str]:
    return [bed.spec.lb_outer_address(i) for i in range(bed.spec.lbs)]


def test_the_spec_names_each_family_and_refuses_others() -> None:
    spec = TestbedSpec(underlay="ipv6", backends="mixed")
    assert [spec.backend_address(i) for i in range(3)] == [
        server_address(0),
        server_address6(1),
        server_address(2),
    ]
    assert spec.lb_outer_address(1) == lb_address6(1)
    assert TestbedSpec().lb_outer_address(1) == lb_address(1)
    assert not TestbedSpec().lb_segment_ipv6
    assert TestbedSpec(backends="mixed").lb_segment_ipv6
    config = balancer_config(spec)
    assert f'"{server_address6(1)}"' in config and f'"{server_address(2)}"' in config
    with pytest.raises(ValueError, match="underlay must be ipv4 or ipv6, got 'ipv5'"):
        TestbedSpec(underlay="ipv5")
    with pytest.raises(ValueError, match="backends must be ipv4 or mixed, got 'ipv6'"):
        TestbedSpec(backends="ipv6")


def test_the_router_sends_ipv6_gre_and_the_balancers_see_only_gre(bed: Testbed, vip: str) -> None:
    assert bed.router is not None
    before_fwd = bed.lb_packets(FORWARD_STATS)
    before_not_gre = sum(bed.lb_packets(["PASS_NOT_GRE"]))
    before_router = bed.router.lb_counters()
    result = http_requests(bed.clients, vip, HTTP_PORT, 600)
    assert result.errors == [] and result.ok == 600
    # Every backend of both families answered, evenly (200 each expected).
    assert set(result.per_backend) == ALL
    for name, count in result.per_backend.items():
        assert abs(count - 200) <= 60, (name, result.per_backend)
    after_router = bed.router.lb_counters()
    assert {IPv6Address(a) for a in after_router} == {IPv6Address(a) for a in lbs_of(bed)}
    sent = sum(
        after_router[a]["packets"] - before_router.get(a, {"packets": 0})["packets"]
        for a in after_router
    )
    assert sent >= 600 * 3
    assert sum(bed.lb_packets(FORWARD_STATS)) - sum(before_fwd) == sent
    # Direct server return, and br2's IPv6 never talks to a balancer: not one non-GRE packet.
    assert sum(bed.lb_packets(["PASS_NOT_GRE"])) - before_not_gre == 0


def test_the_segment_is_quiet_by_construction(bed: Testbed) -> None:
    """What keeps the balancers' counters clean is there: permanent neighbours, no link-local
    address, no multicast flooded to the balancers' ports; the decap takes the IPv6 prefix."""
    router_neighbours = json.loads(bed.ns("rt").ip("-6", "-j", "neigh", "show", "dev", "eth0"))
    assert {n["dst"]: n["state"] for n in router_neighbours} == {
        lb_address6(i): ["PERMANENT"] for i in range(bed.spec.lbs)
    }
    for lb in bed.lbs:
        addresses = json.loads(lb.ip("-6", "-j", "addr", "show", "dev", "eth0"))[0]["addr_info"]
        assert [a["scope"] for a in addresses] == ["global"]
    switch = bed.ns("sw")
    ports = json.loads(switch.exec("bridge", "-j", "-d", "link", "show"))
    flood = {p["ifname"]: p.get("mcast_flood") for p in ports}
    assert all(flood[f"p-lb{i + 1}"] is False for i in range(bed.spec.lbs)), flood
    assert flood["p-s1"] is True
    # s2, the IPv6 backend, holds its address on br2 without a link-local one.
    (s2,) = json.loads(bed.ns("s2").ip("-6", "-j", "addr", "show", "dev", "eth0"))
    assert [a["local"] for a in s2["addr_info"]] == [server_address6(1)]


def test_balancer_failure_keeps_every_connection_to_both_backend_families(
    bed: Testbed, vip: str
) -> None:
    echo = LongLived(bed.clients, vip, ECHO_PORT, 30)
    try:
        assert set(echo.per_backend()) == ALL
        lbs = lbs_of(bed)
        assert {str(choose_lb(c.flow, lbs)) for c in echo.connections} == set(lbs)
        assert echo.check() == []
        bed.set_lbs([1])  # lb1 dies: the router moves its flows to lb2
        assert echo.check() == []
        after = http_requests(bed.clients, vip, HTTP_PORT, 150)
        assert after.errors == [] and set(after.per_backend) == ALL
        bed.set_lbs([0, 1])  # and comes back
        assert echo.check() == []
    finally:
        bed.set_lbs(list(range(bed.spec.lbs)))
        echo.close()


@pytest.mark.parametrize("removed", [1, 2], ids=["ipv6-backend-s2", "ipv4-backend-s3"])
def test_backend_removal_keeps_connections_to_the_survivors_of_both_vips(
    bed: Testbed, removed: int
) -> None:
    """A backend of either family leaves both VIPs while IPv4 and IPv6 connections are open;
    every connection to a survivor lives on, new ones reach the survivors only."""
    name = f"s{removed + 1}"
    families = {family: LongLived(bed.clients, vip, ECHO_PORT, 24) for family, vip in VIPS.items()}
    kept = [i for i in range(bed.spec.servers) if i != removed]
    try:
        for echo in families.values():
            assert set(echo.per_backend()) == ALL
        bed.set_backends(kept)
        for family, echo in families.items():
            echo.check()
            survivors = [c for c in echo.connections if c.backend != name]
            assert survivors and all(c.alive for c in survivors), family
            after = http_requests(bed.clients, VIPS[family], HTTP_PORT, 120)
            assert after.errors == [], family
            assert set(after.per_backend) == ALL - {name}, family
    finally:
        bed.set_backends(list(range(bed.spec.servers)))
        for echo in families.values():
            echo.close()


def test_mixed_backends_over_the_ipv4_underlay_survive_a_balancer_failure(
    require_root: None,
) -> None:
    """Outer IPv4 from the router, outer IPv6 from the balancers to s2: long-lived connections
    of both VIPs on backends of both families survive lb1's failure; new ones reach both."""
    spec = TestbedSpec(clients=2, lbs=2, servers=3, underlay="ipv4", backends="mixed")
    with Testbed.up(spec) as small:
        assert small.router is not None
        families = {
            family: LongLived(small.clients, vip, ECHO_PORT, 24) for family, vip in VIPS.items()
        }
        try:
            lbs = lbs_of(small)
            for family, echo in families.items():
                assert set(echo.per_backend()) == ALL, family
                assert {str(choose_lb(c.flow, lbs)) for c in echo.connections} == set(lbs)
            assert all(ip_address(a).version == 4 for a in small.router.lb_counters())
            not_gre = sum(small.lb_packets(["PASS_NOT_GRE"]))
            small.set_lbs([1])
            for family, echo in families.items():
                assert echo.check() == [], family
                after = http_requests(small.clients, VIPS[family], HTTP_PORT, 150)
                assert after.errors == [] and set(after.per_backend) == ALL, family
                sockets = {c.sock.family for c in echo.connections}
                assert sockets == {socket.AF_INET if family == "ipv4" else socket.AF_INET6}
            assert sum(small.lb_packets(["PASS_NOT_GRE"])) == not_gre
        finally:
            for echo in families.values():
                echo.close()
