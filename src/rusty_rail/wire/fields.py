"""Header fields as values: MAC and IP addresses from text or bytes and back, and VLAN tags."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from rusty_rail.wire.constants import ETH_P_8021Q

MacLike = bytes | str
Ipv4Like = bytes | str
Ipv6Like = bytes | str


# --- Addresses -------------------------------------------------------------------------------


def mac(value: MacLike) -> bytes:
    """A MAC address as 6 bytes, from bytes or "aa:bb:cc:dd:ee:ff"."""
    if isinstance(value, bytes):
        if len(value) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(value)}")
        return value
    parts = value.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {value!r}")
    return bytes(int(part, 16) for part in parts)


def format_mac(value: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in value)


def ipv4_address(value: Ipv4Like) -> bytes:
    """An IPv4 address as 4 bytes, from bytes or a dotted string."""
    if isinstance(value, bytes):
        if len(value) != 4:
            raise ValueError(f"an IPv4 address is 4 bytes, got {len(value)}")
        return value
    return ipaddress.IPv4Address(value).packed


def ipv6_address(value: Ipv6Like) -> bytes:
    """An IPv6 address as 16 bytes, from bytes or a string."""
    if isinstance(value, bytes):
        if len(value) != 16:
            raise ValueError(f"an IPv6 address is 16 bytes, got {len(value)}")
        return value
    return ipaddress.IPv6Address(value).packed


def format_ip(value: bytes) -> str:
    """An address of 4 or 16 bytes as text; anything else as hex (for descriptions of garbage)."""
    if len(value) in (4, 16):
        return str(ipaddress.ip_address(value))
    return value.hex()


# --- VLAN tags -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VlanTag:
    """One 802.1Q (TPID 0x8100) or 802.1ad (TPID 0x88A8) tag."""

    vid: int
    tpid: int = ETH_P_8021Q
    pcp: int = 0
    dei: bool = False

    @property
    def tci(self) -> int:
        return (self.pcp & 0x7) << 13 | int(self.dei) << 12 | (self.vid & 0xFFF)

    def to_bytes(self) -> bytes:
        return struct.pack("!HH", self.tpid, self.tci)

    @classmethod
    def from_bytes(cls, tpid: int, tci: int) -> VlanTag:
        return cls(vid=tci & 0xFFF, tpid=tpid, pcp=tci >> 13, dei=bool(tci & 0x1000))
