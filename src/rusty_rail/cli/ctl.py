"""`rusty-rail ctl`: an ipvsadm-like client of a running daemon's REST API, noun then verb:
`vip add|del|list`, `backend add|del|drain|up|down|weight`, `flow list|lookup`; dry-run a
change, watch rates, follow health events. The older flat spellings (`add-vip`, `remove`, `rm`,
`drain`, ...) still work, unlisted.

Every command is one or two HTTP requests (rusty_rail.api.client); what it prints is rendered
with rich.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from rusty_rail.api.client import (
    DEFAULT_URL,
    TOKEN_VARIABLE,
    URL_VARIABLE,
    ApiClient,
    ApiFailed,
    ApiUnreachable,
    api_url,
    vip_path,
)
from rusty_rail.api.credentials import DEFAULT_TOKEN_FILE, local_token
from rusty_rail.cli import EXIT_OK, EXIT_USAGE, Subparsers
from rusty_rail.cli.ctl_cluster import add_cluster_command, add_node_command
from rusty_rail.cli.ctl_render import (
    event_line,
    flows_title,
    rate_table,
    vip_table,
)
from rusty_rail.cli.ctl_writes import (
    Context,
    _add_change_commands,
    _config,
    _plan,
    _plan_config,
    _write,
)

EXIT_REFUSED: Final = 1
EXIT_UNREACHABLE: Final = 3

HELP: Final = "view and change a running daemon through its REST API (ipvsadm-like)"
DESCRIPTION: Final = (
    "A client of `rusty-rail run`'s REST API (docs/operations.md): list VIPs and backends, "
    "add/delete/drain/weigh backends, dry-run a change, explain a flow, watch rates. Commands "
    "are noun then verb (`vip add`, `backend del`); the older spellings (add-vip, del-vip, add, "
    "remove, rm, drain, up, down, weight, list, ls, lookup, flows) still work. Exit status: "
    "0 done, 1 refused by the daemon, 2 usage, 3 no daemon."
)
EPILOG: Final = """Examples:
  rusty-rail ctl vip list
  rusty-rail ctl backend add 198.18.100.1:80/tcp 198.18.2.4 --weight 2
  rusty-rail ctl backend drain 198.18.100.1:80/tcp 198.18.2.1
  rusty-rail ctl plan backend del 198.18.100.1:80/tcp 198.18.2.1
  rusty-rail ctl flow lookup '198.18.5.5:40000->198.18.100.1:80/tcp'
  rusty-rail ctl backend add '[2001:2::10]:80/tcp' 2001:2::21
  rusty-rail ctl flow lookup '[2001:2::1]:40000->[2001:2::10]:80/tcp'"""


# --- commands ---------------------------------------------------------------------------------


def _list(ctx: Context, args: argparse.Namespace) -> None:
    vips = [ctx.client.get(vip_path(args.vip))] if args.vip else ctx.client.get("/v1/vips")["vips"]
    ctx.emit(vips, vip_table)


def _lookup(ctx: Context, args: argparse.Namespace) -> None:
    query = urllib.parse.urlencode({"flow": args.flow})
    decision = ctx.client.get(f"/v1/lookup?{query}")

    def render(d: Mapping[str, Any]) -> str:
        target = d["backend"] or "no backend"
        return f"{d['flow']} -> {target} ({d['outcome']}, {d['match']})\n  {d['explanation']}"

    ctx.emit(decision, render)


def _flows(ctx: Context, args: argparse.Namespace) -> None:
    query = {"limit": str(args.limit)}
    if args.vip:
        query["vip"] = args.vip
    answer = ctx.client.get(f"/v1/flows?{urllib.parse.urlencode(query)}")

    def render(data: Mapping[str, Any]) -> Table:
        table = Table(box=box.SIMPLE, show_edge=False, title=flows_title(data))
        for column in ("flow", "VIP", "backend", "state", "entry"):
            table.add_column(column)
        for flow in data["flows"]:
            table.add_row(flow["flow"], flow["vip"] or "-", flow["backend"] or "-",
                          flow["backend_state"] or "-", flow["conntrack"])  # fmt: skip
        return table

    ctx.emit(answer, render)


def _health(ctx: Context, args: argparse.Namespace) -> int:
    response = ctx.client.request("GET", "/healthz", check=False)
    health = response.body

    def render(h: Mapping[str, Any]) -> str:
        where = f"attached to {h['device']}" if h["attached"] else f"not attached to {h['device']}"
        lines = [f"{h['status']} (generation {h['generation']}, {where})"]
        lines += [f"  reason: {reason}" for reason in h["reasons"]]
        lines += [f"  warning: {warning}" for warning in h.get("warnings", [])]
        if h.get("unresolved_next_hops"):
            lines.append(
                "  no next hop (no new flows until it resolves): "
                + ", ".join(h["unresolved_next_hops"])
            )
        backend_health = h.get("backend_health", {})
        for name, vip in h["vips"].items():
            lines.append(f"  {name}: fingerprint {vip['fingerprint']} gen {vip['generation']}")
            summary = backend_health.get(name)
            if summary is None:
                continue
            if summary["fail_open"]:
                lines.append("    every backend is unhealthy: fail-open, sending to all")
            elif summary["all_unhealthy"]:
                lines.append("    every backend is unhealthy: dropping (all_unhealthy = drop)")
            for status in ("unhealthy", "suspect"):
                if summary[status]:
                    lines.append(f"    {status}: {', '.join(summary[status])}")
        return "\n".join(lines)

    ctx.emit(health, render)
    return EXIT_OK if response.status == 200 else EXIT_REFUSED


def _events(ctx: Context, args: argparse.Namespace) -> None:
    since = args.since
    while True:
        query = {"since": str(since), "limit": "1000"}
        if args.vip:
            query["vip"] = args.vip
        answer = ctx.client.get(f"/v1/events?{urllib.parse.urlencode(query)}")
        for event in answer["events"]:
            if ctx.json:
                ctx.console.print(json.dumps(event, sort_keys=True), markup=False, highlight=False)
            else:
                ctx.console.print(event_line(event), markup=False, highlight=False)
            since = max(since, event["id"])
        if not args.follow:
            return
        time.sleep(args.interval)


def _rates(
    before: Mapping[str, Any], after: Mapping[str, Any], seconds: float
) -> list[tuple[str, str, float, float]]:
    old = {
        (vip["vip"], backend["address"]): backend["stats"]
        for vip in before["vips"]
        for backend in vip["backends"]
    }
    rates = []
    for vip in after["vips"]:
        for backend in vip["backends"]:
            was = old.get((vip["vip"], backend["address"]), {"packets": 0, "bytes": 0})
            now = backend["stats"]
            rates.append(
                (
                    vip["vip"],
                    backend["address"],
                    max(now["packets"] - was["packets"], 0) / seconds,
                    max(now["bytes"] - was["bytes"], 0) * 8 / seconds,
                )
            )
    return rates


def _watch(ctx: Context, args: argparse.Namespace) -> None:
    from rich.live import Live

    previous = ctx.client.get("/v1/vips")
    taken = time.monotonic()
    rounds = 0
    live = Live(console=ctx.console, auto_refresh=False) if ctx.console.is_terminal else None
    try:
        if live is not None:
            live.start()
        while args.count is None or rounds < args.count:
            time.sleep(args.interval)
            current = ctx.client.get("/v1/vips")
            now = time.monotonic()
            rates = _rates(previous, current, now - taken)
            previous, taken, rounds = current, now, rounds + 1
            if ctx.json:
                ctx.console.print_json(json.dumps([
                    {"vip": v, "backend": b, "packets_per_second": p, "bits_per_second": r}
                    for v, b, p, r in rates
                ]))  # fmt: skip
            elif live is not None:
                live.update(rate_table(rates, args.interval), refresh=True)
            else:
                ctx.console.print(rate_table(rates, args.interval))
    finally:
        if live is not None:
            live.stop()


def _add_read_commands(commands: Subparsers, verbs: dict[str, Subparsers]) -> None:
    """The read commands: `vip list` and `flow list|lookup` (old spellings `list`/`ls`, `flows`,
    `lookup`, unlisted), then `watch`, `health`, `events` and `config`."""

    def listing_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("vip", nargs="?", help="only this VIP")
        parser.set_defaults(run=_list)

    def lookup_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "flow",
            help="e.g. 198.18.5.5:40000->198.18.100.1:80/tcp or"
            " [2001:2::1]:40000->[2001:2::10]:80/tcp",
        )
        parser.set_defaults(run=_lookup)

    def flows_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--vip", help="only this VIP's flows")
        parser.add_argument(
            "--limit", type=int, default=50, metavar="N", help="at most N flows (default 50)"
        )
        parser.set_defaults(run=_flows)

    flow = commands.add_parser("flow", help="tracked flows: list, lookup")
    verbs["flow"] = flow.add_subparsers(dest="flow_verb", metavar="VERB", required=True)
    for noun, verb, help_text, add_arguments, old_names in (
        ("vip", "list", "VIPs and backends (ipvsadm -Ln)", listing_arguments, ("list", "ls")),
        ("flow", "list", "a sample of tracked flows and their backends", flows_arguments,
         ("flows",)),
        ("flow", "lookup", "which backend a flow gets now, and why", lookup_arguments,
         ("lookup",)),
    ):  # fmt: skip
        add_arguments(verbs[noun].add_parser(verb, help=help_text, description=help_text))
        first, *aliases = old_names
        add_arguments(commands.add_parser(first, aliases=aliases))
    watch = commands.add_parser("watch", help="live packet and bit rates per backend")
    watch.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        metavar="SECONDS",
        help=f"seconds between samples, at least {MIN_INTERVAL:g} (default 1)",
    )
    watch.add_argument("--count", type=int, help="stop after this many updates")
    watch.set_defaults(run=_watch)
    health = commands.add_parser("health", help="/healthz: exit 0 when healthy, 1 when not")
    health.set_defaults(run=_health)
    events = commands.add_parser(
        "events",
        help="health events: backends going unhealthy or healthy and why, fail-open, floors",
        description="Health events, oldest first: each backend's transitions with their cause "
        "(check, icmp, probe, admin), a VIP failing open, the ICMP floor holding. With "
        "--json, one JSON object per line.",
        epilog="Example: rusty-rail ctl events --follow",
    )
    events.add_argument("--vip", help="only this VIP's events (a VIP key, or default)")
    events.add_argument("--since", type=int, default=0, help="only events after this id")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument(
        "--interval",
        type=_interval,
        default=0.5,
        metavar="SECONDS",
        help=f"seconds between polls with --follow, at least {MIN_INTERVAL:g} (default 0.5)",
    )
    events.set_defaults(run=_events)
    config = commands.add_parser(
        "config",
        help="get or replace the whole desired state",
        description="get prints the desired state with its ETag; put applies a file only if "
        "the desired state is still the one it was read from (If-Match), unless --force.",
        epilog="Example: rusty-rail ctl config get > lb.json; (edit lb.json); "
        "rusty-rail ctl config put lb.json",
    )
    config.add_argument("action", choices=["get", "put"], help="get or put")
    config.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help="for put: what `config get` wrote, or a TOML (.toml) or JSON configuration",
    )
    config.add_argument(
        "--force",
        action="store_true",
        help="put: replace the desired state even if it changed since FILE was read (or FILE "
        "has no ETag)",
    )
    config.add_argument(
        "--dry-run", action="store_true", help="put: show what would move; apply nothing"
    )
    config.set_defaults(run=_config)


def add_arguments(ctl: argparse.ArgumentParser) -> None:
    """The `ctl` options and sub-commands, on the parser made for it."""
    ctl.add_argument(
        "--api",
        type=_api_argument,
        default=os.environ.get(URL_VARIABLE, DEFAULT_URL),
        metavar="ADDRESS:PORT",
        help=f"the daemon's API: ADDRESS:PORT as `run --api` takes it, or a URL (default "
        f"${URL_VARIABLE}, else {DEFAULT_URL})",
    )
    ctl.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"bearer token for writes (else ${TOKEN_VARIABLE}, else {DEFAULT_TOKEN_FILE} "
        "when readable)",
    )
    ctl.add_argument("--json", action="store_true", help="print the API's JSON")
    commands = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    verbs = _add_change_commands(commands, _write, "VIPs: list, add, del (ipvsadm -Ln, -A, -D)")
    plan = commands.add_parser(
        "plan",
        help="dry run of a change: the share of table slots and tracked flows it would move",
        description="Dry run: what the change would move, per VIP; nothing is applied.",
        epilog="Example: rusty-rail ctl plan backend del 198.18.100.1:80/tcp 198.18.2.1",
    )
    changes = plan.add_subparsers(dest="plan_command", metavar="CHANGE", required=True)
    _add_change_commands(changes, _plan, "VIPs: add, del (ipvsadm -A, -D)")
    whole = changes.add_parser(
        "config",
        help="a whole configuration file (what `config put` would do)",
        description="Dry run of `ctl config put FILE`: what the whole file would move.",
        epilog="Example: rusty-rail ctl plan config lb.toml",
    )
    whole.add_argument(
        "file", metavar="FILE", help="what `config get` wrote, or a TOML or JSON configuration"
    )
    whole.set_defaults(run=_plan_config)
    _add_read_commands(commands, verbs)
    add_cluster_command(commands)
    add_node_command(commands)
    _json_everywhere(ctl)


#: The shortest interval between two polls of the API: faster is a load, not a view.
MIN_INTERVAL: Final = 0.1


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a number of seconds") from None
    if not value >= MIN_INTERVAL or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: at least {MIN_INTERVAL:g} s, and finite")
    return value


def _json_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--json`` after any sub-command too (`ctl vip list --json`), as gobgp and cilium take
    -j / -o json anywhere: every sub-parser gets it, without overriding one given earlier."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "--json" not in sub._option_string_actions:
                    sub.add_argument(
                        "--json",
                        action="store_true",
                        default=argparse.SUPPRESS,
                        help="print the API's JSON",
                    )
                _json_everywhere(sub)


def _api_argument(text: str) -> str:
    try:
        return api_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(commands: Subparsers) -> None:
    """`rusty-rail ctl`."""
    ctl = commands.add_parser(
        "ctl",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(ctl)
    ctl.set_defaults(handler=run)


def failure_line(error: ApiFailed) -> str:
    """What went wrong, worded by whose mistake it is: "not found" and "error" for the
    request, "the daemon failed" for the daemon."""
    body = error.body if isinstance(error.body, dict) else {}
    message = body.get("message") or body.get("detail") or str(error.body)
    if error.status == HTTPStatus.NOT_FOUND:
        return f"not found: {message}"
    if error.status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        return f"the daemon failed ({error.status}): {message}"
    return f"error: {message}"


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed `ctl` command; returns the exit status."""
    token = None
    stream = out or sys.stdout
    # Piped output is read by programs and people alike: wide enough for whole addresses.
    width = None if stream.isatty() else 200
    console = Console(file=stream, soft_wrap=True, width=width, emoji=False)
    errors = Console(file=err or sys.stderr, soft_wrap=True, emoji=False)
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            errors.print(
                f"rusty-rail ctl: --token-file: cannot read {args.token_file}: {error.strerror}",
                markup=False,
            )
            return EXIT_USAGE
    token = token or os.environ.get(TOKEN_VARIABLE) or local_token()
    ctx = Context(ApiClient(args.api, token), console, args.json)
    if getattr(args, "ctl_command", None) == "config" and args.action == "put" and not args.file:
        errors.print("rusty-rail ctl config put: give the configuration FILE", markup=False)
        return EXIT_USAGE
    try:
        status = args.run(ctx, args)
    except ApiUnreachable as error:
        errors.print(f"rusty-rail ctl: {error}", markup=False)
        return EXIT_UNREACHABLE
    except ApiFailed as error:
        errors.print(f"rusty-rail ctl: {failure_line(error)}", markup=False)
        if error.status == HTTPStatus.UNAUTHORIZED:
            errors.print(
                f"rusty-rail ctl: writes need the API's token: run as root (ctl then reads "
                f"{DEFAULT_TOKEN_FILE}), or give --token-file FILE or ${TOKEN_VARIABLE}",
                markup=False,
            )
        body = error.body if isinstance(error.body, dict) else {}
        for problem in body.get("problems", []):
            where = problem.get("path") or "(request)"
            value = f": {problem['value']}" if "value" in problem else ""
            at = f"{problem['at']}: " if "at" in problem else ""
            errors.print(f"  {at}{where}{value}: {problem.get('reason')}", markup=False)
        return EXIT_REFUSED
    except (OSError, ValueError, tomllib.TOMLDecodeError) as error:
        errors.print(f"rusty-rail ctl: {error}", markup=False)
        return EXIT_USAGE
    return status if isinstance(status, int) else EXIT_OK
