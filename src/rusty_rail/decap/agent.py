"""Server-side GRE decapsulation (`rusty-rail decap`): attach bpf/decap.bpf.c to an interface,
keep its allowed LB prefixes and local addresses (IPv4 and IPv6), read its counters;
docs/decap.md explains.

The program's state lives in pins under /sys/fs/bpf/rusty_rail/decap/<ifname>/ (the link, the
prefix maps of each family, the counters), so it keeps decapsulating after this process exits
and any later process can change it or read it back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum
from ipaddress import IPv4Network, IPv6Network
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
    "DECAP_V4_ONLY",
    "DecapError",
    "DecapMaps",
    "DecapStat",
    "Prefix",
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

#: Map name in the object -> pin name in the interface's pin directory. The IPv4 maps and the
#: counters are what versions before IPv6 pinned (the "IPv4-only set", adopted and completed).
_MAP_PINS_V4 = {"decap_allowed": "allowed", "decap_local": "local", "decap_stats": "stats"}
_MAP_PINS_V6 = {"decap_allowed6": "allowed6", "decap_local6": "local6"}
_MAP_PINS = {**_MAP_PINS_V4, **_MAP_PINS_V6}
DECAP = PinnedXdpSpec(OBJECT_NAME, PROGRAM_NAME, _MAP_PINS)
DECAP_V4_ONLY = PinnedXdpSpec(OBJECT_NAME, PROGRAM_NAME, _MAP_PINS_V4)

#: An allowed or local prefix, of either family.
Prefix = IPv4Network | IPv6Network

# struct ipv4_lpm_key / ipv6_lpm_key (bpf/lib/lpm.h): prefix length (host order), address
# (network order).
_PREFIX = struct.Struct("=I4s")
_PREFIX6 = struct.Struct("=I16s")
# IPv4-mapped IPv6 addresses (RFC 4291 2.5.5.2) never appear as an outer GRE address.
_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
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
    PASS_EXTENSION_HEADERS = 9


class DecapError(RuntimeError):
    """A decap operation that cannot be done as asked; the message says what to do instead."""


# -- prefixes ------------------------------------------------------------------------------


def parse_prefixes(values: Iterable[str], what: str) -> list[Prefix]:
    """IPv4 and IPv6 prefixes ("198.18.1.0/24", "2001:2::/64", or an address meaning /32 or
    /128), sorted (IPv4 first), duplicates merged. ValueError names ``what`` and the bad
    value; a prefix with host bits set is refused rather than silently widened, and so are an
    IPv6 scope id ("fe80::1%eth0": a trie holds addresses, not interfaces) and IPv4-mapped
    IPv6 ("::ffff:198.18.0.1": give the IPv4 address)."""
    prefixes: set[Prefix] = set()
    for value in values:
        text = str(value).strip()
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as error:
            raise ValueError(f"{what}: {text!r} is not an IP prefix: {error}") from None
        if isinstance(network, IPv6Network):
            if network.network_address.scope_id is not None:
                raise ValueError(
                    f"{what}: {text!r} has a scope id; give the address without %"
                    f"{network.network_address.scope_id}"
                )
            if network.prefixlen >= _IPV4_MAPPED.prefixlen and network.subnet_of(_IPV4_MAPPED):
                raise ValueError(
                    f"{what}: {text!r} is an IPv4-mapped IPv6 prefix; give the IPv4 prefix"
                )
        prefixes.add(network)
    return _sorted(prefixes)


def _sorted(prefixes: Iterable[Prefix]) -> list[Prefix]:
    return sorted(prefixes, key=lambda network: (network.version, network))


def _prefix_key(network: Prefix) -> bytes:
    layout = _PREFIX if network.version == 4 else _PREFIX6
    return layout.pack(network.prefixlen, network.network_address.packed)


def _prefix_of_key(key: bytes) -> Prefix:
    if len(key) == _PREFIX.size:
        prefixlen, address = _PREFIX.unpack(key)
        return IPv4Network((address, prefixlen))
    prefixlen, address = _PREFIX6.unpack(key)
    return IPv6Network((address, prefixlen))


# -- the maps ------------------------------------------------------------------------------


class DecapMaps:
    """The decap program's maps, whichever way they were reached (a loaded object or the
    pins), with the encoding of bpf/decap.bpf.c in one place. ``allowed6`` and ``local6`` are
    None for the pins of a version before IPv6, whose program knows no IPv6 prefixes."""

    def __init__(
        self,
        allowed: Map,
        local: Map,
        stats: Map,
        allowed6: Map | None = None,
        local6: Map | None = None,
    ) -> None:
        self.allowed = allowed
        self.local = local
        self.stats = stats
        self.allowed6 = allowed6
        self.local6 = local6
        key6_sizes = {trie.key_size for trie in (allowed6, local6) if trie is not None}
        if (
            allowed.key_size != _PREFIX.size
            or stats.value_size != _COUNTER.size
            or key6_sizes - {_PREFIX6.size}
        ):
            raise DecapError(
                "the decap object's maps do not match this rusty_rail version "
                f"(prefix key {allowed.key_size} bytes, IPv6 prefix key {sorted(key6_sizes)}, "
                f"counter {stats.value_size} bytes): rebuild with scripts/setup"
            )

    @classmethod
    def of_object(cls, bpf_object: BpfObject) -> DecapMaps:
        return cls(*(bpf_object.map(name) for name in _MAP_PINS))

    @classmethod
    def from_pins(cls, directory: Path) -> DecapMaps:
        """The pinned maps; the IPv6 ones only when pinned (see the class)."""
        opened: list[Map | None] = []
        try:
            for pin in _MAP_PINS_V4.values():
                opened.append(Map.from_pinned(directory / pin))
            for pin in _MAP_PINS_V6.values():
                path = directory / pin
                opened.append(Map.from_pinned(path) if path.exists() else None)
        except BaseException:
            for bpf_map in opened:
                if bpf_map is not None:
                    bpf_map.close()
            raise
        allowed, local, stats, allowed6, local6 = opened
        assert allowed is not None and local is not None and stats is not None
        return cls(allowed, local, stats, allowed6, local6)

    def close(self) -> None:
        for bpf_map in (self.allowed, self.local, self.stats, self.allowed6, self.local6):
            if bpf_map is not None:
                bpf_map.close()

    @staticmethod
    def _prefixes(*tries: Map | None) -> list[Prefix]:
        found: list[Prefix] = []
        for trie in tries:
            if trie is not None:
                found.extend(map(_prefix_of_key, trie.keys()))
        return _sorted(found)

    @staticmethod
    def _replace(trie: Map, wanted: Sequence[Prefix]) -> None:
        # New entries first, stale ones after: a prefix in both sets is never missing.
        current = set(DecapMaps._prefixes(trie))
        for network in wanted:
            if network not in current:
                trie.update(_prefix_key(network), _PRESENT)
        for network in current - set(wanted):
            trie.delete(_prefix_key(network))

    @staticmethod
    def _set(what: str, trie4: Map, trie6: Map | None, prefixes: Sequence[Prefix]) -> None:
        """Each family's prefixes into its trie, after checking that both fit."""
        ipv4 = [network for network in prefixes if network.version == 4]
        ipv6 = [network for network in prefixes if network.version == 6]
        if len(ipv4) > trie4.max_entries:
            raise ValueError(f"{what}: {len(ipv4)} IPv4 prefixes, at most {trie4.max_entries}")
        if trie6 is None:
            if ipv6:
                raise DecapError(
                    f"{what}: the decap running here was attached by a version without IPv6 "
                    f"and cannot take {ipv6[0]}: run rusty-rail decap (attach) again to "
                    "upgrade it in place"
                )
        elif len(ipv6) > trie6.max_entries:
            raise ValueError(f"{what}: {len(ipv6)} IPv6 prefixes, at most {trie6.max_entries}")
        DecapMaps._replace(trie4, ipv4)
        if trie6 is not None:
            DecapMaps._replace(trie6, ipv6)

    def allowed_prefixes(self) -> list[Prefix]:
        return self._prefixes(self.allowed, self.allowed6)

    def local_prefixes(self) -> list[Prefix]:
        return self._prefixes(self.local, self.local6)

    def set_allowed(self, prefixes: Sequence[Prefix]) -> None:
        self._set("allowed", self.allowed, self.allowed6, prefixes)

    def set_local(self, prefixes: Sequence[Prefix]) -> None:
        self._set("local", self.local, self.local6, prefixes)

    def uncounted(self) -> list[str]:
        """The reasons the counter array has no entry for (lower-case DecapStat names): an
        array pinned by an older version, smaller than DecapStat, kept across upgrades."""
        return [stat.name.lower() for stat in DecapStat if stat >= self.stats.max_entries]

    def counters(self) -> dict[str, dict[str, int]]:
        """Per reason (lower-case DecapStat names), packets and bytes summed over the CPUs;
        zero for the reasons of uncounted()."""
        result: dict[str, dict[str, int]] = {}
        for stat in DecapStat:
            values = []
            if stat < self.stats.max_entries:
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
    """Decapsulate GRE from the ``allowed`` prefixes (IPv4 and IPv6) on ``device``; returns
    decap_status().

    ``local`` are the outer destinations that count as this host (prefixes; "0.0.0.0/0" and
    "::/0" accept any); by default the interface's own IPv4 addresses and its IPv6 addresses
    other than link-local ones at the time of the call.
    Attaching again where rusty-rail's decap already runs replaces the program in place (same
    link, same maps and counters: no packet is missed) and sets the prefixes anew."""
    allowed_prefixes = parse_prefixes(allowed, "allowed")
    given_local = None if local is None else parse_prefixes(local, "local")
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
                    f"{device} has no IPv4 (or global IPv6) address to receive GRE on: name "
                    "the tunnel endpoint addresses with local=[...] (or '0.0.0.0/0', '::/0' "
                    "for any)"
                )
            local_prefixes = _sorted(ipaddress.ip_network(address) for address in addresses)
        else:
            local_prefixes = given_local
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
    allowed: Sequence[Prefix],
    local: Sequence[Prefix],
) -> None:
    """A first attach, or the new program swapped into the pinned link, keeping the maps and
    counters: either way the prefixes are written before the program runs on them.

    Pins of a version before IPv6 (the IPv4 maps and the counters only) are adopted too: the
    new program reuses them, and its IPv6 maps are pinned beside them before it is attached.
    Their counter array keeps its size; the reasons it has no room for stay uncounted (status
    lists them) until decap is detached and attached again."""
    spec, adopt = _pinned_spec(directory)
    stats_entries = len(DecapStat)
    if adopt:
        with Map.from_pinned(directory / _MAP_PINS["decap_stats"]) as pinned_stats:
            stats_entries = pinned_stats.max_entries

    def size_stats(bpf_object: BpfObject) -> None:
        bpf_object.set_max_entries("decap_stats", stats_entries)

    with PinnedXdpProgram.load(spec, directory, adopt=adopt, configure=size_stats) as xdp:
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
        if adopt and spec is DECAP_V4_ONLY:
            for name, pin in _MAP_PINS_V6.items():
                xdp.obj.map(name).pin(directory / pin)
        xdp.attach(ifindex, mode)


def _pinned_spec(directory: Path) -> tuple[PinnedXdpSpec, bool]:
    """Which maps to adopt from ``directory``: all (DECAP, True), the IPv4-only set of an
    older version (DECAP_V4_ONLY, True), or none (DECAP, False); DecapError for any other
    mix, an interrupted detach."""
    try:
        return DECAP, DECAP.adoptable(directory)
    except PartialPins as error:
        missing = error.missing
    if sorted(missing) == sorted(_MAP_PINS_V6):
        return DECAP_V4_ONLY, True
    raise DecapError(
        f"{directory} holds only some of decap's maps (missing: {', '.join(missing)}); "
        "run decap detach first"
    )


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
