"""Issue 14, item 4: local writes need a credential by default. `rusty-rail run` given no
token makes the host's token file (root only) and serves writes only with it; root's `ctl`
reads it without flags; an unprivileged local user can read but change nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rusty_rail.api.client import TOKEN_VARIABLE
from rusty_rail.api.credentials import DEFAULT_TOKEN_FILE
from rusty_rail.dataplane.netlink import in_netns
from tests.e2e.test_run import BACKENDS, Bed, Daemon, bed  # noqa: F401 (the fixture)

pytestmark = pytest.mark.e2e

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
EXIT_REFUSED = 1
EXIT_USAGE = 2


def _ctl(on: Bed, *args: str, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """`rusty-rail ctl ARGS` in the balancer's namespace, as root or as ``user``."""
    command = ["nsenter", f"--net=/run/netns/{on.lb.name}", *(user or []), sys.executable,
               "-m", "rusty_rail", "ctl", *args]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd="/")


def _http(on: Bed, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    with in_netns(on.lb.name), socket.create_connection(("127.0.0.1", 9180), timeout=10) as s:
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def test_an_unprivileged_local_user_can_read_but_change_nothing(
    bed: Bed,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    daemon = Daemon(bed, BACKENDS, tmp_path / "run.log")
    try:
        text = daemon.wait_for("serving the REST API")
        assert f"writes need the bearer token in {DEFAULT_TOKEN_FILE}" in text
        info = DEFAULT_TOKEN_FILE.stat()
        assert info.st_uid == 0 and info.st_mode & 0o777 == 0o600
        status, before = _http(bed, "GET", "/v1/config")
        assert status == 200

        # nobody reads...
        listed = _ctl(bed, "--json", "vip", "list", user=NOBODY)
        assert listed.returncode == 0, listed.stderr
        # ...but cannot write: not with ctl, not with its own request, not with the file.
        added = _ctl(bed, "vip", "add", "198.18.100.9:80/tcp", user=NOBODY)
        assert added.returncode == EXIT_REFUSED, added.stdout + added.stderr
        assert "error: this write needs Authorization" in added.stderr
        assert "writes need the API's token" in added.stderr
        assert "Traceback" not in added.stderr
        with_file = _ctl(bed, "--token-file", str(DEFAULT_TOKEN_FILE), "vip", "add",
                         "198.18.100.9:80/tcp", user=NOBODY)  # fmt: skip
        assert with_file.returncode == EXIT_USAGE and "Permission denied" in with_file.stderr
        status, _ = _http(bed, "PUT", "/v1/vips/198.18.100.9:80%2Ftcp", b'{"backends": []}')
        assert status == 401
        status, _ = _http(bed, "DELETE", "/v1/vips/default")
        assert status == 401
        status, after = _http(bed, "GET", "/v1/config")
        assert json.loads(after) == json.loads(before)

        # root's ctl finds the token by itself.
        added = _ctl(bed, "vip", "add", "198.18.100.9:80/tcp")
        assert added.returncode == 0 and "applied" in added.stdout, added.stderr
        removed = _ctl(bed, "vip", "del", "198.18.100.9:80/tcp")
        assert removed.returncode == 0, removed.stderr
    finally:
        assert daemon.stop() == 0
        subprocess.run(bed.rusty_rail("detach", "--device", "eth0"), capture_output=True)
