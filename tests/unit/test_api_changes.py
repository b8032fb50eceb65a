"""The API's writes as pure functions: each route's change to the configuration, validated
whole, with errors located in the request as the client wrote it."""

from __future__ import annotations

import hashlib
import json
from http import HTTPStatus
from ipaddress import IPv4Address, IPv6Address

import pytest

from rusty_rail.api import changes
from rusty_rail.api.changes import Target
from rusty_rail.api.errors import ApiError
from rusty_rail.config import AdminState, Config, Vip, config_from_toml_text, parse_vip_key
from rusty_rail.control import health, plan
from rusty_rail.control.fingerprint import config_etag, config_fingerprint
from rusty_rail.control.startup import RESTART_KEYS
from rusty_rail.model.state import VipKey as MatchKey

VIP = "198.18.100.1:80/tcp"
BASE = config_from_toml_text(
    """
device = "eth0"
[[vips]]
address = "198.18.100.1"
protocol = "tcp"
port = 80
backends = ["198.18.2.1", {address = "198.18.2.2", weight = 2}]
[[vips]]
address = "198.18.100.2"
backends = ["198.18.2.1"]
"""
)


def target(text: str = VIP) -> Target:
    return changes.parse_target(text)


def problems(error: pytest.ExceptionInfo[ApiError]) -> list[tuple[str, str]]:
    return [(p.path, p.reason) for p in error.value.problems]


def test_targets_are_vip_keys_or_the_default_set() -> None:
    assert target().key == parse_vip_key(VIP)
    assert target("[2001:2::1]:53/udp").name == "[2001:2::1]:53/udp"
    assert target("default").is_default and target("default").name == "default"
    with pytest.raises(ApiError) as error:
        target("198.18.100.1:80")
    assert error.value.status == HTTPStatus.BAD_REQUEST
    assert problems(error)[0][0] == "vip"
    assert "port needs a protocol" in problems(error)[0][1]


def test_backend_addresses_from_the_path_are_checked() -> None:
    assert changes.parse_address("198.18.2.9") == IPv4Address("198.18.2.9")
    for bad in ("198.18.2.0/24", "0.0.0.0", "nope"):
        with pytest.raises(ApiError) as error:
            changes.parse_address(bad)
        assert error.value.status == HTTPStatus.BAD_REQUEST
        assert problems(error)[0][0] == "address"


def test_put_backend_adds_then_replaces_and_keeps_everything_else() -> None:
    address = IPv4Address("198.18.2.3")
    added, created = changes.put_backend(BASE, target(), address, {"weight": 3})
    assert created
    assert [str(b.address) for b in added.vips[0].backends] == [
        "198.18.2.1",
        "198.18.2.2",
        "198.18.2.3",
    ]
    assert added.vips[0].backends[2].weight == 3
    assert added.vips[1] == BASE.vips[1]
    replaced, created = changes.put_backend(added, target(), address, {"state": "drain"})
    assert not created
    assert replaced.vips[0].backends[2].weight == 1  # PUT replaces the whole backend
    assert replaced.vips[0].backends[2].state is AdminState.DRAIN


def test_bad_backend_bodies_name_the_field() -> None:
    address = IPv4Address("198.18.2.3")
    cases = [
        ({"weight": -1}, "weight", "between 0 and 65535"),
        ({"weight": "2"}, "weight", "must be an integer"),
        ({"state": "sleeping"}, "state", "must be one of: up, drain, down"),
        ({"wieght": 2}, "wieght", "did you mean weight?"),
        ({"address": "198.18.2.4"}, "address", "does not match the path"),
    ]
    for body, path, reason in cases:
        with pytest.raises(ApiError) as error:
            changes.put_backend(BASE, target(), address, body)
        assert error.value.status == HTTPStatus.UNPROCESSABLE_ENTITY
        assert problems(error)[0][0] == path, body
        assert reason in problems(error)[0][1], body
    with pytest.raises(ApiError) as error:
        changes.put_backend(BASE, target(), address, [1, 2])
    assert problems(error) == [("", "must be a JSON object")]


