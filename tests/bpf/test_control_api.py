"""The REST API against real daemons on real loaded balancers: every route, its errors, and
what reaches the maps; writes refused whole; dry runs that change nothing; two daemons that
agree whatever the order of their changes; the desired state across a restart.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import resource
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from http import HTTPStatus
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rusty_rail.api import flow_counts, readmodels
from rusty_rail.config import config_from_toml_text
from rusty_rail.control import state_file
from rusty_rail.control.apply import apply_operations
from rusty_rail.control.daemon import start_daemon
from rusty_rail.control.errors import StartupError
from rusty_rail.control.nexthops import NextHops
from rusty_rail.control.options import DaemonOptions
from rusty_rail.control.plan import MAX_BACKENDS, Allocation, compile_plan, slot_table
from rusty_rail.control.startup import startup_config
from rusty_rail.dataplane.structs import encode_vip_key
from rusty_rail.model import pipeline
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import BackendState, CtEntry, DataplaneState, NextHop
from rusty_rail.wire.constants import PROTO_TCP
from tests.support.control_bed import (
    BASE_TOML,
    VIP,
    VIP_PATH,
    Bed,
    Node,
    base_config,
    control_bed,
)

pytestmark = pytest.mark.bpf
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def bed(require_root: None) -> Iterator[Bed]:
    with control_bed(devices=3) as control:
        control.start("eth0", base_config("eth0", "198.18.0.2"))
        control.start("eth1", base_config("eth1", "198.18.10.2"), token=TOKEN)
        yield control


@pytest.fixture
def node(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> Node:
    """Daemon A, back at the base configuration with an empty connection table (counted at
    each read, not every few seconds)."""
    node = bed.nodes["eth0"]
    node.reset()
    node.maps.clear_conntrack()
    monkeypatch.setattr(flow_counts, "COUNT_INTERVAL", 0.0)
    return node


def error_paths(body: dict[str, Any]) -> list[str]:
    assert set(body) >= {"status", "error", "message", "problems"}, body
    return [problem["path"] for problem in body["problems"]]


def maps_state(node: Node) -> DataplaneState:
    """What the maps hold, without the connection table."""
    return replace(node.maps.read_state(), conntrack={})


def live_table_is_planned(node: Node, name: str) -> bool:
    plan = node.daemon.plan
    assert plan is not None
    live = node.maps.read_table(plan.allocation.vip_index[name])
    wanted = slot_table(plan.tables[name], name, plan.allocation)
    return live is not None and bool(np.array_equal(np.asarray(live, dtype=np.uint32), wanted))


def slot_of(node: Node, name: str, address: str) -> int:
    plan = node.daemon.plan
    assert plan is not None
    return plan.allocation.slot_of(name, ip_address(address))


def flows_to_vip(count: int) -> list[Flow]:
    return [Flow.of(f"198.18.5.{1 + i % 200}", "198.18.100.1", PROTO_TCP, 20000 + i, 80)
            for i in range(count)]  # fmt: skip


def track(node: Node, flows: list[Flow]) -> dict[Flow, str]:
    """Record each flow in the live connection table as the data plane would on a miss;
    returns each flow's backend address."""
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


# --- reads ------------------------------------------------------------------------------------


def test_healthz_is_503_when_not_attached_and_carries_the_fingerprints(node: Node) -> None:
    answer = node.call("GET", "/healthz")
    assert answer.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert answer.body["status"] == "unavailable"
    assert any("not attached to eth0" in reason for reason in answer.body["reasons"])
    assert not answer.body["attached"]
    config = base_config("eth0", "198.18.0.2")
    pure = compile_plan(
        config,
        Allocation(),
        lb_ipv4=IPv4Address("198.18.0.2"),
        resolve_next_hop=lambda address: NextHop(1, bytes(6), bytes(6)),
    )
    for name, table in pure.tables.items():
        assert answer.body["vips"][name]["fingerprint"] == table.fingerprint()
        assert answer.body["vips"][name]["table_size"] == 1021
    assert answer.body["unresolved_next_hops"] == []


def test_the_openapi_document_is_served(node: Node) -> None:
    answer = node.call("GET", "/openapi.json")
    assert answer.status == 200
    assert answer.body["openapi"].startswith("3.")
    assert "/v1/vips/{vip}/backends/{address}" in answer.body["paths"]


def test_vips_are_listed_and_read_one_by_one(node: Node) -> None:
    listing = node.call("GET", "/v1/vips")
    assert listing.status == 200
    names = [vip["vip"] for vip in listing.body["vips"]]
    assert names == [VIP, "198.18.100.2"]
    web = listing.body["vips"][0]
    assert [b["address"] for b in web["backends"]] == ["198.18.64.1", "198.18.64.2", "198.18.64.3"]
    assert all(b["dataplane_state"] == "up" and b["next_hop"] for b in web["backends"])
    assert sum(b["slots"] for b in web["backends"]) == web["table"]["size"] == 1021
    for path in (VIP_PATH, "/v1/vips/198.18.100.1:80/tcp"):
        one = node.call("GET", path)
        assert one.status == 200 and one.body == web
    missing = node.call("GET", "/v1/vips/198.18.100.9")
    assert missing.status == 404 and "no VIP 198.18.100.9" in missing.body["message"]
    bad = node.call("GET", "/v1/vips/198.18.100.1:80")
    assert bad.status == 400 and error_paths(bad.body) == ["vip"]
    assert node.call("GET", "/v1/nothing").status == 404
    assert node.call("POST", "/v1/vips").status == 405


# --- writes reach the maps --------------------------------------------------------------------


