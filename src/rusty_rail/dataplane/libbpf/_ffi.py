"""The C surface of libbpf.so.1 (and the two libc calls the pins need): the shared
libraries, every prototype and every ctypes mirror of a libbpf or kernel struct, in one
place. Nothing here decides anything; the modules beside it do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

#: The package's one logger: every module of rusty_rail.dataplane.libbpf logs as the binding.
log = logging.getLogger(__package__ or "rusty_rail.dataplane.libbpf")

BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6
OBJ_NAME_LEN = 16  # BPF_OBJ_NAME_LEN, including the terminating NUL


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


class _MapInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
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
        ("name", ctypes.c_char * OBJ_NAME_LEN),
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
_map_reuse_fd = _fn("bpf_map__reuse_fd", _c_int, _c_void_p, _c_int)

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
_xdp_attach = _fn("bpf_xdp_attach", _c_int, _c_int, _c_int, ctypes.c_uint32, _c_void_p)
_prog_get_fd_by_id = _fn("bpf_prog_get_fd_by_id", _c_int, ctypes.c_uint32)


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

_statfs = _libc.statfs
_statfs.restype = _c_int
_statfs.argtypes = [_c_char_p, _c_void_p]
_mount = _libc.mount
_mount.restype = _c_int
_mount.argtypes = [_c_char_p, _c_char_p, _c_char_p, ctypes.c_ulong, _c_char_p]
