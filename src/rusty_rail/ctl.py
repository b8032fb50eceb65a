"""`rusty-rail ctl`: an ipvsadm-like client of a running daemon's REST API: list VIPs and
backends, add, remove, drain and weigh backends, dry-run a change, explain a flow, watch rates,
follow health events.

Every command is one or two HTTP requests (stdlib urllib); what it prints is rendered with rich.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

DEFAULT_URL: Final = "http://127.0.0.1:9180"
URL_VARIABLE: Final = "RUSTY_RAIL_API"
TOKEN_VARIABLE: Final = "RUSTY_RAIL_API_TOKEN"
EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3


class ApiUnreachable(RuntimeError):
    """No daemon answers at the URL."""


class ApiFailed(RuntimeError):
    """The daemon answered with an error; ``body`` is its JSON error (docs/api.md)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"{status}: {message or body}")


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any


class ApiClient:
    """A small synchronous client of the API (also what the tests and the bench use)."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        headers: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> Response:
        """One request; the JSON answer decoded (text for /metrics). Raises ApiUnreachable,
        or ApiFailed for a 4xx/5xx when ``check``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return _response(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as error:
            response = _response(error.code, dict(error.headers), error.read())
            if check:
                raise ApiFailed(response.status, response.body) from None
            return response
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            raise ApiUnreachable(
                f"cannot reach the rusty-rail API at {self.url}: {reason}. Is `rusty-rail run` "
                f"running here, with its API on? Point at it with --api URL or ${URL_VARIABLE}."
            ) from None

    def get(self, path: str) -> Any:
        return self.request("GET", path).body

    def put(self, path: str, body: object) -> Any:
        return self.request("PUT", path, body).body

    def patch(self, path: str, body: object) -> Any:
        return self.request("PATCH", path, body).body

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path).body

    def post(self, path: str, body: object) -> Any:
        return self.request("POST", path, body).body


def _response(status: int, headers: dict[str, str], raw: bytes) -> Response:
    kind = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    text = raw.decode("utf-8", "replace")
    if "json" in kind:
        try:
            return Response(status, headers, json.loads(text))
        except ValueError:
            pass
    return Response(status, headers, text)


def vip_path(vip: str) -> str:
    """The path of a VIP (or ``default``); the key's / is percent-encoded."""
    return "/v1/vips/" + urllib.parse.quote(vip, safe=":[]")


def backend_path(vip: str, address: str) -> str:
    return f"{vip_path(vip)}/backends/{urllib.parse.quote(address, safe=':')}"


# --- writes: each command is one change (also what `ctl plan` sends) ---------------------------


@dataclass(frozen=True)
class Write:
    """One write: the HTTP request, and the same change as a /v1/plan item."""

    method: str
    path: str
    body: object
    change: dict[str, Any]


def _write_of(args: argparse.Namespace) -> Write:
    command = args.write
    vip: str = args.vip
    if command == "add-vip":
        body: dict[str, Any] = {"backends": args.backend or []}
        if args.table_size is not None:
            body["table_size"] = args.table_size
        return Write("PUT", vip_path(vip), body, {"op": "put_vip", "vip": vip, "body": body})
    if command == "del-vip":
        return Write("DELETE", vip_path(vip), None, {"op": "delete_vip", "vip": vip})
    address: str = args.backend_address
    change: dict[str, Any] = {"vip": vip, "backend": address}
    path = backend_path(vip, address)
    if command == "add":
        body = {"weight": args.weight, "state": args.state}
        return Write("PUT", path, body, change | {"op": "put_backend", "body": body})
    if command == "remove":
        return Write("DELETE", path, None, change | {"op": "delete_backend"})
    body = {"state": command} if command in ("drain", "down", "up") else {"weight": args.new_weight}
    return Write("PATCH", path, body, change | {"op": "patch_backend", "body": body})


