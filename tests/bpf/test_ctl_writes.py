"""Issue 15, item 1: `ctl` writes do what they say, against a real daemon. Adding what exists
is refused (nothing is reset by surprise) unless --replace; `config get` / `config put` carry
the ETag, so a change made in between is not lost unless --force; a whole file is previewed
with `config put --dry-run` and `plan config`."""

from __future__ import annotations

import argparse
import io
import json
import re
import time
from pathlib import Path

import pytest

from rusty_rail.cli.ctl import EXIT_OK, EXIT_REFUSED, add_arguments
from rusty_rail.cli.ctl import run as run_ctl
from rusty_rail.timestamps import from_rfc3339
from tests.support.control_bed import VIP, VIP_PATH, Node

pytestmark = pytest.mark.bpf

EXIT_USAGE = 2


def ctl(node: Node, *argv: str, as_json: bool = True) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    json_flag = ["--json"] if as_json else []
    arguments = parser.parse_args(["--api", node.client.url, *json_flag, *argv])
    out, err = io.StringIO(), io.StringIO()
    status = run_ctl(arguments, out, err)
    return status, out.getvalue(), err.getvalue()


def backend(node: Node, address: str) -> dict[str, object]:
    body: dict[str, object] = node.call("GET", f"{VIP_PATH}/backends/{address}").body
    return {key: body[key] for key in ("weight", "state")}


def test_adding_a_backend_that_exists_is_refused_and_changes_nothing(node: Node) -> None:
    assert ctl(node, "backend", "weight", VIP, "198.18.64.1", "3")[0] == EXIT_OK
    assert ctl(node, "backend", "drain", VIP, "198.18.64.1")[0] == EXIT_OK
    before = node.call("GET", "/v1/config").body
    status, _, err = ctl(node, "backend", "add", VIP, "198.18.64.1")
    assert status == EXIT_REFUSED
    assert "backend 198.18.64.1 exists: change it with `ctl backend weight|up|drain|down`" in err
    assert backend(node, "198.18.64.1") == {"weight": 3, "state": "drain"}  # not reset
    assert node.call("GET", "/v1/config").body == before
    # The API itself: If-None-Match: * makes a PUT create-only.
    answer = node.client.request(
        "PUT", f"{VIP_PATH}/backends/198.18.64.1", {}, headers={"If-None-Match": "*"}, check=False
    )
    assert answer.status == 412 and answer.body["exists"] is True
    # Explicitly replaced: weight 1, up.
    assert ctl(node, "backend", "add", VIP, "198.18.64.1", "--replace")[0] == EXIT_OK
    assert backend(node, "198.18.64.1") == {"weight": 1, "state": "up"}
    # A new one is simply added.
    status, out, _ = ctl(node, "backend", "add", VIP, "198.18.64.9", "--weight", "2")
    assert status == EXIT_OK and json.loads(out)["changed"] is True


def test_adding_a_vip_that_exists_is_refused(node: Node) -> None:
    status, _, err = ctl(node, "vip", "add", VIP)
    assert status == EXIT_REFUSED and f"VIP {VIP} exists" in err
    assert len(node.call("GET", VIP_PATH).body["backends"]) == 3


def test_config_get_and_put_carry_the_etag(node: Node, tmp_path: Path) -> None:
    saved = tmp_path / "lb.json"
    status, out, _ = ctl(node, "config", "get")
    assert status == EXIT_OK
    saved.write_text(out)
    got = json.loads(out)
    assert set(got) == {"etag", "config"} and len(got["etag"]) == 64
    edited = got | {"config": got["config"] | {"table_size": 1031}}
    saved.write_text(json.dumps(edited))
    status, out, err = ctl(node, "config", "put", str(saved), "--dry-run")
    assert status == EXIT_OK and "flows_examined" in json.loads(out), err
    assert ctl(node, "plan", "config", str(saved))[0] == EXIT_OK
    assert node.call("GET", "/v1/config").body["table_size"] == 1021  # a dry run applies nothing

    # Someone else changes the desired state in between: the put is refused, nothing lost.
    assert ctl(node, "backend", "add", VIP, "198.18.64.8")[0] == EXIT_OK
    status, _, err = ctl(node, "config", "put", str(saved))
    assert status == EXIT_REFUSED and f"the desired state changed since {saved} was read" in err
    assert node.call("GET", f"{VIP_PATH}/backends/198.18.64.8").status == 200
    # --force replaces it whatever it is.
    status, out, err = ctl(node, "config", "put", str(saved), "--force")
    assert status == EXIT_OK, err
    assert node.call("GET", "/v1/config").body["table_size"] == 1031

    # Read again, the put goes through.
    status, out, _ = ctl(node, "config", "get")
    fresh = json.loads(out)
    saved.write_text(json.dumps(fresh | {"config": fresh["config"] | {"table_size": 1021}}))
    assert ctl(node, "config", "put", str(saved))[0] == EXIT_OK


