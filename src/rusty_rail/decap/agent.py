"""Server-side decapsulation (`rusty-rail decap`): attach bpf/decap.bpf.c to an interface,
keep its allowed LB prefixes and local addresses (IPv4 and IPv6) and the methods it takes
(GRE, IPIP, VXLAN, GENEVE; decap/methods.py), read its counters; docs/decap.md explains.

The program's state lives in pins under /sys/fs/bpf/rusty_rail/decap/<ifname>/ (the link, the
prefix maps of each family, the methods, the counters; decap/maps.py), so it keeps
decapsulating after this process exits and any later process can change it or read it back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rusty_rail.dataplane.libbpf import (
    PIN_ROOT,
    BpfObject,
    LibbpfError,
    Map,
    XdpMode,
    pin_dir,
    query_xdp,
    remove_pin_dir,
)
from rusty_rail.dataplane.netlink import in_netns, interface_addresses
from rusty_rail.dataplane.pinned import (
    LinkInOtherMode,
    PartialPins,
    PinnedXdpProgram,
    PinnedXdpSpec,
    detach_pinned,
    open_pinned_link,
)
from rusty_rail.decap.maps import (
    MAP_PINS,
    MAP_PINS_METHODS,
    MAP_PINS_V4,
    MAP_PINS_V6,
    OBJECT_NAME,
    PROGRAM_NAME,
    DecapError,
    DecapMaps,
    DecapStat,
    Prefix,
    load_decap_object,
    parse_prefixes,
    sorted_prefixes,
)
from rusty_rail.decap.methods import MethodSet, parse_methods

__all__ = [
    "DECAP_BEFORE_METHODS",
    "DECAP_PIN_ROOT",
    "DECAP_V4_ONLY",
    "DecapError",
    "DecapMaps",
    "DecapStat",
    "MethodSet",
    "Prefix",
    "decap_allow",
    "decap_attach",
    "decap_detach",
    "decap_pin_dir",
    "decap_set_local",
    "decap_status",
    "load_decap_object",
    "parse_methods",
    "parse_prefixes",
]

DECAP_PIN_ROOT = PIN_ROOT / "decap"

#: The pins this version makes; a set without the IPv6 tries or the methods' maps was made by an
#: earlier version and is adopted, the maps it lacks pinned beside it at attach.
DECAP = PinnedXdpSpec(
    OBJECT_NAME,
    PROGRAM_NAME,
    MAP_PINS,
    added_maps=frozenset({*MAP_PINS_V6, *MAP_PINS_METHODS}),
)
#: What the versions before IPv6 and before the methods pinned (for the tests of adoption).
DECAP_V4_ONLY = PinnedXdpSpec(OBJECT_NAME, PROGRAM_NAME, MAP_PINS_V4)
DECAP_BEFORE_METHODS = PinnedXdpSpec(OBJECT_NAME, PROGRAM_NAME, {**MAP_PINS_V4, **MAP_PINS_V6})


# -- pins and namespaces -----------------------------------------------------------------


def decap_pin_dir(device: str, *, netns: str | None = None, root: Path = DECAP_PIN_ROOT) -> Path:
    """Where an interface's decap state is pinned: ``<root>/<ifname>``, or
    ``<root>/<netns>:<ifname>`` for an interface of a named network namespace (a colon cannot
    occur in an interface name, so the two never collide)."""
    name = device if netns is None else f"{netns}:{device}"
    return pin_dir(name, root=root, create=False)


def _ifindex(device: str) -> int:
    try:
        return socket.if_nametoindex(device)
    except OSError:
        raise DecapError(f"no interface named {device!r} in this network namespace") from None


def _mounts() -> list[tuple[str, Path, str]]:
    """(source, mount point, file system type) of this process's mount namespace."""
    mounts = []
    with open("/proc/self/mounts", encoding="utf-8") as table:
        for line in table:
            fields = line.split()
            if len(fields) >= 3:
                mounts.append((fields[0], Path(fields[1].replace("\\040", " ")), fields[2]))
    return mounts


def _in_private_mount_namespace(mounts: list[tuple[str, Path, str]]) -> bool:
    # `ip netns exec NAME` mounts a sysfs whose source is NAME: its unmistakable signature.
    netns_names = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    if any(kind == "sysfs" and source in netns_names for source, _, kind in mounts):
        return True
    try:
        return os.stat("/proc/self/ns/mnt").st_ino != os.stat("/proc/1/ns/mnt").st_ino
    except OSError:
        return False  # cannot tell (PID 1 is not ours to look at)