def _add_write_commands(commands: Any) -> None:
    def vip_argument(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("vip", help="VIP key (198.18.100.1:80/tcp, 198.18.100.1) or default")

    add_vip = commands.add_parser("add-vip", help="create a VIP (ipvsadm -A)")
    vip_argument(add_vip)
    add_vip.add_argument("--table-size", type=int, help="its own Maglev table size (a prime)")
    add_vip.add_argument(
        "--backend", action="append", metavar="ADDRESS", help="a backend (repeatable)"
    )
    del_vip = commands.add_parser("del-vip", help="remove a VIP (ipvsadm -D)")
    vip_argument(del_vip)
    add = commands.add_parser("add", help="add or replace a backend (ipvsadm -a / -e)")
    vip_argument(add)
    add.add_argument("backend_address", metavar="BACKEND")
    add.add_argument("--weight", type=int, default=1, help="share of new flows (default 1)")
    add.add_argument("--state", choices=["up", "drain", "down"], default="up")
    for name, help_text in (
        ("remove", "remove a backend; its flows move to the others (ipvsadm -d)"),
        ("drain", "stop sending new flows to a backend; its flows continue"),
        ("down", "take a backend out: its flows move to the others"),
        ("up", "put a drained or down backend back"),
    ):
        parser = commands.add_parser(
            name, help=help_text, aliases=["rm"] if name == "remove" else []
        )
        vip_argument(parser)
        parser.add_argument("backend_address", metavar="BACKEND")
        parser.set_defaults(write="remove" if name == "remove" else name)
    weight = commands.add_parser("weight", help="set a backend's weight")
    vip_argument(weight)
    weight.add_argument("backend_address", metavar="BACKEND")
    weight.add_argument("new_weight", type=int, metavar="WEIGHT")
    for name, parser in (
        ("add-vip", add_vip),
        ("del-vip", del_vip),
        ("add", add),
        ("weight", weight),
    ):
        parser.set_defaults(write=name)


# --- rendering --------------------------------------------------------------------------------


def _size(count: float, unit: str = "") -> str:
    for suffix in ("", "k", "M", "G", "T"):
        if abs(count) < 1000:
            return f"{count:.0f}{suffix}{unit}" if suffix == "" else f"{count:.1f}{suffix}{unit}"
        count /= 1000
    return f"{count:.1f}P{unit}"


def vip_table(vips: Sequence[Mapping[str, Any]]) -> Table:
    """VIPs and backends, ipvsadm -Ln style."""
    table = Table(box=box.SIMPLE, show_edge=False)
    for column, justify in (
        ("VIP / backend", "left"),
        ("weight", "right"),
        ("admin", "left"),
        ("data plane", "left"),
        ("slots", "right"),
        ("next hop", "left"),
        ("packets", "right"),
        ("bytes", "right"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for vip in vips:
        live = vip["table"]
        summary = "no table" if live is None else f"M={live['size']} fp {live['fingerprint'][:12]}"
        table.add_row(
            f"[bold]{vip['vip']}[/bold]",
            "",
            "",
            summary,
            "",
            "",
            _size(vip["stats"]["packets"]),
            _size(vip["stats"]["bytes"], "B"),
        )
        for backend in vip["backends"]:
            hop = backend["next_hop"]
            table.add_row(
                f"  -> {backend['address']}",
                str(backend["weight"]),
                backend["state"],
                backend["dataplane_state"],
                f"{backend['slot_share']:.1%}",
                hop["dst_mac"] if hop else f"[red]{backend['next_hop_problem'] or 'unresolved'}",
                _size(backend["stats"]["packets"]),
                _size(backend["stats"]["bytes"], "B"),
            )
    return table


def rate_table(rates: Sequence[tuple[str, str, float, float]], interval: float) -> Table:
    table = Table(title=f"rates over {interval:g} s", box=box.SIMPLE, show_edge=False)
    for column in ("VIP", "backend", "packets/s", "bits/s"):
        table.add_column(column, justify="left" if column in ("VIP", "backend") else "right")
    for vip, backend, pps, bps in rates:
        table.add_row(vip, backend, _size(pps), _size(bps, "b"))
    return table


def _change_line(result: Mapping[str, Any]) -> str:
    if not result["changed"]:
        return f"no change (generation {result['generation']})"
    rebuilt = ", ".join(result["tables_rebuilt"]) or "none"
    return (
        f"applied: generation {result['generation']}, {result['map_updates']} map updates, "
        f"tables rebuilt: {rebuilt} (build {result['build_ms']:.1f} ms, apply "
        f"{result['apply_ms']:.1f} ms)"
    )


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


# --- commands ---------------------------------------------------------------------------------


@dataclass
class Context:
    client: ApiClient
    console: Console
    json: bool

    def emit(self, data: Any, render: Callable[[Any], Any]) -> None:
        if self.json:
            self.console.print_json(json.dumps(data))
        else:
            self.console.print(render(data))


def _list(ctx: Context, args: argparse.Namespace) -> None:
    vips = [ctx.client.get(vip_path(args.vip))] if args.vip else ctx.client.get("/v1/vips")["vips"]
    ctx.emit(vips, vip_table)


def _write(ctx: Context, args: argparse.Namespace) -> None:
    write = _write_of(args)
    if args.write == "add-vip":
        existing = ctx.client.request("GET", write.path, check=False)
        if existing.status == 200:
            raise ApiFailed(409, {"message": f"VIP {args.vip} exists; add backends with `add`"})
    result = ctx.client.request(write.method, write.path, write.body).body
    ctx.emit(result, _change_line)


def _plan(ctx: Context, args: argparse.Namespace) -> None:
    plan = ctx.client.post("/v1/plan", {"changes": [_write_of(args).change]})
    ctx.emit(plan, plan_table)


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
        table = Table(box=box.SIMPLE, show_edge=False, title=f"{len(data['flows'])} flows")
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
        lines = [f"{h['status']} (generation {h['generation']}, attached: {h['attached']})"]
        lines += [f"  reason: {reason}" for reason in h["reasons"]]
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


def event_line(event: Mapping[str, Any]) -> str:
    """One event as a line: when, what, and why."""
    when = (
        time.strftime("%H:%M:%S", time.localtime(event["at"]))
        + f".{int(event['at'] * 1000) % 1000:03d}"
    )
    who = event["vip"] + (f" {event['backend']}" if event["backend"] else "")
    change = f"{event['from']} -> {event['to']}" if event["from"] or event["to"] else event["kind"]
    return f"{when} #{event['id']} {who}: {change} ({event['cause']}: {event['detail']})"


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


def _config(ctx: Context, args: argparse.Namespace) -> None:
    if args.action == "get":
        ctx.console.print_json(json.dumps(ctx.client.get("/v1/config")))
        return
    path = Path(args.file)
    text = path.read_text(encoding="utf-8")
    body = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    ctx.emit(ctx.client.put("/v1/config", body), _change_line)


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


def add_arguments(ctl: argparse.ArgumentParser) -> None:
    """The `ctl` sub-commands, on the parser cli.py made for it."""
    ctl.add_argument(
        "--api",
        default=os.environ.get(URL_VARIABLE, DEFAULT_URL),
        metavar="URL",
        help=f"the daemon's API (default ${URL_VARIABLE} or {DEFAULT_URL})",
    )
    ctl.add_argument(
        "--token-file", type=Path, metavar="FILE", help=f"bearer token (else ${TOKEN_VARIABLE})"
    )
    ctl.add_argument("--json", action="store_true", help="print the API's JSON")
    commands = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", aliases=["ls"], help="VIPs and backends (ipvsadm -Ln)")
    listing.add_argument("vip", nargs="?", help="only this VIP")
    listing.set_defaults(run=_list)
    _add_write_commands(commands)
    for name, parser in commands.choices.items():
        if parser.get_default("write") is not None and parser.get_default("run") is None:
            parser.set_defaults(run=_write)
        del name
    plan = commands.add_parser(
        "plan",
        help="dry run of a change: the share of table slots and tracked flows it would move",
        description="Dry run: what the change would move, per VIP; nothing is applied.",
        epilog="Example: rusty-rail ctl plan remove 198.18.100.1:80/tcp 198.18.2.1",
    )
    plan_commands = plan.add_subparsers(dest="write", metavar="CHANGE", required=True)
    _add_write_commands(plan_commands)
    plan.set_defaults(run=_plan)
    lookup = commands.add_parser("lookup", help="which backend a flow gets now, and why")
    lookup.add_argument("flow", help="e.g. 198.18.5.5:40000->198.18.100.1:80/tcp")
    lookup.set_defaults(run=_lookup)
    flows = commands.add_parser("flows", help="a sample of tracked flows and their backends")
    flows.add_argument("--vip", help="only this VIP's flows")
    flows.add_argument("--limit", type=int, default=50)
    flows.set_defaults(run=_flows)
    watch = commands.add_parser("watch", help="live packet and bit rates per backend")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds (default 1)")
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
        "--interval", type=float, default=0.5, help="seconds between polls with --follow"
    )
    events.set_defaults(run=_events)
    config = commands.add_parser("config", help="get or replace the whole desired state")
    config.add_argument("action", choices=["get", "put"])
    config.add_argument("file", nargs="?", help="for put: a TOML or JSON configuration")
    config.set_defaults(run=_config)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed `ctl` command; returns the exit status."""
    token = None
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip()
    token = token or os.environ.get(TOKEN_VARIABLE) or None
    stream = out or sys.stdout
    # Piped output is read by programs and people alike: wide enough for whole addresses.
    width = None if stream.isatty() else 200
    console = Console(file=stream, soft_wrap=True, width=width)
    errors = Console(file=err or sys.stderr, soft_wrap=True)
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
        errors.print(f"rusty-rail ctl: refused: {error}", markup=False)
        body = error.body if isinstance(error.body, dict) else {}
        for problem in body.get("problems", []):
            where = problem.get("path") or "(request)"
            value = f": {problem['value']}" if "value" in problem else ""
            errors.print(f"  {where}{value}: {problem.get('reason')}", markup=False)
        return EXIT_REFUSED
    except (OSError, ValueError, tomllib.TOMLDecodeError) as error:
        errors.print(f"rusty-rail ctl: {error}", markup=False)
        return EXIT_USAGE
    return status if isinstance(status, int) else EXIT_OK
