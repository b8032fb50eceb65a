"""Service integration (issue 14, item 6): `rusty-rail run` speaks systemd's notification
protocol to a real datagram socket, logs JSON lines, and the example unit passes
`systemd-analyze verify`; the wheel carries the BPF objects."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rusty_rail.dataplane.libbpf import query_xdp
from rusty_rail.dataplane.netlink import in_netns
from tests.e2e.test_run import BACKENDS, Bed, Daemon, bed  # noqa: F401 (the fixture)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "examples" / "rusty-rail@.service"


class NotifySocket:
    """What systemd listens on for a Type=notify service: a datagram socket by path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def next(self, timeout: float = 30) -> dict[str, str]:
        """The next message, as its fields."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def until(self, field: str, timeout: float = 30) -> tuple[dict[str, str], list[str]]:
        """Read messages until one has ``field``; also the fields seen before it."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            message = self.next(max(0.1, deadline - time.monotonic()))
            if field in message:
                return message, seen
            seen.extend(message)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    try:
        yield sock
    finally:
        sock.sock.close()


def _healthz_status(on: Bed) -> int:
    with in_netns(on.lb.name), socket.create_connection(("127.0.0.1", 9180), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return int(s.recv(64).split()[1])


def test_run_tells_systemd_ready_reloading_watchdog_and_stopping(
    bed: Bed,  # noqa: F811
    notify: NotifySocket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WATCHDOG=1 every 0.2 s
    log = tmp_path / "run.log"
    daemon = Daemon(bed, BACKENDS, log, ("--log-format", "json"))
    try:
        ready, before = notify.until("READY")
        # Ready means ready: attached, and the API answers.
        with in_netns(bed.lb.name):
            assert query_xdp(bed.lb.ifindex("eth0")) is not None
        assert _healthz_status(bed) == 200
        assert "balancing on eth0" in ready["STATUS"], ready
        assert "WATCHDOG" not in before  # no watchdog before ready
        for _ in range(3):
            notify.until("WATCHDOG", timeout=5)

        daemon.process.send_signal(signal.SIGHUP)
        reloading, _ = notify.until("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        notify.until("READY")

        daemon.process.send_signal(signal.SIGTERM)
        stopping, _ = notify.until("STOPPING")
        assert stopping["STATUS"] == "stopping"
        assert daemon.process.wait(timeout=20) == 0
    finally:
        daemon.stop()
        subprocess.run(bed.rusty_rail("detach", "--device", "eth0"), capture_output=True)
    lines = log.read_text().splitlines()
    assert lines, "the daemon logged nothing"
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= set(parsed[0])
    assert any("serving the REST API" in line["message"] for line in parsed)


def test_without_a_notify_socket_run_says_nothing_to_systemd(
    bed: Bed,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socket that is gone is logged and the daemon runs on, unsupervised."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    log = tmp_path / "run.log"
    daemon = Daemon(bed, BACKENDS, log)
    try:
        text = daemon.wait_for("serving the REST API")
        daemon.wait_for("could not notify systemd")
        assert _healthz_status(bed) == 200
        assert "Traceback" not in text
    finally:
        assert daemon.stop() == 0
        subprocess.run(bed.rusty_rail("detach", "--device", "eth0"), capture_output=True)


def test_the_example_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    verify = shutil.which("systemd-analyze")
    assert verify is not None, "scripts/setup installs systemd (systemd-analyze)"
    text = UNIT.read_text()
    assert "ExecStart=/opt/rusty-rail/bin/rusty-rail run " in text
    # verify wants ExecStart's binary to exist: point it at this checkout's.
    unit = tmp_path / "rusty-rail@.service"
    unit.write_text(
        text.replace("/opt/rusty-rail/bin/rusty-rail", f"{sys.executable} -m rusty_rail")
    )
    result = subprocess.run(
        [verify, "verify", str(tmp_path / "rusty-rail@eth0.service")],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    for wanted in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert wanted in text


def test_the_wheel_carries_the_bpf_objects_and_runs_installed(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("rusty_rail-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    programs = ("balancer", "decap", "testbed_router", "testbed_pass", "bench_floor", "bench_gen",
                "bench_sink", "bench_forward")  # fmt: skip
    for program in programs:
        assert f"rusty_rail/bpf/{program}.bpf.o" in names, sorted(names)
    assert any(n.startswith("rusty_rail/model/_maglevc.") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    check = subprocess.run(
        [sys.executable, "-m", "rusty_rail", "selfcheck"],
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import rusty_rail; print(rusty_rail.__file__)"],
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target)), where.stdout
