"""Next hops, interfaces and XDP attachment in real network namespaces: resolution on-link and
through a gateway, native and generic XDP, and a pinned link that outlives its process.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rusty_rail.dataplane.fib import BATCH
from rusty_rail.dataplane.libbpf import (
    BpfObject,
    LibbpfError,
    Link,
    Program,
    TcDirection,
    TcFilter,
    XdpAttachment,
    XdpMode,
    attach_tc,
    attach_xdp,
    bpf_object_path,
    detach_tc,
    detach_xdp,
    query_tc,
    query_xdp,
)
from rusty_rail.dataplane.netlink import (
    NextHopError,
    NextHopResolver,
    in_netns,
    interface_addresses,
    interface_index,
    interface_mac,
    resolve_next_hop,
    wait_next_hop,
)
from rusty_rail.model.state import NextHop

if TYPE_CHECKING:
    from tests.support.veth import VethPair

pytestmark = pytest.mark.e2e

#: A veth's MTU unless set: a next hop carries its interface's (docs/packet-path.md 8c).
VETH_MTU = 1500


def neighbour_state(pair: VethPair, address: str) -> str | None:
    entries = json.loads(pair.near_ip("-j", "neigh", "show", address, "dev", pair.near_if))
    if not entries:
        return None
    return " ".join(entries[0].get("state", []))


# -- interfaces and namespaces ------------------------------------------------------------


def test_an_interfaces_index_mac_and_addresses_come_from_netlink(veth_pair: VethPair) -> None:
    index = interface_index(veth_pair.near_if, netns=veth_pair.near)
    assert index > 1
    assert interface_mac(veth_pair.near_if, netns=veth_pair.near) == veth_pair.near_mac
    addresses = interface_addresses(veth_pair.near_if, netns=veth_pair.near)
    assert ip_address(veth_pair.NEAR4) in addresses
    assert ip_address(veth_pair.NEAR6) in addresses
    with pytest.raises(LookupError, match="no interface named"):
        interface_index("rr-missing", netns=veth_pair.near)


def test_in_netns_switches_the_thread_and_comes_back(veth_pair: VethPair) -> None:
    with in_netns(veth_pair.near):
        assert socket.if_nametoindex(veth_pair.near_if) > 1
        assert interface_index(veth_pair.near_if) == socket.if_nametoindex(veth_pair.near_if)
    with pytest.raises(OSError):
        socket.if_nametoindex(veth_pair.near_if)


# -- next hops ------------------------------------------------------------------------------


@pytest.mark.parametrize("far", ["198.18.0.2", "2001:2::2"])
def test_on_link_next_hop_is_triggered_then_resolved(veth_pair: VethPair, far: str) -> None:
    veth_pair.near_ip("neigh", "flush", "dev", veth_pair.near_if)
    assert neighbour_state(veth_pair, far) is None

    assert resolve_next_hop(far, netns=veth_pair.near) is None
    # The lookup asked the kernel to resolve: the entry exists now, in whatever state.
    assert neighbour_state(veth_pair, far) is not None

    next_hop = wait_next_hop(far, timeout=5, netns=veth_pair.near)
    ifindex = interface_index(veth_pair.near_if, netns=veth_pair.near)
    assert next_hop == NextHop(ifindex, veth_pair.near_mac, veth_pair.far_mac, mtu=VETH_MTU)
    assert resolve_next_hop(far, netns=veth_pair.near) == next_hop


@pytest.mark.parametrize("behind_gateway", ["198.19.0.77", "2001:2:0:1::77"])
def test_next_hop_through_a_gateway_is_the_gateway(
    veth_pair: VethPair, behind_gateway: str
) -> None:
    next_hop = wait_next_hop(behind_gateway, timeout=5, netns=veth_pair.near)
    assert next_hop.dst_mac == veth_pair.far_mac
    assert next_hop.src_mac == veth_pair.near_mac
    gateway = veth_pair.FAR4 if "." in behind_gateway else veth_pair.FAR6
    assert neighbour_state(veth_pair, gateway) is not None
    assert neighbour_state(veth_pair, behind_gateway) is None  # not on-link: never asked


def test_an_ipv4_route_through_an_ipv6_gateway_resolves_to_the_gateway(veth_pair: VethPair) -> None:
    veth_pair.near_ip("route", "add", "198.19.6.0/24", "via", "inet6", veth_pair.FAR6)
    next_hop = wait_next_hop("198.19.6.1", timeout=5, netns=veth_pair.near)
    assert next_hop.dst_mac == veth_pair.far_mac
    assert neighbour_state(veth_pair, veth_pair.FAR6) is not None


def test_stale_neighbour_is_used_and_refreshed(veth_pair: VethPair) -> None:
    wait_next_hop(veth_pair.FAR4, timeout=5, netns=veth_pair.near)
    far_mac = veth_pair.far_mac.hex(":")
    veth_pair.near_ip(
        "neigh",
        "change",
        veth_pair.FAR4,
        "dev",
        veth_pair.near_if,
        "lladdr",
        far_mac,
        "nud",
        "stale",
    )
    assert neighbour_state(veth_pair, veth_pair.FAR4) == "STALE"
    next_hop = resolve_next_hop(veth_pair.FAR4, netns=veth_pair.near)
    assert next_hop is not None and next_hop.dst_mac == veth_pair.far_mac
    assert neighbour_state(veth_pair, veth_pair.FAR4) != "STALE"


def test_one_resolver_serves_a_round_of_addresses(veth_pair: VethPair) -> None:
    addresses = [veth_pair.FAR4, "198.19.0.5", veth_pair.FAR6, "2001:2:0:1::5"]
    for address in addresses:
        wait_next_hop(address, timeout=5, netns=veth_pair.near)
    with NextHopResolver(netns=veth_pair.near) as resolver:
        next_hops = [resolver.resolve(address) for address in addresses]
        with pytest.raises(NextHopError):
            resolver.resolve(veth_pair.NEAR4)
    ifindex = interface_index(veth_pair.near_if, netns=veth_pair.near)
    assert next_hops == [NextHop(ifindex, veth_pair.near_mac, veth_pair.far_mac, mtu=VETH_MTU)] * 4


def test_a_round_asks_the_fib_in_batches_and_answers_as_one_lookup_at_a_time(
    veth_pair: VethPair,
) -> None:
    veth_pair.near_ip("route", "add", "blackhole", "198.19.8.0/24")
    veth_pair.near_ip("route", "add", "unreachable", "198.19.7.0/24")
    wait_next_hop(veth_pair.FAR4, timeout=5, netns=veth_pair.near)
    wait_next_hop(veth_pair.FAR6, timeout=5, netns=veth_pair.near)
    odd = ["198.19.8.1", "198.19.7.1", "198.20.0.1", veth_pair.NEAR4, veth_pair.FAR6]
    # More than one batch of requests (fib.BATCH) behind the one gateway.
    routed = [f"198.19.0.{host}" for host in range(1, 255)] + [
        f"2001:2:0:1::{host:x}" for host in range(1, 400)
    ]
    addresses = [ip_address(a) for a in odd + routed]
    assert len(addresses) > 2 * BATCH
    with NextHopResolver(netns=veth_pair.near) as resolver:
        found, problems = resolver.resolve_many(addresses)
    assert set(found) == set(addresses)
    for address in addresses:
        try:
            alone: NextHop | str | None = resolve_next_hop(address, netns=veth_pair.near)
        except NextHopError as error:
            alone = str(error)
        assert (problems[address] if address in problems else found[address]) == alone, address
    assert set(problems) == {ip_address(a) for a in odd[:4]}
    assert "no route to 198.19.8.1" in problems[ip_address("198.19.8.1")]
    assert "is local" in problems[ip_address(veth_pair.NEAR4)]
    ifindex = interface_index(veth_pair.near_if, netns=veth_pair.near)
    hop = NextHop(ifindex, veth_pair.near_mac, veth_pair.far_mac, mtu=VETH_MTU)
    assert all(found[ip_address(a)] == hop for a in routed)


def test_a_next_hop_carries_its_interface_mtu(veth_pair: VethPair) -> None:
    veth_pair.near_ip("link", "set", veth_pair.near_if, "mtu", "1400")
    next_hop = wait_next_hop(veth_pair.FAR4, timeout=5, netns=veth_pair.near)
    assert next_hop.mtu == 1400
    veth_pair.near_ip("link", "set", veth_pair.near_if, "mtu", str(VETH_MTU))
    assert resolve_next_hop(veth_pair.FAR4, netns=veth_pair.near) == replace(next_hop, mtu=VETH_MTU)


def test_silent_gateway_times_out_naming_it(veth_pair: VethPair) -> None:
    veth_pair.near_ip("route", "add", "198.19.9.0/24", "via", "198.18.0.99")
    with pytest.raises(TimeoutError, match=r"gateway 198\.18\.0\.99"):
        wait_next_hop("198.19.9.1", timeout=0.3, netns=veth_pair.near)


def test_addresses_without_a_next_hop_are_errors(veth_pair: VethPair) -> None:
    veth_pair.near_ip("route", "add", "blackhole", "198.19.8.0/24")
    with pytest.raises(NextHopError, match="is local"):
        resolve_next_hop(veth_pair.NEAR4, netns=veth_pair.near)
    with pytest.raises(NextHopError, match=r"no route to 198\.19\.8\.1"):
        resolve_next_hop("198.19.8.1", netns=veth_pair.near)
    with pytest.raises(NextHopError, match=r"no route to 198\.20\.0\.1"):
        resolve_next_hop("198.20.0.1", netns=veth_pair.near)


# -- XDP attachment ---------------------------------------------------------------------------


@pytest.fixture
def near_netns(veth_pair: VethPair) -> Iterator[int]:
    """Run the test inside the near namespace; yields the index of the near veth."""
    with in_netns(veth_pair.near):
        yield socket.if_nametoindex(veth_pair.near_if)


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_an_attached_xdp_program_is_queried_and_detaches_with_its_last_link(
    near_netns: int, floor_program: Program, mode: XdpMode
) -> None:
    ifindex = near_netns
    assert query_xdp(ifindex) is None
    link = attach_xdp(ifindex, floor_program, mode)
    try:
        assert query_xdp(ifindex) == XdpAttachment(floor_program.id, mode)
        assert (link.ifindex, link.prog_id) == (ifindex, floor_program.id)
    finally:
        link.close()
    # An unpinned link held by nobody detaches its program.
    assert query_xdp(ifindex) is None


def test_native_mode_fails_clearly_without_driver_support(
    near_netns: int, floor_program: Program
) -> None:
    loopback = socket.if_nametoindex("lo")  # the loopback driver has no native XDP
    with pytest.raises(LibbpfError) as caught:
        attach_xdp(loopback, floor_program, "native")
    assert caught.value.errno == errno.EOPNOTSUPP
    message = str(caught.value)
    assert "native mode" in message and "lo" in message and "generic" in message
    assert query_xdp(loopback) is None  # no silent fallback to generic


def test_second_attach_is_refused_with_what_is_there(
    near_netns: int, floor_program: Program, pass_program: Program
) -> None:
    with attach_xdp(near_netns, floor_program, "native"):
        with pytest.raises(
            LibbpfError, match=rf"id {floor_program.id} is already attached .* link"
        ):
            attach_xdp(near_netns, pass_program, "native")
        with pytest.raises(LibbpfError, match="cannot be active together"):
            attach_xdp(near_netns, pass_program, "generic")
        assert query_xdp(near_netns) == XdpAttachment(floor_program.id, "native")
    with pytest.raises(ValueError, match="use 'native' or 'generic'"):
        attach_xdp(near_netns, floor_program, "driver")


def test_pinned_link_survives_its_python_objects_and_is_adopted(
    near_netns: int, bpffs_dir: Path, pass_program: Program
) -> None:
    pin = bpffs_dir / "link"
    bpf_object = BpfObject.open(bpf_object_path("bench_floor"))
    bpf_object.load()
    floor = bpf_object.program("xdp_floor")
    floor_id = floor.id
    link = attach_xdp(near_netns, floor, "native")
    link.pin(pin)
    link.close()
    bpf_object.close()
    assert query_xdp(near_netns) == XdpAttachment(floor_id, "native")

    with Link.from_pinned(pin) as adopted:
        assert (adopted.prog_id, adopted.ifindex) == (floor_id, near_netns)
        adopted.update_program(pass_program)  # hot replacement, no gap
        assert query_xdp(near_netns) == XdpAttachment(pass_program.id, "native")
        adopted.unpin(pin)
    assert query_xdp(near_netns) is None


ATTACH_AND_EXIT = """
import sys
from rusty_rail.dataplane.libbpf import BpfObject, attach_xdp, bpf_object_path
from rusty_rail.dataplane.netlink import in_netns, interface_index

