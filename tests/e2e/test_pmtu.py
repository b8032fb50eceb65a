"""Path MTU end to end (docs/packet-path.md section 8c): a client's TCP connection through the
real balancer (routed ingress, IPIP to the backend) over a balancer-to-backend link of 1400
bytes learns its path MTU from the balancer's ICMP error and completes a 1 MB transfer to a real
server on the VIP behind `rusty-rail decap`.

    client ns  c0 (1500) ──  b0 [balancer XDP] (1500)   balancer ns   b1 (1400) ── s0  backend ns
                                                                                    VIP on lo

The client's segments of 1500 bytes do not fit once IPIP adds 20: the balancer answers with
"fragmentation needed" from the VIP, MTU 1380, and the client's stack sends smaller segments.
Replies go from the backend straight back through the balancer host's kernel (direct return).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rusty_rail.dataplane.libbpf import BpfObject, attach_xdp, bpf_object_path
from rusty_rail.dataplane.maps import BalancerMaps, prepare_object
from rusty_rail.dataplane.netlink import in_netns, interface_index, wait_next_hop
from rusty_rail.decap.agent import decap_attach, decap_detach
from rusty_rail.model.state import (
    BackendEntry,
    BackendState,
    DataplaneState,
    Egress,
    Settings,
    Stat,
    VipKey,
)
from rusty_rail.wire.constants import PROTO_TCP
from rusty_rail.wire.fields import ipv4_address
from tests.support.veth import ip

pytestmark = pytest.mark.e2e

CLIENT, LB_CLIENT_SIDE = "198.18.210.2", "198.18.210.1"
LB_SERVER_SIDE, SERVER = "198.18.211.1", "198.18.211.2"
VIP, PORT = "198.19.210.10", 8080
SERVER_LINK_MTU = 1400
IPIP_OVERHEAD = 20
TRANSFER = 1 << 20


@dataclass(frozen=True)
class Topology:
    client: str
    balancer: str
    server: str


def _sysctl(netns: str, *settings: str) -> None:
    for setting in settings:
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", setting], check=True)


@pytest.fixture
def topology(require_root: None) -> Iterator[Topology]:
    token = uuid.uuid4().hex[:6]
    names = Topology(f"rr-pmtu-{token}-cl", f"rr-pmtu-{token}-lb", f"rr-pmtu-{token}-srv")
    made: list[str] = []
    try:
        for name in (names.client, names.balancer, names.server):
            ip("netns", "add", name)
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("link", "add", "c0", "netns", names.client, "type", "veth",
           "peer", "name", "b0", "netns", names.balancer)  # fmt: skip
        ip("link", "add", "b1", "netns", names.balancer, "type", "veth",
           "peer", "name", "s0", "netns", names.server)  # fmt: skip
        ip("-n", names.balancer, "link", "set", "b1", "mtu", str(SERVER_LINK_MTU))
        for netns, device, address in (
            (names.client, "c0", CLIENT), (names.balancer, "b0", LB_CLIENT_SIDE),
            (names.balancer, "b1", LB_SERVER_SIDE), (names.server, "s0", SERVER),
        ):  # fmt: skip
            ip("-n", netns, "addr", "add", f"{address}/24", "dev", device)
            ip("-n", netns, "link", "set", device, "up")
        ip("-n", names.client, "route", "add", "default", "via", LB_CLIENT_SIDE)
        ip("-n", names.server, "route", "add", "default", "via", LB_SERVER_SIDE)
        ip("-n", names.server, "addr", "add", f"{VIP}/32", "dev", "lo")
        ip("-n", names.balancer, "route", "add", f"{VIP}/32", "via", SERVER)
        _sysctl(names.balancer, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.b1.rp_filter=0")  # fmt: skip
        _sysctl(names.server, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.s0.rp_filter=0")
        # The senders on veths fill in their checksums and segment themselves: native XDP on
        # the way (the balancer, the pass program, decap) sees frames, not the kernel's
        # promises (a checksum left to offload, a segment larger than the MTU).
        for netns, device in ((names.client, "c0"), (names.server, "s0")):
            offloads = ["tx", "off", "tso", "off", "gso", "off"]
            subprocess.run(["ip", "netns", "exec", netns, "ethtool", "-K", device, *offloads],
                           check=True, capture_output=True)  # fmt: skip
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def client_pass(topology: Topology) -> Iterator[None]:
    """A pass program on the client's end: a veth takes XDP_TX frames from its peer (the
    balancer's ICMP error) only when it runs XDP itself."""
    with BpfObject.open(bpf_object_path("testbed_pass")) as obj:
        obj.load()
        with in_netns(topology.client):
            link = attach_xdp(interface_index("c0"), obj.program("xdp_pass"), "native")
        try:
            yield
        finally:
            link.close()


