"""The events a change of the desired state leaves: what it changed, item by item (a VIP or
backend added, removed, re-weighted, its admin state or settings changed; the node's own
settings), so that `ctl events` answers who changed what, and when (docs/api.md); and each
backend whose next hop went missing or came back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from rusty_rail._types import IPAddress
from rusty_rail.config import Backend, Config
from rusty_rail.control.events import EventLog
from rusty_rail.control.nexthops import NextHops
from rusty_rail.control.plan import Plan, services_of

__all__ = ["MAX_CHANGE_EVENTS", "config_changes", "record_change", "record_next_hops"]

#: Items of one change logged one by one; a bigger change (a whole configuration replaced)
#: is logged as that many items and one summary.
MAX_CHANGE_EVENTS: Final = 20

#: (VIP key or "default" or "*" for the node's settings, backend address or None, before,
#: after); before or after None for an addition or a removal.
Item = tuple[str, str | None, str | None, str | None]


def _backend(backend: Backend) -> str:
    return f"weight {backend.weight}, {backend.state.value}"


def _settings(config: Config, name: str) -> dict[str, object]:
    """A service's settings besides its backends (None for the default set)."""
    for vip in config.vips:
        if str(vip.key) == name:
            return {k: v for k, v in vip.model_dump(mode="json").items() if k != "backends"}
    return {}


def config_changes(old: Config, new: Config) -> Iterator[Item]:
    """Every difference between ``old`` and ``new`` that an operator would name."""
    before = {s.name: s for s in services_of(old)}
    after = {s.name: s for s in services_of(new)}
    for name in before.keys() - after.keys():
        yield name, None, f"{len(before[name].backends)} backends", None
    for name in after.keys() - before.keys():
        yield name, None, None, f"{len(after[name].backends)} backends"
    for name in sorted(before.keys() & after.keys()):
        old_settings, new_settings = _settings(old, name), _settings(new, name)
        changed = sorted(k for k in old_settings.keys() | new_settings.keys()
                         if old_settings.get(k) != new_settings.get(k))  # fmt: skip
        if changed:
            yield (name, None,
                   ", ".join(f"{k} {old_settings.get(k)}" for k in changed),
                   ", ".join(f"{k} {new_settings.get(k)}" for k in changed))  # fmt: skip
        old_backends = {b.address: b for b in before[name].backends}
        new_backends = {b.address: b for b in after[name].backends}
        for address in sorted(old_backends.keys() | new_backends.keys(), key=str):
            was, now = old_backends.get(address), new_backends.get(address)
            if was == now:
                continue
            yield (name, str(address), None if was is None else _backend(was),
                   None if now is None else _backend(now))  # fmt: skip
    node_old = old.model_dump(mode="json", exclude={"vips", "default_backends"})
    node_new = new.model_dump(mode="json", exclude={"vips", "default_backends"})
    keys = sorted(
        k for k in node_old.keys() | node_new.keys() if node_old.get(k) != node_new.get(k)
    )
    if keys:
        yield ("*", None, ", ".join(f"{k} {node_old.get(k)}" for k in keys),
               ", ".join(f"{k} {node_new.get(k)}" for k in keys))  # fmt: skip


def record_change(
    events: EventLog, old: Config, new: Config, source: str, actor: str | None, generation: int
) -> None:
    """One "change" event per item (at most MAX_CHANGE_EVENTS, then one counting the rest)."""
    who = f"{source} from {actor}" if actor else source
    items = list(config_changes(old, new))
    for vip, backend, before, after in items[:MAX_CHANGE_EVENTS]:
        what = "added" if before is None else "removed" if after is None else "changed"
        events.add("change", vip, backend, before, after, source,
                   f"{what} by {who} (generation {generation})")  # fmt: skip
    if len(items) > MAX_CHANGE_EVENTS:
        events.add(
            "change", "*", None, None, None, source,
            f"and {len(items) - MAX_CHANGE_EVENTS} more items changed by {who} "
            f"(generation {generation})",
        )  # fmt: skip


def record_next_hops(
    events: EventLog,
    config: Config,
    next_hops: NextHops,
    before: Plan | None,
    after: Plan,
    known: set[IPAddress],
) -> None:
    """A "next-hop" event per VIP for each backend whose next hop went missing or came back
    (``known``: the addresses configured before the change)."""
    was = set(before.unresolved) if before is not None else set()
    now = set(after.unresolved)
    if was == now:
        return
    for service in services_of(config):
        for backend in service.backends:
            address = backend.address
            if address in now and address not in was:
                problem = next_hops.problems.get(address)
                events.add(
                    "next-hop", service.name, str(address),
                    "resolved" if address in known else None,
                    "unresolved", "neighbour",
                    f"{problem or 'no answer to ARP / neighbour solicitation yet'}: no new "
                    "flows until it resolves",
                )  # fmt: skip
            elif address in was and address not in now:
                hop = next_hops(address)
                where = f" {hop.dst_mac.hex(':')} (ifindex {hop.ifindex})" if hop else ""
                events.add(
                    "next-hop", service.name, str(address), "unresolved", "resolved",
                    "neighbour", f"next hop{where}: takes new flows",
                )  # fmt: skip
