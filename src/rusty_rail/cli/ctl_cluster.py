"""`rusty-rail ctl cluster`: every node of a cluster (docs/cluster.md), the store revision it
applied, its tables' fingerprints, whether they all agree, and whether each is drained and
announces its VIPs; `rusty-rail ctl node drain|undrain`.

The nodes are the ones registered in the store (each node keeps ``PREFIX/nodes/NAME`` alive
with a lease), found through the store address the node at --api reports, or --store; or the
list given with --nodes. Each is asked for its /healthz.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from rich import box
from rich.table import Table

from rusty_rail.api.client import ApiClient, ApiFailed, ApiUnreachable, api_url
from rusty_rail.cli import EXIT_OK, Subparsers
from rusty_rail.cli.ctl_writes import Context
from rusty_rail.control.store import EtcdClient, StoreError, parse_store

EXIT_SPLIT: Final = 1


@dataclass
class NodeView:
    """One node as ``ctl cluster`` shows it."""

    name: str
    api: str | None
    health: Mapping[str, Any] | None = None
    error: str | None = None

    @property
    def revision(self) -> int | None:
        store = (self.health or {}).get("store")
        return None if store is None else int(store["revision"])

    @property
    def drained(self) -> bool | None:
        return None if self.health is None else self.health.get("drained")

    @property
    def announced(self) -> int | None:
        """VIP routes announced over BGP (None: no [bgp] section, or no answer)."""
        bgp = (self.health or {}).get("bgp")
        return None if bgp is None else len(bgp.get("announced", []))

    @property
    def fingerprints(self) -> dict[str, str | None]:
        vips = (self.health or {}).get("vips", {})
        return {name: vip.get("fingerprint") for name, vip in vips.items()}


@dataclass
class ClusterView:
    nodes: list[NodeView] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        """Every node answered, on one revision, with the same table fingerprints."""
        if not self.nodes or any(node.health is None for node in self.nodes):
            return False
        first = self.nodes[0]
        return all(
            node.revision == first.revision and node.fingerprints == first.fingerprints
            for node in self.nodes
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "agree": self.agree,
            "nodes": [
                {
                    "name": node.name,
                    "api": node.api,
                    "error": node.error,
                    "status": None if node.health is None else node.health.get("status"),
                    "revision": node.revision,
                    "drained": node.drained,
                    "announced_routes": node.announced,
                    "config_fingerprint": None
                    if node.health is None
                    else node.health.get("config_fingerprint"),
                    "fingerprints": node.fingerprints,
                    "store": None if node.health is None else node.health.get("store"),
                }
                for node in self.nodes
            ],
        }


def registered_nodes(store: str) -> list[NodeView]:
    """The nodes registered under the store's prefix (raises ValueError, StoreError)."""
    address = parse_store(store)
    found = EtcdClient(address).get_prefix(address.nodes_prefix)
    nodes = []
    for key, raw in sorted(found.items()):
        name = key.removeprefix(address.nodes_prefix)
        try:
            registration = json.loads(raw)
            api = registration.get("api") if isinstance(registration, dict) else None
        except ValueError:
            api = None
        nodes.append(NodeView(name, api, error=None if api else "registered without an API"))
    return nodes


def gather(nodes: list[NodeView], token: str | None) -> ClusterView:
    """Ask each node for its /healthz."""
    for node in nodes:
        if node.api is None:
            continue
        try:
            node.health = ApiClient(node.api, token).request("GET", "/healthz", check=False).body
        except (ApiUnreachable, ApiFailed) as error:
            node.error = str(error).split(". ")[0]  # the first sentence: one table cell
    return ClusterView(nodes)


def _cluster(ctx: Context, args: argparse.Namespace) -> int:
    if args.nodes:
        nodes = [NodeView(api_url(text), api_url(text)) for text in args.nodes.split(",")]
    else:
        store = args.store
        if store is None:
            here = ctx.client.request("GET", "/healthz", check=False).body
            store = (here.get("store") or {}).get("address") if isinstance(here, dict) else None
            if store is None:
                raise ValueError(
                    "the daemon at --api runs without --store: give --nodes ADDRESS:PORT,..."
                )
        try:
            nodes = registered_nodes(store)
        except StoreError as error:
            raise ValueError(f"cannot list the nodes from {store}: {error}") from None
    view = gather(nodes, ctx.client.token)

    def render(data: Mapping[str, Any]) -> Table:
        names = sorted({name for node in view.nodes for name in node.fingerprints})
        table = Table(box=box.SIMPLE, title="agree" if view.agree else "SPLIT: nodes disagree")
        for column in ("node", "api", "status", "drained", "bgp routes", "revision", *names):
            table.add_column(column)
        for node in view.nodes:
            prints = node.fingerprints
            table.add_row(
                node.name,
                node.api or "-",
                node.error or (node.health or {}).get("status", "-"),
                {None: "-", True: "yes", False: "no"}[node.drained],
                "-" if node.announced is None else str(node.announced),
                "-" if node.revision is None else str(node.revision),
                *[(prints.get(name) or "-")[:12] for name in names],
            )
        return table

    ctx.emit(view.as_json(), render)
    return EXIT_OK if view.agree else EXIT_SPLIT


def add_cluster_command(commands: Subparsers) -> None:
    """`ctl cluster`."""
    cluster = commands.add_parser(
        "cluster",
        help="every node: its applied store revision, its fingerprints, whether they agree",
        description="Every node of the cluster (the ones registered in the store, or --nodes), "
        "the store revision each applied and its tables' fingerprints. Exit 0 when all agree, "
        "1 when they do not (a split view) or a node does not answer.",
        epilog="Example: rusty-rail ctl cluster; rusty-rail ctl cluster --nodes "
        "198.18.0.2:9180,198.18.0.3:9180",
    )
    cluster.add_argument(
        "--nodes",
        metavar="NODES",
        help="these nodes' APIs (ADDRESS:PORT,ADDRESS:PORT,...), not the store's list",
    )
    cluster.add_argument(
        "--store",
        metavar="URL",
        help="list the nodes registered in this store (etcd://HOST:PORT/PREFIX; default: the "
        "store of the daemon at --api)",
    )
    cluster.set_defaults(run=_cluster)


def _node(ctx: Context, args: argparse.Namespace) -> int:
    answer = ctx.client.request("POST", f"/v1/node/{args.node_command}")

    def render(data: Mapping[str, Any]) -> str:
        routes = ", ".join(data["announced"]) or "none"
        return f"{'drained' if data['drained'] else 'undrained'}; announced: {routes}"

    ctx.emit(answer.body, render)
    return EXIT_OK


def add_node_command(commands: Subparsers) -> None:
    """`ctl node drain|undrain`."""
    node = commands.add_parser(
        "node",
        help="the node at --api: drain (withdraw its VIPs from BGP, keep forwarding), undrain",
        description="Drain: the node withdraws every VIP route it announces over BGP (a [bgp] "
        "section) and keeps forwarding what still reaches it, until the routers have moved "
        "away. Undrain: it announces them again. Not kept across a restart of the daemon.",
        epilog="Example: rusty-rail ctl --api 198.18.0.2:9180 node drain",
    )
    verbs = node.add_subparsers(dest="node_command", metavar="VERB", required=True)
    for verb, text in (("drain", "withdraw the VIPs' routes"), ("undrain", "announce them")):
        verbs.add_parser(verb, help=text, description=text).set_defaults(run=_node)
