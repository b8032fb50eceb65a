"""Fingerprints of the desired state and of the live tables: the ETag of the API, the
cluster-wide config_fingerprint, and table fingerprints computed once per table."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable
from typing import Final

from rusty_rail.config import Backend, Config, Vip
from rusty_rail.control.plan import (
    DEFAULT_SET,
)
from rusty_rail.model.maglev import MaglevTable


class TableFingerprints:
    """Table fingerprints, computed once per table object (a SHA-256 of a 65537-slot table
    takes milliseconds; unchanged tables are the same object from plan to plan)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[MaglevTable, str]] = {}

    def of(self, name: str, table: MaglevTable) -> str:
        cached = self._cache.get(name)
        if cached is None or cached[0] is not table:
            cached = (table, table.fingerprint())
            self._cache[name] = cached
        return cached[1]


def service_order(name: str) -> tuple[int, str]:
    return (0, "") if name == DEFAULT_SET else (1, name)


def address_order(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text)
    return address.version, int(address)


def config_etag(config: Config) -> str:
    """SHA-256 of the whole desired state (the cluster-wide part and the node's own keys);
    the order of VIPs and backends does not count, as it changes nothing."""
    node_keys = config.model_dump(mode="json", include=set(NODE_KEYS))
    if node_keys.get("lb_address_ipv6") is None:  # unset: the ETag of the version before it
        node_keys.pop("lb_address_ipv6", None)
    if node_keys.get("ingress", ["gre"]) == ["gre"]:  # the default: as before ingress existed
        node_keys.pop("ingress", None)
    node = json.dumps(node_keys, sort_keys=True)
    return hashlib.sha256(f"{config_fingerprint(config)}\n{node}".encode()).hexdigest()


def config_fingerprint(config: Config) -> str:
    """SHA-256 of the cluster-wide part of ``config`` in a canonical order (VIPs by key,
    backends by address): every key but device, xdp_mode, lb_address, lb_address_ipv6,
    conntrack_size, ingress and bgp.
    Equal on every node given the same changes, in whatever order they came."""
    settings = config.model_dump(mode="json", exclude={"vips", "default_backends", *NODE_KEYS})
    digest = hashlib.sha256(b"rusty-rail config v1\n")
    digest.update(json.dumps(settings, sort_keys=True).encode())

    def add(backends: Iterable[Backend]) -> None:
        # Packed addresses sort by family, then numerically; one record per backend.
        records = sorted(
            len(b.address.packed).to_bytes(1, "big")
            + b.address.packed
            + b.weight.to_bytes(2, "big")
            + b.state.value.encode()
            + _egress_record(b)
            for b in backends
        )
        digest.update(len(records).to_bytes(4, "big") + b"".join(records))

    add(config.default_backends)
    for vip in sorted(config.vips, key=_vip_order):
        vni = "" if vip.vni is None else f" vni {vip.vni}"
        digest.update(f"\nvip {vip.key} {vip.encap.value} {vip.table_size}{vni}\n".encode())
        add(vip.backends)
    return digest.hexdigest()


def _egress_record(backend: Backend) -> bytes:
    """A backend's own encap and VNI, empty when it sets neither (the record of before)."""
    if backend.encap is None and backend.vni is None:
        return b""
    encap = backend.encap.value if backend.encap is not None else ""
    return f" {encap}/{'' if backend.vni is None else backend.vni}".encode()


def _vip_order(vip: Vip) -> tuple[int, int, str, int]:
    protocol = vip.protocol.value if vip.protocol is not None else ""
    return vip.address.version, int(vip.address), protocol, vip.port or 0


#: Keys that differ between the nodes of one cluster by design.
NODE_KEYS: Final = (
    "device",
    "xdp_mode",
    "lb_address",
    "lb_address_ipv6",
    "conntrack_size",
    "ingress",
    "bgp",
)
