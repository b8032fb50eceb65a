"""The router's GRE encapsulation and the server's decapsulation with real traffic, no balancer:
client -> router (XDP encap towards the server as its only 'LB') -> server (XDP decap, VIP on lo)
-> reply straight back to the client (DSR); and decap's attach / status / upgrade / detach.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from rusty_rail.dataplane.libbpf import XdpMode, query_xdp
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.dataplane.pinned import PinnedXdpProgram
from rusty_rail.decap.agent import (
    DECAP_V4_ONLY,
    DecapError,
    DecapMaps,
    decap_allow,
    decap_attach,
    decap_detach,
    decap_pin_dir,
    decap_status,
    parse_prefixes,
)
from rusty_rail.testbed.netns import Namespace, netns
from rusty_rail.testbed.router import Router
from rusty_rail.wire.build import gre_in_ipv6, ipv4, ipv6, udp, udp6
from rusty_rail.wire.constants import ETH_P_IPV4, ETH_P_IPV6, PROTO_GRE, PROTO_UDP
from rusty_rail.wire.describe import describe
from rusty_rail.wire.fields import format_ip

if TYPE_CHECKING:
    from tests.support.veth import VethPair

pytestmark = pytest.mark.e2e

CLIENT = "198.18.10.2"
ROUTER_CLIENT_SIDE = "198.18.10.1"
ROUTER_LB_SIDE = "198.18.20.1"
SERVER = "198.18.20.2"
VIP = "198.19.30.1"
PORT = 8080
GRE_MTU = 1500 + 24  # the client's MTU plus outer IPv4 and GRE
ETH_P_ALL = 0x0003


@dataclass(frozen=True)
class Bed:
    client: Namespace
    router: Namespace
    server: Namespace


@pytest.fixture
def bed() -> Iterator[Bed]:
    """client --c0/rc0-- router --rl0/s0-- server, the VIP on the server's lo; every namespace
    is removed afterwards, whatever happened."""
    with netns() as net:
        client = net.namespace("client")
        router = net.namespace("router")
        server = net.namespace("server")
        net.veth(client, "c0", router, "rc0")
        net.veth(router, "rl0", server, "s0")
        # A veth leaves a TCP/UDP checksum for "the hardware" to finish; once XDP turns the
        # packet into a bare frame nothing ever finishes it. Real senders' NICs do.
        client.exec("ethtool", "-K", "c0", "tx", "off")
        client.ip("addr", "add", f"{CLIENT}/24", "dev", "c0")
        client.ip("route", "add", f"{VIP}/32", "via", ROUTER_CLIENT_SIDE)
        router.ip("addr", "add", f"{ROUTER_CLIENT_SIDE}/24", "dev", "rc0")
        router.ip("addr", "add", f"{ROUTER_LB_SIDE}/24", "dev", "rl0")
        router.sysctl("net.ipv4.ip_forward", "1")
        # Replies come from the VIP, which the router has no route back to: no source check.
        for key in ("all", "rl0"):
            router.sysctl(f"net.ipv4.conf.{key}.rp_filter", "0")
        server.ip("addr", "add", f"{SERVER}/24", "dev", "s0")
        server.ip("addr", "add", f"{VIP}/32", "dev", "lo")
        server.ip("route", "add", "198.18.10.0/24", "via", ROUTER_LB_SIDE)
        for key in ("all", "s0"):
            server.sysctl(f"net.ipv4.conf.{key}.rp_filter", "2")
        server.sysctl("net.ipv4.conf.all.arp_ignore", "1")
        server.sysctl("net.ipv4.conf.all.arp_announce", "2")
        for namespace, ifname in ((router, "rl0"), (server, "s0")):
            namespace.ip("link", "set", ifname, "mtu", str(GRE_MTU))
        yield Bed(client, router, server)


@contextlib.contextmanager
def echo_server(namespace: Namespace, address: str, port: int) -> Iterator[list[BaseException]]:
    """A TCP echo server for one connection, listening inside ``namespace``; yields the list
    its thread's errors land in."""
    with in_netns(namespace.name):
        listener = socket.create_server((address, port))
    listener.settimeout(10)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(10)
                while chunk := connection.recv(65536):
                    connection.sendall(chunk)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=serve, name="echo-server", daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        thread.join(timeout=15)
        listener.close()


