"""Server-side GRE decapsulation (`rusty-rail decap`): attach bpf/decap.bpf.c to an interface,
keep its allowed LB prefixes and local addresses, read its counters; docs/decap.md explains.

The program's state lives in pins under /sys/fs/bpf/rusty_rail/decap/<ifname>/ (the link, the
two prefix maps, the counters), so it keeps decapsulating after this process exits and any
later process can change it or read it back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from rusty_rail.dataplane.libbpf import (
    PIN_ROOT,
    BpfObject,
    LibbpfError,
    Map,
    XdpMode,
    bpf_object_path,
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

__all__ = [
    "DECAP_PIN_ROOT",
    "DecapError",
    "DecapMaps",
    "DecapStat",
    "decap_allow",
    "decap_attach",
    "decap_detach",
    "decap_pin_dir",
    "decap_set_local",
    "decap_status",
    "parse_prefixes",
]

DECAP_PIN_ROOT = PIN_ROOT / "decap"
OBJECT_NAME = "decap"
PROGRAM_NAME = "xdp_decap"

#: Map name in the object -> pin name in the interface's pin directory.
_MAP_PINS = {"decap_allowed": "allowed", "decap_local": "local", "decap_stats": "stats"}
DECAP = PinnedXdpSpec(OBJECT_NAME, PROGRAM_NAME, _MAP_PINS)

# struct ipv4_lpm_key (bpf/lib/lpm.h): prefix length (host order), address (network order).
_PREFIX = struct.Struct("=I4s")
# struct counter (bpf/lib/stats.h): packets, bytes.
_COUNTER = struct.Struct("=QQ")
_PRESENT = struct.pack("=I", 1)


class DecapStat(IntEnum):
    """Per-reason outcomes, the index into the decap_stats array (enum decap_stat)."""

    DECAPSULATED = 0
    PASS_NOT_IP = 1
    PASS_NOT_GRE = 2
    PASS_NOT_LOCAL = 3
    PASS_SOURCE_DENIED = 4
    PASS_OUTER_FRAGMENT = 5
    PASS_MALFORMED = 6
    PASS_UNSUPPORTED = 7
    PASS_ERROR = 8


class DecapError(RuntimeError):
    """A decap operation that cannot be done as asked; the message says what to do instead."""


# -- prefixes ------------------------------------------------------------------------------


def parse_prefixes(values: Iterable[str], what: str) -> list[IPv4Network]:
    """IPv4 prefixes ("198.18.1.0/24", or an address meaning /32), sorted, duplicates merged.
    ValueError names ``what`` and the bad value; a prefix with host bits set is refused
    rather than silently widened."""
    prefixes: set[IPv4Network] = set()
    for value in values:
        text = str(value).strip()
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as error:
            raise ValueError(f"{what}: {text!r} is not an IP prefix: {error}") from None
        if not isinstance(network, IPv4Network):
            raise ValueError(f"{what}: {text!r} is IPv6; decap handles IPv4 only so far")
        prefixes.add(network)
    return sorted(prefixes)


def _prefix_key(network: IPv4Network) -> bytes:
    return _PREFIX.pack(network.prefixlen, network.network_address.packed)


def _prefix_of_key(key: bytes) -> IPv4Network:
    prefixlen, address = _PREFIX.unpack(key)
    return IPv4Network((address, prefixlen))


# -- the maps ------------------------------------------------------------------------------


class DecapMaps:
    """The decap program's three maps, whichever way they were reached (a loaded object or
    the pins), with the encoding of bpf/decap.bpf.c in one place."""

    def __init__(self, allowed: Map, local: Map, stats: Map) -> None:
        self.allowed = allowed
        self.local = local
        self.stats = stats
        if allowed.key_size != _PREFIX.size or stats.value_size != _COUNTER.size:
            raise DecapError(
                "the decap object's maps do not match this rusty_rail version "
                f"(prefix key {allowed.key_size} bytes, counter {stats.value_size} bytes): "
                "rebuild with scripts/setup"
            )

    @classmethod
    def of_object(cls, bpf_object: BpfObject) -> DecapMaps:
        return cls(*(bpf_object.map(name) for name in _MAP_PINS))

    @classmethod
    def from_pins(cls, directory: Path) -> DecapMaps:
        opened: list[Map] = []
        try:
            for pin in _MAP_PINS.values():
                opened.append(Map.from_pinned(directory / pin))
        except BaseException:
            for bpf_map in opened:
                bpf_map.close()
            raise
        return cls(*opened)

    def close(self) -> None:
        for bpf_map in (self.allowed, self.local, self.stats):
            bpf_map.close()

    @staticmethod
    def _prefixes(trie: Map) -> list[IPv4Network]:
        return sorted(map(_prefix_of_key, trie.keys()))

    @staticmethod
    def _replace(trie: Map, wanted: Sequence[IPv4Network]) -> None:
        # New entries first, stale ones after: a prefix in both sets is never missing.
        current = set(DecapMaps._prefixes(trie))
        for network in wanted:
            if network not in current:
                trie.update(_prefix_key(network), _PRESENT)
        for network in current - set(wanted):
            trie.delete(_prefix_key(network))

    def allowed_prefixes(self) -> list[IPv4Network]:
        return self._prefixes(self.allowed)

    def local_prefixes(self) -> list[IPv4Network]:
        return self._prefixes(self.local)

    def set_allowed(self, prefixes: Sequence[IPv4Network]) -> None:
        if len(prefixes) > self.allowed.max_entries:
            raise ValueError(
                f"allowed: {len(prefixes)} prefixes, at most {self.allowed.max_entries}"
            )
        self._replace(self.allowed, prefixes)

    def set_local(self, prefixes: Sequence[IPv4Network]) -> None:
        if len(prefixes) > self.local.max_entries:
            raise ValueError(f"local: {len(prefixes)} prefixes, at most {self.local.max_entries}")
        self._replace(self.local, prefixes)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per reason (lower-case DecapStat names), packets and bytes summed over the CPUs."""
        result: dict[str, dict[str, int]] = {}
        for stat in DecapStat:
            values = self.stats.lookup_percpu(struct.pack("=I", stat)) or []
            packets = bytes_ = 0
            for value in values:
                cpu_packets, cpu_bytes = _COUNTER.unpack(value)
                packets += cpu_packets
                bytes_ += cpu_bytes
            result[stat.name.lower()] = {"packets": packets, "bytes": bytes_}
        return result


