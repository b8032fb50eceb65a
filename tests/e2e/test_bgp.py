"""BGP announcements of the VIPs (docs/cluster.md, "Announcing the VIPs"): a real
`rusty-rail run` with a [bgp] section on a veth pair, a real BIRD 2 router in the other
namespace (tests/support/bgp_router.py), whose kernel routing table is what is checked.

Topology (test_run.py's bed): namespace "r" (198.18.0.1, 2001:2:0:1::1; the router, and the
backends' addresses) <-veth-> namespace "lb" (198.18.0.2, 2001:2:0:1::2) running the daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rusty_rail.api.client import ApiClient
from rusty_rail.dataplane.netlink import in_netns
from tests.e2e.test_run import (  # noqa: F401 (the fixture)
    BACKENDS,
    LB,
    Bed,
    Daemon,
    bed,
    check_forwarded,
    flows,
    send_and_capture,
)
from tests.support.bgp_router import BirdRouter, bird_router

pytestmark = pytest.mark.e2e

LB6 = "2001:2:0:1::2"
ROUTER6 = "2001:2:0:1::1"
VIP4 = "198.18.100.1/32"
VIP6 = "2001:2:100::1/128"
API = "127.0.0.1:9180"
TOKEN = "a-token-of-the-bgp-test"
#: Long, on both sides: a withdrawal seen well within it came from a closed session, not from
#: a hold timer running out.
HOLD_TIME = 60


def config_file(tmp_path: Path) -> Path:
    backends = ", ".join(f'"{b}"' for b in BACKENDS)
    path = tmp_path / "lb.toml"
    path.write_text(f"""device = "eth0"
