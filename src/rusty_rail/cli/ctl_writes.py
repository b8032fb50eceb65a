"""`rusty-rail ctl`'s writes: each command is one change, sent as one HTTP request (and the
same change as a /v1/plan item for `ctl plan`); adding is create-only unless --replace; the
whole configuration goes back with its ETag. Also the Context every command gets."""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from rusty_rail.api.client import ApiClient, ApiFailed, backend_path, vip_path
from rusty_rail.cli import Subparsers
from rusty_rail.cli.ctl_render import change_line, plan_table
from rusty_rail.config import Affinity
from rusty_rail.config.positions import json_positions, locate, toml_positions


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


# --- writes: each command is one change (also what `ctl plan` sends) ---------------------------


@dataclass(frozen=True)
class Write:
    """One write: the HTTP request, and the same change as a /v1/plan item."""

    method: str
    path: str
    body: object
    change: dict[str, Any]


def _write_of(args: argparse.Namespace) -> Write:
    noun, verb = args.write
    vip: str = args.vip
    if noun == "vip":
        if verb == "add":
            body: dict[str, Any] = {"backends": args.backend or []}
            if args.table_size is not None:
                body["table_size"] = args.table_size
            if args.affinity is not None:
                body["affinity"] = args.affinity
            return Write("PUT", vip_path(vip), body, {"op": "put_vip", "vip": vip, "body": body})
        return Write("DELETE", vip_path(vip), None, {"op": "delete_vip", "vip": vip})
    address: str = args.backend_address
    change: dict[str, Any] = {"vip": vip, "backend": address}
    path = backend_path(vip, address)
    if verb == "add":
        body = {"weight": args.weight, "state": args.state}
        return Write("PUT", path, body, change | {"op": "put_backend", "body": body})
    if verb == "del":
        return Write("DELETE", path, None, change | {"op": "delete_backend"})
    body = {"state": verb} if verb in ("drain", "down", "up") else {"weight": args.new_weight}
    return Write("PATCH", path, body, change | {"op": "patch_backend", "body": body})


Adder = Callable[[argparse.ArgumentParser], None]


def _vip_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "vip",
        help="VIP key (198.18.100.1:80/tcp, 198.18.100.1, [2001:2::10]:80/tcp, 2001:2::10)"
        " or default",
    )


def _vip_add_arguments(parser: argparse.ArgumentParser) -> None:
    _vip_key(parser)
    parser.add_argument(
        "--table-size", type=int, metavar="SLOTS", help="its own Maglev table size (a prime)"
    )
    parser.add_argument(
        "--affinity",
        choices=[mode.value for mode in Affinity],
        help="the flow fields its Maglev choice hashes (default 5-tuple; source-ip sends all "
        "of a client's connections to one backend)",
    )
    parser.add_argument(
        "--backend", action="append", metavar="ADDRESS", help="a backend (repeatable)"
    )
    _replace_argument(parser, "VIP")


def _replace_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--replace",
        action="store_true",
        help=f"replace the {what} if it exists (without it, adding one that exists is an "
        "error: nothing is reset by surprise)",
    )


def _backend_key(parser: argparse.ArgumentParser) -> None:
    _vip_key(parser)
    parser.add_argument(
        "backend_address", metavar="BACKEND", help="the backend's address (198.18.2.1, 2001:2::21)"
    )


def _backend_add_arguments(parser: argparse.ArgumentParser) -> None:
    _backend_key(parser)
    parser.add_argument(
        "--weight", type=int, default=1, metavar="N", help="share of new flows (default 1)"
    )
    parser.add_argument(
        "--state",
        choices=["up", "drain", "down"],
        default="up",
        help="its admin state (default up)",
    )
    _replace_argument(parser, "backend")


def _backend_weight_arguments(parser: argparse.ArgumentParser) -> None:
    _backend_key(parser)
    parser.add_argument(
        "new_weight", type=int, metavar="WEIGHT", help="its share of new flows, 0 to 65535"
    )


# (noun, verb): help, its arguments, and the old flat spellings that mean the same.
CHANGES: Final[dict[tuple[str, str], tuple[str, Adder, tuple[str, ...]]]] = {
    ("vip", "add"): ("create a VIP (ipvsadm -A)", _vip_add_arguments, ("add-vip",)),
    ("vip", "del"): ("delete a VIP (ipvsadm -D)", _vip_key, ("del-vip",)),
    ("backend", "add"): (
        "add or replace a backend (ipvsadm -a / -e)",
        _backend_add_arguments,
        ("add",),
    ),
    ("backend", "del"): (
        "delete a backend; its flows move to the others (ipvsadm -d)",
        _backend_key,
        ("remove", "rm"),
    ),
    ("backend", "drain"): (
        "stop sending new flows to a backend; its flows continue",
        _backend_key,
        ("drain",),
    ),
    ("backend", "down"): (
        "take a backend out: its flows move to the others",
        _backend_key,
        ("down",),
    ),
    ("backend", "up"): ("put a drained or down backend back", _backend_key, ("up",)),
    ("backend", "weight"): ("set a backend's weight", _backend_weight_arguments, ("weight",)),
}
BACKEND_HELP: Final = "a VIP's backends: add, del, drain, up, down, weight (ipvsadm -a, -e, -d)"


