"""The libbpf binding against the real kernel: objects, test runs, every kind of map the data
plane uses (per-CPU, LRU, map-in-map with inner maps made at run time), pins and errors.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rusty_rail.dataplane.libbpf import (
    BPF_EXIST,
    BPF_F_INNER_MAP,
    BPF_NOEXIST,
    BpfObject,
    LibbpfError,
    Link,
    Map,
    MapType,
    Program,
    RingBuffer,
    bpf_object_path,
    create_map,
    ensure_bpffs,
    lock_pin_dir,
    num_possible_cpus,
    pin_dir,
    remove_pin_dir,
)
from rusty_rail.model.state import Verdict

pytestmark = pytest.mark.bpf

FRAME = bytes.fromhex("02000000000102000000000208004500") + bytes(range(48))


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def u64(value: int) -> bytes:
    return struct.pack("=Q", value)


# -- objects and programs -------------------------------------------------------------------


def test_object_path_names_the_fix_when_an_object_is_missing() -> None:
    assert bpf_object_path("bench_floor").name == "bench_floor.bpf.o"
    with pytest.raises(FileNotFoundError, match=r"run scripts/setup"):
        bpf_object_path("no_such_program")


def test_opening_a_missing_object_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.bpf.o"
    with pytest.raises(LibbpfError) as caught:
        BpfObject.open(missing)
    assert caught.value.errno == errno.ENOENT
    assert str(missing) in str(caught.value)


def test_opening_a_file_that_is_not_an_object_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bpf.o"
    garbage.write_bytes(b"not an ELF file")
    with pytest.raises(LibbpfError) as caught:
        BpfObject.open(garbage)
    assert "garbage.bpf.o" in str(caught.value)
    assert caught.value.libbpf_log  # libbpf's own explanation is kept


def test_floor_program_returns_the_frame_with_xdp_tx(floor_program: Program) -> None:
    run = floor_program.test_run(FRAME)
    assert run.retval == Verdict.TX
    assert run.data == FRAME
    assert run.duration_ns > 0


def test_pass_program_returns_the_frame_with_xdp_pass(pass_program: Program) -> None:
    run = pass_program.test_run(FRAME, repeat=10)
    assert run.retval == Verdict.PASS
    assert run.data == FRAME
    assert run.duration_ns > 0


def test_a_test_run_can_name_an_ingress_interface_for_that_run_only(floor_program: Program) -> None:
    loopback = 1  # exists in every network namespace
    run = floor_program.test_run(FRAME, ingress_ifindex=loopback)
    assert (run.retval, run.data) == (Verdict.TX, FRAME)
    # The context is dropped again when a later run gives none.
    assert floor_program.test_run(FRAME[:20]).data == FRAME[:20]


def test_test_run_errors_name_the_program_and_the_cause(floor_program: Program) -> None:
    with pytest.raises(LibbpfError) as caught:
        floor_program.test_run(FRAME, data_out_size=10)
    assert caught.value.errno == errno.ENOSPC
    assert "xdp_floor" in str(caught.value)
    assert "data_out_size=10" in str(caught.value)

    with pytest.raises(LibbpfError) as caught:
        floor_program.test_run(b"\x00" * 4)  # shorter than an Ethernet header
    assert caught.value.errno == errno.EINVAL

    with pytest.raises(LibbpfError) as caught:
        floor_program.test_run(FRAME, ingress_ifindex=0x7FFFFFF0)
    assert caught.value.errno == errno.ENODEV


def test_output_is_exactly_the_frame_even_with_a_larger_cap(floor_program: Program) -> None:
    run = floor_program.test_run(FRAME, data_out_size=4096)
    assert run.data == FRAME
    assert floor_program.test_run(FRAME, data_out_size=len(FRAME)).data == FRAME


def test_concurrent_test_runs_do_not_share_buffers(floor_program: Program) -> None:
    failures: list[str] = []

    def run(seed: int) -> None:
        frame = bytes([seed]) * (64 + seed)
        for _ in range(300):
            if floor_program.test_run(frame).data != frame:
                failures.append(f"thread {seed} saw another thread's frame")
                return

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_unknown_names_and_use_before_load_are_explained() -> None:
    with BpfObject.open(bpf_object_path("bench_floor")) as bpf_object:
        assert bpf_object.program_names() == ["xdp_floor"]
        with pytest.raises(ValueError, match="not loaded"):
            bpf_object.program("xdp_floor")
        bpf_object.load()
        with pytest.raises(KeyError, match="xdp_floor"):
            bpf_object.program("xdp_nope")
        with pytest.raises(KeyError, match="no map 'nope'"):
            bpf_object.map("nope")
        with pytest.raises(ValueError, match="already loaded"):
            bpf_object.load()
        program = bpf_object.program("xdp_floor")
        assert program.id > 0
    with pytest.raises(ValueError, match="closed"):
        program.test_run(FRAME)


def test_a_program_the_verifier_rejects_fails_with_the_verifier_log(
    compile_bpf: Callable[[str], Path],
) -> None:
    with BpfObject.open(compile_bpf("unverifiable")) as bpf_object:
        with pytest.raises(LibbpfError) as caught:
            bpf_object.load()
        with pytest.raises(ValueError, match="open it again"):
            bpf_object.load()
    error = caught.value
    assert error.errno == errno.EACCES
    assert error.verifier_log is not None
    assert "invalid access to packet" in error.verifier_log
    message = str(error)
    assert "unverifiable.bpf.o" in message
    assert "xdp_unverifiable" in message
    assert "invalid access to packet" in message


# -- maps -------------------------------------------------------------------------------------


@pytest.fixture
def maps_object(compile_bpf: Callable[[str], Path]) -> Iterator[BpfObject]:
    """tests/bpf/progs/maps.bpf.c, loaded, with `flows` resized to 32 entries."""
    with BpfObject.open(compile_bpf("maps")) as bpf_object:
        bpf_object.set_max_entries("flows", 32)
        bpf_object.load()
        yield bpf_object


def table_frame(table: int, slot: int) -> bytes:
    return struct.pack("=III", table, slot, 0) + bytes(4)


def looked_up_value(run_data: bytes) -> int:
    return int(struct.unpack_from("=I", run_data, 8)[0])


def test_maps_describe_themselves(maps_object: BpfObject) -> None:
    assert sorted(maps_object.map_names()) == ["counters", "flows", "settings", "tables"]
    flows = maps_object.map("flows")
    assert (flows.map_type, flows.key_size, flows.value_size, flows.max_entries) == (
        MapType.LRU_HASH,
        4,
        8,
        32,
    )
    assert maps_object.map("tables").map_type == MapType.ARRAY_OF_MAPS
    assert maps_object.map("counters").is_percpu


def test_a_hash_map_looks_up_updates_under_its_flags_and_deletes(maps_object: BpfObject) -> None:
    settings = maps_object.map("settings")
    assert settings.lookup(u64(1)) is None
    settings.update(u64(1), u32(10))
    settings.update(u64(2), u32(20), BPF_NOEXIST)
    assert settings.lookup(u64(1)) == u32(10)
    assert dict(settings.items()) == {u64(1): u32(10), u64(2): u32(20)}
    assert sorted(settings.keys()) == [u64(1), u64(2)]

    with pytest.raises(LibbpfError) as caught:
        settings.update(u64(1), u32(11), BPF_NOEXIST)
    assert caught.value.errno == errno.EEXIST
    with pytest.raises(LibbpfError) as caught:
        settings.update(u64(3), u32(30), BPF_EXIST)
    assert caught.value.errno == errno.ENOENT

    assert settings.delete(u64(1)) is True
    assert settings.delete(u64(1)) is False
    assert list(settings.keys()) == [u64(2)]


def test_hash_map_full_is_explained(maps_object: BpfObject) -> None:
    settings = maps_object.map("settings")  # 8 entries
    for key in range(settings.max_entries):
        settings.update(u64(key), u32(key))
    with pytest.raises(LibbpfError) as caught:
        settings.update(u64(100), u32(0))
    assert caught.value.errno == errno.E2BIG
    assert "settings" in str(caught.value)


@pytest.mark.parametrize("batch_size", [1, 5, 256])
def test_batched_reads_see_every_batched_write_whatever_the_batch_size(
    maps_object: BpfObject, batch_size: int
) -> None:
    flows = maps_object.map("flows")  # LRU hash, 32 entries
    written = [(u32(flow), u64(flow * 3)) for flow in range(20)]
    flows.update_batch(written)
    assert sorted(flows.items(batch_size=batch_size)) == sorted(written)
    assert sorted(flows.keys()) == sorted(key for key, _ in written)

    counters = maps_object.map("counters")  # per-CPU array, 4 entries
    per_cpu = [u64(cpu + 1) for cpu in range(num_possible_cpus())]
    counters.update_percpu(u32(2), per_cpu)
    read = dict(counters.items_percpu(batch_size=batch_size))
    assert sorted(read) == [u32(index) for index in range(4)]
    assert read[u32(2)] == per_cpu


def test_a_batch_write_that_fails_says_how_far_it_got(maps_object: BpfObject) -> None:
    settings = maps_object.map("settings")  # hash, 8 entries
    with pytest.raises(LibbpfError) as caught:
        settings.update_batch([(u64(key), u32(key)) for key in range(10)])
    assert caught.value.errno == errno.E2BIG
    assert "8 elements were written" in str(caught.value)
    assert len(dict(settings.items())) == 8


def test_keys_and_values_must_have_the_map_sizes(maps_object: BpfObject) -> None:
    settings = maps_object.map("settings")
    with pytest.raises(ValueError, match="key of 4 bytes"):
        settings.lookup(u32(1))
    with pytest.raises(ValueError, match="value of 8 bytes"):
        settings.update(u64(1), u64(1))


def test_lru_hash_evicts_instead_of_failing(maps_object: BpfObject) -> None:
    flows = maps_object.map("flows")
    for flow in range(3 * flows.max_entries):
        flows.update(u32(flow), u64(flow))
    remaining = dict(flows.items())
    assert 0 < len(remaining) <= flows.max_entries
    last = 3 * flows.max_entries - 1
    assert remaining[u32(last)] == u64(last)
    assert all(value == u64(struct.unpack("=I", key)[0]) for key, value in remaining.items())


def test_percpu_array_counts_every_run(maps_object: BpfObject) -> None:
    counters = maps_object.map("counters")
    program = maps_object.program("xdp_maps")
    before = counters.lookup_percpu(u32(0))
    assert before is not None and len(before) == num_possible_cpus()
    program.test_run(table_frame(0, 0), repeat=7)
    after = counters.lookup_percpu(u32(0))
    assert after is not None
    total = sum(struct.unpack("=Q", value)[0] for value in after)
    assert total - sum(struct.unpack("=Q", value)[0] for value in before) == 7


def test_per_cpu_values_are_written_and_read_per_cpu_only(maps_object: BpfObject) -> None:
    counters = maps_object.map("counters")
    values = [u64(1000 + cpu) for cpu in range(num_possible_cpus())]
    counters.update_percpu(u32(3), values)
    assert counters.lookup_percpu(u32(3)) == values
    assert dict(counters.items_percpu())[u32(3)] == values
    with pytest.raises(TypeError, match="per-CPU"):
        counters.lookup(u32(3))
    with pytest.raises(ValueError, match="possible CPUs"):
        counters.update_percpu(u32(3), [*values, u64(0)])


def test_a_map_of_maps_holds_inner_maps_of_different_sizes_and_swaps_them_whole(
    maps_object: BpfObject,
) -> None:
    tables = maps_object.map("tables")
    program = maps_object.program("xdp_maps")
    small = create_map(MapType.ARRAY, 4, 4, 3, name="inner_small", flags=BPF_F_INNER_MAP)
    large = create_map(MapType.ARRAY, 4, 4, 1000, name="inner_large", flags=BPF_F_INNER_MAP)
    with small, large:
        for slot in range(small.max_entries):
            small.update(u32(slot), u32(100 + slot))
        for slot in range(large.max_entries):
            large.update(u32(slot), u32(5000 + slot))
        tables.set_inner(u32(0), small)
        tables.set_inner(u32(1), large)
        assert tables.inner_id(u32(0)) == small.id
        assert tables.inner_id(u32(2)) is None

    # The outer map holds the inner maps now; the Python objects are closed.
    assert looked_up_value(program.test_run(table_frame(0, 2)).data) == 102
    assert program.test_run(table_frame(0, 3)).retval == Verdict.ABORTED  # beyond 3 entries
    assert looked_up_value(program.test_run(table_frame(1, 999)).data) == 5999
    assert program.test_run(table_frame(2, 0)).retval == Verdict.DROP  # no table 2

    inner_id = tables.inner_id(u32(1))
    assert inner_id is not None
    with Map.from_id(inner_id) as adopted:
        assert (adopted.name, adopted.max_entries) == ("inner_large", 1000)
        assert adopted.lookup(u32(7)) == u32(5007)

    # A swap is one pointer: the next packet sees the new table whole.
    with create_map(MapType.ARRAY, 4, 4, 5, name="inner_new", flags=BPF_F_INNER_MAP) as new:
        new.update(u32(2), u32(7))
        tables.set_inner(u32(0), new)
    assert looked_up_value(program.test_run(table_frame(0, 2)).data) == 7
    assert tables.delete(u32(0)) is True
    assert program.test_run(table_frame(0, 2)).retval == Verdict.DROP


def test_an_inner_map_that_does_not_match_the_template_is_refused(
    maps_object: BpfObject,
) -> None:
    tables = maps_object.map("tables")
    wrong = create_map(MapType.ARRAY, 4, 8, 4, name="wrong_value", flags=BPF_F_INNER_MAP)
    with wrong, pytest.raises(LibbpfError) as caught:
        tables.set_inner(u32(0), wrong)
    assert caught.value.errno == errno.EINVAL
    assert "inner map template" in str(caught.value)


def test_a_map_that_cannot_be_created_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="map name"):
        create_map(MapType.ARRAY, 4, 4, 1, name="a name that is far too long")
    with pytest.raises(LibbpfError) as caught:
        create_map(MapType.HASH, 0, 4, 1, name="zero_key")
    assert caught.value.errno == errno.EINVAL
    assert "zero_key" in str(caught.value)


def test_a_map_owns_its_fd_and_closes_it(maps_object: BpfObject) -> None:
    settings = maps_object.map("settings")
    settings.update(u64(9), u32(90))
    duplicate = Map.from_fd(settings.fd)
    assert duplicate.fd != settings.fd
    assert duplicate.lookup(u64(9)) == u32(90)
    fd = duplicate.fd
    duplicate.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    # The object's own descriptor is untouched.
    assert settings.lookup(u64(9)) == u32(90)
    with pytest.raises(ValueError, match="closed"):
        duplicate.lookup(u64(9))


# -- ring buffers -------------------------------------------------------------------------------


@pytest.fixture
def events_object(compile_bpf: Callable[[str], Path]) -> Iterator[BpfObject]:
    """tests/bpf/progs/events.bpf.c, loaded: each frame's first 16 bytes become a record."""
    with BpfObject.open(compile_bpf("events")) as bpf_object:
        bpf_object.load()
        yield bpf_object


