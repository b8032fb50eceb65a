"""Per-VIP new flows and drops by reason, and session affinity, through real daemons on real
loaded balancers: packets run through the program (BPF_PROG_TEST_RUN), then the API, /metrics
and `ctl list` say what the maps counted; a VIP given a freed index starts from 0; every mode
sends a flow to the same backend on two balancers whose indices and slots differ (ECMP), and
the lookup explains the choice the program made.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any

import pytest
from rich.console import Console

from rusty_rail.cli.ctl_render import vip_table
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import Verdict
from rusty_rail.wire.build import ethernet, gre, ipv4
from rusty_rail.wire.constants import ETH_P_IPV4, PROTO_GRE, PROTO_TCP
from rusty_rail.wire.frames import inner_ipv4
from tests.support.control_bed import Bed, Node, base_config, control_bed

pytestmark = pytest.mark.bpf

WEB = "198.18.100.7:80/tcp"
WEB_PATH = "/v1/vips/198.18.100.7:80%2Ftcp"
BACKENDS = [f"198.18.64.{n}" for n in range(11, 19)]
MODES = ("5-tuple", "source-ip", "source-ip+proto", "no-source-port")


@pytest.fixture(scope="module")
def bed(require_root: None) -> Iterator[Bed]:
    with control_bed(devices=2) as control:
        control.start("eth0", base_config("eth0", "198.18.0.2"))
        control.start("eth1", base_config("eth1", "198.18.10.2"))
        yield control


@pytest.fixture
def node(bed: Bed) -> Iterator[Node]:
    node = bed.nodes["eth0"]
    node.reset()
    node.maps.clear_conntrack()
    yield node
    node.call("DELETE", WEB_PATH)


def put_web(node: Node, affinity: str | None = None, path: str = WEB_PATH) -> None:
    body: dict[str, Any] = {"backends": BACKENDS}
    if affinity is not None:
        body["affinity"] = affinity
    answer = node.call("PUT", path, body)
    assert answer.status in (200, 201), answer.body


def send(node: Node, flow: Flow) -> tuple[Verdict, str | None]:
    """One GRE packet of ``flow`` to the node through its program: the verdict and the backend
    it was sent to (the rewritten outer destination), if forwarded."""
    packet = ipv4("198.18.0.1", node.lb_address, PROTO_GRE, gre(ETH_P_IPV4, inner_ipv4(flow)))
    frame = ethernet("02:00:00:00:00:02", "02:00:00:00:00:01", ETH_P_IPV4, packet)
    assert node.daemon.balancer is not None
    run = node.daemon.balancer.program.test_run(frame)
    verdict = Verdict(run.retval)
    if verdict not in (Verdict.TX, Verdict.REDIRECT):
        return verdict, None
    return verdict, str(ip_address(run.data[30:34]))


def client_flows(count: int, client: str = "198.18.5.5", proto: int = PROTO_TCP) -> list[Flow]:
    return [Flow.of(client, "198.18.100.7", proto, 30000 + i, 80) for i in range(count)]


def web_view(node: Node) -> dict[str, Any]:
    answer = node.call("GET", WEB_PATH)
    assert answer.status == 200, answer.body
    assert isinstance(answer.body, dict)
    return answer.body


def test_new_flows_and_drops_are_counted_per_vip_and_shown_everywhere(node: Node) -> None:
    put_web(node)
    flows = client_flows(5)
    for flow in flows * 3:  # each flow new once, then tracked
        assert send(node, flow)[1] in BACKENDS
    view = web_view(node)
    assert view["new_flows"]["packets"] == 5
    assert view["stats"]["packets"] == 15
    assert view["drops"]["no_backend"] == {"packets": 0, "bytes": 0}
    # Every backend down: a new flow's slot has no backend, dropped and counted for the VIP.
    for address in BACKENDS:
        node.call("PATCH", f"{WEB_PATH}/backends/{address}", {"state": "down"})
    assert send(node, Flow.of("198.18.5.6", "198.18.100.7", PROTO_TCP, 999, 80)) == (
        Verdict.DROP,
        None,
    )
    view = web_view(node)
    assert view["drops"]["no_backend"]["packets"] == 1
    assert view["new_flows"]["packets"] == 5
    other = node.call("GET", "/v1/vips/198.18.100.2").body
    assert other["new_flows"]["packets"] == 0 and other["drops"]["no_backend"]["packets"] == 0
    text = node.call("GET", "/metrics").body
    assert isinstance(text, str)
    assert f'rusty_rail_vip_new_flows_total{{vip="{WEB}"}} 5.0' in text
    assert f'rusty_rail_vip_drops_total{{reason="no_backend",vip="{WEB}"}} 1.0' in text
    assert f'rusty_rail_vip_drops_total{{reason="no_nexthop",vip="{WEB}"}} 0.0' in text
    assert f'rusty_rail_vip_drops_total{{reason="too_big_limited",vip="{WEB}"}} 0.0' in text
    rows = render(node)
    assert any(WEB in row and " 5 " in f" {row} " and "1 (no_backend 1)" in row for row in rows)


def render(node: Node) -> list[str]:
    """`ctl list`'s table of the node's VIPs, as text."""
    console = Console(width=250, record=True)
    console.print(vip_table(node.call("GET", "/v1/vips").body["vips"]))
    return console.export_text().splitlines()


def test_a_vip_given_a_freed_index_starts_from_zero(node: Node) -> None:
    put_web(node)
    for flow in client_flows(4):
        send(node, flow)
    plan = node.daemon.plan
    assert plan is not None
    index = plan.allocation.vip_index[WEB]
    assert web_view(node)["new_flows"]["packets"] == 4
    assert node.call("DELETE", WEB_PATH).status == 200
    other_path = "/v1/vips/198.18.100.9:80%2Ftcp"
    put_web(node, path=other_path)
    plan = node.daemon.plan
    assert plan is not None
    assert plan.allocation.vip_index["198.18.100.9:80/tcp"] == index  # the same index
    view = node.call("GET", other_path).body
    assert view["new_flows"] == {"packets": 0, "bytes": 0}
    assert view["stats"] == {"packets": 0, "bytes": 0}
    node.call("DELETE", other_path)
    put_web(node)  # the first VIP back: from 0 too
    assert web_view(node)["new_flows"]["packets"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_chooses_the_same_backend_on_two_balancers(bed: Bed, mode: str) -> None:
    """ECMP: the routers may send a flow's packets to either balancer. The second one has its
    VIP at another index and its backends in other slots; the choice depends only on the packet
    and the table built from the shared configuration."""
    first, second = bed.nodes["eth0"], bed.nodes["eth1"]
    first.reset()
    second.reset()
    second.call("PUT", "/v1/vips/198.18.100.8", {"backends": ["198.18.64.30", "198.18.64.31"]})
    try:
        for node in (first, second):
            node.maps.clear_conntrack()
            put_web(node, mode)
        plans = [node.daemon.plan for node in (first, second)]
        assert plans[0] is not None and plans[1] is not None
        assert plans[0].allocation.vip_index[WEB] != plans[1].allocation.vip_index[WEB]
        flows = [Flow.of(f"198.18.5.{n % 7}", "198.18.100.7", PROTO_TCP, 20000 + n, 80)
                 for n in range(60)]  # fmt: skip
        chosen = [send(first, flow)[1] for flow in flows]
        assert None not in chosen
        assert chosen == [send(second, flow)[1] for flow in flows]
    finally:
        second.call("DELETE", "/v1/vips/198.18.100.8")
        for node in (first, second):
            node.call("DELETE", WEB_PATH)


def test_source_ip_affinity_sends_a_clients_connections_to_one_backend(node: Node) -> None:
    flows = client_flows(24)
    put_web(node)  # the 5-tuple spreads them: the test can tell
    assert len({send(node, flow)[1] for flow in flows}) > 1
    node.maps.clear_conntrack()
    put_web(node, "source-ip")
    assert web_view(node)["affinity"] == "source-ip"
    backends = {send(node, flow)[1] for flow in flows}
    assert len(backends) == 1
    # Another client may land elsewhere, but also on one backend for all of its connections.
    assert len({send(node, flow)[1] for flow in client_flows(24, "198.18.5.77")}) == 1
    # The lookup explains the same choice, by the same mode.
    node.maps.clear_conntrack()
    text = "198.18.5.5:31000->198.18.100.7:80/tcp"
    answer = node.call("GET", f"/v1/lookup?flow={text}").body
    assert answer["affinity"] == "source-ip"
    assert answer["backend"] == backends.pop()
    assert answer["table_slot"] == answer["table_hash"] % answer["table_size"]
    assert "affinity source-ip" in answer["explanation"]


def test_a_mode_change_keeps_tracked_flows_and_moves_new_ones(node: Node) -> None:
    put_web(node)
    flows = client_flows(24)
    before = {flow: send(node, flow)[1] for flow in flows}
    put_web(node, "source-ip")
    assert {flow: send(node, flow)[1] for flow in flows} == before  # tracked: kept
    fresh = [Flow.of("198.18.5.5", "198.18.100.7", PROTO_TCP, 40000 + i, 80) for i in range(12)]
    assert len({send(node, flow)[1] for flow in fresh}) == 1


def test_an_unknown_affinity_is_refused_naming_the_field(node: Node) -> None:
    answer = node.call("PUT", WEB_PATH, {"backends": BACKENDS, "affinity": "sticky"})
    assert answer.status == 422
    problems = answer.body["problems"]
    assert [problem["path"] for problem in problems] == ["affinity"]
    assert "sticky" in str(problems) and "source-ip" in str(problems)
    assert node.call("GET", WEB_PATH).status == 404
