"""`rusty-rail decap` with IPIP, VXLAN and GENEVE on a real interface: frames wrapped by
rusty_rail.wire.tunnels (as the balancer's egress wraps them) are sent over a veth into a
namespace running decap, and their inner datagrams arrive at real UDP sockets on the VIP there,
for every method and both outer families. Without `--methods vxlan` a VXLAN datagram reaches
the socket that owns port 4789 untouched; pins of a version before the methods are adopted.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.dataplane.pinned import PinnedXdpProgram
from rusty_rail.decap.agent import (
    DECAP_BEFORE_METHODS,
    DecapMaps,
    decap_attach,
    decap_detach,
    decap_pin_dir,
    decap_status,
    parse_prefixes,
)
from rusty_rail.wire import tunnels
from rusty_rail.wire.build import ethernet, ipv4, ipv6, udp, udp6
from rusty_rail.wire.constants import ETH_P_IPV4, ETH_P_IPV6, PROTO_UDP, VXLAN_PORT

if TYPE_CHECKING:
    from tests.support.veth import VethPair

pytestmark = pytest.mark.e2e

VIP, VIP6 = "198.19.0.1", "2001:2:1::1"
CLIENT, CLIENT6 = "198.18.100.7", "2001:2:100::7"
PORT = 5353
VNI = 77


def prepare_server(pair: VethPair) -> None:
    """The VIPs on the far end's lo, reverse-path filtering off (the inner sources are clients
    the far end has no route to)."""
    for command in (
        ["ip", "-n", pair.far, "addr", "add", f"{VIP}/32", "dev", "lo"],
        ["ip", "-n", pair.far, "addr", "add", f"{VIP6}/128", "dev", "lo"],
        ["ip", "netns", "exec", pair.far, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
        [
            "ip",
            "netns",
            "exec",
            pair.far,
            "sysctl",
            "-qw",
            f"net.ipv4.conf.{pair.far_if}.rp_filter=0",
        ],
    ):
        subprocess.run(command, check=True)


def wrapped(pair: VethPair, method: str, outer: int, inner: bytes, vni: int = VNI) -> bytes:
    src, dst = (pair.NEAR4, pair.FAR4) if outer == 4 else (pair.NEAR6, pair.FAR6)
    if method == "ipip":
        packet = tunnels.ipip(inner, src=src, dst=dst)
    else:
        builder = tunnels.vxlan if method == "vxlan" else tunnels.geneve
        packet = builder(inner, vni=vni, src=src, dst=dst, sport=tunnels.tunnel_sport(outer))
    ethertype = ETH_P_IPV4 if outer == 4 else ETH_P_IPV6
    return ethernet(pair.far_mac, pair.near_mac, ethertype, packet)


def send_frames(pair: VethPair, frames: list[bytes]) -> None:
    with in_netns(pair.near):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind((pair.near_if, 0))
        for frame in frames:
            sock.send(frame)


def udp_socket(
    namespace: str, family: socket.AddressFamily, address: str, port: int
) -> socket.socket:
    with in_netns(namespace):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.settimeout(5)
    return sock


@pytest.mark.parametrize("method", ["ipip", "vxlan", "geneve"])
def test_every_method_reaches_a_real_socket_on_the_vip(
    veth_pair: VethPair, bpffs_dir: Path, method: str
) -> None:
    far, far_if = veth_pair.far, veth_pair.far_if
    prepare_server(veth_pair)
    status = decap_attach(
        far_if,
        [veth_pair.NEAR4, veth_pair.NEAR6],
        "generic",
        methods=[method],
        vnis=[VNI] if method != "ipip" else None,
        netns=far,
        pin_root=bpffs_dir,
    )
    try:
        assert status["methods"] == [method]
        assert status["vnis"] == ([VNI] if method != "ipip" else None)
        receiver4 = udp_socket(far, socket.AF_INET, VIP, PORT)
        receiver6 = udp_socket(far, socket.AF_INET6, VIP6, PORT)
        with receiver4, receiver6:
            frames = []
            for outer in (4, 6):
                inner4 = ipv4(
                    CLIENT, VIP, PROTO_UDP, udp(4000 + outer, PORT, b"four", src=CLIENT, dst=VIP)
                )
                inner6 = ipv6(
                    CLIENT6,
                    VIP6,
                    PROTO_UDP,
                    udp6(4000 + outer, PORT, b"six", src=CLIENT6, dst=VIP6),
                )
                frames += [wrapped(veth_pair, method, outer, inner4)]
                frames += [wrapped(veth_pair, method, outer, inner6)]
            send_frames(veth_pair, frames)
            got4 = sorted(receiver4.recvfrom(2048) for _ in range(2))
            got6 = sorted(receiver6.recvfrom(2048)[:2] for _ in range(2))
        assert got4 == [(b"four", (CLIENT, 4004)), (b"four", (CLIENT, 4006))]
        assert [(data, peer[:2]) for data, peer in got6] == [
            (b"six", (CLIENT6, 4004)),
            (b"six", (CLIENT6, 4006)),
        ]
        counters = decap_status(far_if, netns=far, pin_root=bpffs_dir)["counters"]
        assert counters["decapsulated"]["packets"] == 4
    finally:
        decap_detach(far_if, netns=far, pin_root=bpffs_dir)


def test_vxlan_is_left_to_the_port_owner_unless_named(veth_pair: VethPair, bpffs_dir: Path) -> None:
    """An operator's own VXLAN endpoint on 4789 keeps its traffic under the default methods;
    with `vxlan` named (and the VNI taken), decap unwraps it for the VIP instead."""
    far, far_if = veth_pair.far, veth_pair.far_if
    prepare_server(veth_pair)
    inner = ipv4(CLIENT, VIP, PROTO_UDP, udp(4000, PORT, b"inner", src=CLIENT, dst=VIP))
    frame = wrapped(veth_pair, "vxlan", 4, inner)
    port_owner = udp_socket(far, socket.AF_INET, veth_pair.FAR4, VXLAN_PORT)
    receiver = udp_socket(far, socket.AF_INET, VIP, PORT)
    try:
        with port_owner, receiver:
            status = decap_attach(
                far_if, [veth_pair.NEAR4], "generic", netns=far, pin_root=bpffs_dir
            )
            assert (status["methods"], status["vnis"]) == (["gre", "ipip"], None)
            send_frames(veth_pair, [frame])
            data, _ = port_owner.recvfrom(2048)
            assert data[:8] == tunnels.vxlan_header(VNI)
            decap_attach(
                far_if,
                [veth_pair.NEAR4],
                "generic",
                methods=["gre,ipip,vxlan"],
                vnis=[VNI + 1],
                netns=far,
                pin_root=bpffs_dir,
            )
            send_frames(veth_pair, [frame])  # another VNI: still the port owner's
            data, _ = port_owner.recvfrom(2048)
            assert data[:8] == tunnels.vxlan_header(VNI)
            decap_attach(
                far_if,
                [veth_pair.NEAR4],
                "generic",
                methods=["gre,ipip,vxlan"],
                vnis=[VNI],
                netns=far,
                pin_root=bpffs_dir,
            )
            send_frames(veth_pair, [frame])
            assert receiver.recvfrom(2048) == (b"inner", (CLIENT, 4000))
        counters = decap_status(far_if, netns=far, pin_root=bpffs_dir)["counters"]
        assert counters["pass_not_gre"]["packets"] >= 1
        assert counters["pass_vni_denied"]["packets"] == 1
        assert counters["decapsulated"]["packets"] == 1
    finally:
        decap_detach(far_if, netns=far, pin_root=bpffs_dir)


def test_pins_of_a_version_before_the_methods_are_adopted_in_place(
    veth_pair: VethPair, bpffs_dir: Path
) -> None:
    far, far_if = veth_pair.far, veth_pair.far_if
    directory = decap_pin_dir(far_if, netns=far, root=bpffs_dir)
    with in_netns(far):
        ifindex = socket.if_nametoindex(far_if)
        with PinnedXdpProgram.load(
            DECAP_BEFORE_METHODS,
            directory,
            configure=lambda obj: obj.set_max_entries("decap_stats", 10),
        ) as old:
            DecapMaps.of_object(old.obj).set_allowed(  # type: ignore[arg-type]
                parse_prefixes([veth_pair.NEAR4], "allowed")
            )
            old.attach(ifindex, "generic")
    pins = {path.name for path in directory.iterdir()}
    assert "config" not in pins and "allowed6" in pins
    old_status = decap_status(far_if, netns=far, pin_root=bpffs_dir)
    assert (old_status["methods"], old_status["vnis"]) == (["gre"], None)
    assert old_status["uncounted"] == ["pass_vni_denied"]
    try:
        status = decap_attach(
            far_if,
            [veth_pair.NEAR4],
            "generic",
            methods=["vxlan", "geneve"],
            vnis=["5,6"],
            netns=far,
            pin_root=bpffs_dir,
        )
        assert status["prog_id"] != old_status["prog_id"]
        assert (status["methods"], status["vnis"]) == (["vxlan", "geneve"], [5, 6])
        assert status["uncounted"] == ["pass_vni_denied"]
        assert {"config", "vnis"} <= {path.name for path in directory.iterdir()}
    finally:
        assert decap_detach(far_if, netns=far, pin_root=bpffs_dir) is True


def test_the_cli_attaches_with_methods_and_vnis_and_shows_them(veth_pair: VethPair) -> None:
    """`rusty-rail decap --methods ... --vni ...` entered into the far namespace with nsenter
    (the pins under the default root, named after the namespace-unique interface), then
    --status and --detach."""
    cli = [str(Path(sys.executable).parent / "rusty-rail")]
    enter = ["nsenter", f"--net=/run/netns/{veth_pair.far}"]
    device = ["--device", veth_pair.far_if]
    attach = [
        *enter, *cli, "decap", *device, "--allow", veth_pair.NEAR4, "--xdp-mode", "generic",
        "--methods", "ipip,geneve", "--methods", "vxlan", "--vni", "9", "--vni", "3,4",
    ]  # fmt: skip
    try:
        done = subprocess.run(attach, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert (status["methods"], status["vnis"]) == (["ipip", "vxlan", "geneve"], [3, 4, 9])
        shown = subprocess.run(
            [*enter, *cli, "decap", *device, "--status"], capture_output=True, text=True, check=True
        )
        again = json.loads(shown.stdout)
        assert (again["attached"], again["methods"], again["vnis"]) == (
            True,
            ["ipip", "vxlan", "geneve"],
            [3, 4, 9],
        )
        assert "pass_vni_denied" in again["counters"]
    finally:
        subprocess.run(
            [*enter, *cli, "decap", *device, "--detach"], check=True, capture_output=True
        )
