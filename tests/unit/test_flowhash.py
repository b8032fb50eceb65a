"""The flow hash: checked-in vectors, the vectorised twin, the word layout, and spread."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rusty_rail.model.flowhash import (
    DEFAULT_SEED,
    MASK64,
    Flow,
    flow_hash,
    hash32,
    mix64,
    mix64_vectorised,
    words_of,
)

VECTORS = json.loads((Path(__file__).parent / "flowhash_vectors.json").read_text())


@pytest.mark.parametrize("case", VECTORS["mix"], ids=lambda c: f"{len(c['words'])}w")
def test_mix_matches_checked_in_vectors(case: dict[str, object]) -> None:
    words = case["words"]
    assert isinstance(words, list)
    assert mix64(int(str(case["seed"])), words) == case["mix64"]
    assert hash32(int(str(case["seed"])), words) == case["hash32"]


@pytest.mark.parametrize("case", VECTORS["flows"], ids=lambda c: f"{c['src']}-{c['proto']}")
def test_flow_hash_matches_checked_in_vectors(case: dict[str, object]) -> None:
    flow = Flow.of(
        str(case["src"]), str(case["dst"]), int(str(case["proto"])),
        int(str(case["sport"])), int(str(case["dport"])),
    )  # fmt: skip
    assert flow.words() == case["words"]
    assert flow_hash(flow, int(str(case["seed"]))) == case["hash32"]


def test_mix64_of_nothing_is_the_finaliser_of_the_seed() -> None:
    # With no words the hash is fmix64(seed); fmix64(0) == 0 is a known property of it.
    assert mix64(0, []) == 0
    assert mix64(1, []) != 1


def test_words_are_little_endian_loads_of_wire_bytes() -> None:
    flow = Flow.of("198.18.0.1", "198.18.100.1", 6, 0x1234, 0x0050)
    src, dst, ports, proto = flow.words()
    assert src == struct.unpack("<I", bytes([198, 18, 0, 1]))[0]
    assert dst == struct.unpack("<I", bytes([198, 18, 100, 1]))[0]
    assert ports == struct.unpack("<I", bytes([0x12, 0x34, 0x00, 0x50]))[0]
    assert proto == 6
    assert len(Flow.of("2001:2::1", "2001:2::2", 17, 1, 2).words()) == 10


def test_words_of_rejects_ragged_input() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        words_of(b"abc")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"src": b"\x00" * 4, "dst": b"\x00" * 16, "proto": 6}, "both 4 or both 16"),
        ({"src": b"\x00" * 5, "dst": b"\x00" * 5, "proto": 6}, "both 4 or both 16"),
        ({"src": b"\x00" * 4, "dst": b"\x00" * 4, "proto": 256}, "proto"),
        ({"src": b"\x00" * 4, "dst": b"\x00" * 4, "proto": 6, "sport": 70000}, "sport"),
    ],
)
def test_flow_rejects_bad_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Flow(**kwargs)  # type: ignore[arg-type]


@given(
    seed=st.integers(0, MASK64),
    rows=st.lists(st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3), min_size=1),
)
def test_vectorised_mixer_equals_scalar(seed: int, rows: list[list[int]]) -> None:
    got = mix64_vectorised(seed, np.array(rows, dtype=np.uint32))
    assert [int(v) for v in got] == [mix64(seed, row) for row in rows]


def test_seed_changes_the_hash() -> None:
    flow = Flow.of("198.18.0.1", "198.18.100.1", 6, 40000, 80)
    assert flow_hash(flow, DEFAULT_SEED) != flow_hash(flow, DEFAULT_SEED + 1)


def test_source_ports_spread_evenly_over_table_slots() -> None:
    # 60k flows that differ only in the source port must land evenly on 7 buckets:
    # a weak mixer shows up here as a skew far beyond random noise.
    buckets = np.zeros(7, dtype=np.int64)
    for port in range(1024, 61024):
        buckets[flow_hash(Flow.of("198.18.0.1", "198.18.100.1", 6, port, 80)) % 7] += 1
    expected = 60000 / 7
    assert np.all(np.abs(buckets - expected) < 0.05 * expected)


def test_single_bit_flips_change_about_half_the_output_bits() -> None:
    base = [0x01020304, 0x05060708, 0x09101112, 6]
    flips = []
    for word in range(4):
        for bit in range(32):
            changed = list(base)
            changed[word] ^= 1 << bit
            flips.append(bin(hash32(DEFAULT_SEED, base) ^ hash32(DEFAULT_SEED, changed)).count("1"))
    assert 14 <= sum(flips) / len(flips) <= 18
