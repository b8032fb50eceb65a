"""The handle every class of the binding is: a kernel file descriptor (Program, Map, Link) or
a libbpf pointer (BpfObject, RingBuffer), released exactly once, with a plain error when it
is used after that.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Self

from rusty_rail.dataplane.libbpf._ffi import _obj_get_info_by_fd, log
from rusty_rail.dataplane.libbpf.errors import LibbpfError, _errno_of

_CLOSED = -1


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


class Closeable:
    """``with thing:`` closes the thing at the end of the block; close() is the subclass's."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Handle(Closeable):
    """A descriptor or libbpf pointer (``_ref``), and what releases it (None: someone else
    does, e.g. the BpfObject a Program belongs to). close() and the end of a ``with`` block
    release it; so does garbage collection, through a finalizer."""

    __slots__ = ("__weakref__", "_finalizer", "_ref")

    def __init__(self, ref: int, release: Callable[[int], object] | None) -> None:
        self._ref = ref
        self._finalizer = None if release is None else weakref.finalize(self, release, ref)

    def _describe(self) -> str:
        """What the handle is, as error messages name it ("map 'vips'")."""
        return type(self).__name__

    def _closed_error(self) -> ValueError:
        return ValueError(f"{self._describe()} is closed")

    def _live(self) -> int:
        if self._ref == _CLOSED:
            raise self._closed_error()
        return self._ref

    @property
    def closed(self) -> bool:
        return self._ref == _CLOSED

    def _invalidate(self) -> None:
        """Forget the reference without releasing it: its owner released it."""
        self._ref = _CLOSED

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._ref = _CLOSED


class _FdHandle(_Handle):
    """A handle that is a BPF file descriptor: ``fd``, and ``id``, the kernel's id of the
    object, read from its info struct (``_INFO``)."""

    __slots__ = ()
    _INFO: ClassVar[type[ctypes.Structure]]

    @property
    def fd(self) -> int:
        if self._ref == _CLOSED:
            raise self._closed_error()
        return self._ref

    def _kernel_info(self) -> Any:
        info = self._INFO()
        _info(self.fd, info, self._describe())
        return info

    @property
    def id(self) -> int:
        """The kernel's id of the object (what bpftool, query_xdp and links report)."""
        return int(self._kernel_info().id)
