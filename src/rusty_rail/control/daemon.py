"""`rusty-rail run`: the balancer daemon. Validates the configuration, resolves next hops,
loads (or adopts) the XDP program, writes the state, attaches, then keeps the state current.

On SIGTERM/SIGINT it leaves the data plane running (pinned) unless told to detach; on SIGHUP
it re-reads the configuration and applies only what changed, or keeps the running state and
logs why when the new configuration is invalid.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import FrameType

from rusty_rail import config as config_module
from rusty_rail.config import Config, ConfigError
from rusty_rail.control.apply import apply_operations
from rusty_rail.control.plan import (
    Allocation,
    Plan,
    PlanError,
    allocation_from_state,
    compile_plan,
    diff,
    services_of,
)
from rusty_rail.dataplane import netlink
from rusty_rail.dataplane.libbpf import PIN_ROOT, LibbpfError
from rusty_rail.dataplane.loader import (
    Balancer,
    attach_balancer,
    detach_balancer,
    load_balancer,
)
from rusty_rail.dataplane.structs import MAX_BACKENDS, MAX_VIPS
from rusty_rail.dpstate import NextHop

log = logging.getLogger("rusty_rail.daemon")

IPAddress = IPv4Address | IPv6Address


class StartupError(RuntimeError):
    """The daemon cannot start with this configuration or on this host; nothing was changed."""


@dataclass
class DaemonOptions:
    config_path: Path | None = None
    pin_root: Path = PIN_ROOT
    detach_on_exit: bool = False
    #: How long start-up waits for backends' next hops to answer ARP before going on without.
    next_hop_timeout: float = 3.0
    #: How often unresolved next hops are retried, and (x30) resolved ones refreshed.
    refresh_interval: float = 1.0


def lb_address_of(config: Config, device: str) -> IPv4Address:
    """The balancer's outer address: configured, or the device's only IPv4 address."""
    if config.lb_address is not None:
        if not isinstance(config.lb_address, IPv4Address):
            raise StartupError(f"lb_address {config.lb_address}: only IPv4 is supported yet")
        return config.lb_address
    candidates = [a for a in netlink.interface_addresses(device) if isinstance(a, IPv4Address)]
    if len(candidates) != 1:
        found = ", ".join(map(str, candidates)) or "none"
        raise StartupError(
            f"cannot tell the balancer's address on {device}: it has {len(candidates)} IPv4 "
            f"addresses ({found}); set lb_address (or RR_LB_ADDRESS)"
        )
    return candidates[0]


@dataclass
class NextHops:
    """Next hops of the backends, resolved through the kernel and cached."""

    known: dict[IPAddress, NextHop | None] = field(default_factory=dict)
    problems: dict[IPAddress, str] = field(default_factory=dict)

    def resolve(self, addresses: Iterable[IPAddress], wait: float = 0.0) -> None:
        """Resolve ``addresses`` (all at once: the kernel asks for every neighbour before the
        first answer), waiting up to ``wait`` seconds for the ones not yet known."""
        pending = set(addresses)
        deadline = time.monotonic() + wait
        while pending:
            for address in sorted(pending, key=str):
                try:
                    self.known[address] = netlink.resolve_next_hop(address)
                    self.problems.pop(address, None)
                except netlink.NextHopError as error:
                    self.known[address] = None
                    self.problems[address] = str(error)
            pending = {a for a in pending if self.known[a] is None and a not in self.problems}
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.05)

    def __call__(self, address: IPAddress) -> NextHop | None:
        return self.known.get(address)


def backend_addresses(config: Config) -> set[IPAddress]:
    return {backend.address for service in services_of(config) for backend in service.backends}


class Daemon:
    """One balancer on one interface. The pure plan decides; this class only carries it out."""

    def __init__(self, config: Config, options: DaemonOptions) -> None:
        if config.device is None:
            raise StartupError(
                "no device: set RR_DEVICE or `device` in the configuration file "
                "(the interface that receives the GRE traffic)"
            )
        self.config = config
        self.options = options
        self.device = config.device
        self.next_hops = NextHops()
        self.balancer: Balancer | None = None
        self.plan: Plan | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()

    # --- start ---------------------------------------------------------------------------

    def start(self) -> None:
        """Check everything, then load, write and attach. Nothing on the host is changed
        before the configuration, the interface and the plan have all been checked."""
        try:
            ifindex = netlink.interface_index(self.device)
        except Exception as error:
            raise StartupError(f"device {self.device}: {error}") from error
        lb_ipv4 = lb_address_of(self.config, self.device)
        self.next_hops.resolve(backend_addresses(self.config), wait=self.options.next_hop_timeout)
        fresh = Allocation(max_vips=MAX_VIPS, max_backends=MAX_BACKENDS)
        try:
            compile_plan(self.config, fresh, lb_ipv4=lb_ipv4, resolve_next_hop=self.next_hops)
        except (PlanError, ValueError) as error:
            raise StartupError(str(error)) from error

        balancer = load_balancer(
            self.device,
            ifindex,
            conntrack_size=self.config.conntrack_size,
            pin_root=self.options.pin_root,
        )
        try:
            current = balancer.maps.read_state() if balancer.adopted else None
            allocation = fresh
            if current is not None:
                allocation = allocation_from_state(
                    current, max_vips=MAX_VIPS, max_backends=MAX_BACKENDS
                )
            plan = compile_plan(
                self.config, allocation, lb_ipv4=lb_ipv4, resolve_next_hop=self.next_hops
            )
            applied = apply_operations(balancer.maps, diff(current, plan.state))
            how = attach_balancer(balancer, self.config.xdp_mode.value)
        except BaseException:
            balancer.close()
            raise
        self.balancer, self.plan = balancer, plan
        log.info(
            "balancer %s on %s (ifindex %d): %s; lb address %s; %d VIPs%s, %d backends; "
            "%s pinned state; %d map updates",
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
        )
        self._log_unresolved()

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

    def apply_config(self, config: Config) -> int:
        """Move the data plane to ``config``; returns the number of map updates. Raises
        (and changes nothing) when the configuration cannot be planned."""
        if self.balancer is None or self.plan is None:
            raise RuntimeError("the daemon is not started")
        if config.device != self.device:
            raise StartupError(
                f"the device cannot change while running ({self.device} -> "
                f"{config.device}): restart the daemon"
            )
        lb_ipv4 = lb_address_of(config, self.device)
        self.next_hops.resolve(backend_addresses(config) - self.next_hops.known.keys(), wait=1.0)
        plan = compile_plan(
            config,
            self.plan.allocation,
            lb_ipv4=lb_ipv4,
            resolve_next_hop=self.next_hops,
            previous_tables=self.plan.tables,
        )
        applied = apply_operations(self.balancer.maps, diff(self.plan.state, plan.state))
        self.config, self.plan = config, plan
        return applied

    def refresh_next_hops(self, everything: bool = False) -> int:
        """Resolve the next hops still missing (or all of them); apply what changed."""
        if self.plan is None:
            return 0
        addresses = backend_addresses(self.config)
        if not everything:
            addresses = {a for a in addresses if self.next_hops.known.get(a) is None}
        if not addresses:
            return 0
        before = dict(self.next_hops.known)
        self.next_hops.resolve(addresses)
        if self.next_hops.known == before:
            return 0
        for address in addresses:
            if before.get(address) != self.next_hops.known.get(address):
                log.info("next hop of %s: %s", address, self.next_hops.known.get(address))
        return self.apply_config(self.config)

    def reload(self, environ: Mapping[str, str]) -> None:
        """SIGHUP: read the configuration again and apply it, or keep running as before."""
        try:
            config = config_module.load(environ, self.options.config_path)
            applied = self.apply_config(config)
        except (ConfigError, PlanError, StartupError, ValueError) as error:
            log.error("reload refused, the running state is unchanged: %s", error)
            return
        log.info("reloaded the configuration: %d map updates", applied)

    # --- the loop ------------------------------------------------------------------------

    def serve(self, environ: Mapping[str, str]) -> None:
        """Run until SIGTERM/SIGINT, reloading on SIGHUP and refreshing next hops."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        ticks = 0
        while not self._stop.wait(self.options.refresh_interval):
            if self._reload.is_set():
                self._reload.clear()
                self.reload(environ)
            ticks += 1
            try:
                self.refresh_next_hops(everything=ticks % 30 == 0)
            except (LibbpfError, OSError, PlanError) as error:
                log.error("next-hop refresh failed: %s", error)

    def stop(self) -> None:
        self._stop.set()

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


def run(environ: Mapping[str, str], options: DaemonOptions) -> None:
    """Load the configuration, start, serve until a stop signal, leave."""
    config = config_module.load(environ, options.config_path)
    daemon = Daemon(config, options)
    daemon.start()
    try:
        daemon.serve(environ)
    finally:
        daemon.close()
