"""How a daemon comes up: everything that can refuse the start is checked before the host is
touched (the API's exposure, the interface, the LB address, the plan), then the program is
loaded or adopted from its pins, the state written and the program attached.

Adopted maps are live: a start that fails after writing them puts the state they had back.
The Daemon (daemon.py) keeps what this returns; nothing here holds state of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from rusty_rail.config import Config
from rusty_rail.control.apply import apply_operations
from rusty_rail.control.errors import StartupError
from rusty_rail.control.events import EventLog
from rusty_rail.control.monitor import HealthMonitor
from rusty_rail.control.nexthops import NextHops, backend_addresses, lb_address_of, lb_ipv6_of
from rusty_rail.control.options import MIN_TOKEN_LENGTH, ApiOptions, DaemonOptions
from rusty_rail.control.plan import (
    Allocation,
    Plan,
    PlanError,
    allocation_from_state,
    compile_plan,
    diff,
)
from rusty_rail.dataplane import netlink
from rusty_rail.dataplane.conntrack_maps import conntrack_sets_for
from rusty_rail.dataplane.icmp_maps import IcmpMaps
from rusty_rail.dataplane.libbpf import LibbpfError
from rusty_rail.dataplane.loader import (
    Balancer,
    attach_balancer,
    check_attachable,
    load_balancer,
    private_pins_warning,
)
from rusty_rail.dataplane.structs import CONNTRACK_WAYS, MAX_BACKENDS, MAX_VIPS
from rusty_rail.model.state import DataplaneState, Stat

log = logging.getLogger("rusty_rail.daemon")


@dataclass(frozen=True)
class Checked:
    """What the checks before loading found: the interface, the LB address and the plan on
    a fresh allocation (re-planned on the adopted one, reusing its tables)."""

    ifindex: int
    lb_ipv4: IPv4Address
    plan: Plan
    build_seconds: float


@dataclass(frozen=True)
class Started:
    """A loaded (or adopted), written and attached balancer, and what the start did."""

    balancer: Balancer
    plan: Plan
    monitor: HealthMonitor
    map_updates: int
    #: read_state_seconds, build_seconds, apply_seconds.
    timings: dict[str, float]
    #: What runs differs from what is configured (each also logged).
    warnings: list[str] = field(default_factory=list)


def check_api_exposure(api: ApiOptions | None) -> None:
    """An API beyond loopback needs a token of MIN_TOKEN_LENGTH characters or more."""
    if api is None or api.loopback or len(api.token or "") >= MIN_TOKEN_LENGTH:
        return
    what = "without a token" if not api.token else "with a token that is too short"
    raise StartupError(
        f"the API would listen on {api.url}, which is not a loopback address, {what}: "
        f"give one of at least {MIN_TOKEN_LENGTH} characters (--api-token-file FILE or "
        "RUSTY_RAIL_API_TOKEN; e.g. `openssl rand -hex 16`), or listen on 127.0.0.1"
    )


def check_before_loading(
    config: Config, device: str, next_hops: NextHops, next_hop_timeout: float
) -> Checked:
    """The interface, the LB address, the backends' next hops and the whole plan: raises
    StartupError (and changes nothing) when any is wrong."""
    try:
        ifindex = netlink.interface_index(device)
    except Exception as error:
        raise StartupError(f"device {device}: {error}") from error
    lb_ipv4 = lb_address_of(config, device)
    next_hops.resolve(backend_addresses(config), wait=next_hop_timeout)
    fresh = Allocation(max_vips=MAX_VIPS, max_backends=MAX_BACKENDS)
    clock = time.perf_counter()
    try:
        plan = compile_plan(
            config,
            fresh,
            lb_ipv4=lb_ipv4,
            lb_ipv6=lb_ipv6_of(config, device),
            resolve_next_hop=next_hops,
        )
    except (PlanError, ValueError) as error:
        raise StartupError(str(error)) from error
    return Checked(ifindex, lb_ipv4, plan, time.perf_counter() - clock)


def load_write_attach(
    config: Config,
    options: DaemonOptions,
    checked: Checked,
    next_hops: NextHops,
    events: EventLog,
    on_verdict: Callable[[], None],
) -> Started:
    """Load (or adopt), write ``checked.plan`` (re-planned on the adopted allocation) and
    attach (unless options.attach is off). On failure the adopted maps get their state back
    and nothing is left open."""
    device = config.device or ""
    balancer = load_balancer(
        device, checked.ifindex, conntrack_size=config.conntrack_size, pin_root=options.pin_root
    )
    current = None
    written: Plan | None = None
    try:
        if options.attach:
            # Adopted maps are live: everything that can refuse the start is checked before
            # the first write.
            check_attachable(balancer, config.xdp_mode.value)
        clock = time.perf_counter()
        # Adoption needs the state, not the flows: diff() never looks at conntrack.
        current = balancer.maps.read_state(conntrack=False) if balancer.adopted else None
        read_seconds, clock = time.perf_counter() - clock, time.perf_counter()
        plan = checked.plan
        if current is not None:
            allocation = allocation_from_state(
                current, max_vips=MAX_VIPS, max_backends=MAX_BACKENDS
            )
            plan = compile_plan(
                config,
                allocation,
                lb_ipv4=checked.lb_ipv4,
                resolve_next_hop=next_hops,
                previous_tables=checked.plan.tables,
            )
        build_seconds = checked.build_seconds + time.perf_counter() - clock
        clock = time.perf_counter()
        written = plan
        try:
            applied = apply_operations(balancer.maps, diff(current, plan.state))
        except (LibbpfError, OSError, ValueError) as error:
            raise StartupError(f"the data plane refused the state: {error}") from error
        # The ICMP maps are the new program's own: filled before it is swapped in.
        monitor = HealthMonitor(
            config, events, on_verdict=on_verdict, icmp_maps=IcmpMaps.of_object(balancer.obj)
        )
        monitor.sync_watch()
        apply_seconds = time.perf_counter() - clock
        how = (
            attach_balancer(balancer, config.xdp_mode.value)
            if options.attach
            else "loaded, not attached"
        )
    except BaseException:
        if written is not None and current is not None:
            put_back(balancer, written, current)
        balancer.close()
        raise
    warnings = []
    pinned_sets = balancer.maps.conntrack_mask + 1
    if balancer.adopted and pinned_sets != conntrack_sets_for(config.conntrack_size):
        warnings.append(
            f"conntrack_size is {config.conntrack_size} but the adopted connection table "
            f"holds {pinned_sets * CONNTRACK_WAYS} flows (it keeps the size it was made "
            f"with); `rusty-rail detach --device {device}` and start again to resize it "
            "(tracked flows are then lost)"
        )
        log.warning("%s", warnings[-1])
    if balancer.pins_private:
        warnings.append(private_pins_warning(balancer))
        log.warning("%s", warnings[-1])
    uncounted = [stat.name for stat in Stat if stat >= balancer.maps.stats.max_entries]
    if uncounted:
        warnings.append(
            f"the adopted counters were made by an earlier version: {', '.join(uncounted)} "
            f"{'is' if len(uncounted) == 1 else 'are'} not counted; `rusty-rail detach "
            f"--device {device}` and start again to count them (tracked flows are then lost)"
        )
        log.warning("%s", warnings[-1])
    log.info(
        "balancer %s on %s (ifindex %d): %s; lb address %s; %d VIPs%s, %d backends; "
        "%s pinned state; %d map updates (tables built in %.0f ms, written in %.0f ms)",
        balancer.program.name,
        device,
        checked.ifindex,
        how,
        checked.lb_ipv4,
        len(plan.state.vips),
        " + default set" if config.default_backends else "",
        len(plan.state.backends),
        "adopted the" if balancer.adopted else "no",
        applied,
        build_seconds * 1000,
        apply_seconds * 1000,
    )
    log_unresolved(next_hops)
    timings = {
        "read_state_seconds": read_seconds,
        "build_seconds": build_seconds,
        "apply_seconds": apply_seconds,
    }
    return Started(balancer, plan, monitor, applied, timings, warnings)


def put_back(balancer: Balancer, written: Plan, adopted: DataplaneState) -> None:
    """A start failed after writing the adopted (live) maps: give the running program back
    the state it had."""
    try:
        apply_operations(balancer.maps, diff(written.state, adopted))
    except (LibbpfError, OSError, ValueError) as error:
        log.error(
            "the start failed after writing the pinned maps of %s, and putting them back "
            "failed too (%s): the running balancer may forward by a mix of both states; "
            "start again, or `rusty-rail detach --device %s`",
            balancer.ifname,
            error,
            balancer.ifname,
        )


def log_unresolved(next_hops: NextHops) -> None:
    """One warning per backend without a next hop (its packets are dropped until then)."""
    for address, next_hop in sorted(next_hops.known.items(), key=lambda i: str(i[0])):
        if next_hop is None:
            why = next_hops.problems.get(address, "its neighbour has not answered yet")
            log.warning(
                "backend %s has no next hop (%s); its packets are dropped and counted as "
                "DROP_NO_NEXTHOP until it has one",
                address,
                why,
            )
