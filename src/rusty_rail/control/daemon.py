"""`rusty-rail run`: the balancer daemon. Validates the configuration, resolves next hops,
loads (or adopts) the XDP program, writes the state, attaches, then serves the REST API and
keeps the state current from one asyncio loop.

Every change (an API write, SIGHUP, a next hop that moved, a backend's health) goes through
one lock and is planned whole before any map is written. On SIGTERM/SIGINT the data plane
keeps running (pinned) unless told to detach; on SIGHUP the configuration file is read again
and applied, or the running state is kept and the log says why. The health monitor
(control/monitor.py) runs on the same loop.

Its parts live beside it: options.py (how it is told to run), errors.py, startup.py (the
configuration it starts with), nexthops.py, fingerprint.py, connections.py (the API's
connection bounds) and background.py (a daemon on a thread, for tests and benches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, Final

from rusty_rail import config as config_module
from rusty_rail._types import IPAddress
from rusty_rail.config import Config, ConfigError
from rusty_rail.control import state_file
from rusty_rail.control.apply import apply_operations
from rusty_rail.control.connections import (
    ConnectionGuard,
)
from rusty_rail.control.errors import ApplyError, PersistError, StartupError
from rusty_rail.control.events import EventLog
from rusty_rail.control.fingerprint import (
    TableFingerprints,
    address_order,
    config_etag,
    config_fingerprint,
    service_order,
)
from rusty_rail.control.monitor import HealthMonitor
from rusty_rail.control.nexthops import NextHops, backend_addresses, lb_address_of
from rusty_rail.control.options import (
    MIN_TOKEN_LENGTH,
    ApiOptions,
    DaemonOptions,
    bind_api,
    raise_file_limit,
)
from rusty_rail.control.plan import (
    Allocation,
    NoFreeIndex,
    Plan,
    PlanError,
    allocation_from_state,
    compile_plan,
    diff,
    removals_only,
    services_of,
)
from rusty_rail.control.startup import RESTART_KEYS, startup_config
from rusty_rail.dataplane import netlink
from rusty_rail.dataplane.icmp import IcmpMaps
from rusty_rail.dataplane.libbpf import LibbpfError
from rusty_rail.dataplane.loader import (
    Balancer,
    LoaderError,
    attach_balancer,
    check_attachable,
    detach_balancer,
    load_balancer,
)
from rusty_rail.dataplane.maps import conntrack_sets_for
from rusty_rail.dataplane.structs import CONNTRACK_WAYS, MAX_BACKENDS, MAX_VIPS
from rusty_rail.dpstate import DataplaneState, NextHop

if TYPE_CHECKING:
    from aiohttp import web

    from rusty_rail.api import schemas

log = logging.getLogger("rusty_rail.daemon")

#: How long a change waits for the neighbours of backends it adds to answer ARP.
CHANGE_NEXT_HOP_WAIT: Final = 1.0
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

    def as_json(self) -> schemas.ChangeCounts:
        return {
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
AppFactory = Callable[["Daemon"], "web.Application"]


class Daemon:
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
        self.last_change: dict[str, Any] | None = None
        #: Set when the desired state is not (fully) in the maps: why.
        self.apply_error: str | None = None
        #: What runs differs from what is configured, without making the node unhealthy.
        self.warnings: list[str] = []
        self.api_url: str | None = None
        #: How long start() took to read the pinned state, build the tables and write them.
        self.start_timings: dict[str, float] = {}
        self._fingerprints = TableFingerprints()
        self._config_marks: tuple[Config, str, str] | None = None
        self._api_socket: socket.socket | None = None
        self._api_server: asyncio.Server | None = None
        #: The API's connection bounds, once it serves.
        self.api_guard: ConnectionGuard | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._stopping: asyncio.Event | None = None
        self._serving = threading.Event()
        self._stop_requested = False
        self._tasks: set[asyncio.Future[None]] = set()
        #: Health transitions, fail-open and ICMP-floor events (GET /v1/events).
        self.events = EventLog(time.time)
        #: Health checks and ICMP learning; made when the program is loaded.
        self.monitor: HealthMonitor | None = None
        self.lb_ipv4: IPv4Address | None = None
        self._health_pending = False
        self._health_config: Config | None = None

    # --- start ---------------------------------------------------------------------------

    def start(self) -> None:
        """Check everything, then load, write and attach. Nothing on the host is changed
        before the configuration, the interface, the API address and the plan have all been
        checked."""
        api = self.options.api
        if api is not None and not api.loopback and len(api.token or "") < MIN_TOKEN_LENGTH:
            what = "without a token" if not api.token else "with a token that is too short"
            raise StartupError(
                f"the API would listen on {api.url}, which is not a loopback address, {what}: "
                f"give one of at least {MIN_TOKEN_LENGTH} characters (--api-token-file FILE or "
                "RUSTY_RAIL_API_TOKEN; e.g. `openssl rand -hex 16`), or listen on 127.0.0.1"
            )
        try:
            ifindex = netlink.interface_index(self.device)
        except Exception as error:
            raise StartupError(f"device {self.device}: {error}") from error
        lb_ipv4 = lb_address_of(self.config, self.device)
        self.lb_ipv4 = lb_ipv4
        self.next_hops.resolve(backend_addresses(self.config), wait=self.options.next_hop_timeout)
        fresh = Allocation(max_vips=MAX_VIPS, max_backends=MAX_BACKENDS)
        clock = time.perf_counter()
        try:
            checked = compile_plan(
                self.config, fresh, lb_ipv4=lb_ipv4, resolve_next_hop=self.next_hops
            )
        except (PlanError, ValueError) as error:
            raise StartupError(str(error)) from error
        self.start_timings = {"build_seconds": time.perf_counter() - clock}
        if api is not None:
            raise_file_limit(api.max_connections)
            self._api_socket = bind_api(api)
            bound_port = self._api_socket.getsockname()[1]
            self.api_url = ApiOptions(api.host, bound_port, api.token).url

        try:
            self._load_and_attach(ifindex, lb_ipv4, checked)
        except BaseException:
            if self._api_socket is not None:
                self._api_socket.close()
                self._api_socket = None
            raise

    def _load_and_attach(self, ifindex: int, lb_ipv4: IPv4Address, checked: Plan) -> None:
        """Load (or adopt), write ``checked`` (planned on a fresh allocation; re-planned on
        the adopted one, reusing its tables) and attach."""
        balancer = load_balancer(
            self.device,
            ifindex,
            conntrack_size=self.config.conntrack_size,
            pin_root=self.options.pin_root,
        )
        current = None
        written: Plan | None = None
        try:
            if self.options.attach:
                # Adopted maps are live: everything that can refuse the start is checked
                # before the first write.
                check_attachable(balancer, self.config.xdp_mode.value)
            clock = time.perf_counter()
            # Adoption needs the state, not the flows: diff() never looks at conntrack.
            current = balancer.maps.read_state(conntrack=False) if balancer.adopted else None
            read_seconds, clock = time.perf_counter() - clock, time.perf_counter()
            plan = checked
            if current is not None:
                allocation = allocation_from_state(
                    current, max_vips=MAX_VIPS, max_backends=MAX_BACKENDS
                )
                plan = compile_plan(
                    self.config,
                    allocation,
                    lb_ipv4=lb_ipv4,
                    resolve_next_hop=self.next_hops,
                    previous_tables=checked.tables,
                )
            build_seconds = self.start_timings["build_seconds"] + time.perf_counter() - clock
            clock = time.perf_counter()
            written = plan
            try:
                applied = apply_operations(balancer.maps, diff(current, plan.state))
            except (LibbpfError, OSError, ValueError) as error:
                raise StartupError(f"the data plane refused the state: {error}") from error
            # The ICMP maps are the new program's own: filled before it is swapped in.
            monitor = HealthMonitor(
                self.config,
                self.events,
                on_verdict=self._health_changed,
                icmp_maps=IcmpMaps.of_object(balancer.obj),
            )
            monitor.sync_watch()
            apply_seconds = time.perf_counter() - clock
            self.start_timings = {
                "read_state_seconds": read_seconds,
                "build_seconds": build_seconds,
                "apply_seconds": apply_seconds,
            }
            how = (
                attach_balancer(balancer, self.config.xdp_mode.value)
                if self.options.attach
                else "loaded, not attached"
            )
        except BaseException:
            if written is not None and current is not None:
                self._put_back(balancer, written, current)
            balancer.close()
            raise
        self.balancer, self.plan = balancer, plan
        self.monitor, self._health_config = monitor, self.config
        self.table_generations = dict.fromkeys(plan.tables, 1)
        pinned_sets = balancer.maps.conntrack_mask + 1
        if balancer.adopted and pinned_sets != conntrack_sets_for(self.config.conntrack_size):
            self.warnings.append(
                f"conntrack_size is {self.config.conntrack_size} but the adopted connection "
                f"table holds {pinned_sets * CONNTRACK_WAYS} flows (it keeps the size it was "
                f"made with); `rusty-rail detach --device {self.device}` and start again to "
                "resize it (tracked flows are then lost)"
            )
            log.warning("%s", self.warnings[-1])
        self.last_change = {
            "generation": self.generation,
            "source": SOURCE_START,
            "at": time.time(),
            "map_updates": applied,
        }
        log.info(
            "balancer %s on %s (ifindex %d): %s; lb address %s; %d VIPs%s, %d backends; "
            "%s pinned state; %d map updates (tables built in %.0f ms, written in %.0f ms)",
            balancer.program.name,
            self.device,
            ifindex,
            how,
            lb_ipv4,
            len(plan.state.vips),
            " + default set" if self.config.default_backends else "",
            len(plan.state.backends),
            "adopted the" if balancer.adopted else "no",
            applied,
            build_seconds * 1000,
            apply_seconds * 1000,
        )
        self._log_unresolved()

    @staticmethod
    def _put_back(balancer: Balancer, written: Plan, adopted: DataplaneState) -> None:
        """A start failed after writing the adopted (live) maps: give the running program
        back the state it had."""
        try:
            apply_operations(balancer.maps, diff(written.state, adopted))
        except (LibbpfError, OSError, ValueError) as error:
            log.error(
                "the start failed after writing the pinned maps of %s, and putting them "
                "back failed too (%s): the running balancer may forward by a mix of both "
                "states; start again, or `rusty-rail detach --device %s`",
                balancer.ifname,
                error,
                balancer.ifname,
            )

    def _log_unresolved(self) -> None:
        for address, next_hop in sorted(self.next_hops.known.items(), key=lambda i: str(i[0])):
            if next_hop is None:
                why = self.next_hops.problems.get(address, "its neighbour has not answered yet")
                log.warning(
                    "backend %s has no next hop (%s); its packets are dropped and "
                    "counted as DROP_NO_NEXTHOP until it has one",
                    address,
                    why,
                )

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
            resolve_next_hop=self.next_hops,
            healthy=(lambda service, address: True) if verdict is None else verdict.healthy,
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
    ) -> ChangeResult:
        """Move the data plane to ``config``: plan it whole (raises PlanError, StartupError or
        ValueError and changes nothing), save it when ``persist`` (raises PersistError and
        changes nothing), then write the maps (raises ApplyError; the desired state is then
        the new one and a later retry applies it). Callers serialise changes."""
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
                        self.options.state_file, config, generation=generation, source=source
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
                    self.options.state_file, config, generation=generation, source=source
                )
            except OSError as error:
                self.config, self.generation = previous_config, previous_generation
                try:
                    apply_operations(self.balancer.maps, diff(plan.state, self.plan.state))
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
        )
        self.last_change = {
            "generation": generation,
            "source": source,
            "at": time.time(),
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
        self.lb_ipv4 = lb_ipv4
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(monitor.configure, config, lb_ipv4)
        else:
            monitor.configure(config, lb_ipv4)

    def _health_changed(self) -> None:
        """The verdict changed (called on the loop's thread): apply it, once for a burst."""
        if self._health_pending or self._lock is None or self._stop_requested:
            return
        self._health_pending = True
        self._spawn(self._apply_health())

    async def _apply_health(self) -> None:
        assert self._lock is not None
        async with self._lock:
            self._health_pending = False  # a verdict from here on needs another change
            try:
                result = await asyncio.to_thread(
                    self.change, self.config, SOURCE_HEALTH, persist=False, force=True
                )
            except (ApplyError, PlanError, StartupError, ValueError, LibbpfError) as error:
                log.error("applying a health verdict failed: %s", error)
                return
        if result.tables_rebuilt:
            log.info(
                "health: tables rebuilt for %s (%d map updates, %.1f ms)",
                ", ".join(result.tables_rebuilt),
                result.map_updates,
                result.seconds * 1000,
            )

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
        saved state is removed), or keep running as before and log why."""
        try:
            config = config_module.load(environ, self.options.config_path)
            restart_only = [
                name for name in RESTART_KEYS if getattr(config, name) != getattr(self.config, name)
            ]
            result = self.change(config, SOURCE_RELOAD, persist=False)
        except (ConfigError, PlanError, StartupError, ValueError, ApplyError) as error:
            log.error("reload refused, the running state is unchanged: %s", error)
            return
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
        """Whether this daemon's program runs on the device through its link."""
        balancer = self.balancer
        if balancer is None or balancer.link is None:
            return False
        try:
            return (
                balancer.link.prog_id == balancer.program.id
                and balancer.link.ifindex == balancer.ifindex
            )
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

    def health(self) -> tuple[bool, dict[str, Any]]:
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
        vips: dict[str, Any] = {}
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
        body = {
            "status": "ok" if not reasons else "unavailable",
            "reasons": reasons,
            "warnings": list(self.warnings),
            "device": self.device,
            "attached": attached,
            "generation": self.generation,
            "config_fingerprint": self.config_marks(self.config)[1],
            "last_change": self.last_change,
            "vips": vips,
            "unresolved_next_hops": unresolved,
            "backend_health": backend_health,
        }
        return not reasons, body

    # --- the loop ------------------------------------------------------------------------

    async def submit(self, config: Config, source: str = SOURCE_API) -> ChangeResult:
        """``change`` on a worker thread, one change at a time, while the loop keeps
        answering reads."""
        assert self._lock is not None, "the daemon is not serving"
        async with self._lock:
            return await asyncio.to_thread(self.change, config, source)

    async def exclusive(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on a worker thread while no change runs (reads that must see one
        consistent state)."""
        assert self._lock is not None, "the daemon is not serving"
        async with self._lock:
            return await asyncio.to_thread(work)

    async def serve(
        self,
        environ: Mapping[str, str],
        *,
        app_factory: AppFactory | None = None,
        handle_signals: bool = True,
    ) -> None:
        """Serve the API (when there is one and ``app_factory`` makes it) and keep the state
        current until SIGTERM/SIGINT or request_stop(); SIGHUP reloads the configuration."""
        loop = asyncio.get_running_loop()
        self._loop, self._lock, self._stopping = loop, asyncio.Lock(), asyncio.Event()
        if self._stop_requested:
            self._stopping.set()
        runner = None
        if handle_signals:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(
                signal.SIGHUP, lambda: self._spawn(self._locked(lambda: self.reload(environ)))
            )
        try:
            if self._api_socket is not None and app_factory is not None:
                runner = await self._start_api(app_factory(self), self._api_socket)
            if self.monitor is not None and self.lb_ipv4 is not None:
                if self._health_config is not self.config:
                    self._health_config = self.config
                    self.monitor.configure(self.config)
                self.monitor.start(loop, self.lb_ipv4)
            self._serving.set()
            await self._tick_until_stopped()
        finally:
            if self.monitor is not None:
                self.monitor.stop()
            self._serving.set()
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(signum)
            if self._api_server is not None:
                self._api_server.close()
                self._api_server = None
            if runner is not None:
                await runner.cleanup()

    async def _start_api(self, app: web.Application, sock: socket.socket) -> web.AppRunner:
        from aiohttp import web

        api = self.options.api or ApiOptions()
        guard = ConnectionGuard(limit=api.max_connections, idle_seconds=api.idle_seconds)
        app.middlewares.append(guard.middleware)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=api.idle_seconds
        )
        await runner.setup()
        guard.server = runner.server
        assert self._loop is not None
        server = await self._loop.create_server(guard.protocol, sock=sock)
        self.api_guard, self._api_server = guard, server
        token = self.options.api.token if self.options.api else None
        log.info(
            "serving the REST API on %s (writes %s)",
            self.api_url,
            "need the bearer token" if token else "need no token: loopback only",
        )
        return runner

    async def _tick_until_stopped(self) -> None:
        assert self._stopping is not None
        ticks = 0
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.options.refresh_interval)
                return
            except TimeoutError:
                pass
            ticks += 1
            try:
                await self._tick(everything=ticks % 30 == 0)
            except (LibbpfError, OSError, PlanError, StartupError, ValueError) as error:
                log.error("next-hop refresh failed: %s", error)
            except ApplyError:
                pass  # logged where it happened; the next tick retries

    async def _tick(self, everything: bool) -> None:
        # Neighbours are asked outside the lock: an API change need not wait for ARP.
        found, problems = await asyncio.to_thread(self.probe_next_hops, everything)
        assert self._lock is not None
        async with self._lock:
            if self.apply_error is not None:
                await asyncio.to_thread(
                    self.change, self.config, SOURCE_RETRY, persist=False, force=True
                )
            if found:
                await asyncio.to_thread(self.take_next_hops, found, problems)

    async def _locked(self, work: Callable[[], object]) -> None:
        assert self._lock is not None
        async with self._lock:
            await asyncio.to_thread(work)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def request_stop(self) -> None:
        """Stop serving (from any thread, or a signal handler)."""
        self._stop_requested = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(stopping.set)

    stop = request_stop

    def wait_serving(self, timeout: float | None = None) -> bool:
        """Block until serve() listens (or has ended); False on timeout."""
        return self._serving.wait(timeout)

    def close(self) -> None:
        """Leave: the data plane keeps running from its pins, unless detach_on_exit."""
        if self._api_socket is not None:
            self._api_socket.close()
            self._api_socket = None
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


def start_daemon(environ: Mapping[str, str], options: DaemonOptions) -> Daemon:
    """A started Daemon for the configuration startup_config() chooses. When the saved state
    is what the data plane refuses, the error says so and names the way out."""
    config, fixed, generation = startup_config(environ, options)
    daemon = Daemon(config, options, fixed=fixed, generation=generation)
    try:
        daemon.start()
    except (StartupError, PlanError, LoaderError) as error:
        saved = options.state_file
        if saved is None or not saved.exists():
            raise
        if options.reset_state:
            raise
        raise StartupError(
            f"{error}; this desired state was saved by the API in {saved}: start with "
            "--reset-state to start from the configuration file instead"
        ) from error
    path = options.state_file
    if options.reset_state and path is not None and state_file.remove(path):
        log.info("--reset-state: removed the saved state %s", path)
    return daemon


def run(
    environ: Mapping[str, str],
    options: DaemonOptions,
    *,
    app_factory: AppFactory | None = None,
) -> None:
    """Load the configuration, start, serve until a stop signal, leave."""
    daemon = start_daemon(environ, options)
    try:
        asyncio.run(daemon.serve(environ, app_factory=app_factory))
    finally:
        daemon.close()