def exchange(namespace: Namespace, address: str, port: int, data: bytes) -> tuple[bytes, str]:
    """Connect from ``namespace``, send ``data`` (from a second thread, so that neither side
    blocks on a full buffer), read the echo; returns it and the peer the client saw."""
    with in_netns(namespace.name):
        client = socket.create_connection((address, port), timeout=10)
    with client:
        peer = client.getpeername()[0]
        sent: list[BaseException] = []

        def send() -> None:
            try:
                client.sendall(data)
                client.shutdown(socket.SHUT_WR)
            except BaseException as error:
                sent.append(error)

        sender = threading.Thread(target=send, name="client-sender", daemon=True)
        sender.start()
        received = bytearray()
        while chunk := client.recv(65536):
            received += chunk
        sender.join(timeout=10)
        assert not sent, sent
    return bytes(received), peer


@contextlib.contextmanager
def capture(namespace: Namespace, ifname: str) -> Iterator[Callable[[], list[bytes]]]:
    """Every frame on ``ifname`` (an AF_PACKET socket in ``namespace``); yields a function
    that returns what arrived so far."""
    with in_netns(namespace.name):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
        frames: list[bytes] = []

        def drain() -> list[bytes]:
            with contextlib.suppress(BlockingIOError):
                while True:
                    frames.append(sock.recv(65536))
            return frames

        yield drain


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- client -> router -> server -> client ---------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_tcp_to_the_vip_goes_through_gre_and_the_reply_comes_back_directly(
    bed: Bed, bpffs_dir: Path, mode: XdpMode
) -> None:
    decap_attach("s0", [ROUTER_LB_SIDE], mode, netns=bed.server.name, pin_root=bpffs_dir)
    try:
        with Router.load(source=ROUTER_LB_SIDE, vips=[VIP], netns=bed.router.name) as router:
            router.attach("rc0", mode)
            (lb,) = router.set_lbs([SERVER])
            assert lb.mtu == GRE_MTU
            data = os.urandom(100_000)  # full-size segments: 1500-byte packets, 1524 with GRE
            with (
                capture(bed.router, "rl0") as frames_at_router,
                echo_server(bed.server, VIP, PORT) as server_errors,
            ):
                echoed, peer = exchange(bed.client, VIP, PORT, data)
                seen = [describe(frame) for frame in frames_at_router()]
            assert not server_errors, server_errors
            assert peer == VIP
            assert echoed == data

            # The replies crossed the router's LB-side link as plain TCP from the VIP to the
            # client: the server answered directly, nothing wrapped them.
            replies = [
                info
                for info in seen
                if info.outer is not None
                and format_ip(info.outer.src) == VIP
                and format_ip(info.outer.dst) == CLIENT
            ]
            assert replies, [info.summary() for info in seen]
            assert all(
                info.outer is not None and info.outer.proto == socket.IPPROTO_TCP
                for info in replies
            )
            assert not [
                info
                for info in seen
                if info.outer is not None
                and info.outer.proto == PROTO_GRE
                and format_ip(info.outer.src) == SERVER
            ]

            encapsulated = router.counters()["encapsulated"]["packets"]
            assert encapsulated >= len(data) // 1460
            assert router.lb_counters()[SERVER]["packets"] == encapsulated
            counters = decap_status("s0", netns=bed.server.name, pin_root=bpffs_dir)["counters"]
            assert 0 < counters["decapsulated"]["packets"] <= encapsulated
            assert counters["pass_source_denied"]["packets"] == 0
            assert counters["pass_malformed"]["packets"] == 0
    finally:
        decap_detach("s0", netns=bed.server.name, pin_root=bpffs_dir)


def test_without_a_live_lb_the_vip_is_unreachable_and_comes_back(bed: Bed, bpffs_dir: Path) -> None:
    decap_attach("s0", [ROUTER_LB_SIDE], netns=bed.server.name, pin_root=bpffs_dir)
    try:
        with Router.load(source=ROUTER_LB_SIDE, vips=[VIP], netns=bed.router.name) as router:
            router.attach("rc0")
            router.set_lbs([])
            with in_netns(bed.client.name):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with probe:
                probe.sendto(b"anyone?", (VIP, 9))
                wait_for(
                    lambda: router.counters()["drop_no_lb"]["packets"] >= 1, "a drop_no_lb count"
                )
            router.set_lbs([SERVER])
            with echo_server(bed.server, VIP, PORT) as server_errors:
                echoed, _ = exchange(bed.client, VIP, PORT, b"back again")
            assert not server_errors
            assert echoed == b"back again"
    finally:
        decap_detach("s0", netns=bed.server.name, pin_root=bpffs_dir)


