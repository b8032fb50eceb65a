"""Type aliases shared across the package."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

#: An IP address of either family.
IPAddress = IPv4Address | IPv6Address
