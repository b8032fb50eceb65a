"""BPF objects and their programs: an ELF object opened, configured (map sizes, reused
maps), loaded; its programs, which BPF_PROG_TEST_RUN runs on a frame."""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rusty_rail.dataplane.libbpf._fd import _FdHandle, _Handle, _info
from rusty_rail.dataplane.libbpf._ffi import (
    BPF_PROG_TYPE_XDP,
    _map_fd,
    _map_flags,
    _map_key_size,
    _map_max_entries,
    _map_name,
    _map_reuse_fd,
    _map_set_max_entries,
    _map_type,
    _map_value_size,
    _MapInfo,
    _object_close,
    _object_find_map,
    _object_find_program,
    _object_load,
    _object_next_map,
    _object_next_program,
    _object_open_file,
    _prog_test_run,
    _ProgInfoHead,
    _program_fd,
    _program_name,
    _program_type,
    _TestRunOpts,
    _XdpMd,
    log,
)
from rusty_rail.dataplane.libbpf._messages import _captured_libbpf_messages
from rusty_rail.dataplane.libbpf.bpfmap import Map, MapType
from rusty_rail.dataplane.libbpf.errors import LibbpfError, _errno_of
from rusty_rail.dataplane.libbpf.pins import _obj_get_fd

_BPF_F_RDONLY_PROG = 1 << 7
_KERNEL_READ_ONLY_PROG_MAPS = frozenset({MapType.DEVMAP, MapType.DEVMAP_HASH, MapType.CPUMAP})


def bpf_object_path(name: str) -> Path:
    """The compiled object ``bpf/<name>.bpf.o`` shipped inside the rusty_rail package."""
    path = Path(str(resources.files("rusty_rail").joinpath("bpf", f"{name}.bpf.o")))
    if not path.is_file():
        raise FileNotFoundError(
            errno_codes.ENOENT,
            f"BPF object {name!r} is not built ({path} is missing): run scripts/setup",
            str(path),
        )
    return path


@dataclass(frozen=True, slots=True)
class TestRun:
    """The outcome of one BPF_PROG_TEST_RUN: the verdict, the output frame and the kernel's
    own measure of the average time per repetition."""

    __test__ = False  # not a pytest test class, despite the name

    retval: int
    data: bytes
    duration_ns: int


_DEFAULT_OUT_SIZE = 1 << 16
#: BPF_F_TEST_XDP_LIVE_FRAMES (kernel >= 5.18): the frames the program sends are sent.
_BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
#: TEST_XDP_MAX_BATCH: the most frames the kernel builds before it runs them (live mode).
LIVE_MAX_BATCH = 256