def _check_pins_outlive_this_process(pin_root: Path) -> None:
    """`ip netns exec` runs commands in a private mount namespace without /sys/fs/bpf: a
    bpffs mounted there dies with the process, and the pinned link with it, silently
    detaching decap. Refuse that case instead of pretending to succeed."""
    mounts = _mounts()
    bpffs = [point for _, point, kind in mounts if kind == "bpf"]
    if any(pin_root == point or point in pin_root.parents for point in bpffs):
        return
    if _in_private_mount_namespace(mounts):
        raise DecapError(
            f"no bpffs is mounted over {pin_root} in this process's private mount namespace "
            "(ip netns exec?): decap would detach when this process exits. Enter only the "
            "network namespace (nsenter --net=/run/netns/NAME) or name the namespace "
            "(netns=NAME)"
        )


# -- the operations ------------------------------------------------------------------------


def decap_attach(
    device: str,
    allowed: Sequence[str],
    mode: XdpMode = "native",
    *,
    local: Sequence[str] | None = None,
    methods: Iterable[str] | None = None,
    vnis: Iterable[int | str] | None = None,
    netns: str | None = None,
    pin_root: Path = DECAP_PIN_ROOT,
) -> dict[str, Any]:
    """Decapsulate the ``methods`` (None: gre and ipip) from the ``allowed`` prefixes (IPv4
    and IPv6) on ``device``, VXLAN and GENEVE with the ``vnis`` only (None or empty: any);
    returns decap_status().

    ``local`` are the outer destinations that count as this host (prefixes; "0.0.0.0/0" and
    "::/0" accept any); by default the interface's own IPv4 addresses and its IPv6 addresses
    other than link-local ones at the time of the call.
    Attaching again where rusty-rail's decap already runs replaces the program in place (same
    link, same maps and counters: no packet is missed) and sets the prefixes and methods anew.
    Everything given is checked before anything is written."""
    allowed_prefixes = parse_prefixes(allowed, "allowed")
    given_local = None if local is None else parse_prefixes(local, "local")
    method_set = parse_methods(methods, vnis)
    _check_pins_outlive_this_process(pin_root)
    with in_netns(netns):
        ifindex = _ifindex(device)
        if given_local is None:
            addresses = [
                address
                for address in interface_addresses(device)
                if isinstance(address, ipaddress.IPv4Address) or not address.is_link_local
            ]
            if not addresses:
                raise DecapError(
                    f"{device} has no IPv4 (or global IPv6) address to receive tunnels on: name "
                    "the tunnel endpoint addresses with local=[...] (or '0.0.0.0/0', '::/0' "
                    "for any)"
                )
            local_prefixes = sorted_prefixes(ipaddress.ip_network(address) for address in addresses)
        else:
            local_prefixes = given_local
        directory = decap_pin_dir(device, netns=netns, root=pin_root)
        _forget_if_moved(directory, ifindex)
        _attach(device, ifindex, mode, directory, allowed_prefixes, local_prefixes, method_set)
    return decap_status(device, netns=netns, pin_root=pin_root)


def _forget_if_moved(directory: Path, ifindex: int) -> None:
    link = open_pinned_link(directory)
    if link is None:
        return
    with link:
        moved = link.ifindex != ifindex
    if moved:
        # The interface it was attached to is gone (or was re-created): start afresh.
        remove_pin_dir(directory)


def _attach(
    device: str,
    ifindex: int,
    mode: XdpMode,
    directory: Path,
    allowed: Sequence[Prefix],
    local: Sequence[Prefix],
    methods: MethodSet,
) -> None:
    """A first attach, or the new program swapped into the pinned link, keeping the maps and
    counters: either way the prefixes and methods are written before the program runs on
    them.

    Pins of an earlier version (without the IPv6 tries, or without the methods' maps) are
    adopted too: the new program reuses them, and the maps they lack are pinned beside them
    when it is attached. Their counter array keeps its size; the reasons it has no room for
    stay uncounted (status lists them) until decap is detached and attached again."""
    adopt = _adoptable(directory)
    stats_entries = len(DecapStat)
    if adopt:
        with Map.from_pinned(directory / MAP_PINS["decap_stats"]) as pinned_stats:
            stats_entries = pinned_stats.max_entries

    def size_stats(bpf_object: BpfObject) -> None:
        bpf_object.set_max_entries("decap_stats", stats_entries)

    with PinnedXdpProgram.load(DECAP, directory, adopt=adopt, configure=size_stats) as xdp:
        try:
            xdp.check_attachable(ifindex, mode)
        except LinkInOtherMode as error:
            raise DecapError(
                f"decap runs on {device} in {error.mode} mode; run decap detach first to "
                f"attach it in {mode} mode"
            ) from None
        assert xdp.obj is not None  # loaded, not adopted from pins
        maps = DecapMaps.of_object(xdp.obj)
        maps.set_allowed(allowed)
        maps.set_local(local)
        maps.set_methods(methods)
        xdp.attach(ifindex, mode)


