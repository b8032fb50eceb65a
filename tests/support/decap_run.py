"""Running the decap program on one frame (BPF_PROG_TEST_RUN), for the decap tests."""

from __future__ import annotations

from rusty_rail.dataplane.libbpf import Program
from rusty_rail.decap.agent import DecapMaps
from tests.support.router_run import packet_deltas


def run(program: Program, maps: DecapMaps, frame: bytes) -> tuple[int, bytes, dict[str, int]]:
    """The verdict, the frame that comes out, and the packets counted per reason meanwhile
    (each counted with the frame's length in bytes: asserted)."""
    before = maps.counters()
    result = program.test_run(frame)
    after = maps.counters()
    deltas = packet_deltas(before, after)
    byte_deltas = {name: after[name]["bytes"] - before[name]["bytes"] for name in deltas}
    assert byte_deltas == {name: len(frame) * count for name, count in deltas.items()}
    return result.retval, result.data, deltas
