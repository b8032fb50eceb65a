"""A thin ctypes binding of the system libbpf (libbpf.so.1): objects, programs, maps, ring
buffers, XDP links, tc filters and pins. Everything above it passes bytes and names.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_codes
import logging
import os
import platform
import socket
import stat
import struct
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self

__all__ = [
    "BPFFS",
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_INNER_MAP",
    "BPF_F_MMAPABLE",
    "BPF_F_NO_PREALLOC",
    "BPF_NOEXIST",
    "PIN_ROOT",
    "BpfObject",
    "LibbpfError",
    "Link",
    "Map",
    "MapType",
    "Program",
    "RingBuffer",
    "TcDirection",
    "TcFilter",
    "TestRun",
    "XdpAttachment",
    "XdpMode",
    "attach_tc",
    "attach_xdp",
    "bpf_object_path",
    "bpf_unavailable_reason",
    "create_map",
    "detach_tc",
    "detach_xdp",
    "ensure_bpffs",
    "num_possible_cpus",
    "pin_dir",
    "query_tc",
    "query_xdp",
    "remove_pin_dir",
]

log = logging.getLogger(__name__)

# -- constants from linux/bpf.h and linux/if_link.h ------------------------------------------


class MapType(IntEnum):
    """The kernel's map types (enum bpf_map_type), the ones rusty-rail uses or meets."""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27
    INODE_STORAGE = 28
    TASK_STORAGE = 29
    BLOOM_FILTER = 30
    USER_RINGBUF = 31


PERCPU_MAP_TYPES = frozenset(
    {
        MapType.PERCPU_HASH,
        MapType.PERCPU_ARRAY,
        MapType.LRU_PERCPU_HASH,
        MapType.PERCPU_CGROUP_STORAGE,
    }
)
MAP_IN_MAP_TYPES = frozenset({MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS})

# Update flags (BPF_MAP_UPDATE_ELEM).
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# Map creation flags.
BPF_F_NO_PREALLOC = 1 << 0
BPF_F_MMAPABLE = 1 << 10
BPF_F_INNER_MAP = 1 << 12

BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6

_BPF_F_REPLACE = 1 << 2
_BPF_XDP_ATTACH_TYPE = 37  # enum bpf_attach_type: BPF_XDP
_BPF_LINK_TYPE_XDP = 6

_XDP_FLAGS_SKB_MODE = 1 << 1
_XDP_FLAGS_DRV_MODE = 1 << 2
_XDP_FLAGS_HW_MODE = 1 << 3

XdpMode = Literal["native", "generic"]
_MODE_FLAGS: dict[str, int] = {"native": _XDP_FLAGS_DRV_MODE, "generic": _XDP_FLAGS_SKB_MODE}
# enum XDP_ATTACHED_* -> the names an operator reads ("offload" is hardware offload).
_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload"}

BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "rusty_rail"
_BPF_FS_MAGIC = 0xCAFE4A11
_OBJ_NAME_LEN = 16  # BPF_OBJ_NAME_LEN, including the terminating NUL

# -- errors ---------------------------------------------------------------------------------


_BPF_F_RDONLY_PROG = 1 << 7
_KERNEL_READ_ONLY_PROG_MAPS = frozenset({MapType.DEVMAP, MapType.DEVMAP_HASH, MapType.CPUMAP})


class LibbpfError(OSError):
    """A libbpf or bpf(2) operation failed. ``operation`` names what was attempted and on
    what; ``libbpf_log`` holds what libbpf printed meanwhile; ``verifier_log`` the verifier's
    output when a program failed to load."""

    def __init__(
        self,
        err: int,
        operation: str,
        *,
        hint: str | None = None,
        libbpf_log: Sequence[str] = (),
    ) -> None:
        err = abs(err)
        super().__init__(err, os.strerror(err))
        self.operation = operation
        self.hint = hint
        self.libbpf_log = "".join(libbpf_log)
        self.verifier_log = _extract_verifier_log(self.libbpf_log)

    def __str__(self) -> str:
        name = errno_codes.errorcode.get(self.errno or 0, str(self.errno))
        text = f"{self.operation}: {self.strerror} ({name})"
        if self.hint:
            text += f"; {self.hint}"
        if self.libbpf_log:
            text += "\nlibbpf said:\n" + self.libbpf_log.rstrip("\n")
        return text


def _extract_verifier_log(text: str) -> str | None:
    begin = text.find("-- BEGIN PROG LOAD LOG --")
    if begin < 0:
        return None
    begin = text.index("\n", begin) + 1
    end = text.find("-- END PROG LOAD LOG --", begin)
    return text[begin:] if end < 0 else text[begin:end]


# -- the shared libraries -------------------------------------------------------------------


def _load_libbpf() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as error:
        raise ImportError(
            "rusty_rail.dataplane needs the system libbpf (libbpf.so.1, Debian package "
            f"libbpf1): {error}"
        ) from error


_lib = _load_libbpf()
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_c_int = ctypes.c_int
_c_uint = ctypes.c_uint
_c_void_p = ctypes.c_void_p
_c_char_p = ctypes.c_char_p
_c_size_t = ctypes.c_size_t


def _fn(name: str, restype: Any, *argtypes: Any) -> Any:
    function = getattr(_lib, name)
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