def test_a_backend_that_breaks_the_configuration_is_refused_where_it_was_written() -> None:
    with pytest.raises(ApiError) as error:
        changes.put_backend(BASE, target(), IPv4Address("198.18.100.2"), {})
    assert problems(error) == [("address", "is a VIP address (vips[1])")]


def test_a_vip_that_breaks_another_part_of_the_configuration_names_that_part() -> None:
    body = {"backends": ["198.18.9.9"]}
    with pytest.raises(ApiError) as error:
        changes.put_vip(BASE, target("198.18.2.1"), body)
    assert ("config.vips[0].backends[0].address", "is a VIP address (vips[2])") in problems(error)


def test_unknown_vips_and_backends_are_404() -> None:
    address = IPv4Address("198.18.2.1")
    for call in (
        lambda: changes.put_backend(BASE, target("198.18.100.9"), address, {}),
        lambda: changes.patch_backend(BASE, target(), IPv4Address("198.18.2.9"), {}),
        lambda: changes.delete_backend(BASE, target(), IPv4Address("198.18.2.9")),
        lambda: changes.delete_vip(BASE, target("198.18.100.9")),
        lambda: changes.delete_vip(BASE, target("default")),
    ):
        with pytest.raises(ApiError) as error:
            call()
        assert error.value.status == HTTPStatus.NOT_FOUND


def test_patch_changes_only_the_given_fields() -> None:
    patched = changes.patch_backend(BASE, target(), IPv4Address("198.18.2.2"), {"state": "down"})
    backend = patched.vips[0].backends[1]
    assert (backend.weight, backend.state) == (2, AdminState.DOWN)
    with pytest.raises(ApiError) as error:
        changes.patch_backend(BASE, target(), IPv4Address("198.18.2.2"), {"weight": 70000})
    assert problems(error)[0][0] == "weight"


def test_put_vip_takes_the_key_from_the_path_and_refuses_a_different_one() -> None:
    created, was_new = changes.put_vip(BASE, target("198.18.100.3:53/udp"), {"backends": []})
    assert was_new and str(created.vips[2].key) == "198.18.100.3:53/udp"
    replaced, was_new = changes.put_vip(BASE, target(), {"backends": ["198.18.2.7"]})
    assert not was_new
    assert [str(b.address) for b in replaced.vips[0].backends] == ["198.18.2.7"]
    with pytest.raises(ApiError) as error:
        changes.put_vip(BASE, target(), {"port": 81, "protocol": "tcp"})
    assert [path for path, _ in problems(error)] == ["port"]
    with pytest.raises(ApiError) as error:
        changes.put_vip(BASE, target(), {"table_size": 65536})
    assert problems(error)[0][0] == "table_size"
    assert "nearest: 65521 and 65537" in problems(error)[0][1]


def test_the_default_set_is_a_vip_named_default() -> None:
    with_default, created = changes.put_backend(
        BASE, target("default"), IPv4Address("198.18.3.1"), {}
    )
    assert created and [str(b.address) for b in with_default.default_backends] == ["198.18.3.1"]
    with pytest.raises(ApiError) as error:
        changes.put_vip(BASE, target("default"), {"backends": [], "table_size": 7})
    assert problems(error)[0][0] == "table_size"
    assert changes.delete_vip(with_default, target("default")).default_backends == ()


def test_deleting_a_backend_or_a_vip_leaves_the_rest() -> None:
    without = changes.delete_backend(BASE, target(), IPv4Address("198.18.2.1"))
    assert [str(b.address) for b in without.vips[0].backends] == ["198.18.2.2"]
    assert without.vips[1] == BASE.vips[1]
    assert [str(v.key) for v in changes.delete_vip(BASE, target()).vips] == ["198.18.100.2"]


def test_replacing_the_config_keeps_fixed_keys_and_refuses_to_change_them() -> None:
    fixed = dict(RESTART_KEYS) | {"lb_address": "set by RR_LB_ADDRESS"}
    body = BASE.model_dump(mode="json")
    del body["device"]
    body["table_size"] = 251
    config = changes.replace_config(BASE, body, fixed)
    assert config.device == "eth0" and config.table_size == 251
    body["device"] = "eth1"
    body["lb_address"] = "198.18.0.9"
    with pytest.raises(ApiError) as error:
        changes.replace_config(BASE, body, fixed)
    assert error.value.status == HTTPStatus.CONFLICT
    assert [path for path, _ in problems(error)] == ["device", "lb_address"]
    with pytest.raises(ApiError) as error:
        changes.replace_config(BASE, {"vips": [{"address": "198.18.100.1", "port": 80}]}, fixed)
    assert error.value.status == HTTPStatus.UNPROCESSABLE_ENTITY
    assert problems(error)[0][0] == "vips[0].port"


