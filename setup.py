"""Build steps that pyproject.toml cannot declare: the BPF objects and the two plain C helpers
(the Maglev population loop, the libbpf message formatter), both loaded with ctypes.

The BPF programs are compiled here, at build/install time (clang -O2 -target bpf), and ship
inside the package; nothing is compiled at run time.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
BPF_SOURCES = HERE / "src" / "rusty_rail" / "bpf"


def bpf_include_flags() -> list[str]:
    """Debian keeps asm/types.h under the multiarch directory, which clang -target bpf misses."""
    machine = platform.machine()
    return [f"-I/usr/include/{machine}-linux-gnu", f"-I{BPF_SOURCES}"]


def compile_bpf(out_dir: Path) -> list[Path]:
    """Compile every bpf/*.bpf.c into out_dir/*.bpf.o; returns the objects written.

    The programs are the product's (balancer, decap) and the test bed's and benchmark's
    (testbed_*, bench_*); all include the shared headers of bpf/lib/ by relative path.
    btf_anchor.bpf.c is no program: it carries the mirrored structs' BTF for the tests.
    """
    clang = os.environ.get("CLANG", shutil.which("clang") or "clang")
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = []
    for source in sorted(BPF_SOURCES.glob("*.bpf.c")):
        target = out_dir / (source.name[: -len(".c")] + ".o")
        command = [
            clang, "-O2", "-g", "-Wall", "-Werror", "-target", "bpf",
            *bpf_include_flags(), "-c", str(source), "-o", str(target),
        ]
        print(" ".join(command))
        subprocess.run(command, check=True)
        objects.append(target)
    return objects


class BuildWithBpf(build_ext):
    """build_ext that also compiles the BPF programs next to the Python package."""

    def run(self) -> None:
        super().run()
        if self.inplace:
            out_dir = BPF_SOURCES
        else:
            out_dir = Path(self.build_lib) / "rusty_rail" / "bpf"
        compile_bpf(out_dir)


setup(
    ext_modules=[
        Extension(
            "rusty_rail.model._maglevc",
            sources=["src/rusty_rail/model/_maglevc.c"],
            extra_compile_args=["-O2"],
            optional=False,
        ),
        Extension(
            "rusty_rail._libbpf_print",
            sources=["src/rusty_rail/_libbpf_print.c"],
            extra_compile_args=["-O2"],
            optional=False,
        ),
    ],
    cmdclass={"build_ext": BuildWithBpf},
)