class _TestRunOpts(ctypes.Structure):
    _fields_ = (
        ("sz", _c_size_t),
        ("data_in", _c_char_p),  # a bytes object is referenced, not copied
        ("data_out", _c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", _c_void_p),
        ("ctx_out", _c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


class _XdpMd(ctypes.Structure):
    _fields_ = (
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    )


class _MapCreateOpts(ctypes.Structure):
    _fields_ = (
        ("sz", _c_size_t),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
        ("numa_node", ctypes.c_uint32),
        ("map_ifindex", ctypes.c_uint32),
    )


class _LinkCreateOpts(ctypes.Structure):
    _fields_ = (
        ("sz", _c_size_t),
        ("flags", ctypes.c_uint32),
        ("iter_info", _c_void_p),
        ("iter_info_len", ctypes.c_uint32),
        ("target_btf_id", ctypes.c_uint32),
        ("_union", ctypes.c_uint64 * 5),  # perf_event / kprobe_multi / tracing: unused
    )


class _LinkUpdateOpts(ctypes.Structure):
    _fields_ = (
        ("sz", _c_size_t),
        ("flags", ctypes.c_uint32),
        ("old_prog_fd", ctypes.c_uint32),
    )


class _XdpAttachOpts(ctypes.Structure):
    _fields_ = (("sz", _c_size_t), ("old_prog_fd", _c_int), ("_pad", _c_int))


class _XdpQueryOpts(ctypes.Structure):
    _fields_ = (
        ("sz", _c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 7),
    )


class _MapBatchOpts(ctypes.Structure):
    _fields_ = (("sz", _c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64))


class _BatchUnsupported(Exception):
    """The kernel has no batch operations for this map type."""


# ENOTSUPP (524) is the kernel's internal "not supported", which reaches userspace here.
_BATCH_UNSUPPORTED = frozenset({errno_codes.EINVAL, errno_codes.EOPNOTSUPP, 524})


class _MapInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * _OBJ_NAME_LEN),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    )


class _ProgInfoHead(ctypes.Structure):
    """The first fields of struct bpf_prog_info; the kernel fills as much as it is given."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * _OBJ_NAME_LEN),
    )


class _LinkInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("xdp_ifindex", ctypes.c_uint32),  # first word of the union for an XDP link
        ("_union_rest", ctypes.c_uint32 * 7),
    )


_PRINT_FN = ctypes.CFUNCTYPE(_c_int, _c_int, _c_char_p, _c_void_p)

_set_print = _fn("libbpf_set_print", _c_void_p, _PRINT_FN)
_num_possible_cpus = _fn("libbpf_num_possible_cpus", _c_int)

_object_open_file = _fn("bpf_object__open_file", _c_void_p, _c_char_p, _c_void_p)
_object_load = _fn("bpf_object__load", _c_int, _c_void_p)
_object_close = _fn("bpf_object__close", None, _c_void_p)
_object_find_program = _fn("bpf_object__find_program_by_name", _c_void_p, _c_void_p, _c_char_p)
_object_find_map = _fn("bpf_object__find_map_by_name", _c_void_p, _c_void_p, _c_char_p)
_object_next_program = _fn("bpf_object__next_program", _c_void_p, _c_void_p, _c_void_p)
_object_next_map = _fn("bpf_object__next_map", _c_void_p, _c_void_p, _c_void_p)

_program_fd = _fn("bpf_program__fd", _c_int, _c_void_p)
_program_name = _fn("bpf_program__name", _c_char_p, _c_void_p)
_program_type = _fn("bpf_program__type", _c_int, _c_void_p)

_map_fd = _fn("bpf_map__fd", _c_int, _c_void_p)
_map_name = _fn("bpf_map__name", _c_char_p, _c_void_p)
_map_type = _fn("bpf_map__type", _c_int, _c_void_p)
_map_key_size = _fn("bpf_map__key_size", ctypes.c_uint32, _c_void_p)
_map_value_size = _fn("bpf_map__value_size", ctypes.c_uint32, _c_void_p)
_map_max_entries = _fn("bpf_map__max_entries", ctypes.c_uint32, _c_void_p)
_map_flags = _fn("bpf_map__map_flags", ctypes.c_uint32, _c_void_p)
_map_set_max_entries = _fn("bpf_map__set_max_entries", _c_int, _c_void_p, ctypes.c_uint32)
_map_set_initial_value = _fn("bpf_map__set_initial_value", _c_int, _c_void_p, _c_void_p, _c_size_t)
_map_reuse_fd = _fn("bpf_map__reuse_fd", _c_int, _c_void_p, _c_int)
_map_set_inner_map_fd = _fn("bpf_map__set_inner_map_fd", _c_int, _c_void_p, _c_int)

# The hot path of Program.test_run: called with an int and a byref(), which ctypes passes as
# they are, so the per-argument conversion of argtypes is left out.
_prog_test_run = _lib.bpf_prog_test_run_opts
_prog_test_run.restype = _c_int

_map_create = _fn(
    "bpf_map_create",
    _c_int,
    _c_int,
    _c_char_p,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_uint32,
    _c_void_p,
)
_map_lookup_elem = _fn("bpf_map_lookup_elem", _c_int, _c_int, _c_char_p, _c_void_p)
_map_update_elem = _fn("bpf_map_update_elem", _c_int, _c_int, _c_char_p, _c_char_p, ctypes.c_uint64)
_map_delete_elem = _fn("bpf_map_delete_elem", _c_int, _c_int, _c_char_p)
_map_get_next_key = _fn("bpf_map_get_next_key", _c_int, _c_int, _c_char_p, _c_void_p)
_map_get_fd_by_id = _fn("bpf_map_get_fd_by_id", _c_int, ctypes.c_uint32)
_map_lookup_batch = _fn(
    "bpf_map_lookup_batch",
    _c_int,
    _c_int,
    _c_void_p,
    _c_void_p,
    _c_void_p,
    _c_void_p,
    _c_void_p,
    _c_void_p,
)
_map_update_batch = _fn(
    "bpf_map_update_batch", _c_int, _c_int, _c_char_p, _c_char_p, _c_void_p, _c_void_p
)
_obj_pin = _fn("bpf_obj_pin", _c_int, _c_int, _c_char_p)
_obj_get = _fn("bpf_obj_get", _c_int, _c_char_p)
_obj_get_info_by_fd = _fn("bpf_obj_get_info_by_fd", _c_int, _c_int, _c_void_p, _c_void_p)

_link_create = _fn("bpf_link_create", _c_int, _c_int, _c_int, _c_int, _c_void_p)
_link_update = _fn("bpf_link_update", _c_int, _c_int, _c_int, _c_void_p)
_link_detach = _fn("bpf_link_detach", _c_int, _c_int)
_link_get_next_id = _fn("bpf_link_get_next_id", _c_int, ctypes.c_uint32, _c_void_p)
_link_get_fd_by_id = _fn("bpf_link_get_fd_by_id", _c_int, ctypes.c_uint32)
_xdp_detach = _fn("bpf_xdp_detach", _c_int, _c_int, ctypes.c_uint32, _c_void_p)


class _TcHook(ctypes.Structure):
    _fields_ = (
        ("sz", _c_size_t),
        ("ifindex", _c_int),
        ("attach_point", _c_int),
        ("parent", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    )


class _TcOpts(ctypes.Structure):
    _fields_ = (
        ("sz", _c_size_t),
        ("prog_fd", _c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    )


_tc_hook_create = _fn("bpf_tc_hook_create", _c_int, _c_void_p)
_tc_attach = _fn("bpf_tc_attach", _c_int, _c_void_p, _c_void_p)
_tc_detach = _fn("bpf_tc_detach", _c_int, _c_void_p, _c_void_p)
_tc_query = _fn("bpf_tc_query", _c_int, _c_void_p, _c_void_p)

_RING_SAMPLE_FN = ctypes.CFUNCTYPE(_c_int, _c_void_p, _c_void_p, _c_size_t)
_ring_buffer_new = _fn("ring_buffer__new", _c_void_p, _c_int, _RING_SAMPLE_FN, _c_void_p, _c_void_p)
_ring_buffer_free = _fn("ring_buffer__free", None, _c_void_p)
_ring_buffer_poll = _fn("ring_buffer__poll", _c_int, _c_void_p, _c_int)
_ring_buffer_consume = _fn("ring_buffer__consume", _c_int, _c_void_p)
_ring_buffer_epoll_fd = _fn("ring_buffer__epoll_fd", _c_int, _c_void_p)
_xdp_query = _fn("bpf_xdp_query", _c_int, _c_int, _c_int, _c_void_p)

_vsnprintf = _libc.vsnprintf
_vsnprintf.restype = _c_int
_vsnprintf.argtypes = [_c_void_p, _c_size_t, _c_char_p, _c_void_p]
_statfs = _libc.statfs
_statfs.restype = _c_int
_statfs.argtypes = [_c_char_p, _c_void_p]
_mount = _libc.mount
_mount.restype = _c_int
_mount.argtypes = [_c_char_p, _c_char_p, _c_char_p, ctypes.c_ulong, _c_char_p]


# -- libbpf's messages -----------------------------------------------------------------------

_LIBBPF_WARN, _LIBBPF_INFO, _LIBBPF_DEBUG = 0, 1, 2
# On x86-64 a va_list is a 24-byte struct passed by pointer; copying it is what va_copy does,
# which lets a message be measured before it is formatted.
_VA_LIST_SIZE = 24 if platform.machine() in ("x86_64", "AMD64") else 0
_FALLBACK_MESSAGE_SIZE = 1 << 16

_capture = threading.local()


def _format_message(fmt: bytes, args: int) -> str:
    if _VA_LIST_SIZE:
        args_copy = ctypes.create_string_buffer(_VA_LIST_SIZE)
        ctypes.memmove(args_copy, args, _VA_LIST_SIZE)
        size = _vsnprintf(None, 0, fmt, args_copy) + 1
    else:
        size = _FALLBACK_MESSAGE_SIZE
    buffer = ctypes.create_string_buffer(max(size, 1))
    _vsnprintf(buffer, size, fmt, args)
    return buffer.value.decode("utf-8", errors="replace")


def _on_libbpf_print(level: int, fmt: bytes | None, args: int | None) -> int:
    try:
        if fmt is None or args is None:
            return 0
        if level == _LIBBPF_DEBUG:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("libbpf: %s", _format_message(fmt, args).rstrip("\n"))
            return 0
        message = _format_message(fmt, args)
        sink: list[str] | None = getattr(_capture, "messages", None)
        if sink is not None:
            sink.append(message)  # becomes part of the error, if the operation fails
        elif level == _LIBBPF_WARN:
            log.warning("libbpf: %s", message.rstrip("\n"))
        else:
            log.info("libbpf: %s", message.rstrip("\n"))
    except Exception:  # an exception must not unwind into C
        log.exception("libbpf print callback failed")
    return 0


_print_callback = _PRINT_FN(_on_libbpf_print)
_set_print(_print_callback)


@contextmanager
def _captured_libbpf_messages() -> Iterator[list[str]]:
    """Collect what libbpf prints during the block (this thread only) instead of logging it."""
    previous: list[str] | None = getattr(_capture, "messages", None)
    messages: list[str] = []
    _capture.messages = messages
    try:
        yield messages
    finally:
        _capture.messages = previous
        if previous is not None:
            previous.extend(messages)


def _errno_of(result: int) -> int:
    """libbpf 1.x returns -errno; fall back on errno for NULL-returning calls."""
    if result < 0:
        return -result
    return ctypes.get_errno() or errno_codes.EIO


# -- small helpers ---------------------------------------------------------------------------


def num_possible_cpus() -> int:
    """The number of possible CPUs: the length of every per-CPU map value array."""
    global _possible_cpus
    if _possible_cpus is None:
        count = _num_possible_cpus()
        if count <= 0:
            raise LibbpfError(-count or errno_codes.EIO, "count the possible CPUs")
        _possible_cpus = count
    return _possible_cpus


_possible_cpus: int | None = None


def bpf_unavailable_reason() -> str | None:
    """Why this process cannot use BPF here (not root, no CAP_BPF, ...), or None if it can:
    a map is created and closed to find out."""
    try:
        create_map(MapType.ARRAY, 4, 4, 1, name="rr_probe").close()
    except OSError as error:
        uid = os.geteuid()
        who = "root" if uid == 0 else f"uid {uid}, not root"
        return f"cannot use BPF ({who}): {error}"
    return None


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


def _interface_label(ifindex: int) -> str:
    try:
        return f"{socket.if_indextoname(ifindex)} (ifindex {ifindex})"
    except OSError:
        return f"ifindex {ifindex}"


def _info(fd: int, info: ctypes.Structure, what: str) -> None:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    result = _obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    if result != 0:
        raise LibbpfError(_errno_of(result), f"read the info of {what}")


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        log.warning("closing BPF file descriptor %d failed", fd, exc_info=True)


def _fd_kind(fd: int) -> str:
    """What a BPF descriptor refers to ("map", "program", "link"), from /proc/self/fdinfo."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as fdinfo:
            keys = {line.split(":", 1)[0] for line in fdinfo}
    except OSError:
        return "unknown"
    if "link_type" in keys:
        return "link"
    if "map_type" in keys:
        return "map"
    if "prog_type" in keys:
        return "program"
    return "unknown"


def _obj_get_fd(path: str | os.PathLike[str], kind: str, what: str | None = None) -> int:
    """Open the pin at ``path``, which must be a ``kind`` ("map", "link")."""
    operation = f"open the pinned {what or kind} {os.fspath(path)}"
    fd = _obj_get(os.fsencode(path))
    if fd < 0:
        err = _errno_of(fd)
        hint = None
        if err in (errno_codes.EACCES, errno_codes.EPERM, errno_codes.EINVAL):
            hint = "not a pin (a directory, or a file outside a bpffs), or no permission"
        raise LibbpfError(err, operation, hint=hint)
    found = _fd_kind(fd)
    if found != kind:
        os.close(fd)
        raise LibbpfError(errno_codes.EINVAL, operation, hint=f"it is a pinned {found}")
    return int(fd)


# -- programs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TestRun:
    """The outcome of one BPF_PROG_TEST_RUN: the verdict, the output frame and the kernel's
    own measure of the average time per repetition."""

    __test__ = False  # not a pytest test class, despite the name

    retval: int
    data: bytes
    duration_ns: int


_DEFAULT_OUT_SIZE = 1 << 16


class Program:
    """A loaded BPF program. Owned by its BpfObject: it is unusable once that is closed."""

    __slots__ = (
        "__weakref__",
        "_acquire",
        "_ctx",
        "_ctx_ifindex",
        "_fd",
        "_name",
        "_opts",
        "_opts_ref",
        "_out",
        "_out_view",
        "_release",
        "_repeat",
        "prog_type",
    )

    def __init__(self, fd: int, name: str, prog_type: int = BPF_PROG_TYPE_XDP) -> None:
        self._fd = fd
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

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ValueError(f"program {self._name!r} is closed (its BpfObject was closed)")
        return self._fd

    @property
    def name(self) -> str:
        return self._name

    @property
    def id(self) -> int:
        """The kernel's id of the program (what query_xdp and links report)."""
        info = _ProgInfoHead()
        _info(self.fd, info, f"program {self._name!r}")
        return int(info.id)

    def _invalidate(self) -> None:
        self._fd = -1

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
            if _prog_test_run(self._fd, self._opts_ref) != 0:
                raise self._test_run_error(ctypes.get_errno(), size, data_out_size)
            return TestRun(
                opts.retval, self._out_view[: opts.data_size_out].tobytes(), opts.duration
            )
        finally:
            self._release()

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
        if self._fd < 0:
            return ValueError(f"program {self._name!r} is closed (its BpfObject was closed)")
        if err == errno_codes.ENOSPC:
            hint = f"the output frame is longer than data_out_size={data_out_size}"
        elif err == errno_codes.EINVAL:
            hint = f"input of {size} bytes (an XDP frame needs 14 to about 3500 bytes)"
        elif err == errno_codes.ENODEV:
            hint = "no such ingress interface in this network namespace"
        return LibbpfError(err, f"test run of program {self._name!r}", hint=hint)

    def __repr__(self) -> str:
        return f"Program(name={self._name!r}, fd={self._fd})"


# -- maps ------------------------------------------------------------------------------------


def _round8(size: int) -> int:
    return (size + 7) & ~7


class Map:
    """A BPF map: keys and values are bytes of exactly the map's sizes.

    A map taken from a BpfObject belongs to that object; one created or opened here (create_map,
    from_fd, from_pinned, from_id) owns its descriptor and closes it on close()."""

    def __init__(
        self,
        fd: int,
        *,
        name: str,
        map_type: int,
        key_size: int,
        value_size: int,
        max_entries: int,
        flags: int,
        owned: bool,
    ) -> None:
        self._fd = fd
        self.name = name
        try:
            self.map_type: MapType | int = MapType(map_type)
        except ValueError:
            self.map_type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self._finalizer = weakref.finalize(self, _close_fd, fd) if owned else None

    # construction

    @classmethod
    def from_fd(cls, fd: int) -> Map:
        """A Map on a duplicate of ``fd``: the caller keeps (and closes) its own descriptor."""
        own = os.dup(fd)
        try:
            return cls._from_owned_fd(own, f"map fd {fd}")
        except BaseException:
            os.close(own)
            raise

    @classmethod
    def from_pinned(cls, path: str | os.PathLike[str]) -> Map:
        fd = _obj_get_fd(path, "map")
        try:
            return cls._from_owned_fd(fd, f"pinned map {os.fspath(path)}")
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_id(cls, map_id: int) -> Map:
        """Open a map by its kernel id (an inner map's id is what a map-in-map lookup gives)."""
        fd = _map_get_fd_by_id(map_id)
        if fd < 0:
            raise LibbpfError(_errno_of(fd), f"open map id {map_id}")
        try:
            return cls._from_owned_fd(fd, f"map id {map_id}")
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _from_owned_fd(cls, fd: int, what: str) -> Map:
        info = _MapInfo()
        _info(fd, info, what)
        return cls(
            fd,
            name=info.name.decode(errors="replace"),
            map_type=info.type,
            key_size=info.key_size,
            value_size=info.value_size,
            max_entries=info.max_entries,
            flags=info.map_flags,
            owned=True,
        )

    # life cycle

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ValueError(f"map {self.name!r} is closed")
        return self._fd

    @property
    def id(self) -> int:
        info = _MapInfo()
        _info(self.fd, info, f"map {self.name!r}")
        return int(info.id)

    @property
    def is_percpu(self) -> bool:
        return self.map_type in PERCPU_MAP_TYPES

    def close(self) -> None:
        """Close the descriptor if this Map owns it; the map lives on while pinned or used."""
        if self._finalizer is not None:
            self._finalizer()
        self._fd = -1

    def _invalidate(self) -> None:
        self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = self.map_type.name if isinstance(self.map_type, MapType) else self.map_type
        return (
            f"Map(name={self.name!r}, type={kind}, key_size={self.key_size}, "
            f"value_size={self.value_size}, max_entries={self.max_entries}, fd={self._fd})"
        )

    # elements

    def _check_key(self, key: bytes) -> None:
        # The kernel reads exactly key_size bytes from the pointer it is given.
        if len(key) != self.key_size:
            raise ValueError(
                f"map {self.name!r}: key of {len(key)} bytes, the map's keys have {self.key_size}"
            )

    def _check_value(self, value: bytes) -> None:
        if len(value) != self.value_size:
            raise ValueError(
                f"map {self.name!r}: value of {len(value)} bytes, "
                f"the map's values have {self.value_size}"
            )

    def _percpu_stride(self) -> int:
        return _round8(self.value_size)

    def _lookup_raw(self, key: bytes, size: int) -> bytes | None:
        self._check_key(key)
        buffer = ctypes.create_string_buffer(size)
        result = _map_lookup_elem(self.fd, key, buffer)
        if result != 0:
            err = _errno_of(result)
            if err == errno_codes.ENOENT:
                return None
            raise LibbpfError(err, f"look up a key in map {self.name!r}")
        return buffer.raw

    def lookup(self, key: bytes) -> bytes | None:
        """The value under ``key``, or None. For a map-in-map: the inner map's id (u32)."""
        if self.is_percpu:
            raise TypeError(f"map {self.name!r} is per-CPU: use lookup_percpu()")
        return self._lookup_raw(key, self.value_size)

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        """One value per possible CPU (each value_size bytes), or None if the key is absent."""
        if not self.is_percpu:
            raise TypeError(f"map {self.name!r} is not per-CPU: use lookup()")
        stride = self._percpu_stride()
        raw = self._lookup_raw(key, stride * num_possible_cpus())
        if raw is None:
            return None
        return [raw[i : i + self.value_size] for i in range(0, len(raw), stride)]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Insert or replace (flags: BPF_ANY, BPF_NOEXIST, BPF_EXIST). For a map-in-map the
        value is an inner map's fd as a native u32; set_inner() says it more plainly."""
        if self.is_percpu:
            raise TypeError(f"map {self.name!r} is per-CPU: use update_percpu()")
        self._check_key(key)
        self._check_value(value)
        self._update_raw(key, value, flags)

    def update_percpu(self, key: bytes, values: Sequence[bytes], flags: int = BPF_ANY) -> None:
        """Set one value per possible CPU."""
        if not self.is_percpu:
            raise TypeError(f"map {self.name!r} is not per-CPU: use update()")
        self._check_key(key)
        cpus = num_possible_cpus()
        if len(values) != cpus:
            raise ValueError(
                f"map {self.name!r}: {len(values)} per-CPU values, there are {cpus} possible CPUs"
            )
        padding = bytes(self._percpu_stride() - self.value_size)
        for value in values:
            self._check_value(value)
        self._update_raw(key, b"".join(value + padding for value in values), flags)

    def _update_raw(self, key: bytes, value: bytes, flags: int) -> None:
        result = _map_update_elem(self.fd, key, value, flags)
        if result != 0:
            err = _errno_of(result)
            hint = None
            if err == errno_codes.E2BIG:
                hint = f"the map is full (max_entries={self.max_entries}) or the index too big"
            elif err == errno_codes.EEXIST and flags == BPF_NOEXIST:
                hint = "the key exists (BPF_NOEXIST)"
            elif err == errno_codes.ENOENT and flags == BPF_EXIST:
                hint = "the key does not exist (BPF_EXIST)"
            elif self.map_type in MAP_IN_MAP_TYPES and err in (
                errno_codes.EINVAL,
                errno_codes.EBADF,
            ):
                hint = "the value must be the fd of a map that matches the inner map template"
            raise LibbpfError(err, f"update map {self.name!r}", hint=hint)

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False if it was not there. Array elements cannot be deleted (EINVAL)."""
        self._check_key(key)
        result = _map_delete_elem(self.fd, key)
        if result != 0:
            err = _errno_of(result)
            if err == errno_codes.ENOENT:
                return False
            raise LibbpfError(err, f"delete a key from map {self.name!r}")
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key (bpf_map_get_next_key). Concurrent deletions may make a hash map's walk
        start over: the kernel's iteration, not ours."""
        fd = self.fd
        current: bytes | None = None
        next_key = ctypes.create_string_buffer(self.key_size)
        while True:
            result = _map_get_next_key(fd, current, next_key)
            if result != 0:
                err = _errno_of(result)
                if err == errno_codes.ENOENT:
                    return
                raise LibbpfError(err, f"walk the keys of map {self.name!r}")
            current = next_key.raw
            yield current

    def items(self, batch_size: int = 256) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs: ``batch_size`` at a time where the kernel reads maps in batches
        (one system call per batch), else key by key, skipping keys deleted meanwhile. Either
        way a map that changes during the walk may be seen partly before, partly after."""
        if self.is_percpu:
            raise TypeError(f"map {self.name!r} is per-CPU: use items_percpu()")
        yield from self._items(self.value_size, batch_size)

    def items_percpu(self, batch_size: int = 256) -> Iterator[tuple[bytes, list[bytes]]]:
        """(key, one value per possible CPU) pairs, as items()."""
        if not self.is_percpu:
            raise TypeError(f"map {self.name!r} is not per-CPU: use items()")
        stride = self._percpu_stride()
        for key, raw in self._items(stride * num_possible_cpus(), batch_size):
            yield key, [raw[i : i + self.value_size] for i in range(0, len(raw), stride)]

    def _items(self, value_size: int, batch_size: int) -> Iterator[tuple[bytes, bytes]]:
        batches = self._lookup_batches(value_size, batch_size)
        try:
            first = next(batches)
        except StopIteration:
            return
        except _BatchUnsupported:
            for key in self.keys():
                value = self._lookup_raw(key, value_size)
                if value is not None:
                    yield key, value
            return
        yield from first
        for batch in batches:
            yield from batch

    def _lookup_batches(
        self, value_size: int, batch_size: int
    ) -> Iterator[list[tuple[bytes, bytes]]]:
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: at least 1")
        fd, key_size = self.fd, self.key_size
        # The position token is a bucket number for hash maps and a key for arrays.
        token_size = max(key_size, 8)
        position = ctypes.create_string_buffer(token_size)
        next_position = ctypes.create_string_buffer(token_size)
        count = ctypes.c_uint32()
        opts = _MapBatchOpts(sz=ctypes.sizeof(_MapBatchOpts))
        started = False
        while True:
            keys = ctypes.create_string_buffer(key_size * batch_size)
            values = ctypes.create_string_buffer(value_size * batch_size)
            count.value = batch_size
            result = _map_lookup_batch(
                fd,
                position if started else None,
                next_position,
                keys,
                values,
                ctypes.byref(count),
                ctypes.byref(opts),
            )
            err = 0 if result == 0 else _errno_of(result)
            if err == errno_codes.ENOSPC and count.value == 0:
                batch_size *= 2  # one hash bucket holds more than a batch
                continue
            if err not in (0, errno_codes.ENOENT):
                if not started and err in _BATCH_UNSUPPORTED:
                    raise _BatchUnsupported
                raise LibbpfError(err, f"read map {self.name!r} in batches")
            found = count.value
            key_bytes, value_bytes = keys.raw, values.raw
            yield [
                (
                    key_bytes[i * key_size : (i + 1) * key_size],
                    value_bytes[i * value_size : (i + 1) * value_size],
                )
                for i in range(found)
            ]
            if err == errno_codes.ENOENT:
                return
            ctypes.memmove(position, next_position, token_size)
            started = True

    def update_batch(self, items: Sequence[tuple[bytes, bytes]], flags: int = BPF_ANY) -> None:
        """Insert or replace many elements in one system call (the kernel applies them in
        order and stops at the first failure, which is raised)."""
        if self.is_percpu:
            raise TypeError(f"map {self.name!r} is per-CPU: update_batch takes one value per key")
        if not items:
            return
        for key, value in items:
            self._check_key(key)
            self._check_value(value)
        keys = b"".join(key for key, _ in items)
        values = b"".join(value for _, value in items)
        count = ctypes.c_uint32(len(items))
        opts = _MapBatchOpts(sz=ctypes.sizeof(_MapBatchOpts), elem_flags=flags)
        result = _map_update_batch(self.fd, keys, values, ctypes.byref(count), ctypes.byref(opts))
        if result != 0:
            raise LibbpfError(
                _errno_of(result),
                f"update map {self.name!r} in a batch of {len(items)}",
                hint=f"{count.value} elements were written before the failure",
            )

    # map-in-map

    def set_inner(self, key: bytes, inner: Map, flags: int = BPF_ANY) -> None:
        """Point ``key`` of this map-in-map at ``inner`` (one atomic pointer swap)."""
        if self.map_type not in MAP_IN_MAP_TYPES:
            raise TypeError(f"map {self.name!r} is not a map-in-map")
        self.update(key, struct.pack("=I", inner.fd), flags)

    def inner_id(self, key: bytes) -> int | None:
        """The id of the inner map under ``key`` (open it with Map.from_id), or None."""
        if self.map_type not in MAP_IN_MAP_TYPES:
            raise TypeError(f"map {self.name!r} is not a map-in-map")
        value = self.lookup(key)
        return None if value is None else int(struct.unpack("=I", value)[0])

    # pins

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin the map at ``path`` (on a bpffs) so that it outlives this process."""
        result = _obj_pin(self.fd, os.fsencode(path))
        if result != 0:
            raise LibbpfError(_errno_of(result), f"pin map {self.name!r} at {os.fspath(path)}")

    def unpin(self, path: str | os.PathLike[str]) -> None:
        """Remove the pin at ``path`` (the map lives on while something else holds it)."""
        _unpin(path, f"map {self.name!r}")


def _unpin(path: str | os.PathLike[str], what: str) -> None:
    try:
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise LibbpfError(errno_codes.EINVAL, f"unpin {what}: {os.fspath(path)} is not a pin")
        os.unlink(path)
    except FileNotFoundError as error:
        raise LibbpfError(errno_codes.ENOENT, f"unpin {what} at {os.fspath(path)}") from error


_MAP_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


def create_map(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    *,
    name: str,
    flags: int = 0,
    inner_map_fd: int | None = None,
) -> Map:
    """Create a map outside any object (bpf_map_create): e.g. a Maglev table to swap into an
    ARRAY_OF_MAPS. The returned Map owns its descriptor."""
    if len(name) >= _OBJ_NAME_LEN or not set(name) <= _MAP_NAME_CHARS:
        raise ValueError(
            f"map name {name!r}: at most {_OBJ_NAME_LEN - 1} characters of [A-Za-z0-9_.]"
        )
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=flags)
    if inner_map_fd is not None:
        opts.inner_map_fd = inner_map_fd
    fd = _map_create(map_type, name.encode(), key_size, value_size, max_entries, ctypes.byref(opts))
    if fd < 0:
        kind = MapType(map_type).name if map_type in MapType._value2member_map_ else map_type
        raise LibbpfError(
            _errno_of(fd),
            f"create map {name!r} (type {kind}, key_size {key_size}, value_size {value_size}, "
            f"max_entries {max_entries}, flags {flags:#x})",
        )
    return Map(
        fd,
        name=name,
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        flags=flags,
        owned=True,
    )