def load_decap_object() -> BpfObject:
    """bpf/decap.bpf.o opened and loaded, not attached (the caller closes it)."""
    bpf_object = BpfObject.open(bpf_object_path(OBJECT_NAME))
    try:
        bpf_object.load()
    except BaseException:
        bpf_object.close()
        raise
    return bpf_object


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
    netns: str | None = None,
    pin_root: Path = DECAP_PIN_ROOT,
) -> dict[str, Any]:
    """Decapsulate GRE from the ``allowed`` prefixes on ``device``; returns decap_status().

    ``local`` are the outer destinations that count as this host (prefixes; "0.0.0.0/0"
    accepts any); by default the interface's own IPv4 addresses at the time of the call.
    Attaching again where rusty-rail's decap already runs replaces the program in place (same
    link, same maps and counters: no packet is missed) and sets the prefixes anew."""
    allowed_prefixes = parse_prefixes(allowed, "allowed")
    _check_pins_outlive_this_process(pin_root)
    with in_netns(netns):
        ifindex = _ifindex(device)
        if local is None:
            addresses = [
                address
                for address in interface_addresses(device)
                if isinstance(address, ipaddress.IPv4Address)
            ]
            if not addresses:
                raise DecapError(
                    f"{device} has no IPv4 address to receive GRE on: name the tunnel "
                    "endpoint addresses with local=[...] (or '0.0.0.0/0' for any)"
                )
            local_prefixes = [IPv4Network(address) for address in sorted(addresses)]
        else:
            local_prefixes = parse_prefixes(local, "local")
        directory = decap_pin_dir(device, netns=netns, root=pin_root)
        _forget_if_moved(directory, ifindex)
        _attach(device, ifindex, mode, directory, allowed_prefixes, local_prefixes)
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
    allowed: Sequence[IPv4Network],
    local: Sequence[IPv4Network],
) -> None:
    """A first attach, or the new program swapped into the pinned link, keeping the maps and
    counters: either way the prefixes are written before the program runs on them."""
    try:
        adopt = DECAP.adoptable(directory)
    except PartialPins as error:
        raise DecapError(
            f"{directory} holds only some of decap's maps (missing: {', '.join(error.missing)}); "
            "run decap detach first"
        ) from None
    with PinnedXdpProgram.load(DECAP, directory, adopt=adopt) as xdp:
        try:
            xdp.check_attachable(ifindex, mode)
        except LinkInOtherMode as error:
            raise DecapError(
                f"decap runs on {device} in {error.mode} mode; run decap detach first to "
                f"attach it in {mode} mode"
            ) from None
        maps = DecapMaps(*(xdp.maps[name] for name in _MAP_PINS))
        maps.set_allowed(allowed)
        maps.set_local(local)
        xdp.attach(ifindex, mode)


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
        "counters": {stat.name.lower(): {"packets": 0, "bytes": 0} for stat in DecapStat},
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
            status["counters"] = maps.counters()
        finally:
            maps.close()
    return status


def _update_pinned(
    device: str, netns: str | None, pin_root: Path, what: str, prefixes: list[IPv4Network]
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
