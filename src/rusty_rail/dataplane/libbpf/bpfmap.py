"""BPF maps: the Map handle (elements, per-CPU values, batches, map-in-map, pins),
create_map for maps made outside any object, and the kernel's map types and flags."""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
import struct
from collections.abc import Iterator, Sequence
from enum import IntEnum

from rusty_rail.dataplane.libbpf._fd import _close_fd, _FdHandle, _info
from rusty_rail.dataplane.libbpf._ffi import (
    OBJ_NAME_LEN,
    _map_create,
    _map_delete_elem,
    _map_get_fd_by_id,
    _map_get_next_key,
    _map_lookup_batch,
    _map_lookup_elem,
    _map_update_batch,
    _map_update_elem,
    _MapBatchOpts,
    _MapCreateOpts,
    _MapInfo,
    _num_possible_cpus,
)
from rusty_rail.dataplane.libbpf.errors import LibbpfError, _errno_of
from rusty_rail.dataplane.libbpf.pins import _obj_get_fd, _pin, _unpin


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


class _BatchUnsupported(Exception):
    """The kernel has no batch operations for this map type."""


# ENOTSUPP (524) is the kernel's internal "not supported", which reaches userspace here.
_BATCH_UNSUPPORTED = frozenset({errno_codes.EINVAL, errno_codes.EOPNOTSUPP, 524})


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


def _round8(size: int) -> int:
    return (size + 7) & ~7


class Map(_FdHandle):
    """A BPF map: keys and values are bytes of exactly the map's sizes.

    A map taken from a BpfObject belongs to that object; one created or opened here (create_map,
    from_fd, from_pinned, from_id) owns its descriptor and closes it on close(); the map itself
    lives on while it is pinned or used."""

    _INFO = _MapInfo

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
        super().__init__(fd, _close_fd if owned else None)
        self.name = name
        try:
            self.map_type: MapType | int = MapType(map_type)
        except ValueError:
            self.map_type = map_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags

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

    @property
    def is_percpu(self) -> bool:
        return self.map_type in PERCPU_MAP_TYPES

    def _describe(self) -> str:
        return f"map {self.name!r}"

    def __repr__(self) -> str:
        kind = self.map_type.name if isinstance(self.map_type, MapType) else self.map_type
        return (
            f"Map(name={self.name!r}, type={kind}, key_size={self.key_size}, "
            f"value_size={self.value_size}, max_entries={self.max_entries}, fd={self._ref})"
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
        _pin(self.fd, path, f"map {self.name!r}")

    def unpin(self, path: str | os.PathLike[str]) -> None:
        """Remove the pin at ``path`` (the map lives on while something else holds it)."""
        _unpin(path, f"map {self.name!r}")


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
    if len(name) >= OBJ_NAME_LEN or not set(name) <= _MAP_NAME_CHARS:
        raise ValueError(
            f"map name {name!r}: at most {OBJ_NAME_LEN - 1} characters of [A-Za-z0-9_.]"
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