def test_ring_buffer_hands_over_records_in_order(events_object: BpfObject) -> None:
    program = events_object.program("xdp_events")
    received: list[bytes] = []
    with RingBuffer(events_object.map("events"), received.append) as ring:
        assert ring.poll(timeout=0) == 0
        frames = [bytes([n]) * 16 + FRAME for n in range(5)]
        for frame in frames:
            assert program.test_run(frame).retval == Verdict.TX
        assert select.select([ring], [], [], 5)[0] == [ring]
        assert ring.consume() == 5
    assert received == [frame[:16] for frame in frames]


def test_ring_buffer_callback_errors_reach_the_caller(events_object: BpfObject) -> None:
    program = events_object.program("xdp_events")

    def refuse(record: bytes) -> None:
        raise RuntimeError(f"refused {record[:1].hex()}")

    with RingBuffer(events_object.map("events"), refuse) as ring:
        program.test_run(b"\x07" * 16 + FRAME)
        with pytest.raises(RuntimeError, match="refused 07"):
            ring.poll(timeout=5)
        assert ring.consume() == 0  # the failed record is not handed over twice
    array = create_map(MapType.ARRAY, 4, 4, 1, name="not_a_ring")
    with array, pytest.raises(TypeError, match="not a ring buffer"):
        RingBuffer(array, refuse)