# -- ring buffers ------------------------------------------------------------------------------


class RingBuffer:
    """Reads what BPF programs submit to a BPF_MAP_TYPE_RINGBUF map: each record goes to
    ``callback`` as bytes, in submission order, from poll() or consume() in the calling
    thread. fileno() is readable when records wait (for select or asyncio's add_reader)."""

    def __init__(self, ring: Map, callback: Callable[[bytes], object]) -> None:
        if ring.map_type != MapType.RINGBUF:
            raise TypeError(f"map {ring.name!r} is not a ring buffer")
        self.name = ring.name
        self._callback = callback
        self._error: BaseException | None = None
        # libbpf calls this C function pointer: it must live as long as the ring buffer.
        self._sample = _RING_SAMPLE_FN(self._on_sample)
        with _captured_libbpf_messages() as messages:
            handle = _ring_buffer_new(ring.fd, self._sample, None, None)
            err = ctypes.get_errno()
        if not handle:
            raise LibbpfError(
                err or errno_codes.EINVAL, f"open ring buffer {ring.name!r}", libbpf_log=messages
            )
        self._handle: int | None = int(handle)
        self._finalizer = weakref.finalize(self, _ring_buffer_free, handle)

    def _on_sample(self, _context: int | None, data: int | None, size: int) -> int:
        try:
            self._callback(ctypes.string_at(data, size) if data else b"")
        except BaseException as error:  # must not unwind into C: raised again after the call
            self._error = error
            return -1  # libbpf stops there; the record counts as consumed
        return 0

    def _checked(self, result: int, operation: str) -> int:
        error, self._error = self._error, None
        if error is not None:
            raise error
        if result < 0:
            if -result == errno_codes.EINTR:
                return 0
            raise LibbpfError(-result, f"{operation} ring buffer {self.name!r}")
        return result

    def _live_handle(self) -> int:
        if self._handle is None:
            raise ValueError(f"ring buffer {self.name!r} is closed")
        return self._handle

    def poll(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds (None: until records come) and hand over what is
        there; the number of records. An exception from the callback is raised here."""
        timeout_ms = -1 if timeout is None else max(0, int(timeout * 1000))
        return self._checked(_ring_buffer_poll(self._live_handle(), timeout_ms), "poll")

    def consume(self) -> int:
        """Hand over the records that are there now, without waiting; their number."""
        return self._checked(_ring_buffer_consume(self._live_handle()), "consume")

    def fileno(self) -> int:
        return int(_ring_buffer_epoll_fd(self._live_handle()))

    def close(self) -> None:
        self._handle = None
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- objects ---------------------------------------------------------------------------------


class BpfObject:
    """An ELF object file opened, configured, then loaded into the kernel by libbpf.

    Typical use: ``with BpfObject.open(path) as obj: obj.set_max_entries(...); obj.load();
    obj.program("xdp_balancer")``. Closing it unloads whatever nothing else holds (pins, links,
    attached programs keep their objects alive in the kernel)."""

    def __init__(self, handle: int, path: Path) -> None:
        self._handle: int | None = handle
        self.path = path
        self._loaded = False
        self._load_failed = False
        self._programs: dict[str, Program] = {}
        self._maps: dict[str, Map] = {}
        self._finalizer = weakref.finalize(self, _object_close, handle)

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

    def _handle_or_raise(self) -> int:
        if self._handle is None:
            raise ValueError(f"BPF object {self.path.name} is closed")
        return self._handle

    def _map_handle(self, name: str) -> int:
        handle = _object_find_map(self._handle_or_raise(), name.encode())
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
        handle = self._handle_or_raise()
        names = []
        program = _object_next_program(handle, None)
        while program:
            names.append(_program_name(program).decode())
            program = _object_next_program(handle, program)
        return names

    def map_names(self) -> list[str]:
        handle = self._handle_or_raise()
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

    def set_initial_value(self, map_name: str, data: bytes) -> None:
        """Set a global-data map's contents (e.g. ``<object>.rodata``) before load."""
        self._before_load(f"set the initial value of map {map_name!r}")
        handle = self._map_handle(map_name)
        result = _map_set_initial_value(handle, data, len(data))
        if result != 0:
            raise LibbpfError(
                _errno_of(result),
                f"set the initial value of map {map_name!r} ({len(data)} bytes, the map has "
                f"{_map_value_size(handle)})",
            )

    def set_inner_map_fd(self, map_name: str, fd: int) -> None:
        """Give a map-in-map the template of its inner maps before load."""
        self._before_load(f"set the inner map of {map_name!r}")
        result = _map_set_inner_map_fd(self._map_handle(map_name), fd)
        if result != 0:
            raise LibbpfError(_errno_of(result), f"set the inner map of map {map_name!r}")

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
            result = _object_load(self._handle_or_raise())
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
        self._handle_or_raise()
        if not self._loaded:
            raise ValueError(f"{what}: BPF object {self.path.name} is not loaded yet")

    def program(self, name: str) -> Program:
        self._require_loaded(f"program {name!r}")
        program = self._programs.get(name)
        if program is None:
            handle = _object_find_program(self._handle_or_raise(), name.encode())
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
        self._handle = None
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else "loaded" if self._loaded else "open"
        return f"BpfObject({str(self.path)!r}, {state})"


# -- XDP attach --------------------------------------------------------------------------------


class XdpAttachment(NamedTuple):
    """What is attached to an interface: the program's id and the mode it runs in."""

    prog_id: int
    mode: str


class Link:
    """A bpf_link holding an XDP program on an interface.

    Closing the last descriptor of an unpinned link detaches the program; a pinned link keeps
    the program attached after this process exits, and Link.from_pinned() adopts it again."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._finalizer = weakref.finalize(self, _close_fd, fd)

    @classmethod
    def from_pinned(cls, path: str | os.PathLike[str]) -> Link:
        fd = _obj_get_fd(path, "link")
        link = cls(fd)
        try:
            info = link._info()
            if info.type != _BPF_LINK_TYPE_XDP:
                raise LibbpfError(
                    errno_codes.EINVAL,
                    f"open the pinned link {os.fspath(path)}",
                    hint=f"it is a link of type {info.type}, not an XDP link",
                )
        except BaseException:
            link.close()
            raise
        return link

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ValueError("link is closed")
        return self._fd

    def _info(self) -> _LinkInfo:
        info = _LinkInfo()
        _info(self.fd, info, "XDP link")
        return info

    @property
    def id(self) -> int:
        return int(self._info().id)

    @property
    def prog_id(self) -> int:
        """The id of the program the link runs now (0 once the link is detached)."""
        return int(self._info().prog_id)

    @property
    def ifindex(self) -> int:
        """The interface the link is attached to (0 once detached or the interface is gone)."""
        return int(self._info().xdp_ifindex)

    def update_program(self, program: Program, *, expected: Program | None = None) -> None:
        """Replace the running program atomically: every packet sees the old or the new one.
        With ``expected``, only if the link still runs that program (else EPERM)."""
        opts = _LinkUpdateOpts(sz=ctypes.sizeof(_LinkUpdateOpts))
        if expected is not None:
            opts.flags = _BPF_F_REPLACE
            opts.old_prog_fd = expected.fd
        result = _link_update(self.fd, program.fd, ctypes.byref(opts))
        if result != 0:
            err = _errno_of(result)
            hint = None
            if err == errno_codes.EPERM and expected is not None:
                hint = f"the link no longer runs {expected.name!r}"
            elif err == errno_codes.ENOLINK:
                hint = "the link is detached"
            raise LibbpfError(
                err, f"replace the program of XDP link by {program.name!r}", hint=hint
            )

    def pin(self, path: str | os.PathLike[str]) -> None:
        result = _obj_pin(self.fd, os.fsencode(path))
        if result != 0:
            raise LibbpfError(_errno_of(result), f"pin XDP link at {os.fspath(path)}")

    def unpin(self, path: str | os.PathLike[str]) -> None:
        """Remove the pin: once this Link is closed too, the program is detached."""
        _unpin(path, "XDP link")

    def detach(self) -> None:
        """Detach the program from the interface now, whoever else holds the link."""
        result = _link_detach(self.fd)
        if result != 0:
            raise LibbpfError(_errno_of(result), "detach XDP link")

    def close(self) -> None:
        self._finalizer()
        self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Link(fd={self._fd})"


def query_xdp(ifindex: int) -> XdpAttachment | None:
    """The XDP program attached to ``ifindex`` (in the calling thread's network namespace)."""
    opts = _XdpQueryOpts(sz=ctypes.sizeof(_XdpQueryOpts))
    with _captured_libbpf_messages() as messages:
        result = _xdp_query(ifindex, 0, ctypes.byref(opts))
    if result != 0:
        err = _errno_of(result)
        hint = "no such interface in this network namespace" if err == errno_codes.ENODEV else None
        raise LibbpfError(
            err, f"query XDP on {_interface_label(ifindex)}", hint=hint, libbpf_log=messages
        )
    if opts.attach_mode == 0:
        return None
    if opts.drv_prog_id:
        return XdpAttachment(int(opts.drv_prog_id), "native")
    if opts.skb_prog_id:
        return XdpAttachment(int(opts.skb_prog_id), "generic")
    if opts.hw_prog_id:
        return XdpAttachment(int(opts.hw_prog_id), "offload")
    return XdpAttachment(int(opts.prog_id), _ATTACHED_MODES.get(opts.attach_mode, "unknown"))


def _mode_flag(mode: str) -> int:
    try:
        return _MODE_FLAGS[mode]
    except KeyError:
        raise ValueError(f"XDP mode {mode!r}: use 'native' or 'generic'") from None


def attach_xdp(ifindex: int, program: Program, mode: XdpMode = "native") -> Link:
    """Attach ``program`` to ``ifindex`` through a bpf_link, in exactly the given mode.

    A bpf_link is exclusive (it never replaces what is attached) and can be pinned, so the
    program keeps running while the control plane restarts. Native mode never falls back to
    generic: a driver without native XDP is an error the operator must see.

    Why bpf_link_create and not bpf_program__attach_xdp: libbpf 1.1's attach_xdp passes no
    mode flags, and the kernel then picks native when the driver has it and generic when it
    does not, silently. The kernel accepts XDP_FLAGS_DRV_MODE / XDP_FLAGS_SKB_MODE on an XDP
    link, so the link is made directly with the mode asked for."""
    flags = _mode_flag(mode)
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=flags)
    fd = _link_create(program.fd, ifindex, _BPF_XDP_ATTACH_TYPE, ctypes.byref(opts))
    if fd >= 0:
        return Link(int(fd))
    err = _errno_of(fd)
    label = _interface_label(ifindex)
    raise LibbpfError(
        err,
        f"attach XDP program {program.name!r} to {label} in {mode} mode",
        hint=_attach_hint(err, ifindex, mode),
    )


def _attach_hint(err: int, ifindex: int, mode: str) -> str | None:
    if err == errno_codes.EOPNOTSUPP and mode == "native":
        return (
            "the driver has no native XDP support; mode 'generic' runs the program in the "
            "kernel's slower skb path"
        )
    if err == errno_codes.ENODEV:
        return "no such interface in this network namespace"
    if err in (errno_codes.EBUSY, errno_codes.EEXIST):
        try:
            current = query_xdp(ifindex)
        except LibbpfError:
            current = None
        if current is None:
            return "another XDP program is attached"
        if current.mode != mode:
            return (
                f"a {current.mode} XDP program (id {current.prog_id}) is attached and native "
                "and generic XDP cannot be active together; detach it first"
            )
        holders = [
            link_id
            for link_id, info in _xdp_links()
            if info.xdp_ifindex == ifindex and info.prog_id == current.prog_id
        ]
        if holders:
            return (
                f"XDP program id {current.prog_id} is already attached in {current.mode} mode "
                f"by bpf_link id {holders[0]}; replace its program with Link.update_program "
                "on that (pinned) link, or detach it first"
            )
        return (
            f"XDP program id {current.prog_id} is already attached in {current.mode} mode "
            "without a bpf_link (by ip link or another tool); detach it first"
        )
    if err == errno_codes.ERANGE:
        return "the MTU is too large for native XDP on this device"
    return None


def detach_xdp(ifindex: int, mode: XdpMode | None = None) -> bool:
    """Detach whatever XDP program runs on ``ifindex`` (only if it runs in ``mode``, when
    given), whether it was attached through netlink or held by a bpf_link (pinned or not).
    False when nothing was attached."""
    current = query_xdp(ifindex)
    if current is None or (mode is not None and current.mode != mode):
        return False
    label = _interface_label(ifindex)
    operation = f"detach {current.mode} XDP program id {current.prog_id} from {label}"
    flag = _MODE_FLAGS.get(current.mode, _XDP_FLAGS_HW_MODE)
    opts = _XdpAttachOpts(sz=ctypes.sizeof(_XdpAttachOpts))
    with _captured_libbpf_messages() as messages:
        result = _xdp_detach(ifindex, flag, ctypes.byref(opts))
    if result == 0:
        return True
    err = _errno_of(result)
    if err != errno_codes.EBUSY:
        raise LibbpfError(err, operation, libbpf_log=messages)
    # A bpf_link holds the interface and netlink may not take it away: find that link.
    candidates = [
        link_id
        for link_id, info in _xdp_links()
        if info.xdp_ifindex == ifindex and info.prog_id == current.prog_id
    ]
    if len(candidates) != 1:
        raise LibbpfError(
            errno_codes.EBUSY,
            operation,
            hint=f"held by a bpf_link that cannot be singled out ({len(candidates)} candidates "
            "in all network namespaces); detach it through its pin",
        )
    fd = _link_get_fd_by_id(candidates[0])
    if fd < 0:
        raise LibbpfError(_errno_of(fd), f"{operation}: open link id {candidates[0]}")
    try:
        result = _link_detach(fd)
        if result != 0:
            raise LibbpfError(_errno_of(result), f"{operation}: detach link id {candidates[0]}")
    finally:
        os.close(fd)
    return True


def _xdp_links() -> Iterator[tuple[int, _LinkInfo]]:
    link_id = ctypes.c_uint32(0)
    while _link_get_next_id(link_id.value, ctypes.byref(link_id)) == 0:
        fd = _link_get_fd_by_id(link_id.value)
        if fd < 0:
            continue  # gone meanwhile
        try:
            info = _LinkInfo()
            size = ctypes.c_uint32(ctypes.sizeof(info))
            if _obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
                continue
            if info.type == _BPF_LINK_TYPE_XDP:
                yield link_id.value, info
        finally:
            os.close(fd)


# -- tc attach --------------------------------------------------------------------------------

TcDirection = Literal["ingress", "egress"]
_TC_ATTACH_POINTS = {"ingress": 1 << 0, "egress": 1 << 1}
_TC_F_REPLACE = 1 << 0


class TcFilter(NamedTuple):
    """A BPF program attached as a tc filter (direct action) on an interface's clsact qdisc."""

    ifindex: int
    direction: str
    priority: int
    handle: int
    prog_id: int


def _tc_hook(ifindex: int, direction: str) -> _TcHook:
    try:
        attach_point = _TC_ATTACH_POINTS[direction]
    except KeyError:
        raise ValueError(f"tc direction {direction!r}: use 'ingress' or 'egress'") from None
    return _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=attach_point)


