"""The Internet checksum (RFC 1071), its incremental update (RFC 1624) and the IPv4
pseudo-header that TCP and UDP checksums cover."""

from __future__ import annotations

import struct
from collections.abc import Sequence


def fold(total: int) -> int:
    """Fold the carries of a ones'-complement sum back into 16 bits (end-around carry)."""
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_complement_sum(data: bytes) -> int:
    """The 16-bit ones'-complement sum of ``data`` (RFC 1071); an odd length is padded with 0."""
    if len(data) % 2:
        data += b"\x00"
    return fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def internet_checksum(data: bytes) -> int:
    """The Internet checksum of ``data`` (RFC 1071): the complement of the ones'-complement sum.

    Computed over a header whose checksum field is zero it gives the value to store; computed
    over a header with its checksum in place it gives 0 when the checksum is valid.
    """
    return ~ones_complement_sum(data) & 0xFFFF


def checksum_update(checksum: int, old_words: Sequence[int], new_words: Sequence[int]) -> int:
    """Update ``checksum`` for 16-bit words that changed, by RFC 1624 equation 3.

    HC' = ~(~HC + ~m + m') for each old word m and new word m', summed with end-around carry.
    The sum is taken over every word given, changed or not (an unchanged word adds 0xFFFF,
    which is zero in ones' complement but keeps the sum away from the all-zero case).
    """
    if len(old_words) != len(new_words):
        raise ValueError(f"{len(old_words)} old words but {len(new_words)} new words")
    total = ~checksum & 0xFFFF
    for old, new in zip(old_words, new_words, strict=True):
        total += (~old & 0xFFFF) + (new & 0xFFFF)
    return ~fold(total) & 0xFFFF


def words16(data: bytes) -> list[int]:
    """``data`` (an even number of bytes) as big-endian 16-bit words."""
    if len(data) % 2:
        raise ValueError(f"expected an even number of bytes, got {len(data)}")
    return list(struct.unpack(f"!{len(data) // 2}H", data))


def checksum_update_bytes(checksum: int, old: bytes, new: bytes) -> int:
    """:func:`checksum_update` for a run of bytes that changed from ``old`` to ``new``."""
    return checksum_update(checksum, words16(old), words16(new))


def ipv4_pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The IPv4 pseudo-header that TCP and UDP checksums cover (RFC 793, RFC 768)."""
    return src + dst + struct.pack("!BBH", 0, proto, length)