def test_a_file_without_an_etag_needs_force(node: Node, tmp_path: Path) -> None:
    plain = tmp_path / "lb.toml"
    plain.write_text('device = "eth0"\nlb_address = "198.18.0.2"\ntable_size = 1021\n')
    status, _, err = ctl(node, "config", "put", str(plain))
    assert status == EXIT_USAGE and "carries no ETag" in err and "--force" in err
    assert len(node.call("GET", "/v1/vips").body["vips"]) == 2  # unchanged
    status, _, err = ctl(node, "config", "put", str(plain), "--force")
    assert status == EXIT_OK, err
    assert node.call("GET", "/v1/vips").body["vips"] == []


def test_every_change_is_an_event_with_who_what_and_when(node: Node) -> None:
    """`ctl events` is an audit log: each VIP and backend added, removed, re-weighted or
    changed in state is an event naming the source and the client; times are RFC 3339."""
    since = node.call("GET", "/v1/events").body["events"]
    last = since[-1]["id"] if since else 0
    assert ctl(node, "backend", "add", VIP, "198.18.64.7", "--weight", "2")[0] == EXIT_OK
    assert ctl(node, "backend", "drain", VIP, "198.18.64.7")[0] == EXIT_OK
    assert ctl(node, "backend", "del", VIP, "198.18.64.7")[0] == EXIT_OK
    assert ctl(node, "vip", "add", "198.18.100.9:443/tcp", "--backend", "198.18.64.5")[0] == 0
    events = node.call("GET", f"/v1/events?since={last}").body["events"]
    changes = [(e["vip"], e["backend"], e["from"], e["to"], e["cause"]) for e in events
               if e["kind"] == "change"]  # fmt: skip
    assert changes == [
        (VIP, "198.18.64.7", None, "weight 2, up", "api"),
        (VIP, "198.18.64.7", "weight 2, up", "weight 2, drain", "api"),
        (VIP, "198.18.64.7", "weight 2, drain", None, "api"),
        ("198.18.100.9:443/tcp", None, None, "1 backends", "api"),
    ]
    detail = next(e["detail"] for e in events if e["kind"] == "change")
    assert detail.startswith("added by api from 127.0.0.1 (generation ")
    at = events[-1]["at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", at), at
    assert abs(from_rfc3339(at) - time.time()) < 60
    status, out, _ = ctl(node, "events", as_json=False)
    assert (
        status == EXIT_OK and "198.18.64.7: weight 2, up -> weight 2, drain (api: changed by" in out
    )


def test_config_put_names_the_file_and_position_of_each_problem(node: Node, tmp_path: Path) -> None:
    bad = tmp_path / "lb.toml"
    bad.write_text(
        'device = "eth0"\nlb_address = "198.18.0.2"\n\n[[vips]]\naddress = "198.18.100.1"\n'
        'backends = [{ address = "198.18.64.1", weight = -1 }]\n'
    )
    status, _, err = ctl(node, "config", "put", str(bad), "--force")
    assert status == EXIT_REFUSED
    assert f"  {bad}:6:49: vips[0].backends[0].weight: -1: must be between 0 and 65535" in err
    status, out, _ = ctl(node, "config", "get")
    got = json.loads(out)
    got["config"]["vips"][0]["port"] = 70000
    enveloped = tmp_path / "lb.json"
    enveloped.write_text(json.dumps(got, indent=1))
    status, _, err = ctl(node, "config", "put", str(enveloped))
    assert status == EXIT_REFUSED and f"  {enveloped}:" in err and "vips[0].port: 70000" in err