# -- pins -------------------------------------------------------------------------------------


def test_a_pinned_map_is_the_same_map_until_it_is_unpinned(
    maps_object: BpfObject, bpffs_dir: Path
) -> None:
    settings = maps_object.map("settings")
    path = bpffs_dir / "settings"
    settings.pin(path)
    with Map.from_pinned(path) as pinned:
        assert (pinned.name, pinned.map_type, pinned.key_size, pinned.value_size) == (
            "settings",
            MapType.HASH,
            8,
            4,
        )
        pinned.update(u64(5), u32(55))
    assert settings.lookup(u64(5)) == u32(55)  # one map, two handles
    settings.unpin(path)
    assert not path.exists()
    with pytest.raises(LibbpfError) as caught:
        Map.from_pinned(path)
    assert caught.value.errno == errno.ENOENT


def test_pinned_map_is_reused_by_the_next_object(
    compile_bpf: Callable[[str], Path], bpffs_dir: Path
) -> None:
    path = bpffs_dir / "flows"
    with BpfObject.open(compile_bpf("maps")) as first:
        first.set_max_entries("flows", 32)
        first.load()
        first.map("flows").update(u32(1), u64(11))
        first.map("flows").pin(path)
    # The first object is gone; its map lives on in the pin.
    with BpfObject.open(compile_bpf("maps")) as second:
        second.set_max_entries("flows", 32)
        second.reuse_pinned_map("flows", path)
        second.load()
        assert second.map("flows").lookup(u32(1)) == u64(11)


