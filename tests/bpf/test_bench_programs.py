"""The programs of `rusty-rail bench e2e` in the kernel (BPF_PROG_TEST_RUN): the generator
writes each flow's whole frame whatever the page held, in the order of its per-CPU span; the
sink counts and drops; the floor forwarder rewrites and redirects. Live frames: Program.run_live.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

import pytest

from rusty_rail.bench.e2e_bed import (
    BACKENDS,
    GEN_FRAME_LEN,
    FlowSpan,
    flow_frame,
    flow_of,
    template_frame,
)
from rusty_rail.dataplane.libbpf import (
    LIVE_MAX_BATCH,
    BpfObject,
    LibbpfError,
    Program,
    bpf_object_path,
    num_possible_cpus,
)
from rusty_rail.model.state import Verdict
from rusty_rail.wire.checksum import internet_checksum
from rusty_rail.wire.frames import ROUTER_MAC

pytestmark = pytest.mark.bpf

LB_MAC = bytes.fromhex("020000000002")
GEN_MAC = bytes.fromhex("020000000001")
ZERO = struct.pack("=I", 0)


@pytest.fixture
def generator() -> Iterator[BpfObject]:
    with BpfObject.open(bpf_object_path("bench_gen")) as bpf_object:
        bpf_object.load()
        bpf_object.map("gen_config").update(ZERO, template_frame(LB_MAC, GEN_MAC))
        yield bpf_object


def set_span(generator: BpfObject, span: FlowSpan) -> None:
    value = struct.pack("=IIIIQ", span.next, span.first, span.end, 0, 0)
    generator.map("gen_cursor").update_percpu(ZERO, [value] * num_possible_cpus())


def sent(generator: BpfObject) -> int:
    values = generator.map("gen_cursor").lookup_percpu(ZERO) or []
    return sum(struct.unpack("=IIIIQ", value)[4] for value in values)


@pytest.mark.parametrize("number", [0, 1, 0x7FFF, 0x8000, 40_000, 1_000_000, (1 << 31) - 1])
def test_the_generator_writes_the_whole_frame_of_its_flow(
    generator: BpfObject, number: int
) -> None:
    set_span(generator, FlowSpan(number, 0))
    # Whatever the reused page held (the balancer's rewrite, say) is written over.
    run = generator.program("xdp_bench_gen").test_run(b"\xa5" * GEN_FRAME_LEN)
    assert run.retval == Verdict.TX
    assert run.data == flow_frame(number, LB_MAC, GEN_MAC)
    inner = run.data[38:58]
    assert internet_checksum(inner) == 0  # the inner IPv4 header's checksum holds


def test_the_generator_cycles_through_its_span_and_counts(generator: BpfObject) -> None:
    program = generator.program("xdp_bench_gen")
    set_span(generator, FlowSpan(5, 8, next=6))
    ports = [program.test_run(bytes(GEN_FRAME_LEN)).data[58:60] for _ in range(5)]
    assert [struct.unpack("!H", port)[0] - 1024 for port in ports] == [6, 7, 5, 6, 7]
    assert sent(generator) == 5


def test_a_new_flow_every_packet_when_the_span_has_no_end(generator: BpfObject) -> None:
    program = generator.program("xdp_bench_gen")
    set_span(generator, FlowSpan(1 << 29, 0))
    frames = {program.test_run(bytes(GEN_FRAME_LEN)).data for _ in range(50)}
    assert len(frames) == 50
    assert flow_frame((1 << 29) + 49, LB_MAC, GEN_MAC) in frames


def test_the_generator_aborts_a_frame_too_short_for_its_header(generator: BpfObject) -> None:
    assert generator.program("xdp_bench_gen").test_run(bytes(60)).retval == Verdict.ABORTED


def test_flow_numbers_map_to_distinct_flows_and_are_checked() -> None:
    assert len({flow_of(n) for n in range(0, 1 << 20, 997)}) == len(range(0, 1 << 20, 997))
    assert flow_of(0x8000).src == socket.inet_aton("198.19.0.1")
    with pytest.raises(ValueError, match="flow numbers"):
        flow_of(1 << 31)
    with pytest.raises(ValueError, match="next flow"):
        FlowSpan(5, 8, next=9)


def test_the_sink_counts_every_frame_then_drops_it() -> None:
    with BpfObject.open(bpf_object_path("bench_sink")) as sink:
        sink.load()
        program = sink.program("xdp_bench_sink")
        for _ in range(3):
            assert program.test_run(bytes(64)).retval == Verdict.DROP
        counts = [struct.unpack("=QQ", v) for v in sink.map("sink_count").lookup_percpu(ZERO) or []]
        assert (sum(p for p, _ in counts), sum(b for _, b in counts)) == (3, 3 * 64)


def test_the_floor_forwarder_rewrites_destination_and_macs_then_redirects() -> None:
    next_hop, own = bytes.fromhex("020000000009"), bytes.fromhex("02000000000a")
    with BpfObject.open(bpf_object_path("bench_forward")) as floor:
        floor.load()
        floor.map("forward_to").update(ZERO, socket.inet_aton(BACKENDS[0]) + next_hop + own)
        floor.map("forward_port").update(ZERO, struct.pack("=I", 1))  # lo: any port will do
        program = floor.program("xdp_floor_forward")
        frame = flow_frame(7, LB_MAC, bytes.fromhex(ROUTER_MAC.replace(":", "")))
        run = program.test_run(frame)
        assert run.retval == Verdict.REDIRECT
        assert run.data[:12] == next_hop + own
        assert run.data[30:34] == socket.inet_aton(BACKENDS[0])
        assert internet_checksum(run.data[14:34]) == 0
        assert run.data[34:] == frame[34:]
        arp = frame[:12] + b"\x08\x06" + frame[14:]
        assert program.test_run(arp).retval == Verdict.PASS


def test_a_live_run_checks_its_arguments_and_names_the_interface(floor_program: Program) -> None:
    frame = bytes(64)
    with pytest.raises(ValueError, match=f"batch_size must be 0..{LIVE_MAX_BATCH}, not 257"):
        floor_program.run_live(frame, ingress_ifindex=1, repeat=1, batch_size=257)
    with pytest.raises(ValueError, match="repeat must be at least 1, not 0"):
        floor_program.run_live(frame, ingress_ifindex=1, repeat=0)
    with pytest.raises(LibbpfError) as caught:
        floor_program.run_live(frame, ingress_ifindex=0x7FFFFFF0, repeat=1)
    assert caught.value.errno == errno.ENODEV
    assert "live-frames run of program 'xdp_floor'" in str(caught.value)
    assert f"no interface {0x7FFFFFF0}" in str(caught.value)


def test_a_live_run_runs_the_program_once_per_frame(generator: BpfObject) -> None:
    set_span(generator, FlowSpan(0, 10))
    loopback = socket.if_nametoindex("lo")
    # On loopback the frames XDP_TX sends are dropped (lo cannot transmit XDP frames), but
    # each of them was made: the per-CPU count says so.
    generator.program("xdp_bench_gen").run_live(
        bytes(GEN_FRAME_LEN), ingress_ifindex=loopback, repeat=1000, batch_size=LIVE_MAX_BATCH
    )
    assert sent(generator) == 1000
