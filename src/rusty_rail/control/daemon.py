"""`rusty-rail run`: the balancer daemon. The Controller (controller.py) holds the balancer
and its changes; the Daemon serves it from one asyncio loop: the REST API, the next-hop ticks
that also retry a change not fully applied, the health monitor (control/monitor.py), and the
signals. Every change (an API write, SIGHUP, a next hop that moved, a backend's health) takes
one asyncio lock and runs on a worker thread, so the loop keeps answering reads meanwhile.

On SIGTERM/SIGINT the data plane keeps running (pinned) unless told to detach; on SIGHUP the
configuration file is read again and applied, or the running state is kept and the log says
why.

Its parts live beside it: options.py (how it is told to run), errors.py, startup.py (the
configuration it starts with), bringup.py (the start sequence), nexthops.py, fingerprint.py,
connections.py (the API's connection bounds) and background.py (a daemon on a thread, for
tests and benches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Mapping
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, Final

from rusty_rail.config import Config
from rusty_rail.control import state_file
from rusty_rail.control.announcer import Announcer
from rusty_rail.control.bird import check_speaker
from rusty_rail.control.bringup import check_api_exposure
from rusty_rail.control.cluster import join_store
from rusty_rail.control.connections import ConnectionGuard
from rusty_rail.control.controller import (
    CHANGE_NEXT_HOP_WAIT,
    SOURCE_API,
    SOURCE_HEALTH,
    SOURCE_NEXT_HOPS,
    SOURCE_RELOAD,
    SOURCE_RETRY,
    SOURCE_START,
    ChangeObserver,
    ChangeResult,
    Controller,
)
from rusty_rail.control.errors import ApplyError, StartupError
from rusty_rail.control.monitor import HealthMonitor
from rusty_rail.control.options import ApiOptions, DaemonOptions, bind_api, raise_file_limit
from rusty_rail.control.plan import PlanError
from rusty_rail.control.sdnotify import Notifier
from rusty_rail.control.startup import startup_config
from rusty_rail.dataplane.libbpf import LibbpfError
from rusty_rail.dataplane.loader import LoaderError

if TYPE_CHECKING:
    from aiohttp import web

    from rusty_rail.api import schemas

__all__ = [
    "CHANGE_NEXT_HOP_WAIT",
    "SOURCE_API",
    "SOURCE_HEALTH",
    "SOURCE_NEXT_HOPS",
    "SOURCE_RELOAD",
    "SOURCE_RETRY",
    "SOURCE_START",
    "AppFactory",
    "ChangeObserver",
    "ChangeResult",
    "Daemon",
    "run",
    "start_daemon",
]

log = logging.getLogger("rusty_rail.daemon")

AppFactory = Callable[["Daemon"], "web.Application"]
#: After a change that left backends without a next hop: when they are asked for again
#: (seconds between tries); then the regular refresh_interval tick.
CHASE_DELAYS: Final = (0.02, 0.05, 0.1, 0.2, 0.4)


class Daemon(Controller):
    """The Controller served from one asyncio loop, with its API."""

    def __init__(
        self,
        config: Config,
        options: DaemonOptions,
        *,
        fixed: Mapping[str, str] | None = None,
        generation: int = 0,
    ) -> None:
        super().__init__(config, options, fixed=fixed, generation=generation)
        self.api_url: str | None = None
        #: The API's connection bounds, once it serves.
        self.api_guard: ConnectionGuard | None = None
        self._api_socket: socket.socket | None = None
        self._api_server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._stopping: asyncio.Event | None = None
        self._serving = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._health_pending = False
        self._chasing: asyncio.Task[None] | None = None
        self.observers.append(self._after_change)
        #: systemd's notification socket (does nothing when not run by systemd).
        self.notifier = Notifier({})
        #: The VIPs' BGP announcements (with a [bgp] section; made when serve() starts).
        self.announcer: Announcer | None = None

    def start(self) -> None:
        """Check everything (the API's exposure first, its address last), then load, write
        and attach. Nothing on the host is changed before all of it has been checked."""
        api = self.options.api
        check_api_exposure(api)
        if self.config.bgp is not None:
            check_speaker()
        checked = self.check()
        if api is not None:
            raise_file_limit(api.max_connections)
            self._api_socket = bind_api(api)
            bound_port = self._api_socket.getsockname()[1]
            self.api_url = ApiOptions(api.host, bound_port, api.token).url
        try:
            self.bring_up(checked)
        except BaseException:
            if self._api_socket is not None:
                self._api_socket.close()
                self._api_socket = None
            raise

    # --- health ----------------------------------------------------------------------------

    def _configure_monitor(
        self,
        monitor: HealthMonitor,
        config: Config,
        lb_ipv4: IPv4Address,
        lb_ipv6: IPv6Address | None,
    ) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(monitor.configure, config, lb_ipv4, lb_ipv6)
        else:
            monitor.configure(config, lb_ipv4, lb_ipv6)

    def _health_changed(self) -> None:
        """The verdict changed (called on the loop's thread): apply it, once for a burst."""
        if self._health_pending or self._lock is None or self._stop_requested:
            return
        self._health_pending = True
        self._spawn(self._apply_health())

    async def _apply_health(self) -> None:
        async with self._serving_lock():
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

    # --- the loop ------------------------------------------------------------------------

    async def submit(self, config: Config, source: str = SOURCE_API) -> ChangeResult:
        """``change`` on a worker thread, one change at a time, while the loop keeps
        answering reads."""
        async with self._serving_lock():
            return await asyncio.to_thread(self.change, config, source)

    async def exclusive(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on a worker thread while no change runs (reads that must see one
        consistent state)."""
        async with self._serving_lock():
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
        self.notifier = Notifier(environ)
        if self._stop_requested:
            self._stopping.set()
        runner = None
        following: asyncio.Task[None] | None = None
        if handle_signals:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload(environ)))
        try:
            if self._api_socket is not None and app_factory is not None:
                runner = await self._start_api(app_factory(self), self._api_socket)
            if self.monitor is not None and self.lb_ipv4 is not None:
                if self._health_config is not self.config:
                    self._health_config = self.config
                    self.monitor.configure(self.config)
                self.monitor.start(loop, self.lb_ipv4, self.lb_ipv6)
            if self.store is not None:
                following = loop.create_task(self.store.follow(self))
            if self.config.bgp is not None and self.lb_ipv4 is not None:
                self.announcer = Announcer(self.config.bgp, self.lb_ipv4, self.lb_ipv6,
                                           self.device)  # fmt: skip
                await self.announce()
            self._serving.set()
            self.notifier.ready(self._status_line())
            if self.notifier.watchdog_seconds is not None:
                self._spawn(self._feed_watchdog(self.notifier.watchdog_seconds / 2))
            await self._tick_until_stopped()
        finally:
            if self.announcer is not None:
                await self.announcer.stop()  # first: the routers move away, then the rest
            if self.store is not None:
                if following is not None:
                    following.cancel()
                await self.store.stop()
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

    async def _reload(self, environ: Mapping[str, str]) -> None:
        """SIGHUP: reload under the change lock, told to systemd as RELOADING then READY."""
        self.notifier.reloading()
        try:
            await self._locked(lambda: self.reload(environ))
        finally:
            self.notifier.ready(self._status_line())

    def _status_line(self) -> str:
        """One line for `systemctl status`."""
        api = f", API {self.api_url}" if self.api_url else ""
        reload = "; the last reload was refused" if self.reloads.failed is not None else ""
        return f"balancing on {self.device}, generation {self.generation}{api}{reload}"

    async def _feed_watchdog(self, interval: float) -> None:
        """WATCHDOG=1 every ``interval`` while the loop runs and the program is attached:
        systemd restarts a daemon whose loop hangs or whose data plane is gone."""
        while True:
            if await asyncio.to_thread(self.attached):
                self.notifier.watchdog()
            else:
                log.error(
                    "the data plane is not attached to %s: not feeding the watchdog", self.device
                )
            await asyncio.sleep(interval)

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
        server = await asyncio.get_running_loop().create_server(guard.protocol, sock=sock)
        self.api_guard, self._api_server = guard, server
        token = self.options.api.token if self.options.api else None
        source = self.options.api.token_source if self.options.api else None
        log.info(
            "serving the REST API on %s (writes %s)",
            self.api_url,
            "need no token: loopback only"
            if not token
            else f"need the bearer token in {source}"
            if source
            else "need the bearer token",
        )
        return runner

    async def _tick_until_stopped(self) -> None:
        if self._stopping is None:
            raise RuntimeError("the daemon is not serving")
        ticks = 0
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.options.refresh_interval)
                return
            except TimeoutError:
                pass
            ticks += 1
            await self.announce()
            try:
                await self._tick(everything=ticks % 30 == 0)
            except (LibbpfError, OSError, PlanError, StartupError, ValueError) as error:
                log.error("next-hop refresh failed: %s", error)
            except ApplyError:
                pass  # logged where it happened; the next tick retries

    async def _tick(self, everything: bool) -> None:
        # Neighbours are asked outside the lock: an API change need not wait for ARP.
        found, problems = await asyncio.to_thread(self.probe_next_hops, everything)
        async with self._serving_lock():
            if self.apply_error is not None:
                await asyncio.to_thread(
                    self.change, self.config, SOURCE_RETRY, persist=False, force=True
                )
            if found:
                await asyncio.to_thread(self.take_next_hops, found, problems)

    def _after_change(self, source: str, result: ChangeResult | None) -> None:
        """A change left backends without a next hop: ask for them again soon; a change may
        have added or removed VIPs: announce them (called on the thread that made the
        change)."""
        loop = self._loop
        if result is None or loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            if self.announcer is not None and result.changed:
                loop.call_soon_threadsafe(lambda: self._spawn(self.announce()))
            if result.unresolved:
                loop.call_soon_threadsafe(self._start_chase)

    # --- BGP -----------------------------------------------------------------------------

    async def announce(self) -> None:
        """Bring the BGP announcements in line with the node's state (announcer.py)."""
        if self.announcer is not None:
            await self.announcer.refresh(
                self.config, self.attached, self.drained, self._stop_requested
            )

    def health(self) -> tuple[bool, schemas.NodeHealth]:
        healthy, body = super().health()
        if self.announcer is not None:
            body["bgp"] = self.announcer.status()
        return healthy, body

    async def set_drained(self, drained: bool) -> list[str]:
        """Drain (withdraw every route, keep forwarding) or undrain; the routes announced
        once the speaker has them."""
        if drained != self.drained:
            log.info("%s: %s", "drained" if drained else "undrained",
                     "the VIPs are withdrawn; traffic that still arrives is forwarded"
                     if drained else "the VIPs are announced again")  # fmt: skip
        self.drained = drained
        await self.announce()
        return self.announcer.announced if self.announcer is not None else []

    def _start_chase(self) -> None:
        if self._chasing is None or self._chasing.done():
            self._chasing = self._loop.create_task(self._chase()) if self._loop else None

    async def _chase(self) -> None:
        """Ask for the missing next hops again after 20, 50, 100, 200 and 400 ms (then the
        regular tick takes over), applying each as it resolves: a new backend joins its
        table as soon as its neighbour answers, not at the next tick."""
        for delay in CHASE_DELAYS:
            await asyncio.sleep(delay)
            found, problems = await asyncio.to_thread(self.probe_next_hops)
            if any(hop is not None for hop in found.values()):
                async with self._serving_lock():
                    await asyncio.to_thread(self.take_next_hops, found, problems)
            if not found or all(hop is not None for hop in found.values()):
                return

    def _serving_lock(self) -> asyncio.Lock:
        """The change lock (made when serve() starts)."""
        if self._lock is None:
            raise RuntimeError("the daemon is not serving")
        return self._lock

    async def _locked(self, work: Callable[[], object]) -> None:
        async with self._serving_lock():
            await asyncio.to_thread(work)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` as a task of the loop (called on the loop's thread)."""
        if self._loop is None:
            raise RuntimeError("the daemon is not serving")
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def request_stop(self) -> None:
        """Stop serving (from any thread, or a signal handler)."""
        if not self._stop_requested:
            self.notifier.stopping()
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
        super().close()


def start_daemon(environ: Mapping[str, str], options: DaemonOptions) -> Daemon:
    """A started Daemon for the configuration startup_config() chooses. When the saved state
    is what the data plane refuses, the error says so and names the way out."""
    config, fixed, generation = startup_config(environ, options)
    store = None
    if options.store is not None:
        config, store = join_store(config, options, generation)
    daemon = Daemon(config, options, fixed=fixed, generation=generation)
    daemon.store = store
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
