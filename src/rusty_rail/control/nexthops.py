"""Where frames to the backends leave: the balancer's own address and the backends' next
hops, resolved through the kernel and cached while the backends are configured."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from rusty_rail._types import IPAddress
from rusty_rail.config import Config
from rusty_rail.control.errors import StartupError
from rusty_rail.control.plan import (
    PlanError,
    services_of,
)
from rusty_rail.dataplane import netlink
from rusty_rail.model.state import NextHop


def lb_address_of(config: Config, device: str) -> IPv4Address:
    """The balancer's outer address: configured, or the device's only IPv4 address."""
    if config.lb_address is not None:
        if not isinstance(config.lb_address, IPv4Address):
            raise PlanError(f"lb_address {config.lb_address}: only IPv4 is supported yet")
        return config.lb_address
    candidates = [a for a in netlink.interface_addresses(device) if isinstance(a, IPv4Address)]
    if len(candidates) != 1:
        found = ", ".join(map(str, candidates)) or "none"
        raise StartupError(
            f"cannot tell the balancer's address on {device}: it has {len(candidates)} IPv4 "
            f"addresses ({found}); set lb_address (or RR_LB_ADDRESS)"
        )
    return candidates[0]


def lb_ipv6_of(config: Config, device: str) -> IPv6Address | None:
    """The balancer's outer IPv6 address: configured (lb_address_ipv6), or the device's only
    IPv6 address of global scope (as the kernel says it: not link-local, loopback or multicast;
    unique local fd00::/8 counts); None when it has none or several (outer IPv6 GRE is then
    never local, and the plan refuses IPv6 backends)."""
    if config.lb_address_ipv6 is not None:
        if not isinstance(config.lb_address_ipv6, IPv6Address):
            raise PlanError(f"lb_address_ipv6 {config.lb_address_ipv6}: not an IPv6 address")
        return config.lb_address_ipv6
    candidates = [
        a
        for a in netlink.interface_addresses(device)
        if isinstance(a, IPv6Address)
        and not (a.is_link_local or a.is_loopback or a.is_multicast or a.is_unspecified)
    ]
    return candidates[0] if len(candidates) == 1 else None


@dataclass
class NextHops:
    """Next hops of the backends, resolved through the kernel and cached."""

    known: dict[IPAddress, NextHop | None] = field(default_factory=dict)
    problems: dict[IPAddress, str] = field(default_factory=dict)

    @staticmethod
    def probe(
        addresses: Iterable[IPAddress], wait: float = 0.0
    ) -> tuple[dict[IPAddress, NextHop | None], dict[IPAddress, str]]:
        """Resolve ``addresses`` without touching the cache (all at once: the kernel asks for
        every neighbour before the first answer), waiting up to ``wait`` seconds for the
        ones whose neighbours have not answered yet."""
        pending = set(addresses)
        found: dict[IPAddress, NextHop | None] = {}
        problems: dict[IPAddress, str] = {}
        deadline = time.monotonic() + wait
        while pending:
            with netlink.NextHopResolver() as resolver:
                round_found, round_problems = resolver.resolve_many(sorted(pending, key=str))
            found.update(round_found)
            for address in round_found:
                if address in round_problems:
                    problems[address] = round_problems[address]
                else:
                    problems.pop(address, None)
            pending = {a for a in pending if found[a] is None and a not in problems}
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return found, problems

    def update(
        self, found: Mapping[IPAddress, NextHop | None], problems: Mapping[IPAddress, str]
    ) -> bool:
        """Take a probe's answers; True when any next hop changed."""
        changed = any(self.known.get(a, ...) != hop for a, hop in found.items())
        self.known.update(found)
        for address in found:
            if address in problems:
                self.problems[address] = problems[address]
            else:
                self.problems.pop(address, None)
        return changed

    def resolve(self, addresses: Iterable[IPAddress], wait: float = 0.0) -> None:
        self.update(*self.probe(addresses, wait))

    def take_new(
        self, found: Mapping[IPAddress, NextHop | None], problems: Mapping[IPAddress, str]
    ) -> None:
        """Take a probe's answers for addresses not known yet (a change under the lock may
        have resolved some meanwhile; its answers stay)."""
        fresh = {a: hop for a, hop in found.items() if a not in self.known}
        self.update(fresh, {a: why for a, why in problems.items() if a in fresh})

    def keep_only(self, addresses: set[IPAddress]) -> None:
        """Forget every address but ``addresses``."""
        for address in [a for a in self.known if a not in addresses]:
            self.known.pop(address, None)
            self.problems.pop(address, None)

    def __call__(self, address: IPAddress) -> NextHop | None:
        return self.known.get(address)


def backend_addresses(config: Config) -> set[IPAddress]:
    return {backend.address for service in services_of(config) for backend in service.backends}
