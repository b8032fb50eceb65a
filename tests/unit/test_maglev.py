"""Maglev tables: the specification of docs/maglev.md, determinism, balance, weights, disruption.

The C population and the pure-Python one are held to identical tables on random inputs.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rusty_rail.model import maglev
from rusty_rail.model.flowhash import DEFAULT_SEED, hash32, words_of
from rusty_rail.model.maglev import (
    EMPTY_SLOT,
    MAX_TABLE_SIZE,
    OFFSET_SEED_TWEAK,
    SKIP_SEED_TWEAK,
    Address,
    backend_key,
    build_table,
    moved_fraction,
)
from rusty_rail.model.state import NONE_INDEX

SMALL_PRIMES = [2, 3, 5, 7, 13, 31, 101, 251, 1009, 4099]

# CI sets this to say "nothing may skip here"; there the C library must have been built.
C_LIBRARY_REQUIRED = bool(os.environ.get("RUSTY_RAIL_REQUIRE_ROOT_TESTS"))
requires_c = pytest.mark.skipif(
    not maglev.c_library_available() and not C_LIBRARY_REQUIRED,
    reason="the Maglev C library is not built (pip install -e . builds _maglevc*.so)",
)


def v4(n: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(0xC612_0000 + n)  # 198.18.0.0/15


def v6(n: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0x2001_0002 << 96) + n)  # 2001:2::/48


def equal_weights(count: int, start: int = 1) -> list[tuple[Address, int]]:
    return [(v4(start + i), 1) for i in range(count)]


def reference_table(
    backends: list[tuple[Address, int]], size: int, seed: int = DEFAULT_SEED
) -> list[Address | None]:
    """docs/maglev.md read literally: scalar hashes, full permutations, the round loop."""
    active = sorted((backend_key(a), a, w) for a, w in backends if w > 0)
    if not active:
        return [None] * size
    permutations = []
    for key, _, _ in active:
        offset = hash32(seed ^ 0x6F66667365740000, words_of(key)) % size
        skip = hash32(seed ^ 0x736B697000000000, words_of(key)) % (size - 1) + 1
        permutations.append([(offset + j * skip) % size for j in range(size)])
    max_weight = max(w for _, _, w in active)
    table: list[Address | None] = [None] * size
    taken = [False] * size
    next_index = [0] * len(active)
    accumulator = [0] * len(active)
    filled = 0
    while True:
        for i, (_, address, weight) in enumerate(active):
            accumulator[i] += weight
            if accumulator[i] < max_weight:
                continue
            accumulator[i] -= max_weight
            slot = permutations[i][next_index[i]]
            while taken[slot]:
                next_index[i] += 1
                slot = permutations[i][next_index[i]]
            next_index[i] += 1
            taken[slot] = True
            table[slot] = address
            filled += 1
            if filled == size:
                return table


# Sets of distinct backends, IPv4 and IPv6 mixed, with weights that mix the regimes of the
# C schedule: equal weights, a few heavy backends among light ones, arbitrary weights.
@st.composite
def backend_sets(draw: st.DrawFn, max_backends: int = 30) -> list[tuple[Address, int]]:
    numbers = draw(st.lists(st.integers(1, 5000), min_size=0, max_size=max_backends, unique=True))
    style = draw(st.sampled_from(["equal", "skewed", "any"]))
    weight = {
        "equal": st.just(draw(st.integers(1, 65535))),
        "skewed": st.sampled_from([0, 1, 1, 1, 2, 65535]),
        "any": st.integers(0, 65535),
    }[style]
    return [(v4(n) if n % 3 else v6(n), draw(weight)) for n in numbers]


# --- the algorithm ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(backends=backend_sets(), size=st.sampled_from(SMALL_PRIMES), seed=st.integers(0, 2**64 - 1))
def test_table_is_the_documented_algorithm(
    backends: list[tuple[Address, int]], size: int, seed: int
) -> None:
    table = build_table(backends, size, seed)
    assert table.slot_addresses() == reference_table(backends, size, seed)


def test_offset_and_skip_of_a_backend_are_pinned() -> None:
    key = backend_key(ipaddress.IPv4Address("198.18.0.1"))
    assert key.hex() == "00000000000000000000ffffc6120001"
    assert hash32(DEFAULT_SEED ^ OFFSET_SEED_TWEAK, words_of(key)) % 65537 == 63520
    assert hash32(DEFAULT_SEED ^ SKIP_SEED_TWEAK, words_of(key)) % 65536 + 1 == 16458


def test_a_small_weighted_table_keeps_its_pinned_slots_and_fingerprint() -> None:
    table = build_table(
        [
            ("198.18.0.1", 1),
            ("198.18.0.2", 1),
            ("198.18.0.3", 2),
            ("2001:2::1", 3),
            ("2001:2::2", 0),
        ],
        size=13,
    )
    a, b, c, d = "198.18.0.1", "198.18.0.2", "198.18.0.3", "2001:2::1"
    assert [str(x) for x in table.slot_addresses()] == [d, b, a, d, c, c, d, c, c, d, b, a, d]
    assert table.fingerprint() == "bf365bcf172deac60fed9c91fadc100b83a87d83d5e59b770191d25034e2bb13"


def test_a_default_table_keeps_its_pinned_first_slots_under_two_seeds() -> None:
    table = build_table([(f"198.18.0.{i}", 1) for i in range(1, 6)])
    assert [int(str(a).rsplit(".", 1)[1]) for a in table.slot_addresses()[:16]] == [
        4, 1, 2, 5, 2, 4, 3, 2, 1, 3, 4, 4, 1, 3, 1, 4,
    ]  # fmt: skip
    assert table.fingerprint() == "269dcced2b9de3bfd7a24cb5a576c8c9dbc15440c5a34f47dbb9d0dbe4579c06"
    other_seed = build_table([(f"198.18.0.{i}", 1) for i in range(1, 6)], seed=1)
    assert [int(str(a).rsplit(".", 1)[1]) for a in other_seed.slot_addresses()[:16]] == [
        3, 5, 1, 5, 5, 4, 5, 5, 5, 2, 1, 1, 1, 3, 4, 4,
    ]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(backends=backend_sets(), size=st.sampled_from(SMALL_PRIMES))
def test_every_slot_holds_a_backend(backends: list[tuple[Address, int]], size: int) -> None:
    table = build_table(backends, size)
    if table.backends:
        assert int(table.slots.max()) < len(table.backends)
    else:
        assert (table.slots == EMPTY_SLOT).all()
    assert table.slots.shape == (size,)
    assert table.slots.dtype == np.uint32


@settings(max_examples=40, deadline=None)
@given(backends=backend_sets(), data=st.data())
def test_input_order_does_not_matter(
    backends: list[tuple[Address, int]], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(backends))
    first, second = build_table(backends, 1009), build_table(shuffled, 1009)
    assert first == second
    assert first.fingerprint() == second.fingerprint()


def test_addresses_as_strings_or_objects_build_the_same_table() -> None:
    as_objects: list[tuple[Address, int]] = [(v4(1), 1), (v6(2), 2), (v4(3), 3)]
    as_strings = [(str(a), w) for a, w in as_objects]
    assert build_table(as_objects, 1009) == build_table(as_strings, 1009)


def test_backends_are_sorted_by_key_bytes() -> None:
    # IPv4 keys are ::ffff:a.b.c.d, so they sort between ::1 and ::8000:0:0:1.
    addresses = ["2001:2::1", "198.18.0.2", "::8000:0:0:1", "::1", "198.18.0.1"]
    table = build_table([(a, 1) for a in addresses], 101)
    assert [str(a) for a in table.backends] == [
        "::1",
        "198.18.0.1",
        "198.18.0.2",
        "::8000:0:0:1",
        "2001:2::1",
    ]


def test_seed_changes_the_table() -> None:
    backends = equal_weights(10)
    assert build_table(backends, seed=1) != build_table(backends, seed=2)
    assert build_table(backends, seed=1) == build_table(backends, seed=1)


# --- balance, weights, disruption ---------------------------------------------------------


def test_equal_weights_balance_within_two_percent() -> None:
    counts = build_table(equal_weights(1000)).slot_counts()
    assert counts.sum() == 65537
    assert counts.max() / counts.min() <= 1.02


@pytest.mark.parametrize(
    "weights",
    [
        [1, 2, 3, 4],
        [100, 1, 1, 1],
        random.Random(7).choices(range(100, 1001), k=50),
    ],
    ids=["1-2-3-4", "100-1-1-1", "random-50"],
)
def test_each_backends_share_of_slots_is_within_one_percent_of_its_weight(
    weights: list[int],
) -> None:
    table = build_table([(v4(i), w) for i, w in enumerate(weights)])
    shares = table.slot_counts() / table.size
    ideal = np.array(table.weights) / sum(table.weights)
    assert np.all(np.abs(shares - ideal) <= 0.01 * ideal)


@settings(max_examples=80, deadline=None)
@given(backends=backend_sets(), size=st.sampled_from(SMALL_PRIMES))
def test_slot_counts_stay_within_the_documented_bound(
    backends: list[tuple[Address, int]], size: int
) -> None:
    # docs/maglev.md: ideal - 2 < slots < ideal + 1 + N * w / W for every backend.
    table = build_table(backends, size)
    if not table.backends:
        return
    weights = np.array(table.weights, dtype=np.float64)
    share = weights / weights.sum()
    error = table.slot_counts() - size * share
    assert np.all(error > -2 - 1e-9)
    assert np.all(error < 1 + len(weights) * share + 1e-9)


def test_weight_zero_backend_is_left_out() -> None:
    with_zero = build_table([(v4(1), 1), (v4(2), 0), (v4(3), 2)], 1009)
    without = build_table([(v4(1), 1), (v4(3), 2)], 1009)
    assert v4(2) not in with_zero.backends
    assert with_zero == without
    assert with_zero.weights == (1, 2)


def test_tiny_weight_can_get_no_slot() -> None:
    # Its share is 1 / 65536 of 13 slots: the documented rounding gives it none.
    table = build_table([(v4(1), 65535), (v4(2), 1)], 13)
    assert v4(2) in table.backends
    assert table.slot_counts().tolist() == [13, 0]


def test_removing_one_of_100_moves_few_slots() -> None:
    backends = equal_weights(100)
    before = build_table(backends)
    removed = backends[37][0]
    after = build_table([b for b in backends if b[0] != removed])
    # The removed backend held 1 %; the others keep almost all of theirs.
    assert moved_fraction(before, after) <= 0.025
    own = np.array([a == removed for a in before.slot_addresses()])
    assert abs(own.mean() - 0.01) < 0.001


def test_adding_a_backend_that_sorts_first_is_measured_by_address() -> None:
    # All indices shift by one; moved_fraction must compare addresses, not indices.
    before = build_table(equal_weights(50, start=10))
    after = build_table([(v4(1), 1), *equal_weights(50, start=10)])
    assert after.backends[0] == v4(1)
    assert 0.015 < moved_fraction(before, after) <= 0.035


def test_moved_fraction_is_0_unchanged_1_from_or_to_empty_and_needs_one_size() -> None:
    table = build_table(equal_weights(5), 101)
    empty = build_table([], 101)
    assert moved_fraction(table, table) == 0.0
    assert moved_fraction(empty, empty) == 0.0
    assert moved_fraction(table, empty) == 1.0
    assert moved_fraction(empty, table) == 1.0
    with pytest.raises(ValueError, match="size"):
        moved_fraction(table, build_table(equal_weights(5), 103))


# --- the table object ---------------------------------------------------------------------


def test_empty_set_gives_a_table_without_backends() -> None:
    all_weight_zero: list[tuple[Address, int]] = [(v4(1), 0), (v6(2), 0)]
    for backends in ([], all_weight_zero):
        table = build_table(backends, 13)
        assert table.backends == ()
        assert table.slots.tolist() == [0xFFFFFFFF] * 13
        assert table.slot_addresses() == [None] * 13
        assert table.slot_counts().size == 0
    assert EMPTY_SLOT == NONE_INDEX


def test_fingerprint_follows_the_table_not_the_numbering() -> None:
    backends = equal_weights(20)
    base = build_table(backends).fingerprint()
    assert build_table(list(reversed(backends))).fingerprint() == base
    assert build_table(backends[:-1]).fingerprint() != base
    assert build_table([*backends[:-1], (backends[-1][0], 2)]).fingerprint() != base
    assert build_table(backends, 65539).fingerprint() != base
    assert build_table([], 13).fingerprint() != build_table([], 17).fingerprint()
    # A backend that holds no slot does not change what the table does, nor its fingerprint.
    assert (
        build_table([(v4(1), 65535), (v4(2), 1)], 13).fingerprint()
        == build_table([(v4(1), 1)], 13).fingerprint()
    )


def test_table_is_immutable() -> None:
    table = build_table(equal_weights(3), 13)
    with pytest.raises(ValueError):
        table.slots[0] = 1
    with pytest.raises(AttributeError):
        table.size = 17  # type: ignore[misc]


def test_tables_compare_by_content() -> None:
    first, second = build_table(equal_weights(3), 13), build_table(equal_weights(3), 13)
    assert first == second and hash(first) == hash(second)
    assert first != build_table(equal_weights(4), 13)
    assert first != "a table"


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4, 9, 65535, 65536, 1 << 24, 2**31 - 1, -7])
def test_bad_sizes_are_rejected_naming_the_value(size: int) -> None:
    with pytest.raises(ValueError, match=str(size)):
        build_table(equal_weights(2), size)


@pytest.mark.parametrize("size", [65537.0, True, "65537"])
def test_non_integer_sizes_are_rejected(size: object) -> None:
    with pytest.raises(ValueError, match="integer"):
        build_table(equal_weights(2), size)  # type: ignore[arg-type]


@requires_c
def test_largest_prime_size_is_accepted() -> None:
    assert MAX_TABLE_SIZE == 1 << 24
    # 16777213 is the largest prime below 2^24; one backend keeps the build short.
    table = build_table([(v4(1), 1)], 16777213)
    assert table.slot_counts().tolist() == [16777213]


@pytest.mark.parametrize(
    "backends",
    [
        [("198.18.0.1", 1), ("198.18.0.1", 2)],
        [("198.18.0.1", 1), (ipaddress.IPv4Address("198.18.0.1"), 1)],
        [("198.18.0.1", 1), ("::ffff:198.18.0.1", 1)],
        [("2001:2::1", 0), ("2001:2:0::1", 0)],
    ],
    ids=["same-string", "string-and-object", "ipv4-mapped", "both-weight-zero"],
)
def test_duplicate_addresses_are_rejected(backends: list[tuple[str | Address, int]]) -> None:
    with pytest.raises(ValueError, match="appears twice"):
        build_table(backends, 13)


@pytest.mark.parametrize("weight", [-1, 65536, 1.0, True, None, "1"])
def test_bad_weights_are_rejected(weight: object) -> None:
    with pytest.raises(ValueError, match=r"198\.18\.0\.1: weight"):
        build_table([("198.18.0.1", weight)], 13)  # type: ignore[list-item]


@pytest.mark.parametrize("address", ["198.18.0.256", "example.com", "", "fe80::1%eth0", 42])
def test_bad_addresses_are_rejected(address: object) -> None:
    with pytest.raises(ValueError, match="address"):
        build_table([(address, 1)], 13)  # type: ignore[list-item]


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5])
def test_bad_seeds_are_rejected(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        build_table(equal_weights(2), 13, seed)  # type: ignore[arg-type]


# --- the two populations ------------------------------------------------------------------


@requires_c
@settings(max_examples=150, deadline=None)
@given(backends=backend_sets(), size=st.sampled_from(SMALL_PRIMES), seed=st.integers(0, 2**64 - 1))
def test_c_and_python_populations_are_identical(
    backends: list[tuple[Address, int]], size: int, seed: int
) -> None:
    in_c = build_table(backends, size, seed, impl="c")
    in_python = build_table(backends, size, seed, impl="python")
    assert in_c.impl == "c" and in_python.impl == "python"
    assert in_c == in_python


@requires_c
@pytest.mark.parametrize(
    "weights",
    [
        [1] * 300,  # every backend turns every round
        [(i % 100) + 1 for i in range(300)],  # the round scan
        [65535] + [1] * 299,  # the heap: one backend turns in most rounds alone
        [1000 if i % 100 == 0 else 1 for i in range(300)],
    ],
    ids=["equal", "rounds", "heap", "heap-few-heavy"],
)
def test_c_and_python_agree_at_full_size(weights: list[int]) -> None:
    backends = [(v4(i), w) for i, w in enumerate(weights)]
    assert build_table(backends, impl="c") == build_table(backends, impl="python")


@requires_c
@pytest.mark.parametrize(
    ("size", "offset", "skip", "weight"),
    [
        (15, 1, 2, 1),
        (13, 13, 1, 1),
        (13, 0, 0, 1),
        (13, 0, 13, 1),
        (13, 0, 1, 0),
        (13, 0, 1, 65536),
    ],
    ids=["size-not-prime", "offset-too-big", "skip-zero", "skip-too-big", "no-weight", "weight"],
)
def test_c_library_rejects_what_could_loop_forever(
    size: int, offset: int, skip: int, weight: int
) -> None:
    library = maglev._library()
    assert library is not None
    arrays = [np.array([value], dtype=np.uint32) for value in (offset, skip, weight)]
    slots = np.zeros(size, dtype=np.uint32)
    pointer = ctypes.POINTER(ctypes.c_uint32)
    result = library.rr_maglev_populate(
        1, size, *(a.ctypes.data_as(pointer) for a in arrays), slots.ctypes.data_as(pointer)
    )
    assert result == -1


def test_python_population_is_chosen_on_request() -> None:
    table = build_table(equal_weights(3), 13, impl="python")
    assert table.impl == "python"
    assert table.slot_addresses() == reference_table(equal_weights(3), 13)
