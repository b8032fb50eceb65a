"""tc: a SCHED_CLS program as a direct-action filter on an interface's clsact qdisc
(used by the tests today; kept for a tc data plane)."""

from __future__ import annotations

import ctypes
import errno as errno_codes
from typing import Literal, NamedTuple

from rusty_rail.dataplane.libbpf._ffi import (
    BPF_PROG_TYPE_SCHED_CLS,
    _tc_attach,
    _tc_detach,
    _tc_hook_create,
    _tc_query,
    _TcHook,
    _TcOpts,
)
from rusty_rail.dataplane.libbpf._messages import _captured_libbpf_messages
from rusty_rail.dataplane.libbpf.errors import LibbpfError, _errno_of, _interface_label
from rusty_rail.dataplane.libbpf.objects import Program

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