def test_a_pinned_router_keeps_forwarding_after_close_and_is_adopted(
    bed: Bed, bpffs_dir: Path
) -> None:
    decap_attach("s0", [ROUTER_LB_SIDE], netns=bed.server.name, pin_root=bpffs_dir)
    try:
        router = Router.load(source=ROUTER_LB_SIDE, vips=[VIP], netns=bed.router.name)
        router.attach("rc0")
        router.set_lbs([SERVER])
        router.pin(bpffs_dir / "router")
        router.close()
        with in_netns(bed.router.name):
            assert query_xdp(socket.if_nametoindex("rc0")) is not None
        with echo_server(bed.server, VIP, PORT) as server_errors:
            echoed, _ = exchange(bed.client, VIP, PORT, b"still routed")
        assert not server_errors
        assert echoed == b"still routed"

        with Router.from_pinned(bpffs_dir / "router", netns=bed.router.name) as adopted:
            assert [lb.address for lb in adopted.lbs] == [ip_address(SERVER)]
            assert adopted.counters()["encapsulated"]["packets"] > 0
            adopted.detach()
        with in_netns(bed.router.name):
            assert query_xdp(socket.if_nametoindex("rc0")) is None
        assert not (bpffs_dir / "router" / "link").exists()
    finally:
        decap_detach("s0", netns=bed.server.name, pin_root=bpffs_dir)


# -- decap's life cycle ---------------------------------------------------------------------


def ping(pair: VethPair, count: int = 2) -> None:
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            pair.near,
            "ping",
            "-c",
            str(count),
            "-i",
            "0.2",
            "-W",
            "2",
            pair.FAR4,
        ],
        check=True,
        capture_output=True,
    )


def status_of(pair: VethPair, root: Path) -> dict[str, Any]:
    return decap_status(pair.far_if, netns=pair.far, pin_root=root)


def test_decap_lives_in_its_pins_upgrades_in_place_and_detaches_clean(
    veth_pair: VethPair, bpffs_dir: Path
) -> None:
    far, far_if = veth_pair.far, veth_pair.far_if
    assert status_of(veth_pair, bpffs_dir)["attached"] is False

    status = decap_attach(far_if, [veth_pair.NEAR4], netns=far, pin_root=bpffs_dir)
    assert status["attached"] is True
    assert status["mode"] == "native"
    assert status["allowed"] == [f"{veth_pair.NEAR4}/32"]
    # the interface's own addresses, its IPv6 link-local one left out
    assert status["local"] == [f"{veth_pair.FAR4}/32", f"{veth_pair.FAR6}/128"]
    pins = Path(status["pin_dir"])
    assert pins == bpffs_dir / f"{far}:{far_if}"
    assert sorted(path.name for path in pins.iterdir()) == [
        "allowed",
        "allowed6",
        "config",
        "link",
        "local",
        "local6",
        "stats",
        "vnis",
    ]
    assert status["uncounted"] == []
    with in_netns(far):
        attached = query_xdp(socket.if_nametoindex(far_if))
    assert attached is not None and attached.prog_id == status["prog_id"]

    # The Python objects are gone; the pinned program still sees (and passes) the pings.
    ping(veth_pair)
    wait_for(
        lambda: status_of(veth_pair, bpffs_dir)["counters"]["pass_not_gre"]["packets"] >= 2,
        "pings counted as not GRE",
    )
    before = status_of(veth_pair, bpffs_dir)["counters"]

    # Attaching again replaces the program in place: same maps, counters carried over.
    again = decap_attach(
        far_if, ["198.18.0.0/24"], local=["0.0.0.0/0"], netns=far, pin_root=bpffs_dir
    )
    assert again["attached"] is True
    assert again["prog_id"] != status["prog_id"]
    assert again["allowed"] == ["198.18.0.0/24"]
    assert again["local"] == ["0.0.0.0/0"]
    assert again["counters"]["pass_not_gre"]["packets"] >= before["pass_not_gre"]["packets"]
    with pytest.raises(DecapError, match="detach first"):
        decap_attach(far_if, [], "generic", netns=far, pin_root=bpffs_dir)

    assert decap_allow(far_if, ["198.18.0.1", "198.18.9.0/24"], netns=far, pin_root=bpffs_dir) == [
        "198.18.0.1/32",
        "198.18.9.0/24",
    ]
    assert status_of(veth_pair, bpffs_dir)["allowed"] == ["198.18.0.1/32", "198.18.9.0/24"]

    assert decap_detach(far_if, netns=far, pin_root=bpffs_dir) is True
    assert not pins.exists()
    with in_netns(far):
        assert query_xdp(socket.if_nametoindex(far_if)) is None
    assert status_of(veth_pair, bpffs_dir)["attached"] is False
    assert decap_detach(far_if, netns=far, pin_root=bpffs_dir) is False
    ping(veth_pair, 1)  # and the host is reachable as before


