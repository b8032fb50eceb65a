"""The API's reads without a kernel: flows as text, the dry run of a change on real plans,
the OpenAPI document against the routes and the code."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, ip_address

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from rusty_rail.api import changes, openapi, readmodels
from rusty_rail.api import schemas as schemas_module
from rusty_rail.api.server import create_app
from rusty_rail.config import AdminState, Config, config_from_toml_text
from rusty_rail.control.daemon import Daemon
from rusty_rail.control.options import DaemonOptions
from rusty_rail.control.plan import Allocation, Plan, compile_plan
from rusty_rail.model import pipeline
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import CtEntry, NextHop
from rusty_rail.wire.constants import PROTO_TCP, PROTO_UDP

VIP = "198.18.100.1:80/tcp"
CONFIG = config_from_toml_text(
    """
device = "eth0"
table_size = 1021
[[vips]]
address = "198.18.100.1"
protocol = "tcp"
port = 80
backends = ["198.18.2.1", "198.18.2.2", "198.18.2.3", "198.18.2.4"]
"""
)
HOP = NextHop(2, bytes(6), b"\x02" * 6)


def plan_of(config: Config, previous: Plan | None = None) -> Plan:
    return compile_plan(
        config,
        previous.allocation if previous else Allocation(),
        lb_ipv4=IPv4Address("198.18.0.2"),
        resolve_next_hop=lambda address: HOP,
        previous_tables=previous.tables if previous else None,
    )


def test_flows_are_written_and_read_back() -> None:
    cases = {
        "198.18.5.5:40000->198.18.100.1:80/tcp": Flow.of(
            "198.18.5.5", "198.18.100.1", PROTO_TCP, 40000, 80
        ),
        "[2001:2::5]:53->[2001:2::1]:53/udp": Flow.of("2001:2::5", "2001:2::1", PROTO_UDP, 53, 53),
        "198.18.5.5->198.18.100.1/icmp": Flow.of("198.18.5.5", "198.18.100.1", 1),
        "198.18.5.5->198.18.100.1/47": Flow.of("198.18.5.5", "198.18.100.1", 47),
        "2001:2::5->2001:2::1/icmpv6": Flow.of("2001:2::5", "2001:2::1", 58),
    }
    for text, flow in cases.items():
        assert readmodels.parse_flow(text) == flow
        assert readmodels.parse_flow(readmodels.flow_text(flow)) == flow
    # The form Flow prints, and spaces around the arrow, are read too.
    flow = cases["198.18.5.5:40000->198.18.100.1:80/tcp"]
    assert readmodels.parse_flow(str(flow)) == flow
    assert readmodels.parse_flow(" 198.18.5.5:40000 -> 198.18.100.1:80 /tcp ") == flow


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("198.18.5.5:1->198.18.100.1/tcp", "needs both ports"),
        ("198.18.5.5:1->198.18.100.1:2/icmp", "has no ports"),
        ("2001:2::5:1->2001:2::1:2/tcp", "written in brackets"),
        ("2001:2::5:40000->[2001:2::1]:80/tcp", r"written in brackets: \[2001:2::5\]:40000"),
        ("[2001:2::5]:1->2001:2::1:65535/udp", r"written in brackets: \[2001:2::1\]:65535"),
        ("[fe80::5%eth0]:1->[2001:2::1]:80/tcp", r"zone index \(%eth0\) is not part of a packet"),
        ("198.18.5.5:1->[2001:2::1]:2/tcp", "both be IPv4 or both IPv6"),
        ("[198.18.5.5]:1->198.18.100.1:2/tcp", "only IPv6 addresses are written in brackets"),
        ("198.18.5.5:1->198.18.100.1:2/sctp", "use tcp, udp"),
        ("198.18.5.5:1->198.18.100.1:99999/tcp", "0 to 65535"),
        ("198.18.5.5", "not a flow"),
    ],
)
def test_bad_flows_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        readmodels.parse_flow(text)


def flows_to(count: int) -> list[Flow]:
    return [Flow.of(f"198.18.5.{1 + i % 200}", "198.18.100.1", PROTO_TCP, 10000 + i, 80)
            for i in range(count)]  # fmt: skip


def tracked(plan: Plan, flows: list[Flow]) -> dict[Flow, CtEntry]:
    """Connection-table entries as the data plane records them on a miss."""
    entries = {}
    for flow in flows:
        decision = pipeline.lookup(plan.state, flow)
        assert decision.backend_index is not None
        generation = plan.state.backends[decision.backend_index].generation
        entries[flow] = CtEntry(decision.backend_index, generation)
    return entries


def backend_of(plan: Plan, entries: dict[Flow, CtEntry], flow: Flow) -> str:
    return str(ip_address(plan.state.backends[entries[flow].backend_index].addr))


def test_dry_run_of_a_removal_moves_its_slots_and_only_its_flows() -> None:
    before = plan_of(CONFIG)
    after_config = changes.delete_backend(
        CONFIG, changes.parse_target(VIP), IPv4Address("198.18.2.1")
    )
    after = plan_of(after_config, before)
    entries = tracked(before, flows_to(400))
    view = readmodels.dry_run(before, after, entries.items())[0][VIP]
    on_removed = sum(backend_of(before, entries, f) == "198.18.2.1" for f in entries)
    assert view["change"] == "changed"
    assert view["flows_tracked"] == 400
    assert view["flows_moved"] == on_removed > 0
    assert 0.2 < view["table_slots_moved"] < 0.35  # a quarter, give or take Maglev's spread
    assert view["fingerprint_before"] == before.tables[VIP].fingerprint()
    assert view["fingerprint_after"] == after.tables[VIP].fingerprint()


def test_dry_run_of_a_drain_moves_slots_but_no_tracked_flow() -> None:
    before = plan_of(CONFIG)
    drained = changes.patch_backend(
        CONFIG, changes.parse_target(VIP), IPv4Address("198.18.2.1"), {"state": "drain"}
    )
    after = plan_of(drained, before)
    view = readmodels.dry_run(before, after, tracked(before, flows_to(200)).items())[0][VIP]
    assert view["table_slots_moved"] > 0.2
    assert (view["flows_tracked"], view["flows_moved"]) == (200, 0)


def test_a_dry_run_marks_new_vips_added_and_removed_ones_moving_all_their_flows() -> None:
    before = plan_of(CONFIG)
    added = changes.put_vip(CONFIG, changes.parse_target("198.18.100.2"), {"backends": []})[0]
    result, _ = readmodels.dry_run(before, plan_of(added, before), [])
    assert result["198.18.100.2"]["change"] == "added"
    assert result["198.18.100.2"]["table_slots_moved"] is None
    assert result[VIP]["change"] == "unchanged" and result[VIP]["table_slots_moved"] == 0.0
    removed = changes.delete_vip(CONFIG, changes.parse_target(VIP))
    entries = tracked(before, flows_to(50))
    gone = readmodels.dry_run(before, plan_of(removed, before), entries.items())[0][VIP]
    assert gone["change"] == "removed" and gone["table_slots_moved"] == 1.0
    assert gone["flows_moved"] == 50


def test_a_dry_run_past_its_time_counts_part_of_the_flows_and_says_so() -> None:
    before = plan_of(CONFIG)
    entries = tracked(before, flows_to(3000))
    everything, complete = readmodels.dry_run(before, before, entries.items())
    assert complete and everything[VIP]["flows_tracked"] == 3000
    partial, complete = readmodels.dry_run(before, before, entries.items(), seconds=0.0)
    assert not complete and partial[VIP]["flows_tracked"] < 3000


def test_lookup_and_flows_name_vip_and_backend() -> None:
    plan = plan_of(CONFIG)
    flow = flows_to(1)[0]
    answer = readmodels.lookup(plan, None, flow)
    assert answer["vip"] == VIP and answer["conntrack"] == "none"
    assert answer["outcome"] == "ct_miss" and answer["forwards"]
    expected = pipeline.lookup(plan.state, flow)
    assert answer["backend"] == str(
        ip_address(plan.state.backends[expected.backend_index or 0].addr)
    )
    other = readmodels.lookup(plan, None, Flow.of("198.18.5.5", "198.18.77.7", PROTO_TCP, 1, 80))
    assert (other["outcome"], other["vip"], other["backend"]) == ("no_vip", None, None)


def test_the_openapi_document_covers_every_route_and_every_schema_it_references() -> None:
    document = openapi.document()
    app = create_app(Daemon(CONFIG, DaemonOptions(api=None)))
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        routes.add((route.method.lower(), path))
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    routes -= {("head", path) for _, path in routes}
    assert routes == documented
    text = str(document)
    for name in document["components"]["schemas"]:
        assert f"'#/components/schemas/{name}'" in text, name


def _titles(value: object, in_properties: bool = False) -> list[str]:
    """pydantic's "title" keys left in ``value`` (a property named title is not one)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "title" and not in_properties and isinstance(item, str):
                found.append(item)
            found += _titles(item, key == "properties" and not in_properties)
    elif isinstance(value, list):
        for item in value:
            found += _titles(item)
    return found