lb_address = "{LB}"
lb_address_ipv6 = "{LB6}"
default_backends = [{backends}]
[[vips]]
address = "198.18.100.1"
backends = [{backends}]
[[vips]]
address = "2001:2:100::1"
backends = [{backends}]
[bgp]
asn = 65001
peers = [{{ address = "198.18.0.1", asn = 65000, hold_time = {HOLD_TIME} }}]
""")
    return path


@pytest.fixture
def router(bed: Bed, tmp_path: Path) -> Any:  # noqa: F811
    bed.router.ip("addr", "add", f"{ROUTER6}/64", "dev", "eth0", "nodad")
    bed.lb.ip("addr", "add", f"{LB6}/64", "dev", "eth0", "nodad")
    with bird_router(bed.router, tmp_path, "198.18.0.1", "198.18.0.0/24", HOLD_TIME) as running:
        yield running


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """The daemons a test starts, stopped however it ends."""
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            if daemon.process.poll() is None:
                daemon.stop()


def start(on: Bed, tmp_path: Path, name: str, started: list[Daemon], *args: str) -> Daemon:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    daemon = Daemon(on, [], tmp_path / f"{name}.log", ["--config", str(config_file(tmp_path)),
                    "--api", API, "--api-token-file", str(token), *args])  # fmt: skip
    started.append(daemon)
    daemon.wait_for("attached in native mode")
    return daemon


def api(on: Bed, method: str, path: str) -> Any:
    with in_netns(on.lb.name):
        return ApiClient(f"http://{API}", TOKEN).request(method, path, check=False).body


def announced(router: BirdRouter) -> bool:
    return bool(router.routes(VIP4)) and bool(router.routes(VIP6))


def withdrawn(router: BirdRouter) -> bool:
    return not router.routes(VIP4) and not router.routes(VIP6)


def ctl(on: Bed, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{on.lb.name}", sys.executable, "-m", "rusty_rail",
         "ctl", "--api", API, "--token-file", str(tmp_path / "token"), *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_announced_drained_undrained_and_withdrawn_when_the_daemon_is_killed(
    bed: Bed,  # noqa: F811
    router: BirdRouter,
    daemons: list[Daemon],
    tmp_path: Path,
) -> None:
    daemon = start(bed, tmp_path, "run", daemons)
    router.wait(lambda: announced(router), "both VIPs in the router's routing table")
    assert f"via {LB} dev eth0" in router.routes(VIP4)
    assert f"via {LB6} dev eth0" in router.routes(VIP6)
    health = api(bed, "GET", "/healthz")
    assert health["status"] == "ok" and health["drained"] is False
    assert health["bgp"]["announced"] == ["198.18.100.1", "2001:2:100::1"]
    assert health["bgp"]["withheld"] is None
    assert health["bgp"]["peers"][0]["established"] is True
    assert health["bgp"]["router_id"] == LB  # the default: lb_address
    metrics = str(api(bed, "GET", "/metrics"))
    assert "rusty_rail_bgp_announced_routes 2.0" in metrics
    assert 'rusty_rail_bgp_session_established{peer="198.18.0.1:179"} 1.0' in metrics

    # Drained: both routes withdrawn, the session kept, and what still arrives is forwarded.
    drained = ctl(bed, tmp_path, "node", "drain")
    assert drained.returncode == 0, drained.stderr
    assert "drained; announced: none" in drained.stdout
    router.wait(lambda: withdrawn(router), "the routes withdrawn")
    assert router.established() == 1
    sent = flows(50)
    check_forwarded(bed, sent, send_and_capture(bed, sent), BACKENDS)
    health = api(bed, "GET", "/healthz")
    assert health["status"] == "ok" and health["drained"] is True
    assert health["bgp"]["withheld"] == "the node is drained (ctl node drain)"
    assert "rusty_rail_drained 1.0" in str(api(bed, "GET", "/metrics"))
    listed = ctl(bed, tmp_path, "--json", "cluster", "--nodes", API)
    assert '"drained": true' in listed.stdout and '"announced_routes": 0' in listed.stdout

    # Undrained: announced again.
    undrained = ctl(bed, tmp_path, "node", "undrain")
    assert undrained.returncode == 0, undrained.stderr
    assert "undrained; announced: 198.18.100.1, 2001:2:100::1" in undrained.stdout
    router.wait(lambda: announced(router), "announced again")

    # The daemon killed: its speaker dies with it, the session closes, the router withdraws
    # (well within the hold time: the session closed, no timer ran out).
    speaker = int(subprocess.check_output(["pgrep", "-P", str(daemon.process.pid), "bird"]))
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(timeout=10)
    router.wait(lambda: withdrawn(router), "withdrawn after SIGKILL", timeout=HOLD_TIME / 3)
    assert router.established() == 0
    router.wait(lambda: not os.path.exists(f"/proc/{speaker}"), "the speaker gone")
    daemon.handle.close()


def test_a_dead_speaker_is_started_again_a_failed_data_plane_and_detach_on_exit_withdraw(
    bed: Bed,  # noqa: F811
    router: BirdRouter,
    daemons: list[Daemon],
    tmp_path: Path,
) -> None:
    # The data plane fails: the program no longer runs on the device (detached behind the
    # daemon's back). Every route is withdrawn within a tick; the session stays up.
    daemon = start(bed, tmp_path, "run1", daemons)
    router.wait(lambda: announced(router), "announced")

    # The speaker dies on its own (its session closes: the router withdraws, as after the
    # daemon's SIGKILL above); the daemon starts another at its next tick, which announces.
    def speaker() -> int | None:
        found = subprocess.run(["pgrep", "-P", str(daemon.process.pid), "bird"],
                               capture_output=True, text=True, check=False).stdout  # fmt: skip
        return int(found) if found.strip() else None

    first = speaker()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    router.wait(lambda: speaker() not in (None, first), "another BIRD started")
    router.wait(lambda: announced(router) and router.established() == 1, "announced again")
    assert "BGP speaker: BIRD exited; starting it again" in (tmp_path / "run1.log").read_text()
    detach = subprocess.run(bed.rusty_rail("detach", "--device", "eth0"), capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert detach.returncode == 0, detach.stderr
    router.wait(lambda: withdrawn(router), "withdrawn once the program is gone")
    assert router.established() == 1
    health = api(bed, "GET", "/healthz")
    assert health["status"] == "unavailable" and health["bgp"]["announced"] == []
    assert health["bgp"]["withheld"] == "the data plane is not attached"
    assert daemon.stop() == 0
    router.wait(lambda: router.established() == 0, "the session closed on SIGTERM")

    # --detach-on-exit: announced, then SIGTERM withdraws (the speaker stops first) and
    # detaches.
    daemon = start(bed, tmp_path, "run2", daemons, "--detach-on-exit")
    router.wait(lambda: announced(router), "announced by the new daemon")
    assert daemon.stop() == 0
    assert withdrawn(router)
    assert "detached the balancer from eth0" in (tmp_path / "run2.log").read_text()
    log = (tmp_path / "run2.log").read_text()
    assert log.index("BIRD stopped") < log.index("detached the balancer")
