"""One balancer on one interface and every change to it, planned whole before any map is
written: the Controller. It is synchronous and expects one caller at a time; daemon.py serves
it from one asyncio loop (the lock, the API, signals, ticks).

start() is bringup.py; the plan (plan.py) decides what a change writes and apply.py writes it.
A change goes to the maps first, then to the state file; it is acknowledged once both are done,
and if saving fails the maps are put back, so a change is either saved and applied or neither.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Final

from rusty_rail import config as config_module
from rusty_rail._types import IPAddress
from rusty_rail.config import Config, ConfigError
from rusty_rail.control import state_file
from rusty_rail.control.apply import apply_operations
from rusty_rail.control.audit import record_change, record_next_hops
from rusty_rail.control.bringup import Checked, check_before_loading, load_write_attach
from rusty_rail.control.errors import ApplyError, PersistError, StartupError
from rusty_rail.control.events import EventLog
from rusty_rail.control.fingerprint import (
    TableFingerprints,
    address_order,
    config_etag,
    config_fingerprint,
    service_order,
)
from rusty_rail.control.health import Serving
from rusty_rail.control.monitor import HealthMonitor
from rusty_rail.control.nexthops import (
    NextHops,
    backend_addresses,
    lb_address_of,
    lb_ipv6_of,
)
from rusty_rail.control.options import DaemonOptions
from rusty_rail.control.plan import (
    NoFreeIndex,
    Plan,
    PlanError,
    compile_plan,
    diff,
    removals_only,
    services_of,
)
from rusty_rail.control.reloads import ReloadRecord
from rusty_rail.control.startup import RESTART_KEYS
from rusty_rail.dataplane.libbpf import LibbpfError
from rusty_rail.dataplane.loader import Balancer, detach_balancer
from rusty_rail.dataplane.structs import MAX_BACKENDS, MAX_VIPS
from rusty_rail.model.state import NextHop
from rusty_rail.timestamps import rfc3339

if TYPE_CHECKING:
    from rusty_rail.api import schemas
    from rusty_rail.control.cluster import StoreSync

log = logging.getLogger("rusty_rail.daemon")

#: How long a change waits for the neighbours of backends it adds to answer ARP.
#: How long a change waits for new backends' next hops: not at all (one round of asking the
#: kernel, which starts ARP / neighbour solicitation). A backend without one stays out of its
#: table and the daemon brings it in as soon as it resolves (Daemon, "chase").
CHANGE_NEXT_HOP_WAIT: Final = 0.0
#: Sources of changes, as /healthz, the log and the metrics name them.
SOURCE_START: Final = "start"
SOURCE_API: Final = "api"
SOURCE_RELOAD: Final = "reload"
SOURCE_NEXT_HOPS: Final = "next-hop refresh"
SOURCE_RETRY: Final = "retry"
SOURCE_HEALTH: Final = "health"


@dataclass(frozen=True)
class ChangeResult:
    """What one change did: the desired-state generation it made (or kept), whether the
    desired state changed, the map updates, the tables built, and how long the parts took."""

    generation: int
    changed: bool
    map_updates: int
    tables_rebuilt: tuple[str, ...]
    build_seconds: float
    apply_seconds: float
    seconds: float
    #: The configuration's backends without a next hop after the change: they take no new
    #: flows until it resolves (the daemon keeps asking).
    unresolved: tuple[str, ...] = ()

    def as_json(self) -> schemas.ChangeCounts:
        return {
            "unresolved_next_hops": list(self.unresolved),
            "generation": self.generation,
            "changed": self.changed,
            "map_updates": self.map_updates,
            "tables_rebuilt": list(self.tables_rebuilt),
            "build_ms": round(self.build_seconds * 1000, 3),
            "apply_ms": round(self.apply_seconds * 1000, 3),
            "total_ms": round(self.seconds * 1000, 3),
        }


#: Told about every change tried: its source, and the result (None: it was refused).
ChangeObserver = Callable[[str, ChangeResult | None], None]


class Controller:
    """One balancer on one interface. The pure plan decides; this class only carries it out."""

    def __init__(
        self,
        config: Config,
        options: DaemonOptions,
        *,
        fixed: Mapping[str, str] | None = None,
        generation: int = 0,
    ) -> None:
        if config.device is None:
            raise StartupError(
                "no device: set RR_DEVICE or `device` in the configuration file "
                "(the interface that receives the GRE traffic)"
            )
        self.config = config
        self.options = options
        self.device = config.device
        #: Keys the API may not change (name -> why).
        self.fixed: dict[str, str] = dict(RESTART_KEYS if fixed is None else fixed)
        self.next_hops = NextHops()
        self.balancer: Balancer | None = None
        #: The plan that is in the maps (after a failed change, the one before it).
        self.plan: Plan | None = None
        #: The desired-state generation: +1 for every change of the desired configuration.
        self.generation = generation
        #: Per service: how many times its table was swapped in since start.
        self.table_generations: dict[str, int] = {}
        self.observers: list[ChangeObserver] = []
        self.started_at = time.time()
        self.last_change: schemas.LastChange | None = None
        #: SIGHUP outcomes: the last refused reload, refusals, the last good read.
        self.reloads = ReloadRecord()
        #: Set when the desired state is not (fully) in the maps: why.
        self.apply_error: str | None = None
        #: What runs differs from what is configured, without making the node unhealthy.
        self.warnings: list[str] = []
        #: How long start() took to read the pinned state, build the tables and write them.
        self.start_timings: dict[str, float] = {}
        self._fingerprints = TableFingerprints()
        self._config_marks: tuple[Config, str, str] | None = None
        #: Set once the owner is stopping (the node then reports itself unhealthy).
        self._stop_requested = False
        #: The cluster's store (run --store; cluster.py), None: the embedded state file.
        self.store: StoreSync | None = None
        #: Health transitions, fail-open and ICMP-floor events (GET /v1/events).
        self.events = EventLog(time.time)
        #: Health checks and ICMP learning; made when the program is loaded.
        self.monitor: HealthMonitor | None = None
        self.lb_ipv4: IPv4Address | None = None
        self.lb_ipv6: IPv6Address | None = None
        self._health_config: Config | None = None
        #: Drained (ctl node drain): the VIPs are not announced; traffic is still forwarded.
        self.drained = False

    # --- start ---------------------------------------------------------------------------

    def start(self) -> None:
        """Check everything, then load, write and attach (bringup.py). Nothing on the host is
        changed before the configuration, the interface and the plan have all been checked."""
        self.bring_up(self.check())

    def check(self) -> Checked:
        """What start() checks before it touches the host (raises StartupError)."""
        checked = check_before_loading(
            self.config, self.device, self.next_hops, self.options.next_hop_timeout
        )
        self.lb_ipv4 = checked.lb_ipv4
        self.lb_ipv6 = lb_ipv6_of(self.config, self.device)
        return checked

    def bring_up(self, checked: Checked) -> None:
        """Load (or adopt), write and attach what check() found."""
        started = load_write_attach(
            self.config, self.options, checked, self.next_hops, self.events, self._health_changed
        )
        self.balancer, self.plan = started.balancer, started.plan
        self.monitor, self._health_config = started.monitor, self.config
        self.start_timings = started.timings
        self.warnings.extend(started.warnings)
        self.table_generations = dict.fromkeys(started.plan.tables, 1)
        self.last_change = {
            "generation": self.generation,
            "source": SOURCE_START,
            "at": rfc3339(time.time()),
            "map_updates": started.map_updates,
        }

    # --- changes -------------------------------------------------------------------------

    def plan_change(
        self, config: Config, *, max_build_slots: int | None = None
    ) -> tuple[Plan | None, Plan]:
        """compile(), and for a change that fits only in the slots it frees (a slot is not
        handed to another backend within one change), a bridge to apply first: the change's
        removals alone. Returns (bridge or None, the plan)."""
        try:
            return None, self.compile(config, max_build_slots=max_build_slots)
        except NoFreeIndex:
            bridge = self.compile(
                removals_only(self.config, config), max_build_slots=max_build_slots
            )
            return bridge, self.compile(config, max_build_slots=max_build_slots, after=bridge)

    def compile(
        self, config: Config, *, max_build_slots: int | None = None, after: Plan | None = None
    ) -> Plan:
        """The plan ``config`` would get now, from the running allocation and tables (or
        those of ``after``, a plan to be applied first), with the next hops known so far:
        what a change would write, without writing it. ``max_build_slots`` bounds the table
        slots it may build (PlanError beyond)."""
        if self.plan is None:
            raise RuntimeError("the daemon is not started")
        base = self.plan if after is None else after
        if config.device != self.device:
            raise StartupError(
                f"the device cannot change while running ({self.device} -> "
                f"{config.device}): restart the daemon"
            )
        verdict = self.monitor.book.verdict if self.monitor is not None else None
        return compile_plan(
            config,
            base.allocation,
            lb_ipv4=lb_address_of(config, self.device),
            lb_ipv6=lb_ipv6_of(config, self.device),
            resolve_next_hop=self.next_hops,
            serving=(lambda service, address: Serving.SERVE)
            if verdict is None
            else verdict.serving,
            previous_tables=base.tables,
            previous_state=base.state,
            max_build_slots=max_build_slots,
        )

    def change(
        self,
        config: Config,
        source: str,
        *,
        persist: bool = True,
        force: bool = False,
        next_hop_wait: float = CHANGE_NEXT_HOP_WAIT,
        actor: str | None = None,
        saved_as: str | None = None,
    ) -> ChangeResult:
        """Move the data plane to ``config``: plan it whole (raises PlanError, StartupError or
        ValueError and changes nothing), save it when ``persist`` (raises PersistError and
        changes nothing), then write the maps (raises ApplyError; the desired state is then
        the new one and a later retry applies it). Callers serialise changes. ``saved_as``
        is the source the state file records (default: ``source``)."""
        started = time.perf_counter()
        if self.balancer is None or self.plan is None:
            raise RuntimeError("the daemon is not started")
        changed = config != self.config
        if not changed and not force and self.apply_error is None:
            return ChangeResult(self.generation, False, 0, (), 0.0, 0.0, 0.0)
        try:
            self.check_capacity(config)
            wanted = backend_addresses(config) - self.next_hops.known.keys()
            if wanted:
                self.next_hops.resolve(wanted, wait=next_hop_wait)
            build_started = time.perf_counter()
            bridge, plan = self.plan_change(config)
            build_seconds = time.perf_counter() - build_started
        except Exception:
            self._notify(source, None)
            raise
        generation = self.generation + 1 if changed else self.generation
        # The maps first, then the state file: the disk's latency stays off the path to the
        # data plane. The change is acknowledged only once both are done; if saving fails the
        # maps are put back, so a change is either saved and applied or neither.
        previous_config, previous_generation = self.config, self.generation
        previous_plan = self.plan
        self.config, self.generation = config, generation
        apply_started = time.perf_counter()
        try:
            applied = 0
            if bridge is not None:
                applied = apply_operations(self.balancer.maps, diff(self.plan.state, bridge.state))
            start = self.plan.state if bridge is None else bridge.state
            applied += apply_operations(self.balancer.maps, diff(start, plan.state))
        except (LibbpfError, OSError, ValueError) as error:
            # The new configuration is the desired state now (the retry loop applies it), so
            # it is saved as such.
            if persist and changed and self.options.state_file is not None:
                with contextlib.suppress(OSError):
                    state_file.write(
                        self.options.state_file,
                        config,
                        generation=generation,
                        source=saved_as or source,
                    )
            self.apply_error = (
                f"generation {generation} ({source}) is not fully applied: {error}; "
                f"retrying every {self.options.refresh_interval:g} s"
            )
            log.error("%s", self.apply_error)
            self._notify(source, None)
            raise ApplyError(self.apply_error) from error
        apply_seconds = time.perf_counter() - apply_started
        if persist and changed and self.options.state_file is not None:
            try:
                state_file.write(
                    self.options.state_file,
                    config,
                    generation=generation,
                    source=saved_as or source,
                )
            except OSError as error:
                self.config, self.generation = previous_config, previous_generation
                try:
                    # Back the way it came: a two-step change's new backends leave the slots
                    # it freed before the old ones return to them (no slot changes owner in
                    # one round of writes).
                    back = plan.state
                    if bridge is not None:
                        apply_operations(self.balancer.maps, diff(back, bridge.state))
                        back = bridge.state
                    apply_operations(self.balancer.maps, diff(back, self.plan.state))
                except (LibbpfError, OSError, ValueError) as undo_error:
                    self.apply_error = (
                        f"generation {generation} could not be saved and putting the maps "
                        f"back failed: {undo_error}; retrying every "
                        f"{self.options.refresh_interval:g} s"
                    )
                    log.error("%s", self.apply_error)
                self._notify(source, None)
                raise PersistError(
                    f"cannot save the desired state to {self.options.state_file}: {error}; "
                    "nothing was changed"
                ) from error
        rebuilt = tuple(
            name for name, table in plan.tables.items() if self.plan.tables.get(name) is not table
        )
        generations = {name: self.table_generations.get(name, 0) for name in plan.tables}
        for name in rebuilt:
            generations[name] += 1
        self.plan, self.table_generations, self.apply_error = plan, generations, None
        # Next hops of backends no longer configured are forgotten: one that comes back is
        # resolved again (its neighbour may have moved meanwhile).
        self.next_hops.keep_only(backend_addresses(config))
        result = ChangeResult(
            generation,
            changed,
            applied,
            rebuilt,
            build_seconds,
            apply_seconds,
            time.perf_counter() - started,
            tuple(sorted({str(a) for a in plan.unresolved}, key=address_order)),
        )
        record_next_hops(
            self.events, config, self.next_hops, previous_plan, plan,
            backend_addresses(previous_config),
        )  # fmt: skip
        if changed:
            record_change(self.events, previous_config, config, source, actor, generation)
        self.last_change = {
            "generation": generation,
            "source": source,
            "at": rfc3339(time.time()),
            "map_updates": applied,
        }
        self._follow_config()
        self._notify(source, result)
        return result

    # --- health ----------------------------------------------------------------------------

    def _follow_config(self) -> None:
        """Tell the health monitor the configuration now applied (on the loop's thread)."""
        monitor, config = self.monitor, self.config
        if monitor is None or config is self._health_config:
            return
        self._health_config = config
        lb_ipv4 = lb_address_of(config, self.device)
        self.lb_ipv4, self.lb_ipv6 = lb_ipv4, lb_ipv6_of(config, self.device)
        self._configure_monitor(monitor, config, lb_ipv4, self.lb_ipv6)

    def _configure_monitor(
        self,
        monitor: HealthMonitor,
        config: Config,
        lb_ipv4: IPv4Address,
        lb_ipv6: IPv6Address | None,
    ) -> None:
        """Give the monitor a new configuration (the Daemon does it on the loop's thread)."""
        monitor.configure(config, lb_ipv4, lb_ipv6)

    def _health_changed(self) -> None:
        """The health verdict changed. Nothing to do without a loop to apply it on: the
        Daemon applies it (the next change takes it in anyway)."""

    def _notify(self, source: str, result: ChangeResult | None) -> None:
        for observer in self.observers:
            try:
                observer(source, result)
            except Exception:  # an observer must not undo a change
                log.exception("change observer failed")

    def apply_config(self, config: Config) -> int:
        """Move the data plane to ``config`` (saved like an API change); returns the number
        of map updates. Raises (and changes nothing) when it cannot be planned."""
        return self.change(config, SOURCE_API).map_updates

    def check_capacity(self, config: Config) -> None:
        """Raise PlanError when ``config`` has more VIPs or backend slots than the data
        plane holds: cheap, so it runs before any address is resolved."""
        services = services_of(config)
        slots = sum(len(service.backends) for service in services)
        for what, count, limit in (
            ("VIPs (and default set)", len(services), MAX_VIPS),
            ("backends (one slot per VIP and backend)", slots, MAX_BACKENDS),
        ):
            if count > limit:
                raise PlanError(f"too many {what}: {count}; the data plane holds at most {limit}")

    def resolve_ahead(self, config: Config, wait: float = CHANGE_NEXT_HOP_WAIT) -> None:
        """Resolve the next hops ``config`` would add, before its change takes the change
        lock (so other changes need not wait for ARP). Nothing when it cannot be held."""
        try:
            self.check_capacity(config)
        except PlanError:
            return  # the change itself refuses it
        wanted = backend_addresses(config) - self.next_hops.known.keys()
        if wanted:
            found, problems = NextHops.probe(wanted, wait)
            self.next_hops.take_new(found, problems)

    def probe_next_hops(
        self, everything: bool = False
    ) -> tuple[dict[IPAddress, NextHop | None], dict[IPAddress, str]]:
        """Resolve the next hops still missing (or all of them) without changing anything."""
        addresses = backend_addresses(self.config)
        if not everything:
            addresses = {a for a in addresses if self.next_hops.known.get(a) is None}
        if not addresses:
            return {}, {}
        return NextHops.probe(addresses)

    def take_next_hops(
        self, found: Mapping[IPAddress, NextHop | None], problems: Mapping[IPAddress, str]
    ) -> int:
        """Apply what a probe found, if anything changed; returns the map updates."""
        before = dict(self.next_hops.known)
        if not self.next_hops.update(found, problems):
            return 0
        for address, next_hop in found.items():
            if before.get(address) != next_hop:
                log.info("next hop of %s: %s", address, next_hop)
        return self.change(self.config, SOURCE_NEXT_HOPS, force=True, next_hop_wait=0).map_updates

    def refresh_next_hops(self, everything: bool = False) -> int:
        """Resolve the next hops still missing (or all of them); apply what changed."""
        if self.plan is None:
            return 0
        return self.take_next_hops(*self.probe_next_hops(everything))

    def reload(self, environ: Mapping[str, str]) -> None:
        """SIGHUP: read the configuration file again and make it the desired state (the API's
        saved state is removed), or keep running as before and log why. With --store the
        desired state is the store's: a reload is refused (it would split this node off)."""
        try:
            if self.store is not None:
                raise self.store.no_reload()
            config = config_module.load(environ, self.options.config_path)
            restart_only = [
                name for name in RESTART_KEYS if getattr(config, name) != getattr(self.config, name)
            ]
            result = self.change(
                config,
                SOURCE_RELOAD,
                persist=False,
                actor=str(self.options.config_path or "the environment"),
            )
        except (ConfigError, PlanError, StartupError, ValueError, ApplyError) as error:
            self.reloads.refused(self.options.config_path, error)
            log.error("reload refused, the running state is unchanged: %s", error)
            return
        self.reloads.succeeded()
        for name in restart_only:
            log.warning("reload: %s changed; it takes effect at the next restart", name)
        if self.options.state_file is not None and state_file.remove(self.options.state_file):
            log.info(
                "removed the API's saved state %s: the configuration file is the desired state",
                self.options.state_file,
            )
        log.info("reloaded the configuration: %d map updates", result.map_updates)

    # --- what the API shows --------------------------------------------------------------

    def attached(self) -> bool:
        """Whether this daemon's program runs on the device (through its link, or through
        netlink where its pins would not outlive it)."""
        balancer = self.balancer
        if balancer is None:
            return False
        try:
            return balancer.xdp.runs_on(balancer.ifindex)
        except (LibbpfError, ValueError):
            return False

    def config_marks(self, config: Config) -> tuple[str, str]:
        """``config``'s ETag (every key) and config_fingerprint (the cluster-wide keys),
        remembered for the last configuration asked about: both hash the whole state."""
        cached = self._config_marks
        if cached is None or cached[0] is not config:
            cached = (config, config_etag(config), config_fingerprint(config))
            self._config_marks = cached
        return cached[1], cached[2]

    def fingerprint(self, name: str) -> str | None:
        """The fingerprint of a service's live table (docs/maglev.md): equal on every node
        with the same configuration."""
        plan = self.plan
        table = None if plan is None else plan.tables.get(name)
        return None if table is None else self._fingerprints.of(name, table)

    def current_warnings(self) -> list[str]:
        """What runs differs from what is configured: the start's warnings, and a refused
        reload while it stands."""
        refused = self.reloads.warning()
        store = [] if self.store is None else self.store.warnings()
        return [*self.warnings, *([refused] if refused is not None else []), *store]

    def health(self) -> tuple[bool, schemas.NodeHealth]:
        """Whether the node is healthy (attached, the last change applied), and the body."""
        plan = self.plan
        reasons = []
        attached = self.attached()
        if self._stop_requested:
            reasons.append("the daemon is stopping")
        if not attached:
            reasons.append(f"the data plane is not attached to {self.device}")
        if self.apply_error is not None:
            reasons.append(self.apply_error)
        vips: dict[str, schemas.TableHealth] = {}
        if plan is not None:
            for name in sorted(plan.tables, key=service_order):
                table = plan.tables[name]
                vips[name] = {
                    "fingerprint": self.fingerprint(name),
                    "generation": self.table_generations.get(name, 0),
                    "table_size": table.size,
                    "backends_in_table": len(table.backends),
                }
        unresolved = sorted(
            (str(a) for a in backend_addresses(self.config) if self.next_hops(a) is None),
            key=address_order,
        )
        backend_health = self.monitor.book.summary() if self.monitor is not None else {}
        body: schemas.NodeHealth = {
            "status": "ok" if not reasons else "unavailable",
            "reasons": reasons,
            "warnings": self.current_warnings(),
            "device": self.device,
            "attached": attached,
            "generation": self.generation,
            "config_fingerprint": self.config_marks(self.config)[1],
            "last_change": self.last_change,
            "vips": vips,
            "unresolved_next_hops": unresolved,
            "config_reload": self.reloads.as_json(),
            "backend_health": backend_health,
            "drained": self.drained,
        }
        if self.store is not None:
            body["store"] = self.store.status()
        return not reasons, body

    # --- leave ---------------------------------------------------------------------------

    def close(self) -> None:
        """Leave: the data plane keeps running from its pins, unless detach_on_exit."""
        if self.balancer is not None:
            self.balancer.close()
            self.balancer = None
        if self.options.detach_on_exit:
            detach_balancer(self.device, self.options.pin_root)
            log.info("detached the balancer from %s and removed its pins", self.device)
        else:
            log.info(
                "left the balancer running on %s (pinned); `rusty-rail detach --device %s` "
                "removes it",
                self.device,
                self.device,
            )
