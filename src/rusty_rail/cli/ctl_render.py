"""How `rusty-rail ctl` shows the API's answers as text: tables of VIPs, rates and dry runs,
the line a write prints, an event as a line."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.table import Table

from rusty_rail.timestamps import from_rfc3339


def size(count: float, unit: str = "") -> str:
    for suffix in ("", "k", "M", "G", "T"):
        if abs(count) < 1000:
            return f"{count:.0f}{suffix}{unit}" if suffix == "" else f"{count:.1f}{suffix}{unit}"
        count /= 1000
    return f"{count:.1f}P{unit}"


def plural(count: int, noun: str) -> str:
    """``1 map update``, ``2 map updates``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def vip_table(vips: Sequence[Mapping[str, Any]]) -> Table:
    """VIPs and backends, ipvsadm -Ln style."""
    table = Table(box=box.SIMPLE, show_edge=False)
    for column, justify in (
        ("VIP / backend", "left"),
        ("weight", "right"),
        ("admin", "left"),
        ("data plane", "left"),
        ("slots", "right"),
        ("flows", "right"),
        ("next hop", "left"),
        ("packets", "right"),
        ("bytes", "right"),
        ("new flows", "right"),
        ("drops", "right"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for vip in vips:
        live = vip["table"]
        summary = "no table" if live is None else f"M={live['size']} fp {live['fingerprint'][:12]}"
        affinity = vip.get("affinity", "5-tuple")
        if affinity != "5-tuple":
            summary += f", affinity {affinity}"
        table.add_row(
            f"[bold]{vip['vip']}[/bold]",
            "",
            "",
            summary,
            "",
            _flows_tracked(vip),
            "",
            size(vip["stats"]["packets"]),
            size(vip["stats"]["bytes"], "B"),
            _vip_total(vip.get("new_flows")),
            _drops(vip.get("drops")),
        )
        for backend in vip["backends"]:
            hop = backend["next_hop"]
            table.add_row(
                f"  -> {backend['address']}",
                str(backend["weight"]),
                backend["state"],
                backend["dataplane_state"],
                f"{backend['slot_share']:.1%}",
                _flows_tracked(backend),
                hop["dst_mac"] if hop else f"[red]{backend['next_hop_problem'] or 'unresolved'}",
                size(backend["stats"]["packets"]),
                size(backend["stats"]["bytes"], "B"),
                "",
                "",
            )
    return table


def _vip_total(counts: Mapping[str, int] | None) -> str:
    """A VIP's count of packets; "-" from a daemon that does not count it."""
    return "-" if counts is None else size(counts["packets"])


def _drops(drops: Mapping[str, Mapping[str, int]] | None) -> str:
    """A VIP's drops in all, then the reasons that have some: ``3 (no_backend 3)``."""
    if drops is None:
        return "-"
    total = sum(counts["packets"] for counts in drops.values())
    reasons = [f"{reason} {size(c['packets'])}" for reason, c in drops.items() if c["packets"]]
    return size(total) + (f" ({', '.join(reasons)})" if reasons else "")


def _flows_tracked(view: Mapping[str, Any]) -> str:
    """The view's tracked flows, exact (a drained backend is empty at 0); "-" from a daemon
    that does not count them."""
    flows = view.get("flows_tracked")
    return "-" if flows is None else str(flows)


def flows_title(answer: Mapping[str, Any]) -> str:
    """``17 flows`` when the sample is all of them, else ``3 of 17 flows shown``."""
    shown = len(answer["flows"])
    total = answer.get("total")
    if total is None:  # a daemon that does not count them
        return plural(shown, "flow") + ("" if answer.get("complete") else " (a sample)")
    if shown >= total:
        return plural(total, "flow")
    return f"{shown} of {plural(total, 'flow')} shown"


def rate_table(rates: Sequence[tuple[str, str, float, float]], interval: float) -> Table:
    table = Table(title=f"rates over {interval:g} s", box=box.SIMPLE, show_edge=False)
    for column in ("VIP", "backend", "packets/s", "bits/s"):
        table.add_column(column, justify="left" if column in ("VIP", "backend") else "right")
    for vip, backend, pps, bps in rates:
        table.add_row(vip, backend, size(pps), size(bps, "b"))
    return table


def change_line(result: Mapping[str, Any]) -> str:
    if not result["changed"]:
        return f"no change (generation {result['generation']})"
    rebuilt = ", ".join(result["tables_rebuilt"]) or "none"
    updates = plural(result["map_updates"], "map update")
    line = (
        f"applied: generation {result['generation']}, {updates}, "
        f"tables rebuilt: {rebuilt} (build {result['build_ms']:.1f} ms, apply "
        f"{result['apply_ms']:.1f} ms)"
    )
    unresolved = result.get("unresolved_next_hops")
    if unresolved:
        line += (
            f"\nno next hop yet for {', '.join(unresolved)}: no new flows until it resolves "
            "(`ctl health`, `ctl events`)"
        )
    return line


def plan_table(plan: Mapping[str, Any]) -> Table:
    table = Table(
        title=f"dry run over {plan['flows_examined']} tracked flows: nothing was applied",
        box=box.SIMPLE,
        show_edge=False,
    )
    for column in ("VIP", "change", "table slots moved", "flows tracked", "flows moved"):
        table.add_column(column, justify="left" if column in ("VIP", "change") else "right")
    for name, view in plan["vips"].items():
        moved = view["table_slots_moved"]
        table.add_row(
            name,
            view["change"],
            "n/a" if moved is None else f"{moved:.2%}",
            str(view["flows_tracked"]),
            f"{view['flows_moved']} ({view['flows_moved_share']:.1%})",
        )
    return table


def event_line(event: Mapping[str, Any]) -> str:
    """One event as a line: when (local time), what, and why."""
    at = from_rfc3339(event["at"])
    when = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"
    who = event["vip"] + (f" {event['backend']}" if event["backend"] else "")
    change = f"{event['from']} -> {event['to']}" if event["from"] or event["to"] else event["kind"]
    return f"{when} #{event['id']} {who}: {change} ({event['cause']}: {event['detail']})"
