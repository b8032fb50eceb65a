"""The store's pure parts (docs/cluster.md): the --store address, the stored document and
what a node makes of it, and how `ctl cluster` decides whether the nodes agree."""

from __future__ import annotations

import json

import pytest

from rusty_rail.cli import build_parser
from rusty_rail.cli.ctl_cluster import ClusterView, NodeView
from rusty_rail.config import ConfigError, config_from_toml_text
from rusty_rail.control.cluster import node_config, shared_document
from rusty_rail.control.fingerprint import NODE_KEYS, config_fingerprint
from rusty_rail.control.store import parse_store

LOCAL = config_from_toml_text(
    """
device = "eth0"
lb_address = "198.18.0.2"
[[vips]]
address = "198.18.100.1"
backends = ["198.18.64.1", "198.18.64.2"]
""",
    "test",
)
WHERE = "etcd /rr/config at revision 7"


def test_store_address() -> None:
    address = parse_store("etcd://198.18.0.5:2379,198.18.0.6:2379/lb/cluster-a/")
    assert address.endpoints == ("198.18.0.5:2379", "198.18.0.6:2379")
    assert address.config_key == "lb/cluster-a/config"
    assert address.nodes_prefix == "lb/cluster-a/nodes/"
    assert str(address) == "etcd://198.18.0.5:2379,198.18.0.6:2379/lb/cluster-a"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("http://198.18.0.5:2379/lb", "etcd://HOST:PORT"),
        ("etcd://198.18.0.5:2379", "a key prefix is needed"),
        ("etcd://198.18.0.5:2379/", "a key prefix is needed"),
        ("etcd://198.18.0.5/lb", "'198.18.0.5' is not HOST:PORT"),
        ("etcd://198.18.0.5:0/lb", "bad port '0'"),
        ("etcd://198.18.0.5:x/lb", "bad port 'x'"),
        ("etcd://198.18.0.5:2379/l b", "white space"),
    ],
)
def test_store_address_refused(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_store(text)


def test_the_stored_document_is_the_cluster_wide_part() -> None:
    document = json.loads(shared_document(LOCAL))
    assert not set(NODE_KEYS) & set(document)
    other = LOCAL.model_copy(update={"device": "eth7"})
    assert shared_document(other) == shared_document(LOCAL)
    back = node_config(shared_document(LOCAL), other, WHERE)
    assert back.device == "eth7" and config_fingerprint(back) == config_fingerprint(LOCAL)


def refusal(data: bytes | None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        node_config(data, LOCAL, WHERE)
    assert caught.value.source == WHERE
    return caught.value


def test_a_malformed_value_is_refused_naming_the_field() -> None:
    document = json.loads(shared_document(LOCAL))
    document["vips"][0]["backends"][1]["weight"] = -3
    error = refusal(json.dumps(document).encode())
    assert [p.loc for p in error.problems] == [("vips", 0, "backends", 1, "weight")]
    assert "not JSON" in str(refusal(b"{vips"))
    assert "must be a JSON object" in str(refusal(b"[1, 2]"))
    assert "deleted" in str(refusal(None))
    own = refusal(json.dumps(document | {"device": "eth1", "weight": 1}).encode())
    assert ("device",) in [p.loc for p in own.problems]


def view(*nodes: tuple[int | None, dict[str, str]]) -> ClusterView:
    return ClusterView(
        [
            NodeView(
                f"lb{i}",
                f"http://198.18.0.{i}:9180",
                None
                if revision is None
                else {"store": {"revision": revision}, "vips": {
                    name: {"fingerprint": fp} for name, fp in prints.items()}},
                None if revision is not None else "unreachable",
            )
            for i, (revision, prints) in enumerate(nodes)
        ]
    )  # fmt: skip


def test_cluster_agreement() -> None:
    assert view((5, {"a": "x"}), (5, {"a": "x"})).agree
    assert not view((5, {"a": "x"}), (4, {"a": "x"})).agree  # a split view
    assert not view((5, {"a": "x"}), (5, {"a": "y"})).agree
    assert not view((5, {"a": "x"}), (None, {})).agree  # a node that does not answer
    assert not ClusterView([]).agree
    args = build_parser().parse_args(["ctl", "cluster", "--nodes", "198.18.0.2:9180"])
    assert args.nodes == "198.18.0.2:9180"
    run = build_parser().parse_args(["run", "--store", "etcd://198.18.0.5:2379/lb"])
    assert run.store == "etcd://198.18.0.5:2379/lb"
