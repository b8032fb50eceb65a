"""What the kernel itself has attached to an interface, whatever mount namespace pinned it: the
XDP program (by its id, with its name and its maps' ids), the bpf_link holding it if any, and
the netlink attachment that needs no link (it stays until replaced or detached).

Pins are files on a bpffs, and a bpffs may be private to one mount namespace; these are the
kernel's own ids, the same in every mount namespace.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os

from rusty_rail.dataplane.libbpf._fd import _close_fd, _FdHandle, _info
from rusty_rail.dataplane.libbpf._ffi import (
    _link_get_fd_by_id,
    _prog_get_fd_by_id,
    _ProgInfoHead,
    _xdp_attach,
    _XdpAttachOpts,
)
from rusty_rail.dataplane.libbpf._messages import _captured_libbpf_messages
from rusty_rail.dataplane.libbpf.errors import LibbpfError, _errno_of, _interface_label
from rusty_rail.dataplane.libbpf.links import (
    Link,
    XdpMode,
    _attach_hint,
    _mode_flag,
    _xdp_links,
)
from rusty_rail.dataplane.libbpf.objects import Program

_XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
_XDP_FLAGS_REPLACE = 1 << 4


class AttachedProgram(_FdHandle):
    """A loaded program opened by its kernel id: ``name`` and ``map_ids`` from its info. This
    process's descriptor keeps it loaded until close(); it does not attach or detach it."""

    _INFO = _ProgInfoHead

    def __init__(self, fd: int) -> None:
        super().__init__(fd, _close_fd)
        head = _ProgInfoHead()
        _info(fd, head, "an attached program")
        self.prog_type = int(head.type)
        self.name = head.name.decode(errors="replace")
        ids = (ctypes.c_uint32 * max(int(head.nr_map_ids), 1))()
        full = _ProgInfoHead(nr_map_ids=int(head.nr_map_ids), map_ids=ctypes.addressof(ids))
        _info(fd, full, f"program {self.name!r}")
        self.map_ids = [int(ids[i]) for i in range(min(int(full.nr_map_ids), len(ids)))]

    def _describe(self) -> str:
        return f"program {self.name!r}"

    @classmethod
    def from_id(cls, prog_id: int) -> AttachedProgram:
        fd = _prog_get_fd_by_id(prog_id)
        if fd < 0:
            raise LibbpfError(_errno_of(fd), f"open program id {prog_id}")
        try:
            return cls(int(fd))
        except BaseException:
            os.close(fd)
            raise

    def __repr__(self) -> str:
        return f"AttachedProgram(name={self.name!r}, fd={self._ref})"


def xdp_link_holding(ifindex: int, prog_id: int) -> Link | None:
    """The bpf_link that holds program ``prog_id`` on ``ifindex`` (pinned in any mount
    namespace, or held by a process), or None when it was attached through netlink.

    Links are listed for every network namespace and an ifindex is only unique within one:
    more than one candidate is refused rather than guessed."""
    candidates = [
        link_id
        for link_id, info in _xdp_links()
        if info.xdp_ifindex == ifindex and info.prog_id == prog_id
    ]
    if not candidates:
        return None
    if len(candidates) > 1:
        raise LibbpfError(
            errno_codes.EBUSY,
            f"find the bpf_link of XDP program id {prog_id} on {_interface_label(ifindex)}",
            hint=f"{len(candidates)} links (ids {', '.join(map(str, candidates))}) match",
        )
    fd = _link_get_fd_by_id(candidates[0])
    if fd < 0:
        raise LibbpfError(_errno_of(fd), f"open bpf_link id {candidates[0]}")
    return Link(int(fd))


def attach_xdp_netlink(
    ifindex: int, program: Program, mode: XdpMode, *, replacing: AttachedProgram | None = None
) -> None:
    """Attach ``program`` to ``ifindex`` through netlink, without a bpf_link: it stays attached
    after every descriptor of it is closed, until replaced or detached.

    With ``replacing``, the swap is atomic and only happens while that program is the one
    attached (every packet sees the old or the new one); without, nothing may be attached."""
    flags = _mode_flag(mode)
    opts = _XdpAttachOpts(sz=ctypes.sizeof(_XdpAttachOpts))
    if replacing is None:
        flags |= _XDP_FLAGS_UPDATE_IF_NOEXIST
    else:
        flags |= _XDP_FLAGS_REPLACE
        opts.old_prog_fd = replacing.fd
    with _captured_libbpf_messages() as messages:
        result = _xdp_attach(ifindex, program.fd, flags, ctypes.byref(opts))
    if result == 0:
        return
    err = _errno_of(result)
    label = _interface_label(ifindex)
    if replacing is not None and err == errno_codes.EEXIST:
        hint: str | None = f"{replacing.name!r} is no longer the program attached there"
    else:
        hint = _attach_hint(err, ifindex, mode)
    raise LibbpfError(
        err,
        f"attach XDP program {program.name!r} to {label} in {mode} mode through netlink",
        hint=hint,
        libbpf_log=messages,
    )
