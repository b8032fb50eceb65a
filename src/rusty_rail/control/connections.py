"""Bounds on the REST API's connections, so that idle or slow clients cannot lock it out: at most
``limit`` open at once (more are closed as they are accepted), and each must start a request
within ``idle_seconds`` of connecting or of its last request starting (else it is closed).
A request that has started runs as long as it needs; its body is bounded by the server.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Final

from aiohttp import web

log = logging.getLogger("rusty_rail.api")


#: Open connections the API serves at once.
DEFAULT_MAX_CONNECTIONS: Final = 256
#: How long a connection may stay without starting a request.
DEFAULT_IDLE_SECONDS: Final = 10.0


class ConnectionGuard:
    """Wraps an aiohttp server's protocol factory; the middleware marks request starts."""

    def __init__(
        self,
        *,
        limit: int = DEFAULT_MAX_CONNECTIONS,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
    ) -> None:
        #: The aiohttp server's protocol factory (AppRunner.server), set once it is made.
        self.server: Callable[[], asyncio.Protocol] | None = None
        self.limit = limit
        self.idle_seconds = idle_seconds
        self.open: dict[asyncio.BaseTransport, _Guarded] = {}
        #: Every protocol made and not yet closed, connected or not: asyncio makes several
        #: before the first one's connection_made runs. Weak, so one whose connection never
        #: came leaves by itself.
        self.live: weakref.WeakSet[_Guarded] = weakref.WeakSet()
        self.refused = 0
        self.expired = 0

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory to serve with."""
        if len(self.live) >= self.limit:
            self.refused += 1
            return _Refused(self)
        if self.server is None:
            raise RuntimeError("ConnectionGuard.server is not set")
        guarded = _Guarded(self.server(), self)
        self.live.add(guarded)
        return guarded

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], object],
    ) -> web.StreamResponse:
        guarded = self.open.get(request.transport) if request.transport is not None else None
        if guarded is None:
            return await handler(request)  # type: ignore[misc, no-any-return]
        guarded.active += 1
        try:
            return await handler(request)  # type: ignore[misc, no-any-return]
        finally:
            guarded.active -= 1
            guarded.arm()


class _Refused(asyncio.Protocol):
    """Closes a connection over the limit at once."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.guard.refused in (1, 10, 100) or self.guard.refused % 1000 == 0:
            log.warning(
                "the API has %d connections open, its limit: closed %d new ones so far",
                len(self.guard.open),
                self.guard.refused,
            )
        transport.close()


class _Guarded(asyncio.Protocol):
    """An aiohttp request handler, counted and closed when idle too long."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.active = 0

    def arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.idle_seconds, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if self.active:
            self.arm()  # a request runs: it takes as long as it needs
        elif self.transport is not None:
            self.guard.expired += 1
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.guard.open[transport] = self
        self.arm()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.guard.open.pop(self.transport, None)
        self.guard.live.discard(self)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