def test_reusing_a_map_of_another_shape_is_refused(
    compile_bpf: Callable[[str], Path], bpffs_dir: Path
) -> None:
    path = bpffs_dir / "flows"
    with create_map(MapType.LRU_HASH, 4, 8, 64, name="flows") as other:
        other.pin(path)
    bpf_object = BpfObject.open(compile_bpf("maps"))
    with bpf_object, pytest.raises(LibbpfError) as caught:
        bpf_object.reuse_pinned_map("flows", path)
    assert "max_entries 64 (the object wants 16)" in str(caught.value)


def test_pin_directories_are_checked_created_and_removed(bpffs_dir: Path) -> None:
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError):
            pin_dir(bad, root=bpffs_dir)
    directory = pin_dir("veth0", root=bpffs_dir)
    assert directory == bpffs_dir / "veth0" and directory.is_dir()
    with create_map(MapType.ARRAY, 4, 4, 1, name="scratch") as scratch:
        scratch.pin(directory / "scratch")
    remove_pin_dir(directory)
    assert not directory.exists()


def test_a_pin_directory_is_held_by_one_process_until_it_closes_or_dies(
    bpffs_dir: Path,
) -> None:
    directory = bpffs_dir / "veth0"
    first = lock_pin_dir(directory)
    assert first is not None and directory.is_dir()
    try:
        assert lock_pin_dir(directory) is None  # held, also against this same process
    finally:
        os.close(first)
    again = lock_pin_dir(directory)
    assert again is not None
    os.close(again)
    # A holder that dies holds nothing: the kernel drops its lock with its descriptors.
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(directory),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert lock_pin_dir(directory) is None
    finally:
        holder.kill()
        holder.wait()
    last = lock_pin_dir(directory)
    assert last is not None
    os.close(last)