def attach_tc(
    ifindex: int,
    program: Program,
    direction: TcDirection = "ingress",
    *,
    priority: int = 1,
    handle: int = 1,
    replace: bool = False,
) -> TcFilter:
    """Attach a SCHED_CLS program as a direct-action tc filter, creating the clsact qdisc if
    needed. The filter belongs to the interface, not to this process: it stays until
    detach_tc (or the interface goes). An existing filter at (priority, handle) is an error
    unless ``replace``."""
    if program.prog_type != BPF_PROG_TYPE_SCHED_CLS:
        raise ValueError(f'program {program.name!r} is not a tc (SEC("tc")) program')
    hook = _tc_hook(ifindex, direction)
    label = _interface_label(ifindex)
    operation = f"attach tc program {program.name!r} to {label} {direction}"
    with _captured_libbpf_messages() as messages:
        result = _tc_hook_create(ctypes.byref(hook))
    if result != 0 and _errno_of(result) != errno_codes.EEXIST:
        raise LibbpfError(
            _errno_of(result), f"{operation}: create the clsact qdisc", libbpf_log=messages
        )
    opts = _TcOpts(
        sz=ctypes.sizeof(_TcOpts),
        prog_fd=program.fd,
        flags=_TC_F_REPLACE if replace else 0,
        handle=handle,
        priority=priority,
    )
    with _captured_libbpf_messages() as messages:
        result = _tc_attach(ctypes.byref(hook), ctypes.byref(opts))
    if result != 0:
        err = _errno_of(result)
        hint = None
        if err == errno_codes.EEXIST:
            hint = f"a filter exists at priority {priority}, handle {handle}; pass replace=True"
        raise LibbpfError(err, operation, hint=hint, libbpf_log=messages)
    return TcFilter(ifindex, direction, opts.priority, opts.handle, opts.prog_id)


