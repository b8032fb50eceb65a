"""The flow hash: a keyed 64-bit mixer over 32-bit words, and the flow key it hashes.

This is the Python twin of ``bpf/lib/flowhash.h``; docs/flow-hash.md is the specification
both follow bit for bit. Maglev reuses the same mixer (with other seeds) for the
backend permutations.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1

#: Multiplier applied after each word is folded in (2^64 / golden ratio, odd).
WORD_MULTIPLIER = 0x9E3779B97F4A7C15
#: Rotation applied after each multiplication.
WORD_ROTATION = 31
#: The two multipliers of the final avalanche (MurmurHash3's fmix64 constants).
FINAL_MULTIPLIER_1 = 0xFF51AFD7ED558CCD
FINAL_MULTIPLIER_2 = 0xC4CEB9FE1A85EC53

#: The cluster seed used when the configuration names none. Every node must use
#: the same seed; operators who want flow placement to be unguessable set their own.
DEFAULT_SEED = 0x7275737479726169  # "rustyrai"


def _rotl64(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & MASK64


def mix64(seed: int, words: Sequence[int]) -> int:
    """Hash 32-bit ``words`` with the 64-bit ``seed``; returns the full 64-bit state."""
    state = seed & MASK64
    for word in words:
        state = ((state ^ (word & MASK32)) * WORD_MULTIPLIER) & MASK64
        state = _rotl64(state, WORD_ROTATION)
    state ^= state >> 33
    state = (state * FINAL_MULTIPLIER_1) & MASK64
    state ^= state >> 33
    state = (state * FINAL_MULTIPLIER_2) & MASK64
    state ^= state >> 33
    return state


def hash32(seed: int, words: Sequence[int]) -> int:
    """The 32-bit hash used by the data plane: the low half of :func:`mix64`."""
    return mix64(seed, words) & MASK32


def mix64_vectorised(seed: int, words: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint64]:
    """:func:`mix64` for many inputs at once: ``words`` has one row per input."""
    rows = np.asarray(words, dtype=np.uint32)
    if rows.ndim != 2:
        raise ValueError(f"words must be a 2-D array (inputs x words), got shape {rows.shape}")
    state = np.full(rows.shape[0], seed & MASK64, dtype=np.uint64)
    multiplier = np.uint64(WORD_MULTIPLIER)
    left, right = np.uint64(WORD_ROTATION), np.uint64(64 - WORD_ROTATION)
    for column in range(rows.shape[1]):
        state ^= rows[:, column].astype(np.uint64)
        state *= multiplier
        state = (state << left) | (state >> right)
    shift = np.uint64(33)
    state ^= state >> shift
    state *= np.uint64(FINAL_MULTIPLIER_1)
    state ^= state >> shift
    state *= np.uint64(FINAL_MULTIPLIER_2)
    state ^= state >> shift
    return state


def words_of(data: bytes) -> list[int]:
    """Split ``data`` (a multiple of 4 bytes) into little-endian 32-bit words.

    Little-endian because that is what a BPF program on x86 and arm64 gets when it
    loads 4 bytes of a packet into a register: the C side hashes the bytes as they
    sit in the packet, without byte swapping.
    """
    if len(data) % 4:
        raise ValueError(f"expected a multiple of 4 bytes, got {len(data)}")
    return list(struct.unpack(f"<{len(data) // 4}I", data))


@dataclass(frozen=True, slots=True)
class Flow:
    """The inner flow the balancer hashes: addresses as packed bytes, ports as integers.

    ``src`` and ``dst`` are 4 bytes (IPv4) or 16 bytes (IPv6). Ports are 0 for a
    3-tuple flow (ICMP, other protocols, and every IP fragment).
    """

    src: bytes
    dst: bytes
    proto: int
    sport: int = 0
    dport: int = 0

    def __post_init__(self) -> None:
        if len(self.src) not in (4, 16) or len(self.dst) != len(self.src):
            raise ValueError(
                "flow addresses must be both 4 or both 16 bytes, "
                f"got {len(self.src)} and {len(self.dst)}"
            )
        if not 0 <= self.proto <= 255:
            raise ValueError(f"flow proto must be 0..255, got {self.proto}")
        for name, port in (("sport", self.sport), ("dport", self.dport)):
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"flow {name} must be 0..65535, got {port}")

    @classmethod
    def of(cls, src: str, dst: str, proto: int, sport: int = 0, dport: int = 0) -> Flow:
        """Build a flow from address strings (for tests, the CLI and the API)."""
        return cls(
            ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, proto, sport, dport
        )

    @property
    def is_ipv6(self) -> bool:
        return len(self.src) == 16

    def ports_word(self) -> int:
        """The two ports as they sit on the wire (source first), loaded little-endian."""
        return int.from_bytes(struct.pack("!HH", self.sport, self.dport), "little")

    def words(self) -> list[int]:
        """The hash input: src words, dst words, the ports word, the protocol."""
        return [*words_of(self.src), *words_of(self.dst), self.ports_word(), self.proto]

    def __str__(self) -> str:
        src, dst = ipaddress.ip_address(self.src), ipaddress.ip_address(self.dst)
        if self.is_ipv6:
            return f"[{src}]:{self.sport} -> [{dst}]:{self.dport} proto {self.proto}"
        return f"{src}:{self.sport} -> {dst}:{self.dport} proto {self.proto}"


def flow_hash(flow: Flow, seed: int = DEFAULT_SEED) -> int:
    """The 32-bit keyed hash of ``flow``; the data plane indexes Maglev tables with it."""
    return hash32(seed, flow.words())
