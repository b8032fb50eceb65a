"""Shared fixtures of the BPF tests: the root guard every test here runs behind, loaded floor
and pass programs, test-only programs compiled from tests/bpf/progs, and bpffs scratch space.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from rusty_rail.dataplane.libbpf import Program

PROGS = Path(__file__).parent / "progs"
REQUIRE_ROOT_TESTS = "RUSTY_RAIL_REQUIRE_ROOT_TESTS"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail when the environment demands root tests (CI does)."""
    if os.environ.get(REQUIRE_ROOT_TESTS) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ROOT_TESTS}=1: these tests must run here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def require_root() -> None:
    """Root (or CAP_BPF and friends) and a usable libbpf, else skip, or fail under CI."""
    try:
        from rusty_rail.dataplane.libbpf import bpf_unavailable_reason
    except ImportError as error:
        skip_or_fail(f"the libbpf binding cannot be imported: {error}")
        return
    reason = bpf_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture(autouse=True)
def _bpf_tests_need_root(require_root: None) -> None:
    """Every test under tests/bpf talks to the kernel."""


@pytest.fixture(scope="session")
def compile_bpf(
    require_root: None, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """Compile tests/bpf/progs/<name>.bpf.c (once per session) and return the object's path."""
    clang = shutil.which("clang")
    if clang is None:
        skip_or_fail("clang is not installed: run scripts/setup")
    directory = tmp_path_factory.mktemp("bpf-progs")
    built: dict[str, Path] = {}

    def compile_one(name: str) -> Path:
        if name not in built:
            output = directory / f"{name}.bpf.o"
            subprocess.run(
                [
                    str(clang),
                    "-O2",
                    "-g",
                    "-Wall",
                    "-Werror",
                    "-target",
                    "bpf",
                    "-I/usr/include/x86_64-linux-gnu",
                    "-c",
                    str(PROGS / f"{name}.bpf.c"),
                    "-o",
                    str(output),
                ],
                check=True,
                capture_output=True,
            )
            built[name] = output
        return built[name]

    return compile_one


@pytest.fixture
def bpffs_dir(require_root: None) -> Iterator[Path]:
    """A fresh directory on the bpffs, removed with all its pins afterwards."""
    from rusty_rail.dataplane.libbpf import BPFFS, ensure_bpffs, remove_pin_dir

    ensure_bpffs()
    directory = BPFFS / f"rusty_rail_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o700)
    try:
        yield directory
    finally:
        remove_pin_dir(directory)


def _loaded_program(object_name: str, program_name: str) -> Iterator[Program]:
    from rusty_rail.dataplane.libbpf import BpfObject, bpf_object_path

    with BpfObject.open(bpf_object_path(object_name)) as bpf_object:
        bpf_object.load()
        yield bpf_object.program(program_name)


@pytest.fixture(scope="session")
def floor_program(require_root: None) -> Iterator[Program]:
    """bpf/bench_floor.bpf.c's xdp_floor, loaded: XDP_TX for every frame."""
    yield from _loaded_program("bench_floor", "xdp_floor")


@pytest.fixture(scope="session")
def pass_program(require_root: None) -> Iterator[Program]:
    """bpf/testbed_pass.bpf.c's xdp_pass, loaded: XDP_PASS for every frame."""
    yield from _loaded_program("testbed_pass", "xdp_pass")
