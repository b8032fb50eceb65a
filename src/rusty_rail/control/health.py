"""Backend health as plain state: active-check results, ICMP reports and tunnel probes go in;
each (VIP, backend)'s verdict comes out, with the floor on ICMP removals and fail-open per VIP.

Pure: no sockets, no clock of its own, no asyncio. control/monitor.py feeds it from the
daemon's loop; the planner asks ``Verdict.serving(service, address)``. docs/health.md is
the behaviour in words.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from rusty_rail._types import IPAddress
from rusty_rail.config import (
    AdminState,
    AllUnhealthy,
    Backend,
    CheckType,
    Config,
    HealthSettings,
    IcmpPolicy,
    Vip,
)
from rusty_rail.control.events import EventLog
from rusty_rail.model.icmp import IcmpReport

if TYPE_CHECKING:
    from rusty_rail.api import schemas

Pair = tuple[str, IPAddress]

#: The default set's name among the services (control.plan.DEFAULT_SET).
DEFAULT_SET = "default"


class Status(StrEnum):
    """A backend's health as operators see it. A suspect backend still takes traffic."""

    HEALTHY = "healthy"
    SUSPECT = "suspect"
    UNHEALTHY = "unhealthy"


class Serving(StrEnum):
    """What health means to a backend's traffic (the planner's question).

    SERVE: new flows and its own. DRAIN: its flows, no new ones (taken out by a trusted ICMP
    report that no probe has confirmed yet: its connections are not broken on a report's
    word alone). OUT: no traffic; its flows move to other backends.
    """

    SERVE = "serve"
    DRAIN = "drain"
    OUT = "out"


class IcmpState(StrEnum):
    """What ICMP reports and tunnel probes say about a backend in one VIP."""

    OK = "ok"
    SUSPECT = "suspect"  # reported; a tunnel probe is confirming
    DOWN = "down"  # reported and confirmed (or trusted): out until `rise` probes succeed


@dataclass
class BackendHealth:
    """One backend of one VIP (the same address in two VIPs has two of these)."""

    service: str
    address: IPAddress
    settings: HealthSettings
    admin: AdminState
    #: The active check's verdict (True when there is no check) and its streaks.
    check_ok: bool = True
    successes: int = 0
    failures: int = 0
    last_check: str | None = None
    icmp: IcmpState = IcmpState.OK
    #: DOWN after a failed tunnel probe (False: by a trusted report alone, under the floor).
    icmp_confirmed: bool = False
    probe_successes: int = 0
    last_report: str | None = None
    #: Consecutive check and probe results counted, for the metrics.
    checks: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})

    @property
    def up(self) -> bool:
        return self.check_ok and self.icmp is not IcmpState.DOWN

    @property
    def draining(self) -> bool:
        """Out by a trusted ICMP report alone, its check still passing: it keeps its flows
        until a probe (or its check) confirms it is down."""
        return self.check_ok and self.icmp is IcmpState.DOWN and not self.icmp_confirmed

    @property
    def status(self) -> Status:
        if not self.up:
            return Status.UNHEALTHY
        return Status.SUSPECT if self.icmp is IcmpState.SUSPECT else Status.HEALTHY

    @property
    def eligible(self) -> bool:
        """Whether the admin state lets it carry traffic (what fail-open counts)."""
        return self.admin is not AdminState.DOWN

    def as_json(self) -> schemas.BackendHealthView:
        settings = self.settings
        return {
            "vip": self.service,
            "backend": str(self.address),
            "status": self.status.value,
            "admin": self.admin.value,
            "check": {
                "type": settings.check.value,
                "ok": self.check_ok,
                "successes": self.successes,
                "failures": self.failures,
                "last": self.last_check,
            },
            "icmp": {
                "policy": settings.icmp.value,
                "state": self.icmp.value,
                "confirmed": self.icmp_confirmed,
                "probe_successes": self.probe_successes,
                "last_report": self.last_report,
            },
        }


def _key(address: IPAddress) -> tuple[int, int]:
    # ipaddress objects hash through hex(); the planner asks once per backend per change.
    return address.version, int(address)


