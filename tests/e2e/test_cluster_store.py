"""Three real daemons (the control bed's: real balancer programs and maps, their APIs over real
TCP) sharing one real etcd (docs/cluster.md): a change through one node reaches the others;
racing writes are all kept or refused with 412; etcd paused under traffic loses no packet,
refuses writes with 503, and the nodes converge when it returns; a node started while etcd is
down starts from its saved state; a malformed value is refused by every node alike."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from rusty_rail.api.client import ApiClient, ApiUnreachable
from rusty_rail.cli import build_parser
from rusty_rail.cli import ctl as ctl_module
from rusty_rail.control import state_file
from rusty_rail.dataplane.structs import MAX_VIPS
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import DataplaneState, Verdict
from rusty_rail.wire.frames import Outer, gre_frame
from tests.support.control_bed import BASE_TOML, VIP_PATH, Bed, Node, base_config, control_bed
from tests.support.etcd_server import EtcdServer, etcd_server

pytestmark = pytest.mark.e2e

DEVICES = ("eth0", "eth1", "eth2")


def wait(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """A bound on waiting for convergence, not a timing budget: it only stops a hung test."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def health(node: Node) -> dict[str, Any]:
    body = node.call("GET", "/healthz").body
    assert isinstance(body, dict)
    return body


def revision(node: Node) -> int:
    return int(health(node)["store"]["revision"])


def tables(node: Node) -> dict[str, str]:
    return {name: vip["fingerprint"] for name, vip in health(node)["vips"].items()}


def converged(nodes: list[Node]) -> bool:
    views = [(revision(node), tables(node), health(node)["config_fingerprint"]) for node in nodes]
    return all(view == views[0] for view in views)


def state(node: Node) -> DataplaneState:
    return replace(node.maps.read_state(conntrack=False), conntrack={})


def forward(node: Node, sport: int) -> tuple[Verdict, bytes]:
    """One GRE packet of a client flow to the VIP through the node's real program."""
    flow = Flow(ip_address("198.18.5.5").packed, ip_address("198.18.100.1").packed, 6, sport, 80)
    frame = gre_frame(flow, outer=Outer(dst=node.lb_address))
    assert node.daemon.balancer is not None
    run = node.daemon.balancer.program.test_run(frame)
    return Verdict(run.retval), run.data


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Bed, EtcdServer, list[Node]]]:
    with (
        control_bed(len(DEVICES)) as bed,
        etcd_server(bed.namespace.name, tmp_path) as etcd,
    ):
        nodes = [
            bed.start(
                device,
                base_config(device, f"198.18.{10 * i}.2"),
                store=etcd.address,
                node_name=f"lb{i}",
                state_file=tmp_path / f"{device}.state.json",
            )
            for i, device in enumerate(DEVICES)
        ]
        try:
            yield bed, etcd, nodes
        finally:
            for device in list(bed.nodes):  # before etcd goes
                bed.stop(device)


def test_a_change_through_one_node_reaches_every_node(
    cluster: tuple[Bed, EtcdServer, list[Node]],
) -> None:
    _bed, etcd, nodes = cluster
    first = revision(nodes[0])
    assert first > 0 and all(revision(node) == first for node in nodes)  # seeded once
    answer = nodes[1].call("PUT", f"{VIP_PATH}/backends/198.18.64.9", {"weight": 2})
    assert answer.status == 201, answer.body
    # The write answered once the node that took it had applied it.
    assert revision(nodes[1]) > first
    wait(lambda: converged(nodes), "every node on the new revision, same tables")
    stored = json.loads(etcd.client.get(etcd.address.config_key).data or b"")
    assert "device" not in stored and "lb_address" not in stored  # each node's own
    assert any(b["address"] == "198.18.64.9" for b in stored["vips"][0]["backends"])
    assert all(n.daemon.config.device == d for n, d in zip(nodes, DEVICES, strict=True))
    # ctl cluster lists the registered nodes from the store and sees them agree.
    out = io.StringIO()
    args = build_parser().parse_args(["ctl", "--api", nodes[0].client.url, "--json", "cluster"])
    assert ctl_module.run(args, out=out) == 0, out.getvalue()
    view = json.loads(out.getvalue())
    assert view["agree"] is True
    assert sorted(node["name"] for node in view["nodes"]) == ["lb0", "lb1", "lb2"]
    metrics = nodes[2].call("GET", "/metrics").body
    assert f"rusty_rail_store_revision {revision(nodes[2])}.0" in str(metrics)
    assert "rusty_rail_store_reachable 1.0" in str(metrics)


