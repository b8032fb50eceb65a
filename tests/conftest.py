"""Fixtures the BPF and end-to-end tiers share: test-only programs compiled from
tests/bpf/progs, bpffs scratch space, and the loaded floor and pass programs. Each tier's
conftest supplies its own ``require_root`` guard, which these fixtures resolve to for the test
that asks for them.
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
from hypothesis import HealthCheck, settings

from tests.support.environment import skip_or_fail

# Property tests assert behaviour, never speed: no per-example deadline and no "generation is
# slow" health check (both fail on a loaded 2-core machine, not on a defect). Speed budgets
# live in `rusty-rail bench`.
settings.register_profile("rusty-rail", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("rusty-rail")

if TYPE_CHECKING:
    from rusty_rail.dataplane.libbpf import Program

PROGS = Path(__file__).parent / "bpf" / "progs"


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