netns, ifname, pin = sys.argv[1:]
with in_netns(netns):
    bpf_object = BpfObject.open(bpf_object_path("bench_floor"))
    bpf_object.load()
    program = bpf_object.program("xdp_floor")
    attach_xdp(interface_index(ifname), program, "native").pin(pin)
    print(program.id)
"""


def test_pinned_link_survives_the_process_and_detach_finds_it(
    veth_pair: VethPair, bpffs_dir: Path, floor_program: Program
) -> None:
    pin = bpffs_dir / "link"
    done = subprocess.run(
        [sys.executable, "-c", ATTACH_AND_EXIT, veth_pair.near, veth_pair.near_if, str(pin)],
        capture_output=True,
        text=True,
        check=True,
    )
    attached_id = int(done.stdout)
    with in_netns(veth_pair.near):
        ifindex = socket.if_nametoindex(veth_pair.near_if)
        assert query_xdp(ifindex) == XdpAttachment(attached_id, "native")
        with Link.from_pinned(pin) as adopted:
            assert adopted.prog_id == attached_id
            with pytest.raises(LibbpfError, match="no longer runs 'xdp_floor'"):
                adopted.update_program(floor_program, expected=floor_program)
        # Netlink cannot take an interface from a bpf_link; detach_xdp finds the link.
        assert detach_xdp(ifindex, "generic") is False  # it runs native: left alone
        assert query_xdp(ifindex) is not None
        assert detach_xdp(ifindex) is True
        assert query_xdp(ifindex) is None
        assert detach_xdp(ifindex) is False


def test_a_program_attached_by_ip_link_is_reported_and_detached(
    veth_pair: VethPair, floor_program: Program
) -> None:
    pass_object = str(bpf_object_path("testbed_pass"))
    veth_pair.near_ip(
        "link", "set", "dev", veth_pair.near_if, "xdpgeneric", "obj", pass_object, "sec", "xdp"
    )
    with in_netns(veth_pair.near):
        ifindex = socket.if_nametoindex(veth_pair.near_if)
        attached = query_xdp(ifindex)
        assert attached is not None and attached.mode == "generic"
        with pytest.raises(LibbpfError, match="without a bpf_link") as caught:
            attach_xdp(ifindex, floor_program, "generic")
        assert caught.value.errno == errno.EBUSY
        assert detach_xdp(ifindex) is True
        assert query_xdp(ifindex) is None


# -- tc attachment ----------------------------------------------------------------------------


@pytest.fixture
def tc_program(compile_bpf: Callable[[str], Path]) -> Iterator[Program]:
    with BpfObject.open(compile_bpf("tc_pass")) as bpf_object:
        bpf_object.load()
        yield bpf_object.program("tc_pass")


@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_a_tc_program_attaches_once_replaces_on_request_and_detaches(
    veth_pair: VethPair, tc_program: Program, floor_program: Program, direction: TcDirection
) -> None:
    with in_netns(veth_pair.near):
        ifindex = socket.if_nametoindex(veth_pair.near_if)
        assert query_tc(ifindex, direction) is None
        attached = attach_tc(ifindex, tc_program, direction)
        assert attached == TcFilter(ifindex, direction, 1, 1, tc_program.id)
        assert query_tc(ifindex, direction) == attached
        with pytest.raises(LibbpfError, match="replace=True") as caught:
            attach_tc(ifindex, tc_program, direction)
        assert caught.value.errno == errno.EEXIST
        attach_tc(ifindex, tc_program, direction, replace=True)
        with pytest.raises(ValueError, match="not a tc"):
            attach_tc(ifindex, floor_program, direction)

    shown = veth_pair.near_ip("-d", "link", "show", veth_pair.near_if)
    assert (
        "clsact"
        in subprocess.run(
            ["tc", "-n", veth_pair.near, "qdisc", "show", "dev", veth_pair.near_if],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    ), shown
    filters = subprocess.run(
        ["tc", "-n", veth_pair.near, "filter", "show", "dev", veth_pair.near_if, direction],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tc_pass" in filters and "direct-action" in filters

    with in_netns(veth_pair.near):
        assert detach_tc(ifindex, direction) is True
        assert query_tc(ifindex, direction) is None
        assert detach_tc(ifindex, direction) is False
