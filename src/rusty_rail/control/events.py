"""Health events: every change of a backend's health, of a VIP's fail-open state, and every
time the ICMP floor holds, with its cause; kept for GET /v1/events and logged as JSON lines.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from rusty_rail.timestamps import rfc3339

if TYPE_CHECKING:
    from rusty_rail.api import schemas

log = logging.getLogger("rusty_rail.events")

#: How many events are kept for the API; older ones are only in the log.
EVENTS_KEPT: Final = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a backend's (or a VIP's) health.

    ``kind``: "health" (a backend's status changed), "admin" (its admin state changed),
    "fail-open" (a VIP started or stopped sending to all its unhealthy backends), "floor"
    (ICMP alone may not take out more of a VIP's backends). ``cause``: "check", "icmp",
    "probe", "admin", "config", "floor"; ``detail`` says what exactly.
    """

    id: int
    at: float
    kind: str
    vip: str
    backend: str | None
    previous: str | None
    current: str | None
    cause: str
    detail: str

    def as_json(self) -> schemas.Event:
        return {
            "id": self.id,
            "at": rfc3339(self.at),
            "kind": self.kind,
            "vip": self.vip,
            "backend": self.backend,
            "from": self.previous,
            "to": self.current,
            "cause": self.cause,
            "detail": self.detail,
        }


class EventLog:
    """The recent events, numbered from 1; safe to read from any thread."""

    def __init__(self, clock: Callable[[], float], kept: int = EVENTS_KEPT) -> None:
        self._clock = clock
        self._events: deque[Event] = deque(maxlen=kept)
        self._lock = threading.Lock()
        self._last_id = 0

    def add(
        self,
        kind: str,
        vip: str,
        backend: str | None,
        previous: str | None,
        current: str | None,
        cause: str,
        detail: str,
    ) -> Event:
        with self._lock:
            self._last_id += 1
            event = Event(
                self._last_id, self._clock(), kind, vip, backend, previous, current, cause, detail
            )
            self._events.append(event)
        log.log(
            logging.WARNING if current in ("unhealthy", "fail-open") else logging.INFO,
            "event %s",
            json.dumps(event.as_json(), sort_keys=True),
            extra={"event": event.as_json()},
        )
        return event

    @property
    def last_id(self) -> int:
        return self._last_id

    def since(
        self, after: int = 0, limit: int = EVENTS_KEPT, vip: str | None = None
    ) -> list[Event]:
        """The events numbered above ``after`` (oldest first), at most ``limit`` of them."""
        with self._lock:
            events: Iterable[Event] = list(self._events)
        chosen = [e for e in events if e.id > after and (vip is None or e.vip == vip)]
        return chosen[:limit]
