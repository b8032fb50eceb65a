"""Pins on a bpffs: mounting one, the per-interface pin directories, pinning, opening and
removing pins."""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
import stat
from pathlib import Path

from rusty_rail.dataplane.libbpf._ffi import _mount, _obj_get, _obj_pin, _statfs
from rusty_rail.dataplane.libbpf.errors import LibbpfError, _errno_of

BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "rusty_rail"
_BPF_FS_MAGIC = 0xCAFE4A11


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


def _pin(fd: int, path: str | os.PathLike[str], what: str) -> None:
    """Pin ``fd`` at ``path`` (on a bpffs) so that the object outlives this process."""
    result = _obj_pin(fd, os.fsencode(path))
    if result != 0:
        raise LibbpfError(_errno_of(result), f"pin {what} at {os.fspath(path)}")


def _unpin(path: str | os.PathLike[str], what: str) -> None:
    try:
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise LibbpfError(errno_codes.EINVAL, f"unpin {what}: {os.fspath(path)} is not a pin")
        os.unlink(path)
    except FileNotFoundError as error:
        raise LibbpfError(errno_codes.ENOENT, f"unpin {what} at {os.fspath(path)}") from error


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


def _bpffs_devices(mountinfo: str) -> set[str]:
    """The devices ("major:minor") of the bpffs mounts listed in a /proc/PID/mountinfo."""
    devices = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        # ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
        if "-" in fields[6:]:
            separator = fields.index("-", 6)
            if len(fields) > separator + 1 and fields[separator + 1] == "bpf":
                devices.add(fields[2])
    return devices


def pins_outlive_process(
    path: Path, *, init_mountinfo: Path = Path("/proc/1/mountinfo")
) -> bool | None:
    """Whether pins under ``path`` outlive this process: True when the bpffs holding it is
    mounted in PID 1's mount namespace too (the host's, bind-mounted or seen through a copied
    namespace as `unshare --mount` makes), False when that bpffs is mounted only in mount
    namespaces of this process's own (`ip netns exec` mounts a fresh one that goes with it),
    None when it cannot be told (no bpffs there yet, PID 1's mounts unreadable).

    A bpffs is one superblock, whatever its mount points: its device number is the same in
    every namespace that mounts it, and its pins live while one of them does."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not _is_bpffs(existing):
        return None
    device = os.stat(existing).st_dev
    try:
        mountinfo = init_mountinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return f"{os.major(device)}:{os.minor(device)}" in _bpffs_devices(mountinfo)


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


def lock_pin_dir(directory: Path) -> int | None:
    """Take the pin directory (created, as by pin_dir) for this process: an exclusive flock on
    it, held until the returned descriptor is closed. None when another process holds it (the
    kernel drops a lock when its holder exits, however it exits)."""
    import fcntl

    pin_dir(directory.name, root=directory.parent)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