def query_tc(
    ifindex: int, direction: TcDirection = "ingress", *, priority: int = 1, handle: int = 1
) -> TcFilter | None:
    """The BPF tc filter at (priority, handle), or None."""
    hook = _tc_hook(ifindex, direction)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    with _captured_libbpf_messages() as messages:
        result = _tc_query(ctypes.byref(hook), ctypes.byref(opts))
    if result != 0:
        err = _errno_of(result)
        if err in (errno_codes.ENOENT, errno_codes.EINVAL):  # no filter, or no clsact qdisc
            return None
        raise LibbpfError(
            err, f"query tc {direction} of {_interface_label(ifindex)}", libbpf_log=messages
        )
    return TcFilter(ifindex, direction, priority, handle, opts.prog_id)


def detach_tc(
    ifindex: int, direction: TcDirection = "ingress", *, priority: int = 1, handle: int = 1
) -> bool:
    """Remove the BPF tc filter at (priority, handle); False if there was none."""
    if query_tc(ifindex, direction, priority=priority, handle=handle) is None:
        return False
    hook = _tc_hook(ifindex, direction)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    with _captured_libbpf_messages() as messages:
        result = _tc_detach(ctypes.byref(hook), ctypes.byref(opts))
    if result != 0:
        raise LibbpfError(
            _errno_of(result),
            f"detach tc {direction} filter from {_interface_label(ifindex)}",
            libbpf_log=messages,
        )
    return True