def test_racing_writes_are_all_kept_or_refused_with_412(
    cluster: tuple[Bed, EtcdServer, list[Node]],
) -> None:
    _bed, _etcd, nodes = cluster
    # Without If-Match: both writes are kept, whichever reached etcd first.
    answers: dict[int, int] = {}

    def add(i: int) -> None:
        answer = nodes[i].call("PUT", f"{VIP_PATH}/backends/198.18.64.{20 + i}", {})
        answers[i] = answer.status

    threads = [threading.Thread(target=add, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == {0: 201, 1: 201}
    wait(lambda: converged(nodes), "every node on the last revision")
    addresses = {str(b.address) for b in nodes[2].daemon.config.vips[0].backends}
    assert {"198.18.64.20", "198.18.64.21"} <= addresses
    # With If-Match on the same ETag: the second is refused, nothing lost, nothing doubled.
    # (Each node's ETag covers its own keys too: each client read it from its node.)
    etags = [nodes[i].call("GET", "/v1/config").headers["ETag"] for i in (0, 1)]
    path = f"{VIP_PATH}/backends/198.18.64."
    first = nodes[0].call("DELETE", f"{path}20", headers={"If-Match": etags[0]})
    second = nodes[1].call("DELETE", f"{path}21", headers={"If-Match": etags[1]})
    assert (first.status, second.status) == (200, 412), second.body
    wait(lambda: converged(nodes), "every node on the winner's revision")
    addresses = {str(b.address) for b in nodes[2].daemon.config.vips[0].backends}
    assert "198.18.64.20" not in addresses and "198.18.64.21" in addresses


def test_etcd_down_under_traffic(
    cluster: tuple[Bed, EtcdServer, list[Node]], tmp_path: Path
) -> None:
    bed, etcd, nodes = cluster
    before = {node.device: state(node) for node in nodes}
    sent = {node.device: [forward(node, sport) for sport in range(40000, 40050)] for node in nodes}
    verdicts = {verdict for out in sent.values() for verdict, _ in out}
    assert verdicts <= {Verdict.TX, Verdict.REDIRECT}, verdicts  # forwarded, none dropped
    applied = revision(nodes[0])
    etcd.pause()
    try:
        refused = nodes[0].call("PUT", f"{VIP_PATH}/backends/198.18.64.30", {})
        assert refused.status == 503, refused.body
        assert "store is unreachable" in refused.body["message"]
        # etcd is paused, not gone: the request may sit in its socket; the answer says so.
        assert "may still take it" in refused.body["message"]
        for node in nodes:
            wait(lambda node=node: not health(node)["store"]["reachable"], "the node noticed")
            body = health(node)
            # Still forwarding: no reason against traffic (the bed's programs are not
            # attached: that is their only reason), a warning that writes are refused.
            assert body["reasons"] == [f"the data plane is not attached to {node.device}"]
            assert body["store"]["revision"] == applied
            assert any("unreachable" in warning for warning in body["warnings"])
            assert "rusty_rail_store_reachable 0.0" in str(node.call("GET", "/metrics").body)
            # Every packet forwarded exactly as before the outage; the maps untouched.
            again = [forward(node, sport) for sport in range(40000, 40050)]
            assert again == sent[node.device]
            assert state(node) == before[node.device]
        # A node started while etcd is down starts from its last saved state (what
        # startup_config reads first, as `rusty-rail run` does).
        bed.stop("eth2")
        saved = state_file.read(tmp_path / "eth2.state.json")
        assert saved is not None and saved.source == f"store revision {applied}"
        restarted = bed.start(
            "eth2",
            saved.config,
            store=etcd.address,
            node_name="lb2",
            state_file=tmp_path / "eth2.state.json",
        )
        assert revision(restarted) == applied and not health(restarted)["store"]["reachable"]
        assert restarted.daemon.config == nodes[0].daemon.config.model_copy(
            update={"device": "eth2", "lb_address": restarted.daemon.config.lb_address}
        )
        nodes[2] = restarted
    finally:
        etcd.resume()
    for node in nodes:
        wait(lambda node=node: health(node)["store"]["reachable"], "the node reconnected")
    answer = nodes[0].call("PUT", f"{VIP_PATH}/backends/198.18.64.31", {})
    assert answer.status == 201, answer.body
    wait(lambda: converged(nodes), "every node caught up")
    assert revision(nodes[2]) > applied


def test_a_value_written_behind_the_nodes_backs_is_followed_or_refused_alike(
    cluster: tuple[Bed, EtcdServer, list[Node]],
) -> None:
    _bed, etcd, nodes = cluster
    key = etcd.address.config_key
    good = json.loads(etcd.client.get(key).data or b"")
    good["vips"][1]["backends"] = ["198.18.64.7"]
    written = etcd.client.put(key, json.dumps(good).encode())  # another tool, a good value
    wait(lambda: all(revision(node) == written for node in nodes), "every node follows it")
    assert converged(nodes)
    before = {node.device: state(node) for node in nodes}
    bad = json.loads(json.dumps(good))
    bad["vips"][0]["backends"][0]["weight"] = -3
    bad_revision = etcd.client.put(key, json.dumps(bad).encode())
    for node in nodes:
        wait(
            lambda node=node: health(node)["store"]["rejected"] is not None,
            "the node refused the revision",
        )
        body = health(node)
        assert body["store"]["rejected"]["revision"] == bad_revision
        assert "weight" in body["store"]["rejected"]["error"]
        assert body["store"]["revision"] == written  # the last good one stays
        assert state(node) == before[node.device]
        assert any(f"revision {bad_revision} was refused" in w for w in body["warnings"])
    errors = {health(node)["store"]["rejected"]["error"] for node in nodes}
    assert len(errors) == 1  # refused the same way everywhere
    # A node's own key in the store is refused by name too.
    own = etcd.client.put(key, json.dumps(good | {"device": "eth9"}).encode())
    wait(
        lambda: all(
            (health(node)["store"]["rejected"] or {}).get("revision") == own for node in nodes
        ),
        "every node refused the node key",
    )
    assert "device" in health(nodes[0])["store"]["rejected"]["error"]
    # An API write fixes it: computed from the last good state, put over the bad revision.
    answer = nodes[1].call("PUT", f"{VIP_PATH}/backends/198.18.64.11", {})
    assert answer.status == 201, answer.body
    wait(lambda: converged(nodes), "every node on the fixed revision")
    assert all(health(node)["store"]["rejected"] is None for node in nodes)
    # A deleted key is refused alike; the next write creates it again.
    deleted = etcd.client.delete(key)
    wait(
        lambda: all(
            (health(node)["store"]["rejected"] or {}).get("revision") == deleted for node in nodes
        ),
        "every node refused the deletion",
    )
    assert "deleted" in health(nodes[2])["store"]["rejected"]["error"]
    answer = nodes[0].call("PUT", f"{VIP_PATH}/backends/198.18.64.12", {})
    assert answer.status == 201, answer.body
    wait(lambda: converged(nodes), "every node on the re-created key")
    assert etcd.client.get(key).data is not None
    # SIGHUP does not split a node off the store: the reload is refused, named.
    before_reload = nodes[0].daemon.config
    nodes[0].daemon.reload({})
    failed = nodes[0].daemon.reloads.failed
    assert failed is not None and "run --store" in failed["error"]
    assert nodes[0].daemon.config is before_reload


def test_rusty_rail_run_processes_share_the_store(tmp_path: Path) -> None:
    """The command itself: `rusty-rail run --store` seeds the store or follows it, a write
    through one process reaches the other, SIGHUP is refused while the store holds the state,
    and a malformed --store is refused before anything is attached."""
    token = tmp_path / "token"
    token.write_text("a-token-of-the-cluster-test\n")
    token.chmod(0o600)
    with (
        control_bed(2) as bed,
        etcd_server(bed.namespace.name, tmp_path) as etcd,
    ):

        def command(i: int, *extra: str) -> list[str]:
            config = tmp_path / f"lb{i}.toml"
            config.write_text(f'device = "eth{i}"\nlb_address = "198.18.{10 * i}.2"\n{BASE_TOML}')
            return ["ip", "netns", "exec", bed.namespace.name, sys.executable, "-m",
                    "rusty_rail", "run", "--config", str(config), "--api",
                    f"127.0.0.1:{9180 + i}", "--api-token-file", str(token), "--pin-root",
                    str(bed.pin_root), "--detach-on-exit", "--node-name", f"lb{i}",
                    *extra]  # fmt: skip

        refused = subprocess.run(
            command(0, "--store", "etcd://127.0.0.1:2379"), capture_output=True, text=True
        )
        assert refused.returncode == 2 and "a key prefix is needed" in refused.stderr
        assert "nothing was attached" in refused.stderr
        logs = [(tmp_path / f"lb{i}.log").open("wb") for i in (0, 1)]
        processes = [
            subprocess.Popen(command(i, "--store", str(etcd.address)), stderr=logs[i])
            for i in (0, 1)
        ]
        try:
            clients = [ApiClient(f"http://127.0.0.1:{9180 + i}", token.read_text().strip())
                       for i in (0, 1)]  # fmt: skip

            def store_of(i: int) -> dict[str, Any] | None:
                try:
                    body = clients[i].request("GET", "/healthz", check=False).body
                except ApiUnreachable:
                    return None
                return body.get("store") if isinstance(body, dict) else None

            wait(lambda: all(store_of(i) is not None for i in (0, 1)), "both serve")
            answer = clients[1].request("PUT", f"{VIP_PATH}/backends/198.18.64.40", {})
            assert answer.status == 201
            written = store_of(1)
            assert written is not None
            wait(
                lambda: (store_of(0) or {}).get("revision") == written["revision"],
                "the other process follows",
            )
            processes[0].send_signal(signal.SIGHUP)
            wait(
                lambda: (
                    clients[0].request("GET", "/healthz").body["config_reload"]["failed"]
                    is not None
                ),
                "the reload refused",
            )
            assert (store_of(0) or {}).get("revision") == written["revision"]
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=60)
            for log in logs:
                log.close()
        assert all(process.returncode == 0 for process in processes)
        assert "reload refused" in (tmp_path / "lb0.log").read_text()


def test_a_state_the_data_plane_cannot_hold_never_reaches_the_store(
    cluster: tuple[Bed, EtcdServer, list[Node]],
) -> None:
    _bed, etcd, nodes = cluster
    stored = etcd.client.get(etcd.address.config_key)
    body = nodes[0].daemon.config.model_dump(mode="json")
    body["vips"] = [
        {"address": f"198.18.{100 + i // 250}.{i % 250 + 1}", "backends": ["198.18.64.1"]}
        for i in range(MAX_VIPS + 1)
    ]
    answer = nodes[0].call("PUT", "/v1/config", body)
    assert answer.status == 422, answer.body
    assert f"at most {MAX_VIPS}" in answer.body["message"]
    assert etcd.client.get(etcd.address.config_key) == replace(
        stored, revision=etcd.client.get(etcd.address.config_key).revision
    )
    assert all(revision(node) == stored.mod_revision for node in nodes)


def test_etcd_killed_and_started_again(cluster: tuple[Bed, EtcdServer, list[Node]]) -> None:
    """A store that is gone (connections refused): writes are refused saying nothing was
    changed; the nodes reconnect to the same member started again and converge."""
    _bed, etcd, nodes = cluster
    applied = revision(nodes[0])
    before = {node.device: state(node) for node in nodes}
    etcd.kill()
    try:
        refused = nodes[1].call("PUT", f"{VIP_PATH}/backends/198.18.64.50", {})
        assert refused.status == 503, refused.body
        assert "nothing was changed" in refused.body["message"]
        for node in nodes:
            wait(lambda node=node: not health(node)["store"]["reachable"], "the node noticed")
            assert state(node) == before[node.device]
    finally:
        etcd.start_again()
    for node in nodes:
        wait(lambda node=node: health(node)["store"]["reachable"], "the node reconnected")
    assert all(revision(node) == applied for node in nodes)
    answer = nodes[2].call("PUT", f"{VIP_PATH}/backends/198.18.64.50", {})
    assert answer.status == 201, answer.body
    wait(lambda: converged(nodes), "every node follows the store again")
    assert revision(nodes[0]) > applied