def _adoptable(directory: Path) -> bool:
    """Whether ``directory`` holds maps to adopt (this version's, or an earlier version's
    set); DecapError for any other mix, an interrupted detach."""
    try:
        return DECAP.adoptable(directory)
    except PartialPins as error:
        raise DecapError(
            f"{directory} holds only some of decap's maps (missing: {', '.join(error.missing)}); "
            "run decap detach first"
        ) from None


def decap_detach(device: str, *, netns: str | None = None, pin_root: Path = DECAP_PIN_ROOT) -> bool:
    """Stop decapsulating on ``device`` and remove its pins. False when rusty-rail's decap
    was not attached there; another program attached to the interface is left alone."""
    with in_netns(netns):
        directory = decap_pin_dir(device, netns=netns, root=pin_root)
        if not directory.exists():
            return False
        return detach_pinned(directory)


def decap_status(
    device: str, *, netns: str | None = None, pin_root: Path = DECAP_PIN_ROOT
) -> dict[str, Any]:
    """What runs on ``device``: attached or not, mode, program id, prefixes and counters.

    ``attached`` is False when nothing is pinned for the interface, or when the pinned link
    lost its interface (deleted); the prefixes and counters are then those left in the pins,
    or empty."""
    status: dict[str, Any] = {
        "device": device,
        "netns": netns,
        "pin_dir": None,
        "attached": False,
        "mode": None,
        "prog_id": None,
        "allowed": [],
        "local": [],
        **MethodSet().as_status(),
        "counters": {stat.name.lower(): {"packets": 0, "bytes": 0} for stat in DecapStat},
        "uncounted": [],
    }
    with in_netns(netns):
        directory = decap_pin_dir(device, netns=netns, root=pin_root)
        if not directory.exists():
            return status
        status["pin_dir"] = str(directory)
        link = open_pinned_link(directory)
        if link is not None:
            with link:
                ifindex = link.ifindex
                prog_id = link.prog_id
            with contextlib.suppress(OSError, DecapError):
                current = query_xdp(_ifindex(device)) if ifindex else None
                if current is not None and current.prog_id == prog_id:
                    status.update(attached=True, mode=current.mode, prog_id=prog_id)
        try:
            maps = DecapMaps.from_pins(directory)
        except LibbpfError:
            return status
        try:
            status["allowed"] = [str(prefix) for prefix in maps.allowed_prefixes()]
            status["local"] = [str(prefix) for prefix in maps.local_prefixes()]
            status.update(maps.methods().as_status())
            status["counters"] = maps.counters()
            status["uncounted"] = maps.uncounted()
        finally:
            maps.close()
    return status


def _update_pinned(
    device: str, netns: str | None, pin_root: Path, what: str, prefixes: list[Prefix]
) -> list[str]:
    with in_netns(netns):
        directory = decap_pin_dir(device, netns=netns, root=pin_root)
        if not directory.exists():
            raise DecapError(f"decap is not attached to {device}: run decap attach first")
        maps = DecapMaps.from_pins(directory)
        try:
            if what == "allowed":
                maps.set_allowed(prefixes)
                return [str(prefix) for prefix in maps.allowed_prefixes()]
            maps.set_local(prefixes)
            return [str(prefix) for prefix in maps.local_prefixes()]
        finally:
            maps.close()


def decap_allow(
    device: str,
    allowed: Sequence[str],
    *,
    netns: str | None = None,
    pin_root: Path = DECAP_PIN_ROOT,
) -> list[str]:
    """Replace the allowed LB prefixes of a running decap; returns the set now in force."""
    return _update_pinned(device, netns, pin_root, "allowed", parse_prefixes(allowed, "allowed"))


def decap_set_local(
    device: str,
    local: Sequence[str],
    *,
    netns: str | None = None,
    pin_root: Path = DECAP_PIN_ROOT,
) -> list[str]:
    """Replace the local (outer destination) prefixes of a running decap."""
    return _update_pinned(device, netns, pin_root, "local", parse_prefixes(local, "local"))
