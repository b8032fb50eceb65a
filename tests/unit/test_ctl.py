"""`rusty-rail ctl` without a daemon: its commands (noun then verb, and the old flat spellings)
turned into requests, those requests sent to a recording server, its help, and its answer to no
daemon."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs

import pytest
from rich.console import Console

from rusty_rail.api.client import ApiClient, ApiUnreachable, api_url
from rusty_rail.cli import build_parser, main
from rusty_rail.cli.ctl import EXIT_OK, EXIT_UNREACHABLE, add_arguments
from rusty_rail.cli.ctl import run as run_ctl
from rusty_rail.cli.ctl_render import change_line, vip_table
from rusty_rail.cli.ctl_writes import Write, _write_of

VIP = "198.18.100.1:80/tcp"
BACKEND = "198.18.2.1"

# Each change in the new spelling, then every old spelling of the same change.
SPELLINGS: list[tuple[tuple[str, ...], list[tuple[str, ...]]]] = [
    (("vip", "add", VIP, "--backend", BACKEND, "--table-size", "1021"),
     [("add-vip", VIP, "--backend", BACKEND, "--table-size", "1021")]),
    (("vip", "del", VIP), [("del-vip", VIP)]),
    (("backend", "add", VIP, BACKEND, "--weight", "2", "--state", "drain"),
     [("add", VIP, BACKEND, "--weight", "2", "--state", "drain")]),
    (("backend", "del", VIP, BACKEND), [("remove", VIP, BACKEND), ("rm", VIP, BACKEND)]),
    (("backend", "drain", VIP, BACKEND), [("drain", VIP, BACKEND)]),
    (("backend", "up", VIP, BACKEND), [("up", VIP, BACKEND)]),
    (("backend", "down", VIP, BACKEND), [("down", VIP, BACKEND)]),
    (("backend", "weight", VIP, BACKEND, "3"), [("weight", VIP, BACKEND, "3")]),
]  # fmt: skip
EXPECTED = {
    "vip add": ("PUT", {"backends": [BACKEND], "table_size": 1021}, "put_vip"),
    "vip del": ("DELETE", None, "delete_vip"),
    "backend add": ("PUT", {"weight": 2, "state": "drain"}, "put_backend"),
    "backend del": ("DELETE", None, "delete_backend"),
    "backend drain": ("PATCH", {"state": "drain"}, "patch_backend"),
    "backend up": ("PATCH", {"state": "up"}, "patch_backend"),
    "backend down": ("PATCH", {"state": "down"}, "patch_backend"),
    "backend weight": ("PATCH", {"weight": 3}, "patch_backend"),
}


def ctl_arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ctl_says_clearly_when_no_daemon_answers() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ApiUnreachable, match="Is `rusty-rail run` running"):
        ApiClient(url).get("/healthz")
    out, err = io.StringIO(), io.StringIO()
    status = run_ctl(ctl_arguments("--api", url, "list"), out, err)
    assert status == EXIT_UNREACHABLE
    assert "cannot reach the rusty-rail API" in err.getvalue()


@pytest.mark.parametrize(("new", "old"), SPELLINGS, ids=[" ".join(new[:2]) for new, _ in SPELLINGS])
def test_every_spelling_of_a_change_and_its_dry_run_are_the_same_request(
    new: tuple[str, ...], old: list[tuple[str, ...]]
) -> None:
    method, body, op = EXPECTED[" ".join(new[:2])]
    write = _write_of(ctl_arguments(*new))
    assert (write.method, write.body, write.change["op"]) == (method, body, op)
    assert write.path.startswith("/v1/vips/198.18.100.1:80%2Ftcp")
    assert write.change["vip"] == VIP
    for argv in [new, *old]:
        assert _write_of(ctl_arguments(*argv)) == write, argv
        assert _write_of(ctl_arguments("plan", *argv)) == write, argv


def test_the_old_read_spellings_are_the_new_commands() -> None:
    for new, old in (
        (("vip", "list", VIP), [("list", VIP), ("ls", VIP)]),
        (("flow", "list", "--vip", VIP, "--limit", "7"),
         [("flows", "--vip", VIP, "--limit", "7")]),
        (("flow", "lookup", "198.18.5.5:40000->" + VIP), [("lookup", "198.18.5.5:40000->" + VIP)]),
    ):  # fmt: skip
        wanted = ctl_arguments(*new)
        for argv in old:
            got = ctl_arguments(*argv)
            assert got.run is wanted.run, argv
            for name in ("vip", "flow", "limit"):
                assert getattr(got, name, None) == getattr(wanted, name, None), (argv, name)


class Recorder(BaseHTTPRequestHandler):
    """Answers every request as a daemon would that changed nothing, and records it."""

    seen: ClassVar[list[tuple[str, str, Any]]] = []

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if self.command == "GET":  # `vip add` asks first whether the VIP exists
            status, answer = 404, {"message": "no such VIP"}
        else:
            self.seen.append((self.command, self.path, body))
            answer = {"changed": False, "generation": 1, "flows_examined": 0, "vips": {}}
            status = 200
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST = answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def recording_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_every_spelling_sends_the_same_request_to_the_api() -> None:
    with recording_server() as url:
        for new, old in SPELLINGS:
            sent = []
            for argv in [new, *old]:
                Recorder.seen.clear()
                out = io.StringIO()
                assert run_ctl(ctl_arguments("--api", url, "--json", *argv), out) == EXIT_OK
                assert json.loads(out.getvalue())["generation"] == 1
                sent.append(list(Recorder.seen))
            write: Write = _write_of(ctl_arguments(*new))
            assert sent[0] == [(write.method, write.path, write.body)]
            assert all(each == sent[0] for each in sent), new
            Recorder.seen.clear()
            assert run_ctl(ctl_arguments("--api", url, "--json", "plan", *old[0])) == EXIT_OK
            assert Recorder.seen == [("POST", "/v1/plan", {"changes": [write.change]})]


def help_of(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return out.getvalue()


def test_the_help_lists_the_noun_verb_scheme_and_names_the_old_spellings() -> None:
    text = help_of("ctl")
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("    ")}
    assert {"vip", "backend", "flow", "plan", "watch", "health", "events", "config"} <= listed
    assert not listed & {"add-vip", "del-vip", "add", "remove", "rm", "list", "ls", "lookup"}
    assert "old" in text and "add-vip, del-vip, add, remove, rm, drain" in " ".join(text.split())
    assert "rusty-rail ctl backend drain" in text
    assert "rusty-rail ctl backend add '[2001:2::10]:80/tcp' 2001:2::21" in text
    assert "[2001:2::10]:80/tcp, 2001:2::10" in " ".join(help_of("ctl", "vip", "add").split())
    assert "[2001:2::1]:40000->[2001:2::10]:80/tcp" in help_of("ctl", "flow", "lookup")
    vip = help_of("ctl", "vip")
    assert all(verb in vip for verb in ("add", "del", "list"))
    backend = help_of("ctl", "backend")
    assert all(f"    {verb} " in backend for verb in ("add", "del", "drain", "up", "down"))
    assert "    weight" in backend
    assert "    backend" in help_of("ctl", "plan")


VIP6 = "[2001:2::10]:80/tcp"
VIP6_PATH = "/v1/vips/[2001:2::10]:80%2Ftcp"


IPV6_WRITES: list[tuple[tuple[str, ...], str, str, object]] = [
    (("vip", "add", VIP6, "--backend", "2001:2::21", "--backend", "198.18.2.1"), "PUT",
     VIP6_PATH, {"backends": ["2001:2::21", "198.18.2.1"]}),
    (("vip", "add", "2001:2::10"), "PUT", "/v1/vips/2001:2::10", {"backends": []}),
    (("vip", "del", "[2001:2::10]"), "DELETE", "/v1/vips/[2001:2::10]", None),
    (("backend", "add", VIP6, "2001:2::21", "--weight", "2"), "PUT",
     f"{VIP6_PATH}/backends/2001:2::21", {"weight": 2, "state": "up"}),
    (("backend", "drain", "2001:2::10", "2001:2::21"), "PATCH",
     "/v1/vips/2001:2::10/backends/2001:2::21", {"state": "drain"}),
    (("backend", "del", VIP, "2001:2::21"), "DELETE",
     "/v1/vips/198.18.100.1:80%2Ftcp/backends/2001:2::21", None),
    (("backend", "del", VIP6, "fe80::21%eth0"), "DELETE",
     f"{VIP6_PATH}/backends/fe80::21%25eth0", None),
]  # fmt: skip


def test_ipv6_vips_and_backends_are_sent_in_their_paths() -> None:
    with recording_server() as url:
        for argv, method, path, body in IPV6_WRITES:
            write = _write_of(ctl_arguments(*argv))
            assert (write.method, write.path, write.body) == (method, path, body)
            assert write.change["vip"] == argv[2]
            Recorder.seen.clear()
            run_ctl(ctl_arguments("--api", url, "--json", *argv), io.StringIO())
            assert Recorder.seen == [(method, path, body)], argv


class ReadRecorder(Recorder):
    """Answers every GET with an empty flow list, and records it."""

    def do_GET(self) -> None:
        self.seen.append((self.command, self.path, None))
        data = json.dumps({"flows": [], "flow": "x", "backend": None, "outcome": "no_vip",
                           "match": "none", "explanation": "x"}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_ipv6_flows_and_vips_reach_the_query_as_written() -> None:
    server = ThreadingHTTPServer(("::1", 0), ReadRecorder, bind_and_activate=False)
    server.address_family = socket.AF_INET6
    server.socket = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.server_bind()
    server.server_activate()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    flow = "[2001:2::1]:40000->[2001:2::10]:80/tcp"
    try:
        url = f"http://[::1]:{server.server_address[1]}"  # ctl itself over IPv6
        for argv, wanted in (
            (("flow", "lookup", flow), {"flow": [flow]}),
            (("flow", "list", "--vip", VIP6, "--limit", "5"), {"vip": [VIP6], "limit": ["5"]}),
        ):
            Recorder.seen.clear()
            assert run_ctl(ctl_arguments("--api", url, *argv), io.StringIO()) == EXIT_OK
            [(method, path, _)] = Recorder.seen
            route, _, query = path.partition("?")
            assert method == "GET" and parse_qs(query) == wanted, path
            assert route == ("/v1/lookup" if argv[1] == "lookup" else "/v1/flows")
    finally:
        server.shutdown()
        server.server_close()


def test_the_api_is_given_as_run_takes_it_or_as_a_url() -> None:
    """Issue 15, item 4: `ctl --api` takes host:port as `run --api` does (and a URL)."""
    assert api_url("127.0.0.1:9180") == "http://127.0.0.1:9180"
    assert api_url("[::1]:9180") == "http://[::1]:9180"
    assert api_url("9181") == "http://127.0.0.1:9181"
    assert api_url("http://198.18.0.2:9180/") == "http://198.18.0.2:9180"
    for bad, why in (
        ("::1:9180", "in brackets"),
        ("localhost", "ADDRESS:PORT"),
        ("ftp://x:1", "http or https"),
        (":9180", "ADDRESS:PORT"),
    ):
        with pytest.raises(ValueError, match=why):
            api_url(bad)


def test_json_is_taken_after_any_sub_command_and_intervals_are_bounded() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["vip", "list", "--json"]).json is True
    assert parser.parse_args(["--json", "vip", "list"]).json is True
    assert parser.parse_args(["vip", "list"]).json is False
    assert parser.parse_args(
        ["plan", "backend", "del", "198.18.100.1", "198.18.2.1", "--json"]
    ).json
    assert parser.parse_args(["watch", "--interval", "0.1"]).interval == 0.1
    for bad in ("0.05", "0", "-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["watch", "--interval", bad])


def test_the_version_and_completion_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("rusty-rail ")
    for shell in ("bash", "zsh"):
        assert main(["completion", shell]) == 0
        script = capsys.readouterr().out
        assert "ctl" in script and "--interval" in script, shell


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, Any]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_argument_has_help_one_metavar_style_and_pasteable_examples() -> None:
    """Issue 15, item 4, kept by a test: every argument of every command has help text,
    metavars are upper case, and an example with `->` is quoted so a shell can paste it."""
    problems = []
    for path, parser in _parsers(build_parser(), "rusty-rail"):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                problems.append(f"{path} {name}: no help")
            if isinstance(action.metavar, str) and not re.fullmatch(
                r"[A-Z][A-Z0-9_:]*", action.metavar
            ):
                problems.append(f"{path} {name}: metavar {action.metavar}")
        for text in (parser.epilog or "", parser.description or ""):
            for example in re.findall(r"rusty-rail [^\n]*", text):
                if "->" in example and "'" not in example:
                    problems.append(f"{path}: unquoted example {example}")
    assert problems == []


def test_text_output_is_plain_words() -> None:
    """No Python booleans or reprs in what people read; counts agree with their nouns."""
    answer = {"changed": True, "generation": 3, "map_updates": 1, "tables_rebuilt": [],
              "build_ms": 0.1, "apply_ms": 0.2}  # fmt: skip
    assert "1 map update," in change_line(answer)
    assert "2 map updates," in change_line(answer | {"map_updates": 2})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        parser.parse_args(["watch", "--interval", "soon"])
    assert "soon: not a number of seconds" in err.getvalue() and "'soon'" not in err.getvalue()


def test_a_vip_is_added_with_its_affinity_and_listed_with_it_and_its_counts() -> None:
    write = _write_of(ctl_arguments("vip", "add", VIP, "--affinity", "source-ip"))
    assert write.body == {"backends": [], "affinity": "source-ip"}
    assert _write_of(ctl_arguments("add-vip", VIP, "--affinity", "source-ip")) == write
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        ctl_arguments("vip", "add", VIP, "--affinity", "sticky")
    assert "source-ip+proto" in err.getvalue()
    zero = {"packets": 0, "bytes": 0}
    view = {
        "vip": VIP, "table": {"size": 7, "fingerprint": "ab" * 32}, "affinity": "source-ip",
        "stats": {"packets": 9, "bytes": 900}, "new_flows": {"packets": 4, "bytes": 400},
        "drops": {"no_backend": {"packets": 2, "bytes": 200}, "no_nexthop": zero,
                  "too_big_limited": zero, "too_big_no_df": zero},
        "flows_tracked": 4, "backends": [],
    }  # fmt: skip
    console = Console(width=200, record=True)
    console.print(vip_table([view]))
    row = next(line for line in console.export_text().splitlines() if VIP in line)
    assert "affinity source-ip" in row and " 4 " in row and "2 (no_backend 2)" in row
    console = Console(width=200, record=True)
    console.print(vip_table([view | {"affinity": "5-tuple"}]))
    assert "affinity" not in console.export_text()