def test_a_list_of_changes_applies_in_order_and_locates_problems_in_the_item() -> None:
    steps = [
        {"op": "put_backend", "vip": VIP, "backend": "198.18.2.3", "body": {"weight": 2}},
        {"op": "patch_backend", "vip": VIP, "backend": "198.18.2.1", "body": {"state": "drain"}},
        {"op": "delete_vip", "vip": "198.18.100.2"},
    ]
    config = changes.apply_changes(BASE, steps)
    assert [str(b.address) for b in config.vips[0].backends][-1] == "198.18.2.3"
    assert config.vips[0].backends[0].state is AdminState.DRAIN
    assert len(config.vips) == 1
    bad = [*steps[:1], {"op": "patch_backend", "vip": VIP, "backend": "198.18.2.1",
                        "body": {"weight": -5}}]  # fmt: skip
    with pytest.raises(ApiError) as error:
        changes.apply_changes(BASE, bad)
    assert problems(error)[0][0] == "changes[1].body.weight"
    with pytest.raises(ApiError) as error:
        changes.apply_changes(BASE, [{"op": "explode", "vip": VIP}])
    assert problems(error)[0][0] == "changes[0].op"
    with pytest.raises(ApiError) as error:
        changes.apply_changes(BASE, [])
    assert problems(error)[0][0] == "changes"


def test_config_fingerprint_ignores_order_and_node_keys_but_not_content() -> None:
    reordered = Config.model_validate(
        BASE.model_dump()
        | {
            "vips": [
                BASE.vips[1],
                BASE.vips[0].model_copy(update={"backends": BASE.vips[0].backends[::-1]}),
            ],
            "device": "eth7",
            "lb_address": "198.18.0.3",
            "lb_address_ipv6": "2001:2::3",
            "conntrack_size": 4096,
        }
    )
    assert config_fingerprint(reordered) == config_fingerprint(BASE)
    heavier = changes.patch_backend(BASE, target(), IPv4Address("198.18.2.1"), {"weight": 5})
    assert config_fingerprint(heavier) != config_fingerprint(BASE)


def test_an_unset_lb_address_ipv6_leaves_the_etag_as_before_and_a_set_one_changes_it() -> None:
    # The ETag of a configuration without the key is what the version before it answered: the
    # node keys it knew, sorted, after the fingerprint.
    known = ("device", "xdp_mode", "lb_address", "conntrack_size")
    node = json.dumps(BASE.model_dump(mode="json", include=set(known)), sort_keys=True)
    before = hashlib.sha256(f"{config_fingerprint(BASE)}\n{node}".encode()).hexdigest()
    assert config_etag(BASE) == before
    with_ipv6 = BASE.model_copy(update={"lb_address_ipv6": IPv6Address("2001:2::3")})
    assert config_etag(with_ipv6) != before
    assert config_fingerprint(with_ipv6) == config_fingerprint(BASE)


def test_an_ipv6_vip_has_one_name_in_paths_health_metrics_and_the_plan() -> None:
    # The health monitor's services, the metrics' vip label and the plan's tables all use
    # str(vip.key); the API's paths must arrive at the same text from any spelling.
    packed = IPv6Address("2001:2::10").packed
    for spelling, name, match in (
        ("[2001:0002::0010]:80/tcp", "[2001:2::10]:80/tcp", MatchKey(packed, 6, 80)),
        ("[2001:2::10]", "2001:2::10", MatchKey(packed)),
        ("2001:2:0::10", "2001:2::10", MatchKey(packed)),
    ):
        key = target(spelling).key
        assert key is not None and target(spelling).name == name
        vip = Vip(address=key.address, protocol=key.protocol, port=key.port)
        assert health.service_name(vip) == name
        assert plan.service_name(match) == name