def test_remove_pin_dir_refuses_what_is_not_on_a_bpffs(tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("not a pin")
    with pytest.raises(LibbpfError, match="not on a bpffs"):
        remove_pin_dir(tmp_path)
    assert (tmp_path / "keep").exists()


def test_a_pin_of_another_kind_is_named(
    maps_object: BpfObject, floor_program: Program, bpffs_dir: Path
) -> None:
    path = bpffs_dir / "settings"
    maps_object.map("settings").pin(path)
    with pytest.raises(LibbpfError, match="it is a pinned map"):
        Link.from_pinned(path)
    with pytest.raises(LibbpfError, match="not a pin"):
        Map.from_pinned(bpffs_dir)


def test_pin_dir_refuses_a_root_that_is_not_a_bpffs(tmp_path: Path) -> None:
    with pytest.raises(LibbpfError, match="not on a bpffs"):
        pin_dir("veth0", root=tmp_path / "pins")
    assert not (tmp_path / "pins").exists()


def test_ensure_bpffs_mounts_once(tmp_path: Path) -> None:
    mountpoint = tmp_path / "bpffs"
    try:
        ensure_bpffs(mountpoint)
        ensure_bpffs(mountpoint)  # mounted already: nothing to do
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        assert [line.split()[2] for line in mounts if line.split()[1] == str(mountpoint)] == ["bpf"]
        with create_map(MapType.ARRAY, 4, 4, 1, name="scratch") as scratch:
            scratch.pin(mountpoint / "scratch")
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True)