def test_decap_works_in_generic_mode_and_its_errors_name_the_fix(
    veth_pair: VethPair, bpffs_dir: Path
) -> None:
    far, far_if = veth_pair.far, veth_pair.far_if
    with pytest.raises(DecapError, match="no interface named 'rr-missing'"):
        decap_attach("rr-missing", [veth_pair.NEAR4], netns=far, pin_root=bpffs_dir)
    with pytest.raises(ValueError, match="allowed: 'near' is not an IP prefix"):
        decap_attach(far_if, ["near"], netns=far, pin_root=bpffs_dir)
    with pytest.raises(DecapError, match="not attached"):
        decap_allow(far_if, [veth_pair.NEAR4], netns=far, pin_root=bpffs_dir)
    status = decap_attach(far_if, [veth_pair.NEAR4], "generic", netns=far, pin_root=bpffs_dir)
    try:
        assert (status["attached"], status["mode"]) == (True, "generic")
        ping(veth_pair, 1)
    finally:
        assert decap_detach(far_if, netns=far, pin_root=bpffs_dir) is True


def test_decap_refuses_pins_that_would_die_with_an_ip_netns_exec_process(
    veth_pair: VethPair,
) -> None:
    attach = (
        "from rusty_rail.decap.agent import decap_attach; "
        f"decap_attach({veth_pair.far_if!r}, [{veth_pair.NEAR4!r}])"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", veth_pair.far, sys.executable, "-c", attach],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "decap would detach when this process exits" in done.stderr
    assert "nsenter --net=/run/netns/NAME" in done.stderr
    with in_netns(veth_pair.far):
        assert query_xdp(socket.if_nametoindex(veth_pair.far_if)) is None


# -- IPv6 -----------------------------------------------------------------------------------

UDP_PORT = 9053


def send_frames(pair: VethPair, frames: list[bytes]) -> None:
    with in_netns(pair.near):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind((pair.near_if, 0))
        for frame in frames:
            sock.send(frame)


def test_ipv6_gre_frames_reach_a_real_socket_as_their_inner_packets(
    veth_pair: VethPair, bpffs_dir: Path
) -> None:
    """GRE over IPv6 built here, sent over the veth into the far namespace where decap runs:
    the inner IPv6 and inner IPv4 datagrams arrive at UDP sockets there, and the counters say
    decapsulated."""
    far, far_if = veth_pair.far, veth_pair.far_if
    far_ip6, far_ip4 = veth_pair.FAR6, veth_pair.FAR4
    client6, client4 = "2001:2:100::7", "198.18.100.7"
    subprocess.run(
        ["ip", "netns", "exec", far, "sysctl", "-qw", f"net.ipv4.conf.{far_if}.rp_filter=0"],
        check=True,
    )
    subprocess.run(
        ["ip", "netns", "exec", far, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"], check=True
    )
    status = decap_attach(far_if, [veth_pair.NEAR6], "generic", netns=far, pin_root=bpffs_dir)
    try:
        assert status["allowed"] == [f"{veth_pair.NEAR6}/128"]
        assert f"{far_ip6}/128" in status["local"]
        with in_netns(far):
            receiver6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            receiver4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with receiver6, receiver4:
            receiver6.bind((far_ip6, UDP_PORT))
            receiver4.bind((far_ip4, UDP_PORT))
            for receiver in (receiver6, receiver4):
                receiver.settimeout(5)
            inner6 = ipv6(
                client6,
                far_ip6,
                PROTO_UDP,
                udp6(4000, UDP_PORT, b"inner six", src=client6, dst=far_ip6),
            )
            inner4 = ipv4(
                client4,
                far_ip4,
                PROTO_UDP,
                udp(4000, UDP_PORT, b"inner four", src=client4, dst=far_ip4),
            )
            frames = [
                gre_in_ipv6(
                    veth_pair.far_mac,
                    veth_pair.near_mac,
                    veth_pair.NEAR6,
                    far_ip6,
                    inner6,
                    protocol=ETH_P_IPV6,
                ),
                gre_in_ipv6(
                    veth_pair.far_mac,
                    veth_pair.near_mac,
                    veth_pair.NEAR6,
                    far_ip6,
                    inner4,
                    protocol=ETH_P_IPV4,
                ),
            ]
            send_frames(veth_pair, frames)
            data6, peer6 = receiver6.recvfrom(2048)
            data4, peer4 = receiver4.recvfrom(2048)
        assert (data6, peer6[0], peer6[1]) == (b"inner six", client6, 4000)
        assert (data4, peer4) == (b"inner four", (client4, 4000))
        counters = status_of(veth_pair, bpffs_dir)["counters"]
        assert counters["decapsulated"]["packets"] == 2
    finally:
        decap_detach(far_if, netns=far, pin_root=bpffs_dir)


def test_pins_of_a_version_before_ipv6_are_adopted_in_place(
    veth_pair: VethPair, bpffs_dir: Path
) -> None:
    """An older agent pinned allowed, local and a 9-entry stats array only: the new one swaps
    its program into the same link, keeps those maps and counters, pins the IPv6 maps (and the
    methods') beside them, and says which reasons the old array cannot count."""
    far, far_if = veth_pair.far, veth_pair.far_if
    directory = decap_pin_dir(far_if, netns=far, root=bpffs_dir)
    with in_netns(far):
        ifindex = socket.if_nametoindex(far_if)
        with PinnedXdpProgram.load(
            DECAP_V4_ONLY,
            directory,
            configure=lambda obj: obj.set_max_entries("decap_stats", 9),
        ) as old:
            DecapMaps.of_object(old.obj).set_allowed(  # type: ignore[arg-type]
                parse_prefixes([veth_pair.NEAR4], "allowed")
            )
            old.attach(ifindex, "native")
    assert sorted(path.name for path in directory.iterdir()) == [
        "allowed",
        "link",
        "local",
        "stats",
    ]
    old_status = status_of(veth_pair, bpffs_dir)
    assert old_status["attached"] is True
    assert old_status["uncounted"] == ["pass_extension_headers", "pass_vni_denied"]
    with pytest.raises(DecapError, match="run rusty-rail decap \\(attach\\) again"):
        decap_allow(far_if, [veth_pair.NEAR6], netns=far, pin_root=bpffs_dir)
    ping(veth_pair)
    wait_for(
        lambda: status_of(veth_pair, bpffs_dir)["counters"]["pass_not_gre"]["packets"] >= 2,
        "pings counted by the old program",
    )
    before = status_of(veth_pair, bpffs_dir)["counters"]["pass_not_gre"]["packets"]

    try:
        status = decap_attach(
            far_if, [veth_pair.NEAR4, veth_pair.NEAR6], netns=far, pin_root=bpffs_dir
        )
        assert status["attached"] is True
        assert status["prog_id"] != old_status["prog_id"]
        assert status["allowed"] == [f"{veth_pair.NEAR4}/32", f"{veth_pair.NEAR6}/128"]
        assert status["counters"]["pass_not_gre"]["packets"] >= before
        assert status["uncounted"] == ["pass_extension_headers", "pass_vni_denied"]
        assert "allowed6" in {path.name for path in directory.iterdir()}
        # and again: now the whole set is adopted
        again = decap_attach(far_if, [veth_pair.NEAR6], netns=far, pin_root=bpffs_dir)
        assert again["allowed"] == [f"{veth_pair.NEAR6}/128"]
    finally:
        assert decap_detach(far_if, netns=far, pin_root=bpffs_dir) is True
    fresh = decap_attach(far_if, [veth_pair.NEAR6], netns=far, pin_root=bpffs_dir)
    try:
        assert fresh["uncounted"] == []
    finally:
        decap_detach(far_if, netns=far, pin_root=bpffs_dir)