# -- bpffs and pin directories -------------------------------------------------------------


def _is_bpffs(path: Path) -> bool:
    buffer = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
    if _statfs(os.fsencode(path), buffer) != 0:
        return False
    return ctypes.c_long.from_buffer(buffer).value == _BPF_FS_MAGIC


def ensure_bpffs(mountpoint: Path = BPFFS) -> None:
    """Mount a bpffs at ``mountpoint`` unless one is mounted there already."""
    if _is_bpffs(mountpoint):
        return
    mountpoint.mkdir(parents=True, exist_ok=True)
    if _mount(b"bpf", os.fsencode(mountpoint), b"bpf", 0, b"mode=0700") != 0:
        raise LibbpfError(ctypes.get_errno(), f"mount bpffs at {mountpoint}")


def _check_component(name: str, what: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name) > 255:
        raise ValueError(f"{what} {name!r} cannot name a pin directory")


def pin_dir(ifname: str, *, root: Path = PIN_ROOT, create: bool = True) -> Path:
    """The pin directory of an interface, ``<root>/<ifname>`` (by default
    /sys/fs/bpf/rusty_rail/<ifname>), created with mode 0700 when ``create``."""
    _check_component(ifname, "interface name")
    directory = root / ifname
    if create:
        if root.is_relative_to(BPFFS):
            ensure_bpffs()
        existing = directory
        while not existing.exists():
            existing = existing.parent
        if not _is_bpffs(existing):
            raise LibbpfError(
                errno_codes.EXDEV, f"create pin directory {directory}", hint="it is not on a bpffs"
            )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def remove_pin_dir(directory: Path) -> None:
    """Remove a pin directory and the pins in it (maps and links it pinned lose that
    reference: an unpinned link with no other holder detaches its program). Refuses
    anything that is not on a bpffs; subdirectories are removed the same way."""
    if not directory.exists():
        return
    if directory.is_symlink() or not _is_bpffs(directory):
        raise LibbpfError(
            errno_codes.EXDEV, f"remove pin directory {directory}", hint="it is not on a bpffs"
        )
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            remove_pin_dir(entry)
        else:
            entry.unlink()
    directory.rmdir()
