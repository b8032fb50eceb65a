"""The decap program's maps (bpf/decap.bpf.c) as Python objects: the allowed and local prefix
tries of both families, the methods and VNIs, the counters by reason; with the prefix parsing
and the encodings in one place. rusty_rail.decap.agent attaches, pins and reads them.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from rusty_rail.dataplane.libbpf import BpfObject, Map, bpf_object_path
from rusty_rail.decap.methods import VNI_KEY, VNI_PRESENT, MethodSet

__all__ = [
    "MAP_PINS",
    "MAP_PINS_METHODS",
    "MAP_PINS_V4",
    "MAP_PINS_V6",
    "OBJECT_NAME",
    "PROGRAM_NAME",
    "DecapError",
    "DecapMaps",
    "DecapStat",
    "Prefix",
    "load_decap_object",
    "parse_prefixes",
    "sorted_prefixes",
]

OBJECT_NAME = "decap"
PROGRAM_NAME = "xdp_decap"

#: Map name in the object -> pin name in the interface's pin directory, by the version that
#: added them: the IPv4 maps and the counters, then the IPv6 tries, then the methods.
MAP_PINS_V4 = {"decap_allowed": "allowed", "decap_local": "local", "decap_stats": "stats"}
MAP_PINS_V6 = {"decap_allowed6": "allowed6", "decap_local6": "local6"}
MAP_PINS_METHODS = {"decap_config": "config", "decap_vnis": "vnis"}
MAP_PINS = {**MAP_PINS_V4, **MAP_PINS_V6, **MAP_PINS_METHODS}

#: An allowed or local prefix, of either family.
Prefix = IPv4Network | IPv6Network

# struct ipv4_lpm_key / ipv6_lpm_key (bpf/lib/lpm.h): prefix length (host order), address
# (network order).
_PREFIX = struct.Struct("=I4s")
_PREFIX6 = struct.Struct("=I16s")
# IPv4-mapped IPv6 addresses (RFC 4291 2.5.5.2) never appear as an outer tunnel address.
_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
# struct counter (bpf/lib/stats.h): packets, bytes.
_COUNTER = struct.Struct("=QQ")
_PRESENT = struct.pack("=I", 1)
_CONFIG_KEY = struct.pack("=I", 0)


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
    PASS_VNI_DENIED = 10


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
    return sorted_prefixes(prefixes)


def sorted_prefixes(prefixes: Iterable[Prefix]) -> list[Prefix]:
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
    None for the pins of a version before IPv6, whose program knows no IPv6 prefixes;
    ``config`` and ``vnis`` None for the pins of a version before the methods (GRE alone)."""

    def __init__(
        self,
        allowed: Map,
        local: Map,
        stats: Map,
        allowed6: Map | None = None,
        local6: Map | None = None,
        config: Map | None = None,
        vnis: Map | None = None,
    ) -> None:
        self.allowed = allowed
        self.local = local
        self.stats = stats
        self.allowed6 = allowed6
        self.local6 = local6
        self.config = config
        self.vnis = vnis
        key6_sizes = {trie.key_size for trie in (allowed6, local6) if trie is not None}
        if (
            allowed.key_size != _PREFIX.size
            or stats.value_size != _COUNTER.size
            or key6_sizes - {_PREFIX6.size}
            or (config is not None and config.value_size != len(MethodSet().config()))
        ):
            raise DecapError(
                "the decap object's maps do not match this rusty_rail version "
                f"(prefix key {allowed.key_size} bytes, IPv6 prefix key {sorted(key6_sizes)}, "
                f"counter {stats.value_size} bytes): rebuild with scripts/setup"
            )

    @classmethod
    def of_object(cls, bpf_object: BpfObject) -> DecapMaps:
        return cls(*(bpf_object.map(name) for name in MAP_PINS))

    @classmethod
    def from_pins(cls, directory: Path) -> DecapMaps:
        """The pinned maps; those added by later versions only when pinned (see the class)."""
        opened: list[Map | None] = []
        try:
            for pin in MAP_PINS_V4.values():
                opened.append(Map.from_pinned(directory / pin))
            for pin in [*MAP_PINS_V6.values(), *MAP_PINS_METHODS.values()]:
                path = directory / pin
                opened.append(Map.from_pinned(path) if path.exists() else None)
        except BaseException:
            for bpf_map in opened:
                if bpf_map is not None:
                    bpf_map.close()
            raise
        allowed, local, stats, allowed6, local6, config, vnis = opened
        assert allowed is not None and local is not None and stats is not None
        return cls(allowed, local, stats, allowed6, local6, config, vnis)

    def close(self) -> None:
        for bpf_map in (
            self.allowed,
            self.local,
            self.stats,
            self.allowed6,
            self.local6,
            self.config,
            self.vnis,
        ):
            if bpf_map is not None:
                bpf_map.close()

    def methods(self) -> MethodSet:
        """The methods and VNIs in force (GRE alone for the pins of a version before them)."""
        if self.config is None or self.vnis is None:
            return MethodSet()
        value = self.config.lookup(_CONFIG_KEY)
        assert value is not None  # an array's entry 0 is always there
        vnis = [vni for (vni,) in map(VNI_KEY.unpack, self.vnis.keys())]
        return MethodSet.of_config(value, vnis)

    def set_methods(self, wanted: MethodSet) -> None:
        """Write the methods and VNIs: new VNIs first, then the settings, then the stale VNIs
        removed, so that no VNI in both sets is ever refused."""
        if self.config is None or self.vnis is None:
            raise DecapError(
                "the decap running here was attached by a version without methods: run "
                "rusty-rail decap (attach) again to upgrade it in place"
            )
        if wanted.vnis is not None and len(wanted.vnis) > self.vnis.max_entries:
            raise ValueError(f"vni: {len(wanted.vnis)} VNIs, at most {self.vnis.max_entries}")
        current = {vni for (vni,) in map(VNI_KEY.unpack, self.vnis.keys())}
        kept = set(wanted.vnis or ())
        for vni in sorted(kept - current):
            self.vnis.update(VNI_KEY.pack(vni), VNI_PRESENT)
        self.config.update(_CONFIG_KEY, wanted.config())
        for vni in sorted(current - kept):
            self.vnis.delete(VNI_KEY.pack(vni))

    @staticmethod
    def _prefixes(*tries: Map | None) -> list[Prefix]:
        found: list[Prefix] = []
        for trie in tries:
            if trie is not None:
                found.extend(map(_prefix_of_key, trie.keys()))
        return sorted_prefixes(found)

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