def test_a_new_vip_is_written_whole_and_removed_whole(node: Node) -> None:
    path = "/v1/vips/198.18.100.3:53%2Fudp"
    body = {"backends": ["198.18.64.7", {"address": "198.18.64.8", "weight": 2}]}
    created = node.call("PUT", path, body)
    assert created.status == HTTPStatus.CREATED, created.body
    assert created.headers["Location"].endswith("/v1/vips/198.18.100.3:53/udp")
    assert created.body["changed"] and created.body["tables_rebuilt"] == ["198.18.100.3:53/udp"]
    state = maps_state(node)
    key = next(k for k in state.vips if k.proto == 17 and k.port == 53)
    assert ip_address(key.addr) == IPv4Address("198.18.100.3")
    assert live_table_is_planned(node, "198.18.100.3:53/udp")
    view = node.call("GET", path).body
    assert [b["slots"] for b in view["backends"]] == [340, 681]  # weights 1:2 of 1021 slots

    again = node.call("PUT", path, body)
    assert again.status == 200 and not again.body["changed"] and again.body["map_updates"] == 0

    removed = node.call("DELETE", path)
    assert removed.status == 200 and removed.body["changed"]
    state = maps_state(node)
    assert key not in state.vips
    assert node.call("GET", path).status == 404
    assert node.call("DELETE", path).status == 404


def test_an_ipv6_vip_with_ipv4_backends_reaches_the_ipv6_vip_map(node: Node) -> None:
    path = "/v1/vips/[2001:2:0:19::10]:80%2Ftcp"
    created = node.call("PUT", path, {"backends": ["198.18.64.7"]})
    assert created.status == HTTPStatus.CREATED, created.body
    (key,) = [k for k in maps_state(node).vips if len(k.addr) == 16]
    assert (ip_address(key.addr), key.proto, key.port) == (ip_address("2001:2:0:19::10"), 6, 80)
    assert node.maps.vips_v6.lookup(encode_vip_key(key)) is not None
    assert node.call("DELETE", path).status == 200
    assert all(len(k.addr) == 4 for k in maps_state(node).vips)


def test_backends_are_added_drained_weighed_and_removed(node: Node) -> None:
    path = f"{VIP_PATH}/backends/198.18.64.9"
    created = node.call("PUT", path, {"weight": 1})
    assert created.status == HTTPStatus.CREATED
    assert live_table_is_planned(node, VIP)
    slot = slot_of(node, VIP, "198.18.64.9")
    entry = node.maps.read_backend(slot)
    assert entry is not None and entry.state is BackendState.UP
    assert node.call("GET", path).body["slots"] > 0

    drained = node.call("PATCH", path, {"state": "drain"})
    assert drained.status == 200 and drained.body["tables_rebuilt"] == [VIP]
    entry = node.maps.read_backend(slot)
    assert entry is not None and entry.state is BackendState.DRAIN
    view = node.call("GET", path).body
    assert (view["state"], view["dataplane_state"], view["slots"]) == ("drain", "drain", 0)
    assert live_table_is_planned(node, VIP)
    live = node.maps.read_table(node.daemon.plan.allocation.vip_index[VIP])  # type: ignore[union-attr]
    assert slot not in set(live or [])

    weighed = node.call("PATCH", path, {"state": "up", "weight": 3})
    assert weighed.status == 200
    assert node.call("GET", path).body["weight"] == 3

    removed = node.call("DELETE", path)
    assert removed.status == 200
    assert node.maps.read_backend(slot) is None
    assert node.call("GET", path).status == 404
    assert node.call("PATCH", path, {"weight": 1}).status == 404


def test_the_default_set_is_managed_like_a_vip(node: Node) -> None:
    path = "/v1/vips/default/backends/198.18.64.20"
    assert node.call("GET", "/v1/vips/default").status == 404
    assert node.call("PUT", path, {}).status == HTTPStatus.CREATED
    state = maps_state(node)
    assert state.settings.default_vip == node.daemon.plan.allocation.vip_index["default"]  # type: ignore[union-attr]
    assert node.call("GET", "/v1/vips/default").body["backends"][0]["address"] == "198.18.64.20"
    assert node.call("DELETE", "/v1/vips/default").status == 200
    assert maps_state(node).settings.default_vip == 0xFFFFFFFF


# --- refused writes change nothing ------------------------------------------------------------


def test_every_refused_write_leaves_the_state_and_the_maps_as_they_were(node: Node) -> None:
    before_config = node.call("GET", "/v1/config").body
    before_maps = maps_state(node)
    generation = node.daemon.generation
    backend = f"{VIP_PATH}/backends/198.18.64.1"
    cases: list[tuple[str, str, object, int, list[str]]] = [
        ("PUT", backend, {"weight": -1}, 422, ["weight"]),
        ("PUT", backend, {"weight": 1, "sate": "up"}, 422, ["sate"]),
        ("PATCH", backend, {"state": "paused"}, 422, ["state"]),
        ("PUT", f"{VIP_PATH}/backends/198.18.100.2", {}, 422, ["address"]),
        ("PUT", f"{VIP_PATH}/backends/198.18.64.1", {"address": "198.18.64.2"}, 422, ["address"]),
        ("PUT", f"{VIP_PATH}/backends/not-an-ip", {}, 400, ["address"]),
        ("PUT", VIP_PATH, {"port": 8080}, 422, ["port"]),
        ("PUT", VIP_PATH, {"backends": ["198.18.64.1", "198.18.64.1"]}, 422,
         ["backends[1].address"]),
        ("PUT", "/v1/vips/198.18.100.9/backends/198.18.64.1", {}, 404, []),
        ("PUT", "/v1/vips/[2001:2::1]:80%2Ftcp", {"backends": ["2001:2::9"]}, 422, [""]),
        ("PUT", "/v1/config", {"device": "eth9"}, 409, ["device"]),
        ("PUT", "/v1/config", {"conntrack_size": 4096}, 409, ["conntrack_size"]),
        ("PUT", "/v1/config", {"table_size": 1000}, 422, ["table_size"]),
        ("PUT", "/v1/config", {"vips": [{"address": "198.18.100.1"}] * 2}, 422, ["vips[1]"]),
    ]  # fmt: skip
    for method, path, body, status, paths in cases:
        answer = node.call(method, path, body)
        assert answer.status == status, (method, path, body, answer.body)
        assert error_paths(answer.body) == paths, (method, path, body, answer.body)
    raw = node.client.request(
        "PUT", backend, None, headers={"Content-Type": "application/json"}, check=False
    )
    assert raw.status == 400 and "no body" in raw.body["message"]
    request = urllib.request.Request(node.client.url + backend, data=b"{weight: 2", method="PUT")
    try:
        urllib.request.urlopen(request, timeout=10)
        pytest.fail("a body that is not JSON was accepted")
    except urllib.error.HTTPError as error:
        assert error.code == 400
    assert node.call("GET", "/v1/config").body == before_config
    assert node.daemon.generation == generation
    assert maps_state(node) == before_maps


