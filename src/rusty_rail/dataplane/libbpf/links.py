"""XDP attachment: the bpf_link that holds a program on an interface (pinned, swapped,
detached), and attach, query and detach by interface."""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
from collections.abc import Iterator
from typing import Literal, NamedTuple

from rusty_rail.dataplane.libbpf._fd import _close_fd, _FdHandle
from rusty_rail.dataplane.libbpf._ffi import (
    _link_create,
    _link_detach,
    _link_get_fd_by_id,
    _link_get_next_id,
    _link_update,
    _LinkCreateOpts,
    _LinkInfo,
    _LinkUpdateOpts,
    _obj_get_info_by_fd,
    _xdp_detach,
    _xdp_query,
    _XdpAttachOpts,
    _XdpQueryOpts,
)
from rusty_rail.dataplane.libbpf._messages import _captured_libbpf_messages
from rusty_rail.dataplane.libbpf.errors import LibbpfError, _errno_of, _interface_label
from rusty_rail.dataplane.libbpf.objects import Program
from rusty_rail.dataplane.libbpf.pins import _obj_get_fd, _pin, _unpin

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


class XdpAttachment(NamedTuple):
    """What is attached to an interface: the program's id and the mode it runs in."""

    prog_id: int
    mode: str


class Link(_FdHandle):
    """A bpf_link holding an XDP program on an interface.

    Closing the last descriptor of an unpinned link detaches the program; a pinned link keeps
    the program attached after this process exits, and Link.from_pinned() adopts it again."""

    _INFO = _LinkInfo

    def __init__(self, fd: int) -> None:
        super().__init__(fd, _close_fd)

    def _describe(self) -> str:
        return "XDP link"

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

    def _info(self) -> _LinkInfo:
        info: _LinkInfo = self._kernel_info()
        return info

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
        _pin(self.fd, path, "XDP link")

    def unpin(self, path: str | os.PathLike[str]) -> None:
        """Remove the pin: once this Link is closed too, the program is detached."""
        _unpin(path, "XDP link")

    def detach(self) -> None:
        """Detach the program from the interface now, whoever else holds the link."""
        result = _link_detach(self.fd)
        if result != 0:
            raise LibbpfError(_errno_of(result), "detach XDP link")

    def __repr__(self) -> str:
        return f"Link(fd={self._ref})"


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
