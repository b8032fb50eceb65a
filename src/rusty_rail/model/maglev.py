"""Maglev lookup tables: which backend owns each of a VIP's M slots, with weights.

The table depends only on the set of (backend address, weight), the size and the cluster
seed, so every node builds the same one; docs/maglev.md is the specification.
"""

from __future__ import annotations

import ctypes
import hashlib
import heapq
import ipaddress
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from rusty_rail.model.flowhash import DEFAULT_SEED, MASK32, MASK64, mix64_vectorised

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Impl = Literal["c", "python"]

#: The paper's suggestion: a prime well above 100 x the number of backends.
DEFAULT_TABLE_SIZE = 65537
#: The largest table accepted: 2^24 slots are 64 MiB in the data plane per VIP.
MAX_TABLE_SIZE = 1 << 24
MAX_WEIGHT = 0xFFFF
#: A slot of a table without backends; the same value as ``model.state.NONE_INDEX``.
EMPTY_SLOT = 0xFFFFFFFF

#: XORed into the seed so that offset and skip are independent hashes of the same key.
OFFSET_SEED_TWEAK = 0x6F66667365740000  # "offset\0\0"
SKIP_SEED_TWEAK = 0x736B697000000000  # "skip\0\0\0\0"

_IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
_IPV4_MAPPED = 0xFFFF << 32
_FINGERPRINT_HEADER = b"rusty-rail maglev v1\n"


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class MaglevTable:
    """A populated table: ``slots[s]`` is an index into ``backends`` (or EMPTY_SLOT).

    ``backends`` and ``weights`` list the backends with weight > 0, sorted by key bytes.
    A backend whose share is under one slot may hold no slot at all (docs/maglev.md).
    """

    size: int
    seed: int
    backends: tuple[Address, ...]
    weights: tuple[int, ...]
    slots: npt.NDArray[np.uint32]
    impl: Impl

    def slot_addresses(self) -> list[Address | None]:
        """The table as addresses, slot by slot (None for the slots of an empty table)."""
        if not self.backends:
            return [None] * self.size
        return [self.backends[index] for index in self.slots.tolist()]

    def slot_counts(self) -> npt.NDArray[np.int64]:
        """How many slots each backend holds, aligned with ``backends``."""
        if not self.backends:
            return np.zeros(0, dtype=np.int64)
        return np.bincount(self.slots, minlength=len(self.backends)).astype(np.int64)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the table as addresses: equal tables, equal fingerprints on any node.

        Input: the header ``rusty-rail maglev v1\\n``, M as 4 bytes big-endian, then the
        16-byte key of each slot's backend in slot order (nothing more for an empty table).
        """
        digest = hashlib.sha256(_FINGERPRINT_HEADER)
        digest.update(self.size.to_bytes(4, "big"))
        if self.backends:
            keys = b"".join(backend_key(backend) for backend in self.backends)
            rows = np.frombuffer(keys, dtype=np.uint8).reshape(len(self.backends), 16)
            digest.update(rows[self.slots].tobytes())
        return digest.hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaglevTable):
            return NotImplemented
        return (
            self.size == other.size
            and self.backends == other.backends
            and self.weights == other.weights
            and bool(np.array_equal(self.slots, other.slots))
        )

    def __hash__(self) -> int:
        return hash((self.size, self.backends, self.weights))


def backend_key(address: Address) -> bytes:
    """The 16 bytes that identify a backend: IPv6 packed, IPv4 as ::ffff:a.b.c.d."""
    if isinstance(address, ipaddress.IPv4Address):
        return _IPV4_MAPPED_PREFIX + address.packed
    return address.packed


def build_table(
    backends: Iterable[tuple[str | Address, int]],
    size: int = DEFAULT_TABLE_SIZE,
    seed: int = DEFAULT_SEED,
    *,
    impl: Literal["auto", "c", "python"] = "auto",
) -> MaglevTable:
    """Build the Maglev table of ``backends`` ((address, weight) pairs, in any order).

    Raises ValueError for a size that is not a prime in 2..MAX_TABLE_SIZE, a weight outside
    0..65535, an address that does not parse or has an IPv6 scope, or the same address
    twice. ``impl`` picks the population code: "auto" takes the C library when it is built.
    """
    _check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MASK64:
        raise ValueError(f"Maglev seed must be an integer in 0..2**64-1, got {seed!r}")
    library = _library() if impl != "python" else None
    if impl == "c" and library is None:
        raise RuntimeError(f"the Maglev C library is not built: no _maglevc*.so in {_HERE}")
    used: Impl = "c" if library is not None else "python"

    addresses, keys, all_weights = _read_backends(backends)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    sorted_keys = keys[order]
    same = (sorted_keys[1:, 0] == sorted_keys[:-1, 0]) & (sorted_keys[1:, 1] == sorted_keys[:-1, 1])
    if same.any():
        first, second = order[np.argmax(same)], order[np.argmax(same) + 1]
        raise ValueError(
            f"backend {addresses[second]} appears twice (as {addresses[first]} and "
            f"{addresses[second]}): a backend is identified by its address"
        )
    active = all_weights[order] > 0
    order = order[active]
    if order.size == 0:
        slots = np.full(size, EMPTY_SLOT, dtype=np.uint32)
        slots.setflags(write=False)
        return MaglevTable(size, seed, (), (), slots, used)

    # The two halves as big-endian 64-bit integers are the key's 16 bytes: read as LE words.
    words = sorted_keys[active].astype(">u8").view("<u4").astype(np.uint32)
    weights = all_weights[order]
    offsets, skips = _permutation_parameters(words, size, seed)
    if library is not None:
        slots = _populate_c(library, offsets, skips, weights, size)
    else:
        slots = _populate_python(offsets, skips, weights, size)
    slots.setflags(write=False)
    return MaglevTable(
        size,
        seed,
        tuple([addresses[i] for i in order.tolist()]),
        tuple(weights.tolist()),
        slots,
        used,
    )


def _read_backends(
    backends: Iterable[tuple[str | Address, int]],
) -> tuple[list[Address], npt.NDArray[np.uint64], npt.NDArray[np.uint32]]:
    """Validate the pairs; returns the addresses, their keys as (high, low) 64-bit halves
    (one row each) and the weights, all in input order."""
    pairs = list(backends)
    # IPv4Address objects are what a validated configuration holds: they need no parsing.
    addresses = [a if type(a) is ipaddress.IPv4Address else _parse_address(a) for a, _ in pairs]
    weights = [weight for _, weight in pairs]
    if (
        not set(map(type, weights)) <= {int}
        or not 0 <= min(weights, default=0) <= max(weights, default=0) <= MAX_WEIGHT
    ):
        address, weight = next(
            (a, w)
            for a, w in zip(addresses, weights, strict=True)
            if type(w) is not int or not 0 <= w <= MAX_WEIGHT
        )
        raise ValueError(
            f"backend {address}: weight must be an integer in 0..{MAX_WEIGHT}, got {weight!r}"
        )
    keys = [
        _IPV4_MAPPED | int(a) if type(a) is ipaddress.IPv4Address else int(a) for a in addresses
    ]
    halves = np.zeros((len(keys), 2), dtype=np.uint64)
    if max(keys, default=0) > MASK64:
        halves[:, 0] = [key >> 64 for key in keys]
        halves[:, 1] = [key & MASK64 for key in keys]
    else:
        halves[:, 1] = keys
    return addresses, halves, np.array(weights, dtype=np.uint32)


def moved_fraction(before: MaglevTable, after: MaglevTable) -> float:
    """The share of slots whose backend address differs between two tables of the same size."""
    if before.size != after.size:
        raise ValueError(f"tables differ in size ({before.size} and {after.size})")
    if not before.backends or not after.backends:
        return 0.0 if before.backends == after.backends else 1.0
    index_before = {backend_key(backend): i for i, backend in enumerate(before.backends)}
    # A backend that is not in `before` maps to EMPTY_SLOT, which no slot of `before` holds.
    translate = np.fromiter(
        (index_before.get(backend_key(backend), EMPTY_SLOT) for backend in after.backends),
        dtype=np.uint32,
        count=len(after.backends),
    )
    return float(np.count_nonzero(translate[after.slots] != before.slots)) / before.size


def _permutation_parameters(
    keys: npt.NDArray[np.uint32], size: int, seed: int = DEFAULT_SEED
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """Offset and skip of each backend's walk; ``keys`` holds one 16-byte key a row, as words.

    offset = hash32(seed ^ OFFSET_SEED_TWEAK, words) % M, skip = hash32(seed ^
    SKIP_SEED_TWEAK, words) % (M - 1) + 1, with the words little-endian as words_of gives.
    """
    low32 = np.uint64(MASK32)
    offset_hashes = mix64_vectorised((seed ^ OFFSET_SEED_TWEAK) & MASK64, keys) & low32
    skip_hashes = mix64_vectorised((seed ^ SKIP_SEED_TWEAK) & MASK64, keys) & low32
    offsets = (offset_hashes % np.uint64(size)).astype(np.uint32)
    skips = (skip_hashes % np.uint64(size - 1) + np.uint64(1)).astype(np.uint32)
    return offsets, skips


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"Maglev table size must be an integer, got {size!r}")
    if not 2 <= size <= MAX_TABLE_SIZE:
        raise ValueError(f"Maglev table size must be a prime in 2..{MAX_TABLE_SIZE}, got {size}")
    divisor = _smallest_divisor(size)
    if divisor != size:
        raise ValueError(
            f"Maglev table size must be a prime number, got {size} = {divisor} x {size // divisor}"
        )


def _smallest_divisor(n: int) -> int:
    if n % 2 == 0:
        return 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return divisor
        divisor += 2
    return n


def _parse_address(address: object) -> Address:
    if isinstance(address, str):
        try:
            parsed: Address = ipaddress.ip_address(address)
        except ValueError as error:
            raise ValueError(f"backend address {address!r} is not an IP address") from error
    elif isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        parsed = address
    else:
        raise ValueError(f"backend address must be a string or an IP address, got {address!r}")
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id is not None:
        raise ValueError(
            f"backend address {address!r} has a scope: a backend is identified by its "
            "16-byte address alone"
        )
    return parsed


# --- population -------------------------------------------------------------------------

_HERE = Path(__file__).resolve().parent
_UINT32_POINTER = ctypes.POINTER(ctypes.c_uint32)
_C_ERRORS = {
    -1: "invalid arguments (table size not prime, no weight > 0, offset or skip out of range)",
    -2: "out of memory",
}
_NOT_LOADED = object()
_loaded: object = _NOT_LOADED


def c_library_available() -> bool:
    """Whether the C population code (``_maglevc*.so`` next to this module) can be used."""
    return _library() is not None


def _library() -> ctypes.CDLL | None:
    global _loaded
    if _loaded is _NOT_LOADED:
        _loaded = _load_library()
    return _loaded if isinstance(_loaded, ctypes.CDLL) else None


def _load_library() -> ctypes.CDLL | None:
    # Prefer the build for this interpreter; any other build of the same plain C file works.
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    candidates = sorted(
        _HERE.glob("_maglevc*.so"), key=lambda path: path.name != f"_maglevc{suffix}"
    )
    for path in candidates:
        try:
            library = ctypes.CDLL(str(path))
            populate = library.rr_maglev_populate
        except (OSError, AttributeError):
            continue
        populate.argtypes = [
            ctypes.c_uint32,
            ctypes.c_uint32,
            _UINT32_POINTER,
            _UINT32_POINTER,
            _UINT32_POINTER,
            _UINT32_POINTER,
        ]
        populate.restype = ctypes.c_int32
        return library
    return None


def _populate_c(
    library: ctypes.CDLL,
    offsets: npt.NDArray[np.uint32],
    skips: npt.NDArray[np.uint32],
    weights: npt.NDArray[np.uint32],
    size: int,
) -> npt.NDArray[np.uint32]:
    slots = np.empty(size, dtype=np.uint32)
    arrays = [np.ascontiguousarray(a, dtype=np.uint32) for a in (offsets, skips, weights)]
    result = library.rr_maglev_populate(
        len(offsets),
        size,
        *(a.ctypes.data_as(_UINT32_POINTER) for a in arrays),
        slots.ctypes.data_as(_UINT32_POINTER),
    )
    if result != 0:
        raise RuntimeError(f"Maglev C population failed: {_C_ERRORS.get(result, result)}")
    return slots


def _populate_python(
    offsets: npt.NDArray[np.uint32],
    skips: npt.NDArray[np.uint32],
    weights: npt.NDArray[np.uint32],
    size: int,
) -> npt.NDArray[np.uint32]:
    """The same schedule as the C code, driven by a heap instead of a scan per round.

    A backend of weight w takes its k-th turn (k = 1, 2, ...) in round ceil(k * Wmax / w):
    its credit after r rounds is r * w, one Wmax spent per turn. Turns therefore run in
    (round, index) order, which a heap gives without visiting idle backends; with very
    uneven weights, rounds where only a few backends turn would dominate a round scan.
    """
    slots = [EMPTY_SLOT] * size
    positions = offsets.tolist()
    skip_of = skips.tolist()
    weight_of = weights.tolist()
    max_weight = max(weight_of)
    turns_taken = [0] * len(weight_of)
    heap = [(-(-max_weight // weight), i) for i, weight in enumerate(weight_of)]
    heapq.heapify(heap)
    filled = 0
    while True:
        backend = heap[0][1]
        slot, skip = positions[backend], skip_of[backend]
        while slots[slot] != EMPTY_SLOT:
            slot += skip
            if slot >= size:
                slot -= size
        slots[slot] = backend
        filled += 1
        if filled == size:
            return np.array(slots, dtype=np.uint32)
        positions[backend] = (slot + skip) % size
        turns_taken[backend] += 1
        next_round = -(-(turns_taken[backend] + 1) * max_weight // weight_of[backend])
        heapq.heapreplace(heap, (next_round, backend))