def test_a_change_that_cannot_be_saved_is_not_applied(node: Node) -> None:
    # The state file is written while the maps are; when saving fails the maps are put back,
    # so the answer is an error and nothing has changed, not even for an instant afterwards.
    before_config = node.call("GET", "/v1/config").body
    before_maps = maps_state(node)
    generation = node.daemon.generation
    saved_to = node.daemon.options.state_file
    node.daemon.options.state_file = Path("/proc/version/cannot-be-a-directory/state.json")
    try:
        answer = node.call("PUT", f"{VIP_PATH}/backends/198.18.64.9", {"weight": 3})
    finally:
        node.daemon.options.state_file = saved_to
    assert answer.status == 503, answer.body
    assert "cannot save the desired state" in answer.body["message"]
    assert node.call("GET", "/v1/config").body == before_config
    assert node.daemon.generation == generation
    assert maps_state(node) == before_maps


def test_the_config_is_replaced_whole_and_if_match_guards_it(node: Node) -> None:
    current = node.call("GET", "/v1/config")
    tag = current.headers["ETag"]
    wider = dict(current.body, table_size=2039)
    stale = node.call("PUT", "/v1/config", wider, headers={"If-Match": '"0000"'})
    assert stale.status == HTTPStatus.PRECONDITION_FAILED
    assert node.call("GET", "/v1/config").body == current.body
    replaced = node.call("PUT", "/v1/config", wider, headers={"If-Match": tag})
    assert replaced.status == 200
    assert sorted(replaced.body["tables_rebuilt"]) == sorted([VIP, "198.18.100.2"])
    assert replaced.headers["ETag"] != tag
    assert node.call("GET", VIP_PATH).body["table"]["size"] == 2039
    assert live_table_is_planned(node, VIP)


# --- dry runs, flows, lookups -----------------------------------------------------------------


def test_a_dry_run_counts_the_flows_a_removal_would_move_and_changes_nothing(node: Node) -> None:
    chosen = track(node, flows_to_vip(120))
    before_maps = maps_state(node)
    before_tracked = node.maps.dump_conntrack()
    change = {"op": "delete_backend", "vip": VIP, "backend": "198.18.64.2"}
    answer = node.call("POST", "/v1/plan", {"changes": [change]})
    assert answer.status == 200, answer.body
    view = answer.body["vips"][VIP]
    assert view["change"] == "changed"
    assert 0.25 < view["table_slots_moved"] < 0.42
    assert view["flows_tracked"] == 120
    assert view["flows_moved"] == sum(address == "198.18.64.2" for address in chosen.values())
    assert answer.body["vips"]["198.18.100.2"]["change"] == "unchanged"
    drain = {"op": "patch_backend", "vip": VIP, "backend": "198.18.64.2",
             "body": {"state": "drain"}}  # fmt: skip
    drained = node.call("POST", "/v1/plan", {"changes": [drain]}).body["vips"][VIP]
    assert drained["flows_moved"] == 0 and drained["table_slots_moved"] > 0.25
    whole = node.call("GET", "/v1/config").body
    whole["vips"] = whole["vips"][:1]
    by_config = node.call("POST", "/v1/plan", {"config": whole}).body["vips"]
    assert by_config["198.18.100.2"]["change"] == "removed"
    assert maps_state(node) == before_maps
    assert node.maps.dump_conntrack() == before_tracked
    for body, status, paths in [
        ({"changes": [change], "config": whole}, 422, [""]),
        ({"changes": [dict(change, backend="198.18.64.99")]}, 404, []),
        ({"changes": [dict(drain, body={"weight": "x"})]}, 422, ["changes[0].body.weight"]),
        ({"config": {"table_size": 4}}, 422, ["config.table_size"]),
        ({"changes": [change], "max_flows": -1}, 422, ["max_flows"]),
    ]:
        refused = node.call("POST", "/v1/plan", body)
        assert refused.status == status, (body, refused.body)
        assert error_paths(refused.body) == paths, (body, refused.body)


def test_flows_and_lookups_name_the_backend_the_data_plane_uses(node: Node) -> None:
    chosen = track(node, flows_to_vip(30))
    answer = node.call("GET", f"/v1/flows?vip={VIP.replace('/', '%2F')}&limit=10")
    assert answer.status == 200
    assert len(answer.body["flows"]) == 10
    for flow in answer.body["flows"]:
        assert flow["vip"] == VIP and flow["conntrack"] == "valid"
    listed = node.call("GET", "/v1/flows?limit=1000").body["flows"]
    assert {f["flow"]: f["backend"] for f in listed} == {
        f"{ip_address(flow.src)}:{flow.sport}->198.18.100.1:80/tcp": address
        for flow, address in chosen.items()
    }
    flow, address = next(iter(chosen.items()))
    text = f"{ip_address(flow.src)}:{flow.sport}->198.18.100.1:80/tcp"
    known = node.call("GET", f"/v1/lookup?flow={text}")
    assert known.status == 200
    assert (known.body["backend"], known.body["conntrack"]) == (address, "valid")
    assert known.body["outcome"] == "ct_hit"
    fresh = node.call("GET", "/v1/lookup?flow=198.18.9.9:1234->198.18.100.1:80/tcp").body
    assert (fresh["conntrack"], fresh["outcome"], fresh["vip"]) == ("none", "ct_miss", VIP)
    # Drained: the tracked flow stays; a removed backend's flow is re-decided.
    node.call("PATCH", f"{VIP_PATH}/backends/{address}", {"state": "drain"})
    assert node.call("GET", f"/v1/lookup?flow={text}").body["backend"] == address
    node.call("DELETE", f"{VIP_PATH}/backends/{address}")
    moved = node.call("GET", f"/v1/lookup?flow={text}").body
    assert moved["conntrack"] == "stale" and moved["backend"] != address
    for query, path in [
        ("/v1/lookup", "flow"),
        ("/v1/lookup?flow=nonsense", "flow"),
        ("/v1/flows?limit=0", "limit"),
        ("/v1/flows?vip=198.18.100.1:80", "vip"),
    ]:
        refused = node.call("GET", query)
        assert refused.status == 400 and error_paths(refused.body) == [path], query


