"""The health monitor: runs the active checks and tunnel probes and reads the data plane's ICMP
reports on the daemon's asyncio loop, feeds the HealthBook, and asks the daemon to apply a new
verdict whenever one changes.

Checks run concurrently, at most MAX_PARALLEL at a time, each backend on its own interval with
jitter so that a thousand backends are not checked in the same millisecond. Everything here
runs on the loop's thread; the planner reads only the book's immutable Verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from rusty_rail._types import IPAddress
from rusty_rail.config import Config, HealthSettings
from rusty_rail.control.checks import Outcome, TunnelProber, run_check
from rusty_rail.control.events import EventLog
from rusty_rail.control.health import HealthBook, Pair
from rusty_rail.dataplane.icmp_maps import IcmpMaps
from rusty_rail.dataplane.libbpf import LibbpfError, RingBuffer
from rusty_rail.model.icmp import IcmpReport

log = logging.getLogger("rusty_rail.health")

#: At most this many checks and probes are in flight at once.
MAX_PARALLEL: Final = 64
#: Each wait between two checks of a backend is its interval times 1 +- this.
JITTER: Final = 0.1


class HealthMonitor:
    """Health checks, tunnel probes and ICMP reports for one daemon."""

    def __init__(
        self,
        config: Config,
        events: EventLog,
        *,
        on_verdict: Callable[[], None],
        icmp_maps: IcmpMaps | None = None,
    ) -> None:
        self.book = HealthBook(events)
        self.book.configure(config)
        self.icmp_maps = icmp_maps
        self._on_verdict = on_verdict
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limit = asyncio.Semaphore(MAX_PARALLEL)
        self._checks: dict[Pair, tuple[HealthSettings, asyncio.Task[None]]] = {}
        self._probing: dict[IPAddress, asyncio.Task[None]] = {}
        self._rearm: dict[IPAddress, asyncio.TimerHandle] = {}
        self._ring: RingBuffer | None = None
        self.prober: TunnelProber | None = None
        self.probe_results: dict[bool, int] = {True: 0, False: 0}

    # --- life ----------------------------------------------------------------------------------

    def sync_watch(self) -> None:
        """Watch exactly the addresses (IPv4 and IPv6) some VIP wants ICMP reports about."""
        if self.icmp_maps is None:
            return
        added, removed = self.icmp_maps.sync_watch(self.book.watched())
        if added or removed:
            log.debug("ICMP watch: %d addresses added, %d removed", added, removed)

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        lb_address: IPv4Address,
        lb_ipv6: IPv6Address | None = None,
    ) -> None:
        """Open the prober (probing from the balancer's addresses) and the report reader, and
        start the checks (on ``loop``)."""
        self._loop = loop
        try:
            self.prober = TunnelProber(lb_address, lb_ipv6)
            self.prober.start(loop)
        except OSError as error:
            self.prober = None
            log.error(
                "tunnel probes are unavailable (%s): ICMP reports cannot be confirmed, so "
                "suspect backends stay in, and tunnel checks fail",
                error,
            )
        if self.icmp_maps is not None:
            self._ring = self.icmp_maps.reader(self._on_report)
            loop.add_reader(self._ring.fileno(), self._read_reports)
        self._schedule_checks()

    def stop(self) -> None:
        for _, task in self._checks.values():
            task.cancel()
        self._checks.clear()
        for task in self._probing.values():
            task.cancel()
        self._probing.clear()
        for handle in self._rearm.values():
            handle.cancel()
        self._rearm.clear()
        if self._ring is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(ValueError, RuntimeError, LibbpfError):
                    self._loop.remove_reader(self._ring.fileno())
            self._ring.close()
            self._ring = None
        if self.prober is not None:
            self.prober.close()
            self.prober = None

    def configure(
        self,
        config: Config,
        lb_address: IPv4Address | None = None,
        lb_ipv6: IPv6Address | None = None,
    ) -> None:
        """Follow a configuration that is now applied (and the balancer's addresses, which
        tunnel probes come from; given together, ``lb_ipv6`` None when the node has none)."""
        if lb_address is not None and self.prober is not None:
            self.prober.lb_address = lb_address
            self.prober.lb_ipv6 = lb_ipv6
        changed = self.book.configure(config)
        self.sync_watch()
        if self._loop is not None:
            self._schedule_checks()
            self._schedule_recovery()
        if changed:
            self._on_verdict()

    # --- active checks -------------------------------------------------------------------------

    def _schedule_checks(self) -> None:
        wanted = {(b.service, b.address): b.settings for b in self.book.checked()}
        for pair, (settings, task) in list(self._checks.items()):
            if wanted.get(pair) != settings:
                task.cancel()
                del self._checks[pair]
        for pair, settings in wanted.items():
            if pair not in self._checks:
                task = asyncio.ensure_future(self._check_loop(pair, settings))
                self._checks[pair] = (settings, task)

    async def _check_loop(self, pair: Pair, settings: HealthSettings) -> None:
        # The first check of each backend lands anywhere in its first interval.
        await asyncio.sleep(random.uniform(0, settings.interval))
        while True:
            async with self._limit:
                outcome = await run_check(settings, pair[1], self.prober)
            if self.book.check_result(pair[0], pair[1], outcome.ok, outcome.detail):
                self._on_verdict()
            await asyncio.sleep(settings.interval * random.uniform(1 - JITTER, 1 + JITTER))

    # --- ICMP reports and tunnel probes ----------------------------------------------------

    def _read_reports(self) -> None:
        if self._ring is None:
            return
        try:
            self._ring.consume()
        except (LibbpfError, ValueError) as error:
            log.error("reading ICMP reports failed: %s", error)

    def _on_report(self, report: IcmpReport) -> None:
        self.handle_report(report)

    def handle_report(self, report: IcmpReport) -> None:
        """A report from the data plane (or a test): judge it, confirm it, re-arm later."""
        address = report.backend_address
        backends = self.book.of_address(address)
        if self.book.report(report):
            self._on_verdict()
        if self.book.to_confirm(address):
            self._probe_soon(address)
        self._schedule_recovery()
        holds = [b.settings.icmp_hold for b in backends]
        hold = min(holds) if holds else 0.0
        if self._loop is not None:
            previous = self._rearm.pop(address, None)
            if previous is not None:
                previous.cancel()
            self._rearm[address] = self._loop.call_later(hold, self._arm, address)

    def _arm(self, address: IPAddress) -> None:
        self._rearm.pop(address, None)
        if self.icmp_maps is not None:
            try:
                self.icmp_maps.arm(address)
            except LibbpfError as error:
                log.error("cannot re-arm ICMP reports for %s: %s", address, error)

    def _probe_soon(self, address: IPAddress) -> None:
        running = self._probing.get(address)
        if running is not None and not running.done():
            return
        self._probing[address] = asyncio.ensure_future(self._probe_loop(address))

    def _schedule_recovery(self) -> None:
        for address in self.book.to_recover():
            self._probe_soon(address)

    async def _probe_loop(self, address: IPAddress) -> None:
        """Confirm or clear a suspect at once; then, while ICMP keeps the address out, probe it
        every interval until it rises again."""
        try:
            while True:
                confirming = self.book.to_confirm(address)
                recovering = self.book.to_recover().get(address)
                if not confirming and not recovering:
                    return
                backends = self.book.of_address(address)
                if confirming:
                    timeout = min(b.settings.icmp_confirm_timeout for b in backends)
                else:
                    assert recovering is not None
                    await asyncio.sleep(min(b.settings.interval for b in recovering))
                    if not self.book.to_recover().get(address) or self.book.to_confirm(address):
                        continue
                    timeout = min(b.settings.timeout for b in recovering)
                outcome = await self._probe(address, timeout)
                if self.book.probe_result(address, outcome.ok, outcome.detail):
                    self._on_verdict()
        finally:
            if self._probing.get(address) is asyncio.current_task():
                del self._probing[address]

    async def _probe(self, address: IPAddress, timeout: float) -> Outcome:
        """What confirms or clears a report about ``address``: a tunnel probe, over GRE of the
        address's family (docs/health.md, "ICMP learning")."""
        if self.prober is None:
            await asyncio.sleep(timeout)
            return Outcome(True, "tunnel probes are unavailable: the report is not confirmed")
        async with self._limit:
            outcome = await self.prober.probe(address, timeout)
        self.probe_results[outcome.ok] += 1
        return outcome
