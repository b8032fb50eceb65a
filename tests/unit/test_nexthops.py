"""control/nexthops.py lb_ipv6_of: the node's outer IPv6 address, configured or discovered
from the device (its one IPv6 address of global scope)."""

from __future__ import annotations

from ipaddress import IPv6Address, ip_address

import pytest

from rusty_rail._types import IPAddress
from rusty_rail.config import config_from_toml_text
from rusty_rail.control import nexthops
from rusty_rail.control.nexthops import lb_ipv6_of


def _device_has(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
    listed: list[IPAddress] = [ip_address(a) for a in addresses]
    monkeypatch.setattr(nexthops.netlink, "interface_addresses", lambda device: listed)


def test_a_configured_address_wins_over_the_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    _device_has(monkeypatch, "2001:2::7")
    config = config_from_toml_text('lb_address_ipv6 = "2001:2::2"\n')
    assert lb_ipv6_of(config, "eth0") == IPv6Address("2001:2::2")


def test_the_devices_one_global_ipv6_address_is_discovered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _device_has(monkeypatch, "198.18.0.2", "fe80::1", "2001:2::7")
    assert lb_ipv6_of(config_from_toml_text(""), "eth0") == IPv6Address("2001:2::7")


def test_a_unique_local_address_has_global_scope_too(monkeypatch: pytest.MonkeyPatch) -> None:
    _device_has(monkeypatch, "fe80::1", "fd00:2::7")
    assert lb_ipv6_of(config_from_toml_text(""), "eth0") == IPv6Address("fd00:2::7")


@pytest.mark.parametrize(
    "addresses",
    [(), ("198.18.0.2",), ("198.18.0.2", "fe80::1"), ("2001:2::7", "2001:2::8"), ("::1",)],
)
def test_none_or_several_global_ipv6_addresses_discover_nothing(
    monkeypatch: pytest.MonkeyPatch, addresses: tuple[str, ...]
) -> None:
    _device_has(monkeypatch, *addresses)
    assert lb_ipv6_of(config_from_toml_text(""), "eth0") is None