def test_metrics_expose_counters_states_and_change_durations(node: Node) -> None:
    track(node, flows_to_vip(7))
    node.call("PATCH", f"{VIP_PATH}/backends/198.18.64.3", {"state": "drain"})
    text = node.call("GET", "/metrics").body
    assert isinstance(text, str)
    assert f'rusty_rail_vip_packets_total{{vip="{VIP}"}}' in text
    assert f'rusty_rail_vip_too_big_packets_total{{reason="icmp",vip="{VIP}"}} 0.0' in text
    assert f'rusty_rail_backend_packets_total{{backend="198.18.64.1",vip="{VIP}"}}' in text
    assert (
        f'rusty_rail_backend_state{{backend="198.18.64.3",kind="admin",state="drain",vip="{VIP}"}}'
        " 1.0" in text
    )
    assert 'rusty_rail_packets_total{action="drop",reason="drop_no_backend"}' in text
    assert "rusty_rail_table_build_seconds_count" in text
    assert "rusty_rail_apply_seconds_bucket" in text
    assert 'rusty_rail_build_info{kernel="' in text
    assert "rusty_rail_attached 0.0" in text
    assert "rusty_rail_conntrack_entries 7.0" in text


def test_metrics_count_backends_per_vip_and_drop_per_backend_series_beyond_the_limit(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    def scrape() -> str:
        text = node.call("GET", "/metrics").body
        assert isinstance(text, str)
        return text

    node.call("PATCH", f"{VIP_PATH}/backends/198.18.64.3", {"state": "drain"})
    counts = [
        f'rusty_rail_vip_backends{{kind="admin",state="up",vip="{VIP}"}} 2.0',
        f'rusty_rail_vip_backends{{kind="admin",state="drain",vip="{VIP}"}} 1.0',
        f'rusty_rail_vip_backends{{kind="dataplane",state="drain",vip="{VIP}"}} 1.0',
        f'rusty_rail_vip_backends_unresolved{{vip="{VIP}"}} 0.0',
    ]
    within = scrape()
    assert all(line in within for line in counts)
    assert "rusty_rail_metrics_backends_omitted 0.0" in within
    assert "rusty_rail_backend_packets_total{" in within
    # The base configuration holds 4 backends (3 + 1): a limit of 3 leaves per-VIP counts.
    monkeypatch.setattr(node.daemon.options, "metrics_backend_limit", 3)
    beyond = scrape()
    assert all(line in beyond for line in counts)
    assert "rusty_rail_metrics_backends_omitted 4.0" in beyond
    for name in ("backend_packets_total", "backend_state", "backend_weight", "backend_health"):
        assert f"rusty_rail_{name}{{" not in beyond, name
    assert len(beyond) < len(within)


# --- tokens -----------------------------------------------------------------------------------


def test_writes_need_the_token_when_the_daemon_has_one(bed: Bed) -> None:
    node = bed.nodes["eth1"]
    path = f"{VIP_PATH}/backends/198.18.64.30"
    anonymous = node.client.__class__(node.client.url)
    refused = anonymous.request("PUT", path, {}, check=False)
    assert refused.status == HTTPStatus.UNAUTHORIZED
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = node.client.__class__(node.client.url, "guess")
    assert wrong.request("DELETE", VIP_PATH, check=False).status == HTTPStatus.UNAUTHORIZED
    assert anonymous.request("GET", "/v1/vips", check=False).status == 200
    assert node.call("PUT", path, {}).status == HTTPStatus.CREATED
    assert node.call("DELETE", path).status == 200


# --- two nodes agree --------------------------------------------------------------------------

CHANGES = [
    ("PUT", f"{VIP_PATH}/backends/198.18.64.11", {"weight": 2}),
    ("PATCH", f"{VIP_PATH}/backends/198.18.64.1", {"state": "drain"}),
    ("DELETE", f"{VIP_PATH}/backends/198.18.64.3", None),
    ("PUT", "/v1/vips/198.18.100.4", {"backends": ["198.18.64.12", "198.18.64.13"]}),
    ("PUT", "/v1/vips/198.18.100.2/backends/198.18.64.14", {"weight": 5}),
    ("PUT", "/v1/vips/default/backends/198.18.64.15", {}),
]


def test_two_daemons_given_the_same_changes_in_other_orders_agree(bed: Bed) -> None:
    first, second = bed.nodes["eth0"], bed.nodes["eth1"]
    orders = [CHANGES, CHANGES[::-1], [CHANGES[i] for i in (3, 0, 5, 2, 4, 1)]]
    first.reset()
    second.reset()
    for method, path, body in orders[0]:
        assert first.call(method, path, body).status in (200, 201)
    for method, path, body in orders[1]:
        assert second.call(method, path, body).status in (200, 201)
    a, b = first.call("GET", "/healthz").body, second.call("GET", "/healthz").body
    assert a["config_fingerprint"] == b["config_fingerprint"]
    assert {k: v["fingerprint"] for k, v in a["vips"].items()} == {
        k: v["fingerprint"] for k, v in b["vips"].items()
    }
    assert set(a["vips"]) == {VIP, "198.18.100.2", "198.18.100.4", "default"}
    # A third order, through a whole-config write, lands on the same tables too.
    second.reset()
    for method, path, body in orders[2]:
        assert second.call(method, path, body).status in (200, 201)
    c = second.call("GET", "/healthz").body
    assert c["config_fingerprint"] == a["config_fingerprint"]
    assert {k: v["fingerprint"] for k, v in c["vips"].items()} == {
        k: v["fingerprint"] for k, v in a["vips"].items()
    }
    first.reset()
    second.reset()


# --- the desired state across a restart -------------------------------------------------------


def test_api_changes_survive_a_restart_and_sighup_goes_back_to_the_file(
    bed: Bed, tmp_path: Path
) -> None:
    config_path = tmp_path / "lb.toml"
    config_path.write_text(f'device = "eth2"\nlb_address = "198.18.20.2"\n{BASE_TOML}')
    path = state_file.default_path(config_path, "eth2")

    def start() -> Node:
        options = DaemonOptions(config_path=config_path, state_file=path, api=None)
        config, fixed, generation = startup_config({}, options)
        return bed.start("eth2", config, state_file=path, config_path=config_path,
                         fixed=fixed, generation=generation, detach=False,
                         attach=True)  # fmt: skip

    node = start()
    healthy = node.call("GET", "/healthz")
    assert healthy.status == 200 and healthy.body["status"] == "ok", healthy.body
    assert healthy.body["attached"] and healthy.body["reasons"] == []
    assert node.call("PUT", f"{VIP_PATH}/backends/198.18.64.40", {"weight": 4}).status == 201
    assert node.call("DELETE", "/v1/vips/198.18.100.2").status == 200
    wanted = node.call("GET", "/v1/config").body
    fingerprints = node.call("GET", "/healthz").body["vips"]
    saved = state_file.read(path)
    assert saved is not None and saved.generation == 2
    bed.stop("eth2")  # the maps stay pinned; the state file stays

    node = start()
    assert node.call("GET", "/v1/config").body == wanted
    health = node.call("GET", "/healthz").body
    assert {k: v["fingerprint"] for k, v in health["vips"].items()} == {
        k: v["fingerprint"] for k, v in fingerprints.items()
    }
    assert health["generation"] == 2
    assert node.daemon.last_change is not None
    assert node.daemon.last_change["map_updates"] == 0  # adopted: the maps already held it

    node.daemon.reload({})  # what SIGHUP does: the file is the desired state again
    assert not path.exists()
    assert node.call("GET", "/v1/config").body == config_from_toml_text(
        config_path.read_text()
    ).model_dump(mode="json")
    node.daemon.options.detach_on_exit = True
    bed.stop("eth2")


def test_a_change_needing_more_egress_interfaces_than_the_data_plane_has_is_not_saved(
    bed: Bed, tmp_path: Path
) -> None:
    """Issue 16, defect 3: such a change used to be saved and then fail in the maps (503),
    after which every write was refused and the daemon could not start again."""
    lb = bed.namespace
    count = 64  # and eth0, which reaches the base configuration's backends
    batch = tmp_path / "egress.batch"
    lines = []
    for i in range(count):
        lines += [
            f"link add xa{i} type veth peer name xb{i}",
            f"link set xa{i} up",
            f"link set xb{i} up",
            f"addr add 198.19.{128 + i}.2/24 dev xa{i}",
            f"neigh replace 198.19.{128 + i}.1 lladdr 02:00:00:00:{i // 256:02x}:{i % 256:02x} "
            f"dev xa{i} nud permanent",
        ]
    batch.write_text("\n".join(lines) + "\n")
    lb.ip("-batch", str(batch))
    config_path = tmp_path / "lb.toml"
    config_path.write_text(f'device = "eth2"\nlb_address = "198.18.20.2"\n{BASE_TOML}')
    path = tmp_path / "state.json"
    node = bed.start("eth2", base_config("eth2", "198.18.20.2"), state_file=path)
    try:
        assert node.call("PUT", f"{VIP_PATH}/backends/198.18.64.40", {}).status == 201
        saved = state_file.read(path)
        assert saved is not None
        before_maps = maps_state(node)
        wide = [f"198.19.{128 + i}.1" for i in range(count)]
        answer = node.call("PUT", "/v1/vips/198.19.0.10", {"backends": wide})
        assert answer.status == 422, answer.body
        assert "65 egress interfaces" in answer.body["message"]
        assert "at most 64" in answer.body["message"]
        assert state_file.read(path) == saved
        assert maps_state(node) == before_maps
        # The daemon still takes writes, and what it saved starts again.
        assert node.call("PUT", "/v1/vips/198.19.0.10", {"backends": wide[:63]}).status == 201
        assert node.daemon.apply_error is None
        options = DaemonOptions(config_path=config_path, state_file=path, api=None)
        config, _, _ = startup_config({}, options)
        assert len(config.vips) == 3
    finally:
        bed.stop("eth2")
        for i in range(count):
            lb.ip("link", "del", f"xa{i}", check=False)


def test_a_saved_state_the_data_plane_refuses_at_start_names_the_way_out(
    bed: Bed, tmp_path: Path
) -> None:
    """Issue 16, defect 3: such a start used to end in a traceback with no hint."""
    config_path = tmp_path / "lb.toml"
    config_path.write_text(f'device = "eth2"\nlb_address = "198.18.20.2"\n{BASE_TOML}')
    path = tmp_path / "state.json"
    # Valid configuration, but this node has no IPv6 address (none configured, none on eth2)
    # for the outer header to an IPv6 backend: as a state saved on another node would be.
    refused = config_from_toml_text(
        config_path.read_text() + '[[vips]]\naddress = "198.18.100.3"\nbackends = ["2001:2::5"]\n'
    )
    state_file.write(path, refused, generation=7, source="api")
    options = DaemonOptions(
        config_path=config_path, state_file=path, api=None, pin_root=bed.pin_root
    )
    with pytest.raises(StartupError) as raised:
        start_daemon({}, options)
    message = str(raised.value)
    assert "\n" not in message
    assert "an IPv6 backend needs the node's IPv6 address" in message
    assert f"saved by the API in {path}" in message and "--reset-state" in message
    assert path.exists()
    assert not (bed.pin_root / "eth2").exists()
    # --reset-state removes the saved state only once a start has succeeded (defect 8).
    reset = replace(options, reset_state=True, detach_on_exit=True)
    with pytest.raises(StartupError, match="nosuch0"):
        start_daemon({"RR_DEVICE": "nosuch0"}, reset)
    assert path.exists()
    daemon = start_daemon({}, reset)
    try:
        assert not path.exists()
        assert len(daemon.config.vips) == 2
    finally:
        daemon.close()


# --- dry runs under attack (issue 16, defect 2) -------------------------------------------------


def test_a_dry_run_needs_the_token_and_is_refused_before_its_body_is_read(bed: Bed) -> None:
    node = bed.nodes["eth1"]
    anonymous = node.client.__class__(node.client.url)
    change = {"op": "delete_backend", "vip": VIP, "backend": "198.18.64.2"}
    refused = anonymous.request("POST", "/v1/plan", {"changes": [change]}, check=False)
    assert refused.status == HTTPStatus.UNAUTHORIZED, refused.body
    not_json = anonymous.request(
        "POST", "/v1/plan", None, headers={"Content-Type": "application/json"}, check=False
    )
    assert not_json.status == HTTPStatus.UNAUTHORIZED  # not 400: the body was never read
    assert node.call("POST", "/v1/plan", {"changes": [change]}).status == 200


def test_a_dry_run_that_would_build_too_many_table_slots_is_refused_before_building(
    node: Node,
) -> None:
    largest = 16777213  # the largest prime table size the configuration takes
    vips = [{"address": f"198.18.101.{i}", "backends": ["198.18.64.1"], "table_size": largest}
            for i in range(1, 13)]  # fmt: skip
    whole = node.call("GET", "/v1/config").body
    whole["vips"] = whole["vips"] + vips
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused = node.call("POST", "/v1/plan", {"config": whole})
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert refused.status == 422, refused.body
    assert "at most 33554432 slots" in refused.body["message"]
    assert grown_mib < 64, f"the refused dry run took {grown_mib:.0f} MiB"
    one_large = dict(whole, vips=whole["vips"][:-11])
    assert node.call("POST", "/v1/plan", {"config": one_large}).status == 200


def test_a_dry_run_counts_flows_without_holding_the_change_lock(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    track(node, flows_to_vip(50))
    seen: list[bool] = []
    lock = node.daemon._lock
    assert lock is not None
    original = readmodels.dry_run

    def observed(*args: Any, **kwargs: Any) -> Any:
        seen.append(lock.locked())
        return original(*args, **kwargs)

    monkeypatch.setattr(readmodels, "dry_run", observed)
    change = {"op": "delete_backend", "vip": VIP, "backend": "198.18.64.2"}
    answer = node.call("POST", "/v1/plan", {"changes": [change]})
    assert answer.status == 200, answer.body
    assert answer.body["flows_examined"] == 50 and answer.body["flows_complete"] is True
    assert seen == [False]


def test_hostile_parameters_and_bodies_get_4xx_and_leave_no_traceback(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16, defects 5 and 8: each of these used to answer 500 and log a traceback, or
    echo megabytes back."""
    deep: object = "198.18.64.1"
    for _ in range(900):
        deep = [deep]
    with caplog.at_level("ERROR"):
        two = "%C2%B2"  # "²": str.isdigit() takes it, int() does not
        for path in (
            f"/v1/flows?limit={two}",
            f"/v1/events?since={two}",
            f"/v1/events?limit={two}",
            "/v1/events?since=" + "9" * 5000,
            f"/v1/lookup?flow=198.18.5.5:{two}->198.18.100.1:80/tcp",
        ):
            answer = node.call("GET", path)
            assert answer.status == 400, (path[:60], answer.body)
        nested = node.call("PUT", f"{VIP_PATH}/backends/198.18.64.1", {"weight": deep})
        assert nested.status == 422, nested.body
        assert len(nested.body["problems"][0]["value"]) <= 80
        whole = node.call("GET", "/v1/config").body
        huge_key = node.call("PUT", "/v1/config", dict(whole, **{"k" * 1_000_000: 1}))
        assert huge_key.status == 422
        assert len(json.dumps(huge_key.body)) < 2000, "the unknown key was echoed whole"
        ipv6_lb = node.call("PUT", "/v1/config", dict(whole, lb_address="2001:2::2"))
        assert ipv6_lb.status == 422, ipv6_lb.body  # the data plane cannot hold it: not 409
    assert [r.getMessage()[:200] for r in caplog.records if r.levelname == "ERROR"] == []


def test_a_new_conntrack_size_that_an_adopted_table_cannot_take_is_reported(bed: Bed) -> None:
    """Issue 16, defect 8: the API used to report the new size while the adopted table kept
    the old one, silently."""
    small = base_config("eth2", "198.18.20.2").model_copy(update={"conntrack_size": 4096})
    node = bed.start("eth2", small, detach=False, attach=True)
    assert node.call("GET", "/healthz").body["warnings"] == []
    bed.stop("eth2")
    larger = small.model_copy(update={"conntrack_size": 65536})
    node = bed.start("eth2", larger, attach=True)
    try:
        (warning,) = node.call("GET", "/healthz").body["warnings"]
        assert "conntrack_size is 65536 but the adopted connection table holds 4096" in warning
        assert "detach" in warning
    finally:
        bed.stop("eth2")


def test_a_change_beyond_capacity_is_refused_before_any_address_is_resolved(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16, defect 7: such a change used to resolve every new address (seconds of ARP,
    under the change lock) before it was refused."""
    probed: list[int] = []
    original = NextHops.probe

    def counted(addresses: Any, wait: float = 0.0) -> Any:
        addresses = set(addresses)
        probed.append(len(addresses))
        return original(addresses, wait)

    monkeypatch.setattr(NextHops, "probe", staticmethod(counted))
    many = [f"198.19.{64 + i // 250}.{1 + i % 250}" for i in range(MAX_BACKENDS + 1)]
    body = {"backends": many, "table_size": 65537}
    answer = node.call("PUT", "/v1/vips/198.19.0.10", body)
    assert answer.status == 422, answer.body
    assert "too many backends" in answer.body["message"]
    assert probed == []


def test_new_addresses_resolve_outside_the_change_lock_and_removed_ones_are_forgotten(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = node.daemon._lock
    assert lock is not None
    locked: list[bool] = []
    original = NextHops.probe

    def observed(addresses: Any, wait: float = 0.0) -> Any:
        locked.append(lock.locked())
        return original(addresses, wait)

    monkeypatch.setattr(NextHops, "probe", staticmethod(observed))
    path = f"{VIP_PATH}/backends/198.18.64.77"
    assert node.call("PUT", path, {}).status == 201
    assert locked == [False]
    assert node.daemon.next_hops(ip_address("198.18.64.77")) is not None
    assert node.call("DELETE", path).status == 200
    assert ip_address("198.18.64.77") not in node.daemon.next_hops.known


def test_a_change_that_fits_only_in_the_slots_it_frees_is_applied_removals_first(
    node: Node,
) -> None:
    """Issue 16, defect 6: replacing the backends of a full data plane used to be refused
    ("holds at most ..."), since a change never hands a slot it frees to another backend."""
    plan = node.daemon.plan
    assert plan is not None
    taken = len(plan.allocation.slots)
    plan.allocation.max_backends = taken + 1  # a data plane with one slot free
    try:
        new = ["198.18.64.51", "198.18.64.52", "198.18.64.53"]
        dry = node.call("POST", "/v1/plan", {"changes": [
            {"op": "put_vip", "vip": VIP, "body": {"backends": new}}]})  # fmt: skip
        assert dry.status == 200, dry.body
        answer = node.call("PUT", VIP_PATH, {"backends": new})
        assert answer.status == 200, answer.body
        view = node.call("GET", VIP_PATH).body
        assert sorted(b["address"] for b in view["backends"]) == new
        assert live_table_is_planned(node, VIP)
        live = node.daemon.plan
        assert live is not None and len(live.allocation.slots) == taken
        assert maps_state(node).backends.keys() == set(live.state.backends)
    finally:
        live = node.daemon.plan
        assert live is not None
        live.allocation.max_backends = MAX_BACKENDS


def test_a_two_step_change_that_cannot_be_saved_is_undone_in_two_steps(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16: a change applied removals first (it fits only in the slots it frees) and
    then not saved is put back the same way round: its new backends leave their slots before
    the old ones come back, so no slot changes owner within one round of map writes."""
    from rusty_rail.control import controller

    plan = node.daemon.plan
    assert plan is not None
    used = set(plan.allocation.slots.values())
    plan.allocation.max_backends = max(used) + 1  # only the gaps below the highest are free
    new = [f"198.18.64.{51 + i}" for i in range(max(used) + 1 - len(used) + 1)]
    before_maps = maps_state(node)
    owners = [{slot: entry.addr for slot, entry in before_maps.backends.items()}]

    def apply_and_look(maps: Any, operations: Any) -> int:
        applied = apply_operations(maps, operations)
        owners.append({slot: entry.addr for slot, entry in maps_state(node).backends.items()})
        return applied

    monkeypatch.setattr(controller, "apply_operations", apply_and_look)
    saved_to = node.daemon.options.state_file
    node.daemon.options.state_file = Path("/proc/version/cannot-be-a-directory/state.json")
    try:
        answer = node.call("PUT", VIP_PATH, {"backends": new})
    finally:
        node.daemon.options.state_file = saved_to
        live = node.daemon.plan
        assert live is not None
        live.allocation.max_backends = MAX_BACKENDS
    assert answer.status == 503, answer.body
    assert maps_state(node) == before_maps
    for earlier, later in itertools.pairwise(owners):
        changed = {s for s in earlier.keys() & later.keys() if earlier[s] != later[s]}
        assert not changed, f"slots {sorted(changed)} changed owner in one step"
    assert len(owners) == 5  # the bridge, the change, then the undo's two steps


def test_idle_and_unfinished_connections_cannot_lock_the_api_out(node: Node) -> None:
    """Issue 16, defect 4: 1,100 idle connections used to make /healthz and writes time out
    (and flood the log); they are now bounded in number and closed when idle."""
    guard = node.daemon.api_guard
    assert guard is not None
    limit, idle = guard.limit, guard.idle_seconds
    guard.limit, guard.idle_seconds = 20, 0.5
    host, port = node.client.url.removeprefix("http://").rsplit(":", 1)
    clients: list[socket.socket] = []
    try:
        for i in range(60):
            client = socket.create_connection((host, int(port)), timeout=5)
            if i % 2:  # half of them start a request and never finish it
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: lb\r\n")
            clients.append(client)
        most = 0
        for _ in range(200):  # bounded: until every one of them was closed by the daemon
            most = max(most, len(guard.open))
            if guard.expired + guard.refused >= 60 and not guard.open:
                break
            time.sleep(0.05)
        # Each was refused at once (over the limit) or closed when it stayed idle; how many
        # of each depends on how fast the daemon accepted them.
        assert guard.refused + guard.expired >= 60, (guard.refused, guard.expired)
        assert guard.expired >= 1 and most <= 20
        for client in clients:
            client.settimeout(5)
            with contextlib.suppress(ConnectionResetError):  # closed by the daemon
                assert client.recv(1024) == b""  # and nothing answered
        assert node.call("GET", "/healthz").status in (200, 503)
        assert node.call("PUT", f"{VIP_PATH}/backends/198.18.64.31", {}).status == 201
    finally:
        for client in clients:
            client.close()
        guard.limit, guard.idle_seconds = limit, idle


def test_listing_one_vips_flows_looks_only_at_entries_of_its_backends(node: Node) -> None:
    """Issue 16, scale: /v1/flows?vip= used to decode and look up the whole connection table
    (about 23 s of CPU on a full one) to find one VIP's flows."""
    track(node, flows_to_vip(300))
    other = [Flow.of(f"198.18.6.{1 + i}", "198.18.100.2", PROTO_TCP, 30000 + i, 443)
             for i in range(5)]  # fmt: skip
    chosen = track(node, other)
    answer = node.call("GET", "/v1/flows?vip=198.18.100.2&limit=10")
    assert answer.status == 200, answer.body
    assert {f["flow"]: f["backend"] for f in answer.body["flows"]} == {
        f"{ip_address(flow.src)}:{flow.sport}->198.18.100.2:443/tcp": address
        for flow, address in chosen.items()
    }
    assert answer.body["scanned"] == 5 and answer.body["complete"]


def _live_slots(node: Node, name: str) -> set[int]:
    plan = node.daemon.plan
    assert plan is not None
    live = node.maps.read_table(plan.allocation.vip_index[name])
    assert live is not None
    return {int(slot) for slot in live}


def test_a_backend_without_a_next_hop_takes_no_new_flows_until_it_resolves(
    bed: Bed, node: Node
) -> None:
    """Issue 14, item 2: a backend whose neighbour does not answer used to get its share of
    the table (its flows dropped, DROP_NO_NEXTHOP) after the API had waited a second for it.
    Now the answer names it, it stays out of the table, and it joins once it resolves."""
    address = "198.18.0.77"  # on eth0's link, where nothing answers ARP
    path = f"{VIP_PATH}/backends/{address}"
    answer = node.call("PUT", path, {})
    assert answer.status == 201, answer.body
    assert answer.body["unresolved_next_hops"] == [address]
    slot = slot_of(node, VIP, address)
    assert slot not in _live_slots(node, VIP) and live_table_is_planned(node, VIP)
    assert node.maps.read_state().backends[slot].state is BackendState.UP  # admin up, healthy
    health = node.call("GET", "/healthz").body
    assert health["unresolved_next_hops"] == [address]
    assert not any(address in reason for reason in health["reasons"])  # not a node failure
    events = [e for e in node.call("GET", "/v1/events").body["events"] if e["kind"] == "next-hop"]
    assert [(e["kind"], e["backend"], e["from"], e["to"]) for e in events][-1:] == [
        ("next-hop", address, None, "unresolved")
    ]
    metrics = node.call("GET", "/metrics").body
    assert f'rusty_rail_vip_backends_unresolved{{vip="{VIP}"}} 1.0' in metrics

    # Its neighbour answers now: the daemon asks again on its own and brings it in.
    bed.namespace.ip("neigh", "replace", address, "lladdr", "02:00:00:00:00:77", "dev", "eth0",
                     "nud", "permanent")  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        # (the maps are written before the daemon's plan is replaced: wait for both)
        while slot not in _live_slots(node, VIP) or not live_table_is_planned(node, VIP):
            assert time.monotonic() < deadline, "the resolved backend never joined its table"
            time.sleep(0.02)
        assert node.call("GET", "/healthz").body["unresolved_next_hops"] == []
        events = node.call("GET", "/v1/events").body["events"]
        events = [e for e in events if e["kind"] == "next-hop"]
        assert [(e["kind"], e["backend"], e["from"], e["to"]) for e in events][-1:] == [
            ("next-hop", address, "unresolved", "resolved")
        ]
    finally:
        assert node.call("DELETE", path).status == 200
        bed.namespace.ip("neigh", "del", address, "dev", "eth0", check=False)


def test_when_no_backend_of_a_vip_has_a_next_hop_they_all_stay_in_its_table(node: Node) -> None:
    """Fail-open, as for health: a table of unresolved backends beats an empty one."""
    body = {"backends": ["198.18.0.78", "198.18.0.79"]}
    answer = node.call("PUT", "/v1/vips/198.18.100.7:80%2Ftcp", body)
    assert answer.status == 201, answer.body
    assert answer.body["unresolved_next_hops"] == ["198.18.0.78", "198.18.0.79"]
    name = "198.18.100.7:80/tcp"
    slots = {slot_of(node, name, a) for a in body["backends"]}
    assert _live_slots(node, name) == slots
    assert node.call("DELETE", "/v1/vips/198.18.100.7:80%2Ftcp").status == 200


def test_a_vips_backends_are_a_route_of_their_own(node: Node) -> None:
    """Issue 15, item 2: GET /v1/vips/{vip}/backends was a 400 about a protocol "backends"."""
    for vip, key in ((VIP_PATH, VIP), ("/v1/vips/198.18.100.2", "198.18.100.2")):
        answer = node.call("GET", f"{vip}/backends")
        assert answer.status == 200, answer.body
        assert answer.body["vip"] == key
        whole = node.call("GET", vip).body
        assert answer.body["backends"] == whole["backends"]
    missing = node.call("GET", "/v1/vips/198.18.100.9:80%2Ftcp/backends")
    assert missing.status == 404
    assert missing.body["known_vips"] == ["198.18.100.1:80/tcp", "198.18.100.2"]


def test_errors_are_problem_details_that_name_the_known_vips(node: Node) -> None:
    """RFC 9457: application/problem+json with type, title, status, detail and instance; the
    API's own error, message and problems stay as extension members."""
    answer = node.call("GET", "/v1/vips/198.18.100.9")
    assert answer.status == 404
    kind = next(v for k, v in answer.headers.items() if k.lower() == "content-type")
    assert kind.startswith("application/problem+json")
    body = answer.body
    assert body["type"] == "about:blank" and body["title"] == "Not Found"
    assert body["status"] == 404 and body["instance"] == "/v1/vips/198.18.100.9"
    assert (
        body["detail"]
        == body["message"]
        == ("no VIP 198.18.100.9; the VIPs are: 198.18.100.1:80/tcp, 198.18.100.2")
    )
    assert body["error"] == "Not Found" and body["problems"] == []
    assert body["known_vips"] == ["198.18.100.1:80/tcp", "198.18.100.2"]
    bad = node.call("PUT", f"{VIP_PATH}/backends/198.18.64.40", {"weight": -1})
    assert bad.status == 422
    assert bad.body["title"] == "Unprocessable Entity"
    assert [p["path"] for p in bad.body["problems"]] == ["weight"]


def test_many_tables_swapped_in_together_are_each_the_planned_one(node: Node) -> None:
    """Consecutive table swaps run together (each waits for an RCU grace period): every VIP
    still gets exactly its own table."""
    body = node.call("GET", "/v1/config").body
    body["vips"] = body["vips"] + [
        {"address": f"198.18.101.{i}", "backends": [f"198.18.64.{10 + i % 7}"]}
        for i in range(1, 25)
    ]
    answer = node.call("PUT", "/v1/config", body)
    assert answer.status == 200, answer.body
    assert len(answer.body["tables_rebuilt"]) == 24
    for i in range(1, 25):
        assert live_table_is_planned(node, f"198.18.101.{i}"), i
