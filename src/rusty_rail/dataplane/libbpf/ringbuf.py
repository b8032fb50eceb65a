"""Ring buffers: what BPF programs submit to a BPF_MAP_TYPE_RINGBUF map, read back as bytes."""

from __future__ import annotations

import ctypes
import errno as errno_codes
from collections.abc import Callable

from rusty_rail.dataplane.libbpf._fd import _Handle
from rusty_rail.dataplane.libbpf._ffi import (
    _RING_SAMPLE_FN,
    _ring_buffer_consume,
    _ring_buffer_epoll_fd,
    _ring_buffer_free,
    _ring_buffer_new,
    _ring_buffer_poll,
)
from rusty_rail.dataplane.libbpf._messages import _captured_libbpf_messages
from rusty_rail.dataplane.libbpf.bpfmap import Map, MapType
from rusty_rail.dataplane.libbpf.errors import LibbpfError


class RingBuffer(_Handle):
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
        super().__init__(int(handle), _ring_buffer_free)

    def _describe(self) -> str:
        return f"ring buffer {self.name!r}"

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

    def poll(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds (None: until records come) and hand over what is
        there; the number of records. An exception from the callback is raised here."""
        timeout_ms = -1 if timeout is None else max(0, int(timeout * 1000))
        return self._checked(_ring_buffer_poll(self._live(), timeout_ms), "poll")

    def consume(self) -> int:
        """Hand over the records that are there now, without waiting; their number."""
        return self._checked(_ring_buffer_consume(self._live()), "consume")

    def fileno(self) -> int:
        return int(_ring_buffer_epoll_fd(self._live()))