def _add_change_commands(
    commands: Subparsers, action: Callable[[Context, argparse.Namespace], None], vip_help: str
) -> dict[str, Subparsers]:
    """`vip VERB` and `backend VERB` on ``commands``, each change running ``action``; the old flat
    spellings too, unlisted. Returns each noun's verbs, for read commands to join."""
    verbs: dict[str, Subparsers] = {}
    for noun, noun_help in (("vip", vip_help), ("backend", BACKEND_HELP)):
        parser = commands.add_parser(noun, help=noun_help, description=noun_help)
        verbs[noun] = parser.add_subparsers(dest=f"{noun}_verb", metavar="VERB", required=True)
    for (noun, verb), (help_text, add_arguments, old_names) in CHANGES.items():
        parser = verbs[noun].add_parser(verb, help=help_text, description=help_text)
        add_arguments(parser)
        parser.set_defaults(write=(noun, verb), run=action)
        first, *aliases = old_names
        # No help=: argparse then leaves the old spelling out of the command list.
        old = commands.add_parser(first, aliases=aliases)
        add_arguments(old)
        old.set_defaults(write=(noun, verb), run=action)
    return verbs


#: What to do instead of adding what exists.
INSTEAD: Final = {
    "vip": "add its backends with `ctl backend add`, or give --replace to replace it whole",
    "backend": "change it with `ctl backend weight|up|drain|down`, or give --replace",
}


def _write(ctx: Context, args: argparse.Namespace) -> None:
    write = _write_of(args)
    noun, verb = args.write
    headers = {}
    if verb == "add" and not args.replace:
        headers["If-None-Match"] = "*"  # create only: the API answers 412 when it exists
    answer = ctx.client.request(write.method, write.path, write.body, headers=headers, check=False)
    if answer.status == HTTPStatus.PRECONDITION_FAILED and headers:
        what = f"VIP {args.vip}" if noun == "vip" else f"backend {args.backend_address}"
        raise ApiFailed(answer.status, {"message": f"{what} exists: {INSTEAD[noun]}"})
    if answer.status >= HTTPStatus.BAD_REQUEST:
        raise ApiFailed(answer.status, answer.body)
    ctx.emit(answer.body, change_line)


def _plan(ctx: Context, args: argparse.Namespace) -> None:
    plan = ctx.client.post("/v1/plan", {"changes": [_write_of(args).change]})
    ctx.emit(plan, plan_table)


def _config(ctx: Context, args: argparse.Namespace) -> None:
    """get: the desired state with its ETag, as a file `config put` takes back; put: that
    file, applied only if nothing changed since (If-Match), unless --force."""
    if args.action == "get":
        answer = ctx.client.request("GET", "/v1/config")
        tag = next((v for k, v in answer.headers.items() if k.lower() == "etag"), "")
        ctx.console.print_json(json.dumps({"etag": tag.strip('"'), "config": answer.body}))
        return
    path = Path(args.file)
    etag, body = read_config_file(path)
    if args.dry_run:
        ctx.emit(ctx.client.post("/v1/plan", {"config": body}), plan_table)
        return
    headers = {}
    if etag is not None and not args.force:
        headers["If-Match"] = f'"{etag}"'
    elif etag is None and not args.force:
        raise ValueError(
            f"{path} carries no ETag (it was not written by `ctl config get`), so a change "
            "made since could be lost: give --force to replace the desired state whatever it "
            "is now, or --dry-run to see what would move"
        )
    answer = ctx.client.request("PUT", "/v1/config", body, headers=headers, check=False)
    if answer.status == HTTPStatus.UNPROCESSABLE_ENTITY and isinstance(answer.body, dict):
        raise ApiFailed(answer.status, with_positions(answer.body, path, etag is not None))
    if answer.status == HTTPStatus.PRECONDITION_FAILED:
        raise ApiFailed(
            answer.status,
            {
                "message": f"the desired state changed since {path} was read (ETag {etag}): "
                "`ctl config get` it again and redo the edit, or give --force"
            },
        )
    if answer.status >= HTTPStatus.BAD_REQUEST:
        raise ApiFailed(answer.status, answer.body)
    ctx.emit(answer.body, change_line)


def _loc(path: str) -> tuple[str | int, ...]:
    """``vips[0].backends[1].weight`` as a location: ("vips", 0, "backends", 1, "weight")."""
    loc: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        loc.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(loc)


def with_positions(body: dict[str, Any], path: Path, enveloped: bool) -> dict[str, Any]:
    """The API's 422 ``body``, each problem given ``at``: FILE:LINE:COLUMN of its value in
    the file the configuration came from (``enveloped``: what `config get` wrote)."""
    text = path.read_text(encoding="utf-8")
    positions = toml_positions(text) if path.suffix == ".toml" else json_positions(text)
    prefix: tuple[str | int, ...] = ("config",) if enveloped else ()
    problems = []
    for problem in body.get("problems", []):
        where = locate(positions, (*prefix, *_loc(str(problem.get("path", "")))))
        at = f"{path}:{where[0]}:{where[1]}" if where else str(path)
        problems.append({**problem, "at": at})
    return {**body, "problems": problems}


def read_config_file(path: Path) -> tuple[str | None, Any]:
    """A configuration file for `config put` / `plan config`: what `config get` writes
    (``{"etag": ..., "config": {...}}``: the ETag and the configuration), or a plain
    configuration in TOML (.toml) or JSON (no ETag)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return None, tomllib.loads(text)
    data = json.loads(text)
    if isinstance(data, dict) and set(data) == {"etag", "config"}:
        etag = data["etag"]
        if not isinstance(etag, str) or not etag:
            raise ValueError(f"{path}: etag must be the string `ctl config get` wrote")
        return etag, data["config"]
    return None, data


def _plan_config(ctx: Context, args: argparse.Namespace) -> None:
    _, body = read_config_file(Path(args.file))
    ctx.emit(ctx.client.post("/v1/plan", {"config": body}), plan_table)
