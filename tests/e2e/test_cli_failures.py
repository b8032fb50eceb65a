"""Issue 15, item 3: no traceback reaches a user. Each failure below is one clear line on
stderr and a documented exit status (docs/operations.md, "Every command: exit status and
errors")."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.e2e

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
RUSTY_RAIL = [sys.executable, "-m", "rusty_rail"]


def _run(*args: str, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(user or []), *RUSTY_RAIL, *args], capture_output=True, text=True, timeout=60, cwd="/"
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--device", "lo"),
        ("detach", "--device", "lo"),
        ("decap", "--device", "lo", "--allow", "198.18.0.0/24"),
        ("testbed", "up"),
        ("testbed", "status"),
        ("demo",),
        ("bench", "dataplane"),
        ("bench", "control"),
        ("bench", "health"),
        ("bench", "e2e"),
    ],
)
def test_a_command_that_needs_root_says_so_in_one_line(args: tuple[str, ...]) -> None:
    result = _run(*args, user=NOBODY)
    assert result.returncode == 2, result.stderr
    line = _one_line(result)
    assert line.startswith(f"rusty-rail {args[0]}") and "error: needs root: " in line, line


@pytest.fixture
def not_rusty_rail() -> Iterator[str]:
    """A web server that is not rusty-rail: HTML for everything (a 404 for most)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if self.path == "/" else 404
            body = b"<html><body>nope</body></html>"
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_ctl_pointed_at_something_else_says_there_is_no_rusty_rail_api(
    not_rusty_rail: str,
) -> None:
    for api in (not_rusty_rail, f"http://{not_rusty_rail}"):  # ADDRESS:PORT as run takes it
        result = _run("ctl", "--api", api, "vip", "list")
        assert result.returncode == 3, result.stderr
        line = _one_line(result)
        assert line.startswith(
            f"rusty-rail ctl: no rusty-rail API at http://{not_rusty_rail} (got 404 text/html"
        ), line


def test_ctl_with_an_api_that_is_not_an_address_is_a_usage_error() -> None:
    result = _run("ctl", "--api", "2001:2::1:9180", "vip", "list")
    assert result.returncode == 2
    assert "write an IPv6 address in brackets: [2001:2::1]:9180" in result.stderr


@pytest.mark.parametrize("args", [("completion", "bash"), ("ctl", "--help"), ("--help",)])
def test_a_closed_pipe_ends_the_command_quietly(args: tuple[str, ...]) -> None:
    """`rusty-rail ... | head`: the reader is gone before the output is written. Exit status
    141, as a shell reports a command SIGPIPE ended, and not a word on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*RUSTY_RAIL, *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141