@pytest.fixture
def balancer(topology: Topology) -> Iterator[BalancerMaps]:
    """The real balancer on b0: routed ingress, the VIP's one backend by IPIP through b1, its
    next hop (and its MTU) resolved from the balancer namespace's kernel."""
    with BpfObject.open(bpf_object_path("balancer")) as obj:
        prepare_object(obj, conntrack_entries=1 << 10)
        obj.load()
        maps = BalancerMaps.of_object(obj)
        with in_netns(topology.balancer):
            next_hop = wait_next_hop(SERVER, timeout=5, netns=topology.balancer)
            assert next_hop.mtu == SERVER_LINK_MTU
            backend = BackendEntry(ipv4_address(SERVER), 0, 1, BackendState.UP, next_hop,
                                   egress=Egress.IPIP)  # fmt: skip
            state = DataplaneState(
                settings=Settings(lb_ipv4=ipv4_address(LB_CLIENT_SIDE), routed_ingress=True),
                vips={VipKey(ipv4_address(VIP), PROTO_TCP, PORT): 0},
                tables={0: [0] * 7},
                backends={0: backend},
            )
            maps.sync(state)
            link = attach_xdp(interface_index("b0"), obj.program("xdp_balancer"), "native")
        try:
            yield maps
        finally:
            link.close()


def _serve_once(netns: str, digests: list[bytes]) -> socket.socket:
    with in_netns(netns):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((VIP, PORT))
    listener.listen(1)
    listener.settimeout(30)

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(30)
            digest = hashlib.sha256()
            while chunk := connection.recv(65536):
                digest.update(chunk)
            digests.append(digest.digest())
            connection.sendall(digest.digest())

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_a_tcp_client_learns_the_path_mtu_and_sends_a_megabyte(
    topology: Topology, client_pass: None, balancer: BalancerMaps, bpffs_dir: Path
) -> None:
    decap_attach("s0", [f"{LB_CLIENT_SIDE}/32"], "native", methods=["ipip"],
                 netns=topology.server, pin_root=bpffs_dir)  # fmt: skip
    try:
        payload = os.urandom(TRANSFER)
        digests: list[bytes] = []
        with _serve_once(topology.server, digests):
            with in_netns(topology.client):
                client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with client:
                client.settimeout(30)
                client.connect((VIP, PORT))
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := client.recv(64):
                    answer += chunk
        expected = hashlib.sha256(payload).digest()
        assert digests == [expected] and answer == expected

        stats = balancer.read_stats()
        assert stats[Stat.TOO_BIG_ICMP][0] >= 1  # the client was told
        assert stats[Stat.TOO_BIG_NO_DF][0] == 0 and stats[Stat.TOO_BIG_LIMITED][0] == 0
        assert stats[Stat.CT_HIT][0] + stats[Stat.CT_MISS][0] > TRANSFER // 1400
        # The client's stack keeps what it learnt for the VIP: the link's MTU less IPIP's 20.
        route = ip("-n", topology.client, "route", "get", VIP)
        assert f"mtu {SERVER_LINK_MTU - IPIP_OVERHEAD}" in route, route
    finally:
        decap_detach("s0", netns=topology.server, pin_root=bpffs_dir)
