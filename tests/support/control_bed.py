"""Real daemons for the API tests: a network namespace with veth devices, each device with a
`Daemon` that loaded the real balancer (maps through libbpf; not attached unless asked), serving
its API on the namespace's loopback from a thread. The test thread works inside the namespace.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rusty_rail.api.client import ApiClient, Response
from rusty_rail.api.server import create_app
from rusty_rail.config import Config, config_from_toml_text
from rusty_rail.control.background import BackgroundDaemon
from rusty_rail.control.cluster import join_store
from rusty_rail.control.daemon import Daemon
from rusty_rail.control.options import ApiOptions, DaemonOptions
from rusty_rail.control.store import StoreAddress
from rusty_rail.dataplane.libbpf import BPFFS, ensure_bpffs, remove_pin_dir
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.testbed.netns import Namespace, Netns

GATEWAY = "198.18.0.1"
#: Backends are behind the gateway, whose neighbour entry is permanent: next hops resolve.
BACKEND_ROUTE = "198.18.64.0/18"
VIP = "198.18.100.1:80/tcp"
VIP_PATH = "/v1/vips/198.18.100.1:80%2Ftcp"
BASE_TOML = """
table_size = 1021
[[vips]]
address = "198.18.100.1"
protocol = "tcp"
port = 80
backends = ["198.18.64.1", "198.18.64.2", "198.18.64.3"]
[[vips]]
address = "198.18.100.2"
backends = ["198.18.64.4"]
"""


def base_config(device: str, lb_address: str) -> Config:
    return config_from_toml_text(
        f'device = "{device}"\nlb_address = "{lb_address}"\n{BASE_TOML}', "test"
    )


@dataclass
class Node:
    """One daemon of the bed and a client of its API."""

    device: str
    daemon: Daemon
    server: BackgroundDaemon
    client: ApiClient

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return self.client.request(method, path, body, headers=headers, check=False)

    def reset(self) -> None:
        """Back to the base configuration (same allocation, so the same slots)."""
        body = base_config(self.device, self.lb_address).model_dump(mode="json")
        answer = self.call("PUT", "/v1/config", body)
        assert answer.status == 200, answer.body

    @property
    def lb_address(self) -> str:
        return str(self.daemon.config.lb_address)

    @property
    def maps(self) -> Any:
        assert self.daemon.balancer is not None
        return self.daemon.balancer.maps


@dataclass
class Bed:
    namespace: Namespace
    pin_root: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def start(
        self,
        device: str,
        config: Config,
        *,
        token: str | None = None,
        state_file: Path | None = None,
        config_path: Path | None = None,
        fixed: dict[str, str] | None = None,
        generation: int = 0,
        detach: bool = True,
        attach: bool = False,
        store: StoreAddress | None = None,
        node_name: str | None = None,
    ) -> Node:
        options = DaemonOptions(
            config_path=config_path,
            pin_root=self.pin_root,
            detach_on_exit=detach,
            next_hop_timeout=2.0,
            api=ApiOptions("127.0.0.1", 0, token),
            state_file=state_file,
            attach=attach,
            store=store,
            node_name=node_name,
        )
        sync = None
        if store is not None:  # as start_daemon does it
            config, sync = join_store(config, options)
        daemon = Daemon(config, options, fixed=fixed, generation=generation)
        daemon.store = sync
        daemon.start()
        server = BackgroundDaemon(daemon, create_app)
        try:
            server.start()
        except BaseException:
            daemon.close()
            raise
        node = Node(device, daemon, server, ApiClient(server.url, token))
        self.nodes[device] = node
        return node

    def stop(self, device: str) -> None:
        node = self.nodes.pop(device)
        try:
            node.server.stop()
        finally:
            node.daemon.close()


@contextlib.contextmanager
def control_bed(devices: int) -> Iterator[Bed]:
    """Namespace "lb" with eth0..ethN-1 (198.18.<10 i>.2/24), each the end of a veth pair whose
    other end is in namespace "r". The calling thread is inside "lb" until the block ends."""
    ensure_bpffs()
    pin_root = BPFFS / f"rusty_rail_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    pin_root.mkdir(mode=0o700)
    try:
        with Netns() as net:
            router, lb = net.namespace("api-r"), net.namespace("api-lb")
            for i in range(devices):
                net.veth(router, f"eth{i}", lb, f"eth{i}")
                router.ip("addr", "add", f"198.18.{10 * i}.1/24", "dev", f"eth{i}")
                lb.ip("addr", "add", f"198.18.{10 * i}.2/24", "dev", f"eth{i}")
            lb.ip("route", "add", BACKEND_ROUTE, "via", GATEWAY)
            lb.ip("neigh", "replace", GATEWAY, "lladdr", router.mac("eth0"), "dev", "eth0",
                  "nud", "permanent")  # fmt: skip
            bed = Bed(lb, pin_root)
            with in_netns(lb.name):
                try:
                    yield bed
                finally:
                    for device in list(bed.nodes):
                        bed.stop(device)
    finally:
        remove_pin_dir(pin_root)