@dataclass(frozen=True)
class Verdict:
    """Which backends the planner must treat as unhealthy, per service, after fail-open; of
    those, the ``draining`` ones keep their flows (Serving.DRAIN)."""

    unhealthy: dict[str, frozenset[tuple[int, int]]] = field(default_factory=dict)
    draining: dict[str, frozenset[tuple[int, int]]] = field(default_factory=dict)

    def serving(self, service: str, address: IPAddress) -> Serving:
        out = self.unhealthy.get(service)
        if out is None:
            return Serving.SERVE
        key = _key(address)
        if key not in out:
            return Serving.SERVE
        return Serving.DRAIN if key in self.draining.get(service, ()) else Serving.OUT

    def healthy(self, service: str, address: IPAddress) -> bool:
        """Whether the backend takes new flows."""
        return self.serving(service, address) is Serving.SERVE


def service_name(vip: Vip | None) -> str:
    return DEFAULT_SET if vip is None else str(vip.key)


def _services(config: Config) -> list[tuple[Vip | None, tuple[Backend, ...]]]:
    found: list[tuple[Vip | None, tuple[Backend, ...]]] = []
    if config.default_backends:
        found.append((None, config.default_backends))
    found += [(vip, vip.backends) for vip in config.vips]
    return found


class HealthBook:
    """Every backend's health, the verdict the data plane follows, and the events."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.backends: dict[Pair, BackendHealth] = {}
        #: Per service, its backends in configuration order.
        self.services: dict[str, list[IPAddress]] = {}
        self.fail_open: dict[str, bool] = {}
        #: Per service, how many times the floor kept ICMP from taking a backend out.
        self.floor_held: dict[str, int] = {}
        #: Services whose floor is reached (one event when it starts holding, not one per
        #: report: a flood would fill the log).
        self._floor_reached: set[str] = set()
        #: Reports received, per (backend, code).
        self.reports: dict[tuple[IPAddress, int], int] = {}
        self.verdict = Verdict()

    # --- configuration ---------------------------------------------------------------------

    def configure(self, config: Config) -> bool:
        """Follow a new configuration: new backends start healthy, kept ones keep their
        state (a changed check starts its streaks over), removed ones are forgotten. True
        when the verdict changed."""
        wanted: dict[Pair, tuple[HealthSettings, AdminState]] = {}
        services: dict[str, list[IPAddress]] = {}
        # Most backends have no health table of their own: merge each distinct combination
        # once, not once per backend (a change of a 1000-backend VIP runs this on the loop).
        merged: dict[tuple[int, int], HealthSettings] = {}
        for vip, backends in _services(config):
            name = service_name(vip)
            services[name] = [backend.address for backend in backends]
            for backend in backends:
                key = (id(vip), id(backend.health))
                settings = merged.get(key)
                if settings is None:
                    settings = merged[key] = config.health_for(vip, backend)
                wanted[(name, backend.address)] = (settings, backend.state)
        for pair in list(self.backends):
            if pair not in wanted:
                del self.backends[pair]
        for pair, (settings, admin) in wanted.items():
            current = self.backends.get(pair)
            if current is None:
                self.backends[pair] = BackendHealth(pair[0], pair[1], settings, admin)
                continue
            before = current.status
            if current.admin is not admin:
                self.events.add(
                    "admin", pair[0], str(pair[1]), current.admin.value, admin.value, "admin",
                    f"admin state {current.admin.value} -> {admin.value}",
                )  # fmt: skip
                current.admin = admin
            if settings != current.settings:
                self._reconfigure(current, settings)
            self._changed(current, before, "config", "its health settings changed")
        self.services = services
        self.fail_open = {name: self.fail_open.get(name, False) for name in services}
        self.floor_held = {name: self.floor_held.get(name, 0) for name in services}
        return self._refresh()

    @staticmethod
    def _reconfigure(current: BackendHealth, settings: HealthSettings) -> None:
        old = current.settings
        check_changed = (old.check, old.port, old.path, old.host, old.expect_status) != (
            settings.check,
            settings.port,
            settings.path,
            settings.host,
            settings.expect_status,
        )
        if check_changed or settings.check is CheckType.NONE:
            current.check_ok, current.successes, current.failures = True, 0, 0
            current.last_check = None
        if settings.icmp is IcmpPolicy.OFF:
            current.icmp, current.icmp_confirmed, current.probe_successes = IcmpState.OK, False, 0
        current.settings = settings

    # --- what to check -----------------------------------------------------------------------

    def checked(self) -> list[BackendHealth]:
        """The backends with an active check."""
        return [b for b in self.backends.values() if b.settings.check is not CheckType.NONE]

    def watched(self) -> set[IPAddress]:
        """The addresses whose ICMP reports matter to some VIP."""
        return {b.address for b in self.backends.values() if b.settings.icmp is not IcmpPolicy.OFF}

    def of_address(self, address: IPAddress) -> list[BackendHealth]:
        return [b for b in self.backends.values() if b.address == address]

    def to_confirm(self, address: IPAddress) -> bool:
        """Whether a probe (for IPv6, a round of the check) is waited for to confirm or clear
        a report."""
        return any(b.icmp is IcmpState.SUSPECT for b in self.of_address(address))

    def to_recover(self) -> dict[IPAddress, list[BackendHealth]]:
        """The addresses that ICMP took out, to be probed until they rise again."""
        found: dict[IPAddress, list[BackendHealth]] = {}
        for backend in self.backends.values():
            if backend.icmp is IcmpState.DOWN:
                found.setdefault(backend.address, []).append(backend)
        return found

    # --- results -----------------------------------------------------------------------------

    def check_result(self, service: str, address: IPAddress, ok: bool, detail: str) -> bool:
        """An active check's outcome; True when the verdict changed."""
        backend = self.backends.get((service, address))
        if backend is None or backend.settings.check is CheckType.NONE:
            return False
        before = backend.status
        backend.last_check = detail
        backend.checks[ok] += 1
        if ok:
            backend.successes, backend.failures = backend.successes + 1, 0
            if not backend.check_ok and backend.successes >= backend.settings.rise:
                backend.check_ok = True
        else:
            backend.successes, backend.failures = 0, backend.failures + 1
            if backend.check_ok and backend.failures >= backend.settings.fall:
                backend.check_ok = False
        self._changed(backend, before, "check", detail)
        return self._refresh()

    def report(self, report: IcmpReport) -> bool:
        """An ICMP report from the data plane; True when the verdict changed. Reports for
        addresses no VIP watches are ignored. Trusted reports take a backend out at once
        while the VIP's floor allows; the rest make it suspect until a probe says."""
        address = report.backend_address
        key = (address, report.code)
        self.reports[key] = self.reports.get(key, 0) + 1
        detail = str(report)
        for backend in self.of_address(address):
            policy = backend.settings.icmp
            if policy is IcmpPolicy.OFF:
                continue
            before = backend.status
            backend.last_report = detail
            if backend.icmp is IcmpState.DOWN:
                backend.probe_successes = 0  # still undeliverable: the rise starts over
                continue
            if backend.icmp is IcmpState.SUSPECT:
                continue
            if policy is IcmpPolicy.TRUST and self._floor_allows(backend):
                backend.icmp, backend.icmp_confirmed = IcmpState.DOWN, False
                backend.probe_successes = 0
            else:
                if policy is IcmpPolicy.TRUST:
                    self._floor_holds(backend, detail)
                backend.icmp = IcmpState.SUSPECT
            self._changed(backend, before, "icmp", detail)
        return self._refresh()

    def probe_result(self, address: IPAddress, ok: bool, detail: str) -> bool:
        """A tunnel probe's outcome for every VIP of ``address``: it confirms or clears a
        suspect, and counts towards (or restarts) the rise of a backend ICMP took out."""
        for backend in self.of_address(address):
            before = backend.status
            if backend.icmp is IcmpState.SUSPECT:
                if ok:
                    backend.icmp = IcmpState.OK
                else:
                    backend.icmp, backend.icmp_confirmed = IcmpState.DOWN, True
                    backend.probe_successes = 0
            elif backend.icmp is IcmpState.DOWN:
                if ok:
                    backend.probe_successes += 1
                    if backend.probe_successes >= backend.settings.rise:
                        backend.icmp, backend.icmp_confirmed = IcmpState.OK, False
                        backend.probe_successes = 0
                else:
                    backend.probe_successes, backend.icmp_confirmed = 0, True
            self._changed(backend, before, "probe", detail)
        return self._refresh()

    # --- the floor -----------------------------------------------------------------------------

    def floor_allowance(self, service: str) -> int:
        """How many of the service's backends reports alone may hold out at once."""
        backends = [b for b in self.backends.values() if b.service == service]
        if not backends:
            return 0
        share = backends[0].settings.icmp_max_removed
        return math.floor(share * len(backends) + 1e-9)

    def _out_by_reports(self, service: str) -> int:
        return sum(
            1
            for b in self.backends.values()
            if b.service == service and b.icmp is IcmpState.DOWN and not b.icmp_confirmed
        )

    def _floor_allows(self, backend: BackendHealth) -> bool:
        return self._out_by_reports(backend.service) < self.floor_allowance(backend.service)

    def _floor_holds(self, backend: BackendHealth, detail: str) -> None:
        self.floor_held[backend.service] = self.floor_held.get(backend.service, 0) + 1
        if backend.service in self._floor_reached:
            return
        self._floor_reached.add(backend.service)
        allowance = self.floor_allowance(backend.service)
        self.events.add(
            "floor", backend.service, str(backend.address), None, None, "floor",
            f"ICMP alone may take out at most {allowance} of the VIP's backends: tunnel "
            f"probes decide about the others until fewer are out ({detail})",
        )  # fmt: skip

    # --- the verdict ---------------------------------------------------------------------------

    def _changed(self, backend: BackendHealth, before: Status, cause: str, detail: str) -> None:
        after = backend.status
        if after is not before:
            self.events.add(
                "health", backend.service, str(backend.address), before.value, after.value,
                cause, detail,
            )  # fmt: skip

    def _refresh(self) -> bool:
        """Recompute the verdict (fail-open included); True when it changed."""
        unhealthy: dict[str, frozenset[tuple[int, int]]] = {}
        draining: dict[str, frozenset[tuple[int, int]]] = {}
        by_service: dict[str, list[BackendHealth]] = {}
        for backend in self.backends.values():
            by_service.setdefault(backend.service, []).append(backend)
        for service, backends in by_service.items():
            out = [b for b in backends if not b.up]
            eligible = [b for b in backends if b.eligible]
            everyone = bool(eligible) and all(not b.up for b in eligible)
            policy = backends[0].settings.all_unhealthy
            open_now = everyone and policy is AllUnhealthy.FAIL_OPEN
            if open_now != self.fail_open.get(service, False):
                self.fail_open[service] = open_now
                self.events.add(
                    "fail-open", service, None,
                    "closed" if open_now else "fail-open", "fail-open" if open_now else "closed",
                    "health",
                    "every backend is unhealthy: sending to all of them (fail-open)"
                    if open_now
                    else "a backend is healthy again: only healthy backends get traffic",
                )  # fmt: skip
            if out and not open_now:
                unhealthy[service] = frozenset(_key(b.address) for b in out)
                if any(b.draining for b in out):
                    draining[service] = frozenset(_key(b.address) for b in out if b.draining)
        for service in list(self._floor_reached):
            if self._out_by_reports(service) < self.floor_allowance(service):
                self._floor_reached.discard(service)
        verdict = Verdict(unhealthy, draining)
        changed = verdict != self.verdict
        self.verdict = verdict
        return changed

    # --- views ---------------------------------------------------------------------------------

    # The views below are also read from worker threads (/healthz, /metrics) while the
    # loop's thread changes the book: they iterate over copies (one C call each, atomic under
    # the GIL), never over the live dicts.

    def summary(self) -> dict[str, schemas.VipHealth]:
        """Per service: counts, unhealthy and suspect backends, fail-open (for /healthz)."""
        result: dict[str, schemas.VipHealth] = {}
        fail_open, floor_held = dict(self.fail_open), dict(self.floor_held)
        for service, backends in self._by_service(self.services).items():
            eligible = [b for b in backends if b.eligible]
            result[service] = {
                "backends": len(backends),
                "unhealthy": [str(b.address) for b in backends if b.status is Status.UNHEALTHY],
                "suspect": [str(b.address) for b in backends if b.status is Status.SUSPECT],
                "all_unhealthy": bool(eligible) and all(not b.up for b in eligible),
                "fail_open": fail_open.get(service, False),
                "icmp_floor_held": floor_held.get(service, 0),
            }
        return result

    def __contains__(self, pair: object) -> bool:
        return pair in self.backends

    def ordered(self, services: Iterable[str] | None = None) -> list[BackendHealth]:
        """The backends in configuration order (of ``services``, default all)."""
        by_service = self._by_service(self.services if services is None else services)
        return [backend for backends in by_service.values() for backend in backends]

    def _by_service(self, services: Iterable[str]) -> dict[str, list[BackendHealth]]:
        known, order, backends = dict(self.services), list(services), dict(self.backends)
        return {
            name: [backends[(name, a)] for a in known.get(name, []) if (name, a) in backends]
            for name in order
            if name in known
        }


#: What the planner asks: serving(service name, backend address).
ServingCallback = Callable[[str, IPAddress], Serving]