def test_the_openapi_schemas_come_from_the_code() -> None:
    document = openapi.document()
    schemas = document["components"]["schemas"]
    text = str(document)
    assert "$defs" not in text and not _titles(schemas)
    for ref in re.findall(r"'\$ref': '#/components/schemas/([^']+)'", text):
        assert ref in schemas, ref
    assert schemas["AdminState"]["enum"] == [state.value for state in AdminState]
    assert schemas["BackendView"]["properties"]["state"] == {
        "$ref": "#/components/schemas/AdminState"
    }
    assert schemas["BackendHealth"]["properties"]["admin"]["enum"] == ["up", "drain", "down"]
    assert set(schemas["BackendView"]["required"]) == set(
        schemas_module.BackendView.__annotations__
    )
    # The bodies of the path's writes: the models' schemas without their required keys.
    assert "required" not in schemas["VipBody"]
    assert schemas["VipBody"]["properties"] == schemas["Vip"]["properties"]
    assert schemas["Config"]["additionalProperties"] is False


def test_the_openapi_document_is_valid_openapi_3_1_with_operation_ids_and_tags() -> None:
    """Issue 15, item 2: validated by a standard validator, not only by our own fuzzing."""
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator: raises on any violation of the 3.1 schema
    tags = {tag["name"] for tag in document["tags"]}
    operation_ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation.get("operationId"), (method, path)
            assert operation.get("tags") and set(operation["tags"]) <= tags, (method, path)
            operation_ids.append(operation["operationId"])
            for status, response in operation["responses"].items():
                if (status.startswith(("4", "5")) and status != "503") or "Error" in str(response):
                    assert set(response["content"]) == {"application/problem+json"}, (
                        method,
                        path,
                        status,
                    )
            if method in ("put", "patch", "delete", "post"):
                assert operation["security"] == [{"bearer": []}], (method, path)
    assert len(operation_ids) == len(set(operation_ids))


def test_a_document_that_breaks_the_openapi_schema_is_caught_by_the_validator() -> None:
    """The validator is really run: a 3.0-only construct in a 3.1 document fails it."""
    document = openapi.document()
    document["paths"]["/healthz"]["get"]["responses"] = {"200": {"content": {}}}  # no description
    with pytest.raises(OpenAPIValidationError):
        validate(document)