class Program(_FdHandle):
    """A loaded BPF program. Owned by its BpfObject: it is unusable once that is closed."""

    __slots__ = (
        "_acquire",
        "_ctx",
        "_ctx_ifindex",
        "_name",
        "_opts",
        "_opts_ref",
        "_out",
        "_out_view",
        "_release",
        "_repeat",
        "prog_type",
    )
    _INFO = _ProgInfoHead

    def __init__(self, fd: int, name: str, prog_type: int = BPF_PROG_TYPE_XDP) -> None:
        super().__init__(fd, None)
        self._name = name
        self.prog_type = prog_type
        # Everything a run needs is built once and reused: constructing ctypes objects per
        # call would cost more than the run itself. Only the fields that change are written.
        self._opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), repeat=1)
        self._opts_ref = ctypes.byref(self._opts)
        self._repeat = 1
        self._ctx = _XdpMd()
        self._ctx_ifindex: int | None = None
        self._out = ctypes.create_string_buffer(0)
        self._out_view = memoryview(b"")
        self._grow_output(_DEFAULT_OUT_SIZE)
        # Runs share the buffers above; a run in another thread meanwhile gets its own.
        lock = threading.Lock()
        self._acquire = lock.acquire
        self._release = lock.release

    def _grow_output(self, size: int) -> None:
        self._out = ctypes.create_string_buffer(size)
        self._out_view = memoryview(self._out).cast("B")
        self._opts.data_out = ctypes.addressof(self._out)

    def _describe(self) -> str:
        return f"program {self._name!r}"

    def _closed_error(self) -> ValueError:
        return ValueError(f"program {self._name!r} is closed (its BpfObject was closed)")

    @property
    def name(self) -> str:
        return self._name

    def test_run(
        self,
        data: bytes,
        *,
        ingress_ifindex: int | None = None,
        repeat: int = 1,
        data_out_size: int | None = None,
    ) -> TestRun:
        """Run the program on ``data`` in the kernel (BPF_PROG_TEST_RUN), ``repeat`` times.

        ``ingress_ifindex`` gives an XDP program an xdp_md context on that interface (of the
        calling thread's network namespace); ``data_out_size`` caps the output frame (the
        kernel fails with ENOSPC when the program's output is longer); by default the cap is
        64 KiB."""
        if not self._acquire(False):
            return Program(self.fd, self._name, self.prog_type).test_run(
                data, ingress_ifindex=ingress_ifindex, repeat=repeat, data_out_size=data_out_size
            )
        try:
            opts = self._opts
            size = len(data)
            opts.data_in = data
            opts.data_size_in = size
            if data_out_size is None:
                opts.data_size_out = len(self._out_view)
            else:
                if data_out_size > len(self._out_view):
                    self._grow_output(data_out_size)
                opts.data_size_out = data_out_size
            if ingress_ifindex is not None or self._ctx_ifindex is not None:
                self._set_context(ingress_ifindex, size)
            if repeat != self._repeat:
                opts.repeat = self._repeat = repeat
            if _prog_test_run(self._ref, self._opts_ref) != 0:
                raise self._test_run_error(ctypes.get_errno(), size, data_out_size)
            return TestRun(
                opts.retval, self._out_view[: opts.data_size_out].tobytes(), opts.duration
            )
        finally:
            self._release()

    def run_live(
        self, data: bytes, *, ingress_ifindex: int, repeat: int, batch_size: int = 0
    ) -> int:
        """Run an XDP program ``repeat`` times in live-frames mode (BPF_PROG_RUN with
        BPF_F_TEST_XDP_LIVE_FRAMES, kernel >= 5.18): each run gets a frame holding ``data`` on
        interface ``ingress_ifindex`` (of the calling thread's network namespace), and what the
        program returns is done: XDP_TX sends the frame out of that interface, XDP_REDIRECT
        where it redirects it. No frame comes back. ``batch_size`` frames are built and run
        at a time (0: the kernel's 64; at most LIVE_MAX_BATCH).

        The kernel reuses the frames' pages and writes ``data`` into a page only when it is
        new: a program must rewrite what it (or anything downstream) changed. Returns the
        kernel's average time per frame in nanoseconds.

        Keep the program attached (a spare interface that is down will do): otherwise every
        call installs it in the XDP dispatcher and waits for an RCU grace period."""
        if self.prog_type != BPF_PROG_TYPE_XDP:
            raise ValueError(f"program {self._name!r} is not XDP: live frames are for XDP")
        if repeat < 1:
            raise ValueError(f"repeat must be at least 1, not {repeat}")
        if not 0 <= batch_size <= LIVE_MAX_BATCH:
            raise ValueError(f"batch_size must be 0..{LIVE_MAX_BATCH}, not {batch_size}")
        # Options of its own: live runs go on in several threads at once, for minutes.
        context = _XdpMd(data_end=len(data), ingress_ifindex=ingress_ifindex)
        opts = _TestRunOpts(
            sz=ctypes.sizeof(_TestRunOpts),
            data_in=data,
            data_size_in=len(data),
            ctx_in=ctypes.addressof(context),
            ctx_size_in=ctypes.sizeof(_XdpMd),
            repeat=repeat,
            flags=_BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size=batch_size,
        )
        if _prog_test_run(self._ref, ctypes.byref(opts)) != 0:
            raise self._live_run_error(ctypes.get_errno(), len(data), ingress_ifindex)
        return int(opts.duration)

    def _live_run_error(self, err: int, size: int, ingress_ifindex: int) -> Exception:
        if self.closed:
            return self._closed_error()
        hint = None
        if err == errno_codes.EINVAL:
            hint = (
                f"input of {size} bytes (an XDP frame needs 14 to about 3500 bytes), or a "
                "kernel older than 5.18 (no BPF_F_TEST_XDP_LIVE_FRAMES)"
            )
        elif err == errno_codes.ENODEV:
            hint = f"no interface {ingress_ifindex} in this network namespace"
        return LibbpfError(err, f"live-frames run of program {self._name!r}", hint=hint)

    def _set_context(self, ingress_ifindex: int | None, size: int) -> None:
        if ingress_ifindex is not None and self.prog_type != BPF_PROG_TYPE_XDP:
            raise ValueError(f"program {self._name!r} is not XDP: ingress_ifindex is for XDP")
        opts = self._opts
        if ingress_ifindex is None:
            # Any context pointer makes the kernel check the context, even with a zero size.
            opts.ctx_in = None
            opts.ctx_size_in = 0
        else:
            self._ctx.data_end = size
            self._ctx.ingress_ifindex = ingress_ifindex
            opts.ctx_in = ctypes.addressof(self._ctx)
            opts.ctx_size_in = ctypes.sizeof(_XdpMd)
        self._ctx_ifindex = ingress_ifindex

    def _test_run_error(self, err: int, size: int, data_out_size: int | None) -> Exception:
        hint = None
        if self.closed:
            return self._closed_error()
        if err == errno_codes.ENOSPC:
            hint = f"the output frame is longer than data_out_size={data_out_size}"
        elif err == errno_codes.EINVAL:
            hint = f"input of {size} bytes (an XDP frame needs 14 to about 3500 bytes)"
        elif err == errno_codes.ENODEV:
            hint = "no such ingress interface in this network namespace"
        return LibbpfError(err, f"test run of program {self._name!r}", hint=hint)

    def __repr__(self) -> str:
        return f"Program(name={self._name!r}, fd={self._ref})"


