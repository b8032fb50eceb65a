"""Issue 15, item 5: draining you can finish. Each backend's tracked flows (valid
connection-table entries naming it with its current generation) in the API's views, in
`ctl vip list` and in /metrics, counted at most every COUNT_INTERVAL; `ctl flow list` says
whether its sample is all of them. Against a real daemon on a real loaded balancer.
"""

from __future__ import annotations

import argparse
import io
import re
from collections import Counter
from ipaddress import ip_address

import pytest

from rusty_rail.api import flow_counts
from rusty_rail.cli.ctl import EXIT_OK, add_arguments
from rusty_rail.cli.ctl import run as run_ctl
from rusty_rail.model import pipeline
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import CtEntry
from rusty_rail.wire.constants import PROTO_TCP
from tests.support.control_bed import VIP, VIP_PATH, Bed, Node

pytestmark = pytest.mark.bpf

OTHER_VIP = "198.18.100.2"


@pytest.fixture
def node(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> Node:
    """The daemon at the base configuration, an empty connection table, counted at each read."""
    node = bed.nodes["eth0"]
    node.reset()
    node.maps.clear_conntrack()
    monkeypatch.setattr(flow_counts, "COUNT_INTERVAL", 0.0)
    return node


def track(node: Node, flows: list[Flow]) -> dict[Flow, str]:
    """Each flow recorded as the data plane records a miss; each flow's backend address."""
    plan = node.daemon.plan
    assert plan is not None
    chosen = {}
    for flow in flows:
        decision = pipeline.lookup(plan.state, flow)
        assert decision.backend_index is not None
        backend = plan.state.backends[decision.backend_index]
        node.maps.set_conntrack(flow, CtEntry(decision.backend_index, backend.generation))
        chosen[flow] = str(ip_address(backend.addr))
    return chosen


def flows_to(vip: str, port: int, count: int, first: int = 0) -> list[Flow]:
    return [Flow.of(f"198.18.5.{1 + i % 200}", vip, PROTO_TCP, 20000 + first + i, port)
            for i in range(count)]  # fmt: skip


def backend_flows(node: Node) -> dict[str, int]:
    view = node.call("GET", VIP_PATH).body
    return {backend["address"]: backend["flows_tracked"] for backend in view["backends"]}


def ctl(node: Node, *argv: str) -> str:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    status = run_ctl(parser.parse_args(["--api", node.client.url, *argv]), out, err)
    assert status == EXIT_OK, err.getvalue()
    return out.getvalue()


def scrape(node: Node) -> str:
    text = node.call("GET", "/metrics").body
    assert isinstance(text, str)
    return text


def test_each_backend_shows_its_tracked_flows_until_a_drained_one_is_empty(node: Node) -> None:
    chosen = track(node, flows_to("198.18.100.1", 80, 40))
    track(node, flows_to(OTHER_VIP, 443, 5))
    expected = Counter(chosen.values())
    assert len(expected) == 3  # every backend holds some
    assert backend_flows(node) == {
        address: expected[address] for address in ("198.18.64.1", "198.18.64.2", "198.18.64.3")
    }
    view = node.call("GET", VIP_PATH).body
    assert view["flows_tracked"] == 40
    vips = {vip["vip"]: vip for vip in node.call("GET", "/v1/vips").body["vips"]}
    assert vips[OTHER_VIP]["flows_tracked"] == 5
    single = node.call("GET", f"{VIP_PATH}/backends/198.18.64.2").body
    assert single["flows_tracked"] == expected["198.18.64.2"]

    # Draining keeps the backend's flows: it is not empty yet.
    assert node.call("PATCH", f"{VIP_PATH}/backends/198.18.64.2", {"state": "drain"}).status == 200
    assert backend_flows(node)["198.18.64.2"] == expected["198.18.64.2"]
    metric = f'rusty_rail_backend_flows_tracked{{backend="198.18.64.2",vip="{VIP}"}}'
    assert f"{metric} {float(expected['198.18.64.2'])}" in scrape(node)
    assert f'rusty_rail_vip_flows_tracked{{vip="{VIP}"}} 40.0' in scrape(node)
    # Its flows end (their entries are overwritten or forgotten): it shows empty.
    for flow, address in chosen.items():
        if address == "198.18.64.2":
            assert node.maps.delete_conntrack(flow)
    assert backend_flows(node)["198.18.64.2"] == 0
    assert f"{metric} 0.0" in scrape(node)
    table = ctl(node, "vip", "list", VIP)
    assert "flows" in table.splitlines()[0]
    drained = next(line for line in table.splitlines() if "198.18.64.2" in line)
    assert re.search(r"\bdrain\b.*\s0\s", drained), drained


def test_an_entry_of_a_previous_generation_is_not_counted(node: Node) -> None:
    """A slot reused by a new backend (or a backend removed and added again) gets a new
    generation: the old entries are stale, their flows re-decided, and not the backend's."""
    chosen = track(node, flows_to("198.18.100.1", 80, 12))
    plan = node.daemon.plan
    assert plan is not None
    slot = plan.allocation.slot_of(VIP, ip_address("198.18.64.1"))
    assert slot is not None
    generation = plan.state.backends[slot].generation
    stale = Flow.of("198.18.5.250", "198.18.100.1", PROTO_TCP, 39999, 80)
    node.maps.set_conntrack(stale, CtEntry(slot, generation + 1))
    assert backend_flows(node)["198.18.64.1"] == Counter(chosen.values())["198.18.64.1"]
    assert "rusty_rail_conntrack_entries 13.0" in scrape(node)  # every valid entry


def test_the_count_is_read_at_most_once_per_interval(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    track(node, flows_to("198.18.100.1", 80, 4))
    assert node.call("GET", VIP_PATH).body["flows_tracked"] == 4
    monkeypatch.setattr(flow_counts, "COUNT_INTERVAL", 3600.0)
    track(node, flows_to("198.18.100.1", 80, 6, first=100))
    # Counted less than an hour ago: the API and the metrics answer the same count.
    assert node.call("GET", VIP_PATH).body["flows_tracked"] == 4
    assert "rusty_rail_conntrack_entries 4.0" in scrape(node)
    monkeypatch.setattr(flow_counts, "COUNT_INTERVAL", 0.0)
    assert node.call("GET", VIP_PATH).body["flows_tracked"] == 10
    assert "rusty_rail_conntrack_entries 10.0" in scrape(node)


def test_the_flow_list_says_how_many_there_are_and_whether_all_are_shown(node: Node) -> None:
    track(node, flows_to("198.18.100.1", 80, 17))
    track(node, flows_to(OTHER_VIP, 443, 4))
    sample = node.call("GET", f"/v1/flows?vip={VIP}&limit=3").body
    assert (len(sample["flows"]), sample["total"], sample["complete"]) == (3, 17, False)
    every = node.call("GET", f"/v1/flows?vip={VIP}&limit=100").body
    assert (len(every["flows"]), every["total"], every["complete"]) == (17, 17, True)
    assert {flow["vip"] for flow in every["flows"]} == {VIP}
    everything = node.call("GET", "/v1/flows?limit=5").body
    assert (everything["total"], everything["complete"]) == (21, False)
    assert "3 of 17 flows shown" in ctl(node, "flow", "list", "--vip", VIP, "--limit", "3")
    listing = ctl(node, "flow", "list", "--vip", OTHER_VIP)
    assert "4 flows" in listing and "shown" not in listing
