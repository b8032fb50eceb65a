"""IPv6 through the REST API and `ctl`, against a real daemon on a real loaded balancer: VIP keys
in paths in every spelling, answered by their canonical text; IPv6 configuration mistakes
refused naming the field; IPv6 flows looked up and listed. The data plane balances IPv6 VIPs
and IPv4 or IPv6 backends; a write with an IPv6 backend on a node without an IPv6 address is
refused by the plan (422) and changes nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import urllib.parse
from ipaddress import IPv6Address
from typing import Any

import pytest

from rusty_rail.cli.ctl import EXIT_OK, EXIT_REFUSED, add_arguments
from rusty_rail.cli.ctl import run as run_ctl
from rusty_rail.wire.fields import mac
from tests.support.control_bed import VIP_PATH, Bed, Node

pytestmark = pytest.mark.bpf

VIP6 = "[2001:2::10]:80/tcp"
FLOW6 = "[2001:2::1]:40000->[2001:2::10]:80/tcp"


#: What a 404 for a VIP adds: the VIPs there are (the base configuration's).
KNOWN = "the VIPs are: 198.18.100.1:80/tcp, 198.18.100.2"


def refused(node: Node, method: str, path: str, body: object = None) -> tuple[int, list[Any]]:
    answer = node.call(method, path, body)
    problems = answer.body.get("problems", []) if isinstance(answer.body, dict) else []
    return answer.status, [(p["path"], p["reason"]) for p in problems] or [answer.body["message"]]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/vips/[2001:2::10]:80%2Ftcp", VIP6),
        ("/v1/vips/[2001:2::10]:80/tcp", VIP6),
        ("/v1/vips/%5B2001:2::10%5D:80%2Ftcp", VIP6),
        ("/v1/vips/[2001:0002:0::0010]:80/tcp", VIP6),
        ("/v1/vips/2001:2::10", "2001:2::10"),
        ("/v1/vips/[2001:2::10]", "2001:2::10"),
        ("/v1/vips/2001:2:0:0::10", "2001:2::10"),
    ],
)
def test_an_ipv6_vip_key_is_read_in_every_path_spelling_and_named_canonically(
    node: Node, path: str, name: str
) -> None:
    for method in ("GET", "DELETE"):
        assert refused(node, method, path) == (404, [f"no VIP {name}; {KNOWN}"]), method
    backend = f"{path}/backends/2001:2::21"
    assert refused(node, "GET", backend) == (404, [f"no VIP {name}; {KNOWN}"])


@pytest.mark.parametrize(
    ("path", "where", "reason"),
    [
        ("/v1/vips/2001:2::10:80/tcp", "vip", "written in brackets: [address]:port/tcp"),
        ("/v1/vips/2001:2::10:80%2Ftcp", "vip", "written in brackets"),
        ("/v1/vips/[fe80::10]:80/tcp", "vip", "link-local"),
        ("/v1/vips/[2001:2::10%25eth0]:80/tcp", "vip", "zone index"),
        ("/v1/vips/2001:2::10%253", "vip", "zone index"),
        ("/v1/vips/[::ffff:198.18.100.1]:80/tcp", "vip", 'write "198.18.100.1"'),
        ("/v1/vips/[2001:2::10]:80/sctp", "vip", "must be one of: tcp, udp"),
        (f"{VIP_PATH}/backends/fe80::21", "address", "link-local"),
        (f"{VIP_PATH}/backends/fe80::21%25eth0", "address", "zone index"),
        (f"{VIP_PATH}/backends/::ffff:198.18.64.9", "address", 'write "198.18.64.9"'),
        (f"{VIP_PATH}/backends/[2001:2::21]", "address", 'write "2001:2::21"'),
        ("/v1/vips/[2001:2::10]:80/tcp/backends/ff02::1", "address", "multicast"),
    ],
)
def test_a_bad_ipv6_key_or_address_in_a_path_is_400_naming_it(
    node: Node, path: str, where: str, reason: str
) -> None:
    for method, body in (("GET", None), ("PUT", {})):
        status, problems = refused(node, method, path, body)
        assert status == 400, (method, problems)
        [(name, text)] = problems
        assert name == where and reason in text, (method, problems)


def test_ipv6_mistakes_in_bodies_are_422_naming_the_field_and_change_nothing(node: Node) -> None:
    before = node.call("GET", "/v1/config").body
    whole = dict(before)
    link_local = "is an IPv6 link-local address (fe80::/10)"
    cases: list[tuple[str, str, object, str, str]] = [
        ("PUT", "/v1/config", dict(whole, lb_address="fe80::2"), "lb_address", link_local),
        ("PUT", "/v1/config", dict(whole, lb_address="::ffff:198.18.0.2"), "lb_address",
         'write "198.18.0.2"'),
        ("PUT", VIP_PATH, {"backends": ["198.18.64.1", "fe80::1%eth0"]},
         "backends[1].address", "zone index"),
        ("PUT", VIP_PATH, {"backends": [{"address": "2001:2::1%3"}]}, "backends[0].address",
         "zone index"),
        ("PUT", VIP_PATH, {"backends": ["fe80::1"]}, "backends[0].address", link_local),
        ("PUT", "/v1/vips/198.18.0.2:80%2Ftcp", {"backends": ["198.18.64.1"]}, "address",
         "is the balancer's own address (lb_address)"),
        ("PUT", "/v1/vips/198.18.0.2", {}, "address", "is the balancer's own address"),
        ("PUT", f"{VIP_PATH}/backends/198.18.0.2", {}, "address",
         "is the balancer's own address"),
    ]  # fmt: skip
    for method, path, body, where, reason in cases:
        status, problems = refused(node, method, path, body)
        assert status == 422, (path, body, problems)
        assert [name for name, _ in problems] == [where], (path, body, problems)
        assert reason in problems[0][1], (path, body, problems)
    assert node.call("GET", "/v1/config").body == before


def test_an_ipv6_vip_of_ipv4_backends_is_written_and_ipv6_backends_are_refused(
    node: Node,
) -> None:
    before = node.call("GET", "/v1/config").body
    for method, path, body in (
        ("PUT", "/v1/vips/[2001:2::10]:80/tcp", {"backends": ["2001:2::21"]}),
        ("PUT", f"{VIP_PATH}/backends/2001:2::21", {}),
    ):
        assert node.call(method, path, body).status == 422, path
    assert node.call("GET", "/v1/config").body == before
    created = node.call("PUT", "/v1/vips/2001:0002::10", {"backends": ["198.18.64.1"]})
    assert created.status == 201, created.body
    view = node.call("GET", "/v1/vips/2001:2::10")
    assert view.status == 200 and view.body["vip"] == "2001:2::10", view.body
    assert [b["address"] for b in view.body["backends"]] == ["198.18.64.1"]


def lookup(node: Node, flow: str) -> Any:
    return node.call("GET", "/v1/lookup?" + urllib.parse.urlencode({"flow": flow}))


@pytest.mark.parametrize(
    "spelling",
    [
        FLOW6,
        "[2001:2::1]:40000 -> [2001:2::10]:80/tcp",
        "[2001:0002::0001]:40000->[2001:2:0::10]:80 / TCP",
    ],
)
def test_an_ipv6_flow_is_looked_up_and_answered_in_its_canonical_text(
    node: Node, spelling: str
) -> None:
    answer = lookup(node, spelling)
    assert answer.status == 200, answer.body
    assert answer.body["flow"] == FLOW6
    assert (answer.body["vip"], answer.body["backend"]) == (None, None)


def test_an_ipv6_flow_without_ports_is_looked_up(node: Node) -> None:
    for spelling in ("2001:2::1->2001:2::10/icmpv6", "[2001:2::1]->[2001:2::10]/icmp"):
        answer = lookup(node, spelling)
        assert answer.status == 200, answer.body
        assert answer.body["flow"] == "[2001:2::1]->[2001:2::10]/icmpv6"


def test_a_bad_ipv6_flow_is_400_saying_how_to_write_it(node: Node) -> None:
    for flow, reason in (
        ("2001:2::1:40000->[2001:2::10]:80/tcp", "written in brackets: [2001:2::1]:40000"),
        ("[2001:2::1]:40000->198.18.100.1:80/tcp", "both be IPv4 or both IPv6"),
        ("[2001:2::1%eth0]:40000->[2001:2::10]:80/tcp", "zone index"),
    ):
        answer = lookup(node, flow)
        assert answer.status == 400, (flow, answer.body)
        [problem] = answer.body["problems"]
        assert problem["path"] == "flow" and reason in problem["reason"], flow


def test_flows_are_listed_for_an_ipv6_vip_key(node: Node) -> None:
    for vip in (VIP6, "[2001:0002::10]:80/tcp", "2001:2::10"):
        answer = node.call("GET", "/v1/flows?" + urllib.parse.urlencode({"vip": vip}))
        assert answer.status == 200 and answer.body["flows"] == [], (vip, answer.body)
    bad = node.call("GET", "/v1/flows?" + urllib.parse.urlencode({"vip": "2001:2::10:80/tcp"}))
    assert bad.status == 400 and bad.body["problems"][0]["path"] == "vip"


def ctl(node: Node, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    arguments = parser.parse_args(["--api", node.client.url, "--json", *argv])
    out, err = io.StringIO(), io.StringIO()
    status = run_ctl(arguments, out, err)
    return status, out.getvalue(), err.getvalue()


def test_ctl_sends_ipv6_vips_and_flows_the_daemon_reads(node: Node) -> None:
    status, out, _ = ctl(node, "flow", "lookup", FLOW6)
    assert status == EXIT_OK and json.loads(out)["flow"] == FLOW6
    status, out, _ = ctl(node, "flow", "list", "--vip", VIP6)
    assert status == EXIT_OK and json.loads(out)["flows"] == []
    for argv in (("vip", "list", VIP6), ("backend", "del", VIP6, "2001:2::21")):
        status, _, err = ctl(node, *argv)
        assert status == EXIT_REFUSED and f"no VIP {VIP6}" in err, argv
    status, _, err = ctl(node, "vip", "list", "2001:0002::10")
    assert status == EXIT_REFUSED and "no VIP 2001:2::10" in err
    status, _, err = ctl(node, "backend", "add", "198.18.100.1:80/tcp", "fe80::21")
    assert status == EXIT_REFUSED and "link-local" in err
    before = node.call("GET", "/v1/config").body
    status, _, err = ctl(node, "vip", "add", VIP6, "--backend", "2001:2::21")
    assert status == EXIT_REFUSED  # by the plan: the node has no IPv6 address to send from
    assert "an IPv6 backend needs the node's IPv6 address" in err
    assert node.call("GET", "/v1/config").body == before


def test_an_ipv6_backend_is_balanced_from_the_devices_or_the_configured_ipv6_address(
    bed: Bed, node: Node
) -> None:
    """Issue 10: the node's IPv6 address, discovered from the device (its one address of global
    scope) or configured (lb_address_ipv6), fills settings.lb_ipv6; the IPv6 backend's slot
    holds its 16 bytes and the next hop the kernel's neighbour table gives."""
    neighbour_mac = "02:00:00:00:ff:21"
    bed.namespace.ip("-6", "addr", "add", "2001:2:ff::2/64", "dev", "eth0", "nodad")
    bed.namespace.ip("-6", "neigh", "replace", "2001:2:ff::21", "lladdr", neighbour_mac,
                     "dev", "eth0", "nud", "permanent")  # fmt: skip
    try:
        status, _, err = ctl(node, "vip", "add", VIP6, "--backend", "2001:2:ff::21")
        assert status == EXIT_OK, err
        assert node.maps.read_settings().lb_ipv6 == IPv6Address("2001:2:ff::2").packed
        state = node.maps.read_state(conntrack=False)
        (entry,) = [b for b in state.backends.values() if len(b.addr) == 16]
        assert entry.addr == IPv6Address("2001:2:ff::21").packed
        assert entry.next_hop is not None and entry.next_hop.dst_mac == mac(neighbour_mac)

        body = node.call("GET", "/v1/config").body
        answer = node.call("PUT", "/v1/config", body | {"lb_address_ipv6": "2001:2:ff::3"})
        assert answer.status == 200, answer.body
        assert node.maps.read_settings().lb_ipv6 == IPv6Address("2001:2:ff::3").packed
        assert node.call("GET", "/v1/config").body["lb_address_ipv6"] == "2001:2:ff::3"
    finally:
        bed.namespace.ip("-6", "neigh", "del", "2001:2:ff::21", "dev", "eth0", check=False)
        bed.namespace.ip("-6", "addr", "del", "2001:2:ff::2/64", "dev", "eth0", check=False)
        node.reset()
    assert node.maps.read_settings().lb_ipv6 == bytes(16)