class BpfObject(_Handle):
    """An ELF object file opened, configured, then loaded into the kernel by libbpf.

    Typical use: ``with BpfObject.open(path) as obj: obj.set_max_entries(...); obj.load();
    obj.program("xdp_balancer")``. Closing it unloads whatever nothing else holds (pins, links,
    attached programs keep their objects alive in the kernel)."""

    def __init__(self, handle: int, path: Path) -> None:
        super().__init__(handle, _object_close)
        self.path = path
        self._loaded = False
        self._load_failed = False
        self._programs: dict[str, Program] = {}
        self._maps: dict[str, Map] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> BpfObject:
        path = Path(path)
        if not path.is_file():
            raise LibbpfError(errno_codes.ENOENT, f"open BPF object {path}")
        with _captured_libbpf_messages() as messages:
            handle = _object_open_file(os.fsencode(path), None)
            err = ctypes.get_errno()
        if not handle:
            raise LibbpfError(
                err or errno_codes.EINVAL, f"open BPF object {path}", libbpf_log=messages
            )
        return cls(handle, path)

    def _describe(self) -> str:
        return f"BPF object {self.path.name}"

    def _map_handle(self, name: str) -> int:
        handle = _object_find_map(self._live(), name.encode())
        if not handle:
            raise KeyError(
                f"BPF object {self.path.name} has no map {name!r} (it has: "
                f"{', '.join(self.map_names()) or 'none'})"
            )
        return int(handle)

    def _before_load(self, what: str) -> None:
        if self._loaded:
            raise ValueError(f"{what}: BPF object {self.path.name} is already loaded")
        if self._load_failed:
            # libbpf cannot load an object twice: a new attempt starts from open().
            raise ValueError(f"{what}: loading {self.path.name} failed; open it again")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def loaded(self) -> bool:
        return self._loaded

    def program_names(self) -> list[str]:
        handle = self._live()
        names = []
        program = _object_next_program(handle, None)
        while program:
            names.append(_program_name(program).decode())
            program = _object_next_program(handle, program)
        return names

    def map_names(self) -> list[str]:
        handle = self._live()
        names = []
        bpf_map = _object_next_map(handle, None)
        while bpf_map:
            names.append(_map_name(bpf_map).decode())
            bpf_map = _object_next_map(handle, bpf_map)
        return names

    # configuration before load

    def set_max_entries(self, map_name: str, max_entries: int) -> None:
        self._before_load(f"resize map {map_name!r}")
        result = _map_set_max_entries(self._map_handle(map_name), max_entries)
        if result != 0:
            raise LibbpfError(
                _errno_of(result), f"set max_entries={max_entries} on map {map_name!r}"
            )

    def reuse_map_fd(self, map_name: str, fd: int) -> None:
        """Make the program use the existing map ``fd`` instead of creating ``map_name``: the
        hot-restart path. The existing map must match the object's definition."""
        self._before_load(f"reuse a map for {map_name!r}")
        handle = self._map_handle(map_name)
        info = _MapInfo()
        _info(fd, info, f"the map to reuse for {map_name!r}")
        self._check_compatible(map_name, handle, info)
        result = _map_reuse_fd(handle, fd)
        if result != 0:
            raise LibbpfError(_errno_of(result), f"reuse map fd {fd} for map {map_name!r}")

    def reuse_pinned_map(self, map_name: str, path: str | os.PathLike[str]) -> None:
        fd = _obj_get_fd(path, "map", f"map for {map_name!r}")
        try:
            self.reuse_map_fd(map_name, fd)  # libbpf keeps a duplicate
        finally:
            os.close(fd)

    def _check_compatible(self, map_name: str, handle: int, info: _MapInfo) -> None:
        # libbpf's reuse_fd adopts whatever it is given; a layout mismatch would only show
        # later as garbage in the maps, so refuse it here.
        wanted = {
            "type": _map_type(handle),
            "key_size": _map_key_size(handle),
            "value_size": _map_value_size(handle),
            "max_entries": _map_max_entries(handle),
            "flags": _map_flags(handle),
        }
        found = {
            "type": info.type,
            "key_size": info.key_size,
            "value_size": info.value_size,
            "max_entries": info.max_entries,
            "flags": info.map_flags,
        }
        if info.type in _KERNEL_READ_ONLY_PROG_MAPS:
            # The kernel adds BPF_F_RDONLY_PROG to every devmap and cpumap it creates (and
            # refuses it when asked for), so a pinned one always differs in that bit.
            found["flags"] &= ~_BPF_F_RDONLY_PROG
        differences = [
            f"{field} {found[field]} (the object wants {wanted[field]})"
            for field in wanted
            if wanted[field] != found[field]
        ]
        if differences:
            raise LibbpfError(
                errno_codes.EINVAL,
                f"reuse map {info.name.decode(errors='replace')!r} as {map_name!r} in "
                f"{self.path.name}",
                hint="it differs: " + ", ".join(differences),
            )

    # loading

    def load(self) -> None:
        """Create the maps and load (verify) every program. On a verification failure the
        LibbpfError carries the verifier's log."""
        self._before_load("load")
        with _captured_libbpf_messages() as messages:
            result = _object_load(self._live())
        if result != 0:
            self._load_failed = True
            error = LibbpfError(
                _errno_of(result), f"load BPF object {self.path.name}", libbpf_log=messages
            )
            if error.verifier_log is not None:
                error.hint = "the verifier rejected a program (its log follows)"
            raise error
        for message in messages:
            log.debug("libbpf: %s", message.rstrip("\n"))
        self._loaded = True

    def _require_loaded(self, what: str) -> None:
        self._live()
        if not self._loaded:
            raise ValueError(f"{what}: BPF object {self.path.name} is not loaded yet")

    def program(self, name: str) -> Program:
        self._require_loaded(f"program {name!r}")
        program = self._programs.get(name)
        if program is None:
            handle = _object_find_program(self._live(), name.encode())
            if not handle:
                raise KeyError(
                    f"BPF object {self.path.name} has no program {name!r} "
                    f"(it has: {', '.join(self.program_names()) or 'none'})"
                )
            fd = _program_fd(handle)
            if fd < 0:
                raise LibbpfError(_errno_of(fd), f"program {name!r} of {self.path.name}")
            program = self._programs[name] = Program(int(fd), name, _program_type(handle))
        return program

    def map(self, name: str) -> Map:
        self._require_loaded(f"map {name!r}")
        bpf_map = self._maps.get(name)
        if bpf_map is None:
            handle = self._map_handle(name)
            fd = _map_fd(handle)
            if fd < 0:
                raise LibbpfError(_errno_of(fd), f"map {name!r} of {self.path.name}")
            # The kernel's view, not libbpf's definition: a reused map keeps its own shape.
            info = _MapInfo()
            _info(fd, info, f"map {name!r} of {self.path.name}")
            bpf_map = self._maps[name] = Map(
                int(fd),
                name=name,
                map_type=info.type,
                key_size=info.key_size,
                value_size=info.value_size,
                max_entries=info.max_entries,
                flags=info.map_flags,
                owned=False,
            )
        return bpf_map

    def close(self) -> None:
        for program in self._programs.values():
            program._invalidate()
        for bpf_map in self._maps.values():
            bpf_map._invalidate()
        super().close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "loaded" if self._loaded else "open"
        return f"BpfObject({str(self.path)!r}, {state})"
