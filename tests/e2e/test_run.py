"""`rusty-rail run` on a veth pair: GRE in, GRE out towards the backend the reference picks;
the data plane outlives the daemon, a restart adopts it, `detach` removes it.

Topology: namespace "r" (198.18.0.1 plus the backend addresses .11-.13, so the backends'
neighbour is r's interface) <-veth-> namespace "lb" (198.18.0.2) running the daemon.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from rusty_rail.config import config_from_env
from rusty_rail.control.plan import Allocation, compile_plan
from rusty_rail.dataplane.libbpf import (
    BpfObject,
    Link,
    Map,
    MapType,
    attach_xdp,
    bpf_object_path,
    create_map,
    query_xdp,
)
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.dataplane.structs import decode_counter
from rusty_rail.model import pipeline
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import VIP_FLOW_COUNT, NextHop, Stat, VipFlow
from rusty_rail.testbed.netns import Namespace, netns
from rusty_rail.timestamps import from_rfc3339
from rusty_rail.wire.build import gre
from rusty_rail.wire.checksum import internet_checksum
from rusty_rail.wire.constants import ETH_P_IPV4, PROTO_TCP, PROTO_UDP
from rusty_rail.wire.describe import describe
from rusty_rail.wire.frames import inner_ipv4

pytestmark = pytest.mark.e2e

LB = "198.18.0.2"
ROUTER = "198.18.0.1"
BACKENDS = ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


@dataclass
class Bed:
    router: Namespace
    lb: Namespace
    pin_root: Path
    pass_link: Link

    def env(self, targets: list[str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RR_")}
        env |= {"RR_DEVICE": "eth0", "RR_TARGET_IPS": ";".join(targets)}
        return env

    def rusty_rail(self, *args: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.lb.name}", sys.executable, "-m", "rusty_rail",
                *args, "--pin-root", str(self.pin_root)]  # fmt: skip


@pytest.fixture
def bed(bpffs_dir: Path) -> Iterator[Bed]:
    with netns() as net:
        router, lb = net.namespace("r"), net.namespace("lb")
        net.veth(router, "eth0", lb, "eth0")
        for address in [ROUTER, *BACKENDS]:
            router.ip("addr", "add", f"{address}/24", "dev", "eth0")
        lb.ip("addr", "add", f"{LB}/24", "dev", "eth0")
        # r owns the backend addresses but has no GRE: its kernel would answer every packet
        # forwarded to them with protocol unreachable, and the balancer would rightly take
        # them out (docs/health.md). Here they stand for servers that take the GRE.
        router.exec("nft", "add table ip quiet; add chain ip quiet out { type filter hook "
                    "output priority 0; }; add rule ip quiet out icmp type "
                    "destination-unreachable drop")  # fmt: skip
        # A burst to an unresolved neighbour overflows the kernel's ARP queue: resolve it now.
        router.ip(
            "neigh", "replace", LB, "lladdr", lb.mac("eth0"), "dev", "eth0", "nud", "permanent"
        )
        # Frames the balancer sends back with XDP_TX arrive on r's veth end, which drops them
        # unless an XDP program is attached there.
        with BpfObject.open(bpf_object_path("testbed_pass")) as obj:
            obj.load()
            with in_netns(router.name):
                link = attach_xdp(router.ifindex("eth0"), obj.program("xdp_pass"), "native")
        try:
            yield Bed(router, lb, bpffs_dir, link)
        finally:
            link.close()


class Daemon:
    """`rusty-rail run` as a child process, its log in a file."""

    def __init__(self, bed: Bed, targets: list[str], log: Path, args: Sequence[str] = ()) -> None:
        self.log = log
        self.handle = log.open("w")
        env = bed.env(targets)
        if not targets:
            del env["RR_TARGET_IPS"]
        self.process = subprocess.Popen(
            bed.rusty_rail("run", "--next-hop-timeout", "5", *args),
            env=env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            content = self.log.read_text()
            if text in content:
                return content
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"daemon log never said {text!r}:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        finally:
            self.handle.close()


def expected_backends(targets: list[str], flows: list[Flow]) -> dict[Flow, str]:
    """What any node with this configuration picks: the plan and the reference pipeline."""
    config = config_from_env({"RR_DEVICE": "eth0", "RR_TARGET_IPS": ";".join(targets)})
    hop = NextHop(1, bytes(6), bytes(6))
    plan = compile_plan(
        config, Allocation(), lb_ipv4=IPv4Address(LB), resolve_next_hop=lambda a: hop
    )
    chosen = {}
    for flow in flows:
        decision = pipeline.lookup(plan.state, flow)
        assert decision.backend_index is not None
        chosen[flow] = str(ip_address(plan.state.backends[decision.backend_index].addr))
    return chosen


def send_and_capture(bed: Bed, flows: list[Flow], wait: float = 1.0) -> dict[Flow, bytes]:
    """Send each flow's packet in GRE from r to the LB; return the GRE frames that came back
    to r, keyed by their inner flow."""
    with in_netns(bed.router.name):
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_GRE)
    with capture, sender:
        capture.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        capture.bind(("eth0", 0))
        capture.settimeout(0.05)
        for flow in flows:
            sender.sendto(gre(ETH_P_IPV4, inner_ipv4(flow, b"rusty-rail")), (LB, 0))
        received: dict[Flow, bytes] = {}
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and len(received) < len(flows):
            try:
                frame, address = capture.recvfrom(65535)
            except TimeoutError:
                continue
            info = describe(frame)
            if address[2] == PACKET_OUTGOING or info.gre is None or info.flow is None:
                continue
            received[info.flow] = frame
    return received


def flows(count: int, base_port: int = 20000) -> list[Flow]:
    return [
        Flow.of(f"198.18.{100 + i % 7}.{1 + i % 200}", "198.19.0.10",
                PROTO_TCP if i % 3 else PROTO_UDP, base_port + i, 80)
        for i in range(count)
    ]  # fmt: skip


def check_forwarded(bed: Bed, sent: list[Flow], got: dict[Flow, bytes], targets: list[str]) -> None:
    assert set(got) == set(sent), f"{len(sent) - len(got)} of {len(sent)} flows did not come back"
    expected = expected_backends(targets, sent)
    lb_mac = bytes.fromhex(bed.lb.mac("eth0").replace(":", ""))
    router_mac = bytes.fromhex(bed.router.mac("eth0").replace(":", ""))
    used = set()
    for flow, frame in got.items():
        info = describe(frame)
        assert info.ethernet is not None and info.outer is not None
        assert info.ethernet.src == lb_mac and info.ethernet.dst == router_mac
        assert ip_address(info.outer.src) == IPv4Address(LB)
        assert str(ip_address(info.outer.dst)) == expected[flow], flow
        assert info.outer.ttl == 64
        assert internet_checksum(frame[14 : 14 + info.outer.header_len]) == 0
        used.add(str(ip_address(info.outer.dst)))
    assert used == set(targets)


def new_flows(pins: Path) -> int:
    """The new flows counted for the first VIP indices, read from the pinned ``vip_flows``."""
    with Map.from_pinned(pins / "vip_flows") as counters:
        return sum(
            decode_counter(value)[0]
            for vip_index in range(4)
            for value in counters.lookup_percpu(
                struct.pack("=I", vip_index * VIP_FLOW_COUNT + VipFlow.NEW)
            )
            or []
        )


def test_run_forwards_and_a_restarted_daemon_adopts_then_detaches_the_balancer(
    bed: Bed, tmp_path: Path
) -> None:
    daemon = Daemon(bed, BACKENDS, tmp_path / "run1.log")
    daemon.wait_for("attached in native mode")
    sent = flows(300)
    check_forwarded(bed, sent, send_and_capture(bed, sent), BACKENDS)

    # Host traffic to the balancer's own address still reaches its stack.
    with in_netns(bed.lb.name):
        listener = socket.create_server((LB, 8080))
    with listener, in_netns(bed.router.name):
        with socket.create_connection((LB, 8080), timeout=5) as client:
            client.sendall(b"ping")
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.recv(4) == b"ping"

    # SIGTERM: the daemon goes, the data plane stays and keeps forwarding.
    assert daemon.stop() == 0
    with in_netns(bed.lb.name):
        attached = query_xdp(bed.lb.ifindex("eth0"))
    assert attached is not None and attached.mode == "native"
    more = flows(100, base_port=40000)
    check_forwarded(bed, more, send_and_capture(bed, more), BACKENDS)

    # A restart adopts the pinned state: nothing to rewrite, flows keep their backends.
    again = Daemon(bed, BACKENDS, tmp_path / "run2.log")
    log = again.wait_for("swapped the new program into the pinned native XDP link")
    assert "adopted the pinned state; 0 map updates" in log
    check_forwarded(bed, sent, send_and_capture(bed, sent), BACKENDS)
    assert again.stop() == 0
    # The per-VIP new flows are pinned: those of both programs are there, none lost.
    assert new_flows(bed.pin_root / "eth0") >= len(sent) + len(more)

    detach = subprocess.run(
        bed.rusty_rail("detach", "--device", "eth0"), capture_output=True, text=True
    )
    assert detach.returncode == 0, detach.stderr
    with in_netns(bed.lb.name):
        assert query_xdp(bed.lb.ifindex("eth0")) is None
    assert not (bed.pin_root / "eth0").exists()
    assert send_and_capture(bed, sent[:10], wait=0.3) == {}


def test_a_balancer_pinned_by_the_version_before_ipv6_is_adopted_with_its_flows(
    bed: Bed, tmp_path: Path
) -> None:
    """Issue 10 added two maps (vips_v6, conntrack_v6) and a counter: a restart onto the new
    version adopts the earlier pin set, keeps its connection table and counters, pins the new
    maps beside them, and says which reason goes uncounted."""
    daemon = Daemon(bed, BACKENDS, tmp_path / "run1.log")
    daemon.wait_for("attached in native mode")
    sent = flows(200)
    check_forwarded(bed, sent, send_and_capture(bed, sent), BACKENDS)
    assert daemon.stop() == 0
    pins = bed.pin_root / "eth0"
    # The earlier version's pin set: no IPv6 maps, counters up to INNER_EXT_TOO_DEEP (not it).
    for name in ("vips_v6", "conntrack_v6"):
        (pins / name).unlink()
    with Map.from_pinned(pins / "stats") as stats:
        assert stats.max_entries == len(Stat)
        key_size, value_size = stats.key_size, stats.value_size
    (pins / "stats").unlink()
    older_entries = int(Stat.INNER_EXT_TOO_DEEP)
    with create_map(
        MapType.PERCPU_ARRAY, key_size, value_size, older_entries, name="stats"
    ) as older:
        older.pin(pins / "stats")
    with Map.from_pinned(pins / "conntrack") as conntrack:
        conntrack_id = conntrack.id
    try:
        again = Daemon(bed, BACKENDS, tmp_path / "run2.log")
        log = again.wait_for("swapped the new program into the pinned native XDP link")
        assert "adopted the pinned state; 0 map updates" in log
        assert "INNER_EXT_TOO_DEEP, TOO_BIG_ICMP, TOO_BIG_LIMITED, TOO_BIG_NO_DF are not" in log
        assert (pins / "vips_v6").exists() and (pins / "conntrack_v6").exists()
        with Map.from_pinned(pins / "conntrack") as conntrack:
            assert conntrack.id == conntrack_id  # the same table, its flows with it
        with Map.from_pinned(pins / "stats") as stats:
            assert stats.max_entries == older_entries
        check_forwarded(bed, sent, send_and_capture(bed, sent), BACKENDS)
        assert again.stop() == 0
    finally:
        detach = subprocess.run(
            bed.rusty_rail("detach", "--device", "eth0"), capture_output=True, text=True
        )
        assert detach.returncode == 0, detach.stderr


def test_bad_environment_exits_2_and_attaches_nothing(bed: Bed) -> None:
    for targets in (["198.18.0.11", "not-an-address"], []):
        env = bed.env(targets)
        result = subprocess.run(
            bed.rusty_rail("run"), env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert "RR_TARGET_IPS" in result.stderr
        assert "nothing was attached or changed" in result.stderr
    env = bed.env(BACKENDS) | {"RR_DEVICE": "nosuchdev0"}
    result = subprocess.run(
        bed.rusty_rail("run"), env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "nosuchdev0" in result.stderr
    with in_netns(bed.lb.name):
        assert query_xdp(bed.lb.ifindex("eth0")) is None
    assert not (bed.pin_root / "eth0").exists()


def test_a_refused_start_leaves_the_running_balancer_as_it_was(bed: Bed, tmp_path: Path) -> None:
    """Issue 16, defect 1: a start refused for its XDP mode used to write its backends into
    the live maps before the mode check, then say that nothing was changed. The balancer runs
    from its pins here, its daemon gone, as between the two halves of a restart."""
    daemon = Daemon(bed, BACKENDS, tmp_path / "run.log")
    daemon.wait_for("attached in native mode")
    assert daemon.stop() == 0
    try:
        refused = subprocess.run(
            [*bed.rusty_rail("run", "--no-api", "--xdp-mode", "generic")],
            env=bed.env(BACKENDS[:1]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stderr
        assert "runs in native mode, not generic" in refused.stderr
        assert "nothing was attached or changed" in refused.stderr
        sent = flows(300)
        check_forwarded(bed, sent, send_and_capture(bed, sent), BACKENDS)
    finally:
        detach = subprocess.run(
            bed.rusty_rail("detach", "--device", "eth0"), capture_output=True, text=True
        )
        assert detach.returncode == 0, detach.stderr


def test_a_second_daemon_on_the_same_device_is_refused_before_it_touches_anything(
    bed: Bed, tmp_path: Path
) -> None:
    """Issue 16: two daemons on one device would each write the other's maps."""
    daemon = Daemon(bed, BACKENDS, tmp_path / "run.log")
    daemon.wait_for("serving the REST API")
    try:
        second = subprocess.run(
            [*bed.rusty_rail("run", "--no-api")],
            env=bed.env(BACKENDS[:1]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert "another rusty-rail run drives eth0" in second.stderr
        assert "nothing was attached or changed" in second.stderr
        sent = flows(300)
        check_forwarded(bed, sent, send_and_capture(bed, sent), BACKENDS)
        assert daemon.process.poll() is None
    finally:
        assert daemon.stop() == 0
    # Its holder gone (the kernel drops the lock with the process), the next start adopts.
    restarted = Daemon(bed, BACKENDS, tmp_path / "run2.log")
    try:
        restarted.wait_for("adopted the pinned state")
    finally:
        assert restarted.stop() == 0
        subprocess.run(bed.rusty_rail("detach", "--device", "eth0"), capture_output=True)


def _get(bed: Bed, path: str) -> str:
    """GET from the daemon's API inside the balancer's namespace."""
    with in_netns(bed.lb.name), socket.create_connection(("127.0.0.1", 9180), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return body


def _metric(text: str, name: str) -> float:
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, (name, values)
    return float(values[0])


def test_a_refused_reload_is_named_in_healthz_and_metrics_until_a_good_one(
    bed: Bed, tmp_path: Path
) -> None:
    """Issue 14, item 3: after a SIGHUP with a broken file the running configuration stays,
    and /healthz and /metrics say so until a good reload clears it."""
    config = tmp_path / "lb.toml"
    good = f'device = "eth0"\ndefault_backends = {BACKENDS[:2]!r}\n'.replace("'", '"')
    config.write_text(good)
    log = tmp_path / "run.log"
    daemon = Daemon(bed, [], log, ("--config", str(config), "--no-state-file"))
    try:
        daemon.wait_for("serving the REST API")
        health = json.loads(_get(bed, "/healthz"))
        assert health["config_reload"]["failed"] is None
        assert health["config_reload"]["failures_total"] == 0
        started_at = health["config_reload"]["last_success_at"]

        config.write_text(good + 'hash_seed = "not a number"\nbogus = 1\n')
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("reload refused")
        health = json.loads(_get(bed, "/healthz"))
        failed = health["config_reload"]["failed"]
        assert failed is not None and failed["file"] == str(config), health
        assert failed["errors"] == 2 and "hash_seed" in failed["error"], failed
        assert health["status"] == "ok"  # the data plane runs the configuration before it
        assert any(str(config) in warning for warning in health["warnings"]), health
        metrics = _get(bed, "/metrics")
        assert _metric(metrics, "rusty_rail_config_reload_failures_total") == 1
        assert _metric(metrics, "rusty_rail_config_last_reload_successful") == 0
        sent = flows(100)
        check_forwarded(bed, sent, send_and_capture(bed, sent), BACKENDS[:2])

        config.write_text(good.replace(f'"{BACKENDS[1]}"', f'"{BACKENDS[2]}"'))
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for("reloaded the configuration")
        health = json.loads(_get(bed, "/healthz"))
        assert health["config_reload"]["failed"] is None
        assert health["config_reload"]["failures_total"] == 1
        assert health["config_reload"]["last_success_at"] > started_at
        assert not any(str(config) in warning for warning in health["warnings"]), health
        metrics = _get(bed, "/metrics")
        assert _metric(metrics, "rusty_rail_config_reload_failures_total") == 1
        assert _metric(metrics, "rusty_rail_config_last_reload_successful") == 1
        assert _metric(
            metrics, "rusty_rail_config_last_reload_success_timestamp_seconds"
        ) == pytest.approx(from_rfc3339(health["config_reload"]["last_success_at"]), abs=0.002)
        sent = flows(100, base_port=30000)  # new flows: the table decides
        check_forwarded(bed, sent, send_and_capture(bed, sent), [BACKENDS[0], BACKENDS[2]])
    finally:
        daemon.stop()
        subprocess.run(bed.rusty_rail("detach", "--device", "eth0"), capture_output=True)
