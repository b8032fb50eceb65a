"""Issue 14, item 1: a hot restart does not depend on seeing the pins. A daemon under
`ip netns exec` has a bpffs of its own (gone when it exits); one under `nsenter --net` shares
the host's. A restart from either to the other finds the balancer through the kernel, adopts
it, and not one packet of a steady stream is lost; a private-bpffs start says so.

The bed, the daemon and the flows are test_run.py's.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rusty_rail.dataplane.libbpf import BpfObject, attach_xdp, bpf_object_path, query_xdp
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.model.flowhash import Flow
from rusty_rail.wire.build import gre
from rusty_rail.wire.constants import ETH_P_IPV4
from rusty_rail.wire.describe import describe
from rusty_rail.wire.frames import inner_ipv4
from tests.e2e import test_run
from tests.e2e.test_run import BACKENDS, ETH_P_ALL, LB, PACKET_OUTGOING, Bed, Daemon, flows

pytestmark = pytest.mark.e2e

bed = test_run.bed  # the same fixture: namespaces r and lb, a veth pair, the pin root

PRIVATE_WARNING = "are on a bpffs private to this process's mount namespace"


class PrivateDaemon(Daemon):
    """`rusty-rail run` under `ip netns exec`: a private mount namespace, a bpffs of its own
    mounted at /sys/fs/bpf (the pin root is the same path, on another bpffs)."""

    def __init__(self, bed: Bed, log: Path) -> None:
        self.log = log
        self.handle = log.open("w")
        command = bed.rusty_rail("run", "--next-hop-timeout", "5")
        assert command[0] == "nsenter"
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", bed.lb.name, *command[2:]],
            env=bed.env(BACKENDS),
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )


class Stream:
    """A steady stream of GRE packets from r to the balancer (about 1,000 a second, one new
    flow each), and what came back to r, counted by flow."""

    def __init__(self, bed: Bed) -> None:
        with in_netns(bed.router.name):
            self.capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_GRE)
        self.capture.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        self.capture.bind(("eth0", 0))
        self.capture.settimeout(0.05)
        self.flows = flows(30000, base_port=30000)
        self.sent: list[Flow] = []
        self.received: set[Flow] = set()
        self._sending = threading.Event()
        self._capturing = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]

    def __enter__(self) -> Stream:
        self._sending.set()
        self._capturing.set()
        for thread in self._threads:
            thread.start()
        return self

    def _send(self) -> None:
        for flow in self.flows:
            if not self._sending.is_set():
                return
            self.sender.sendto(gre(ETH_P_IPV4, inner_ipv4(flow, b"rusty-rail")), (LB, 0))
            self.sent.append(flow)
            time.sleep(0.001)

    def _receive(self) -> None:
        while self._capturing.is_set():
            try:
                frame, address = self.capture.recvfrom(65535)
            except TimeoutError:
                continue
            info = describe(frame)
            if address[2] != PACKET_OUTGOING and info.gre is not None and info.flow is not None:
                self.received.add(info.flow)

    def __exit__(self, *_: object) -> None:
        self._sending.clear()
        self._threads[0].join()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not set(self.sent) <= self.received:
            time.sleep(0.05)
        self._capturing.clear()
        self._threads[1].join()
        self.capture.close()
        self.sender.close()

    def lost(self) -> int:
        return len(set(self.sent) - self.received)


def healthz(bed: Bed) -> dict[str, object]:
    with in_netns(bed.lb.name), socket.create_connection(("127.0.0.1", 9180), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    _, _, body = answer.decode().partition("\r\n\r\n")
    result: dict[str, object] = json.loads(body)
    return result


def detach(bed: Bed) -> None:
    result = subprocess.run(
        bed.rusty_rail("detach", "--device", "eth0"), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    with in_netns(bed.lb.name):
        assert query_xdp(bed.lb.ifindex("eth0")) is None


def test_a_private_bpffs_start_warns_and_a_restart_from_the_host_adopts_with_zero_loss(
    bed: Bed, tmp_path: Path
) -> None:
    private = PrivateDaemon(bed, tmp_path / "private.log")
    try:
        log = private.wait_for("serving the REST API")
        assert "attached in native mode through netlink (no bpf_link)" in log, log
        warnings = [line for line in log.splitlines() if PRIVATE_WARNING in line]
        assert len(warnings) == 1 and "WARNING" in warnings[0], log
        assert "nsenter --net=/run/netns/NAME" in warnings[0]
        health = healthz(bed)
        assert health["attached"] is True and health["status"] == "ok", health
        listed = health["warnings"]
        assert isinstance(listed, list) and any(PRIVATE_WARNING in w for w in listed), health
        # The host's bpffs has none of it: its pins are in the daemon's own.
        assert not (bed.pin_root / "eth0").exists()
        with Stream(bed) as stream:
            time.sleep(0.5)
            assert private.stop() == 0  # SIGTERM: its mount namespace, and its pins, go
            time.sleep(1.0)
            with in_netns(bed.lb.name):
                assert query_xdp(bed.lb.ifindex("eth0")) is not None
            host = Daemon(bed, BACKENDS, tmp_path / "host.log")
            log = host.wait_for("serving the REST API")
            health = healthz(bed)
            assert health["attached"] is True and health["status"] == "ok", health
            time.sleep(0.5)
        assert stream.lost() == 0, f"{stream.lost()} of {len(stream.sent)} packets lost"
        assert len(stream.sent) > 1000, len(stream.sent)
        assert "found the balancer on eth0 through the kernel" in log, log
        assert "swapped the new program in through netlink in native mode" in log, log
        assert "adopted the pinned state; 0 map updates" in log, log
        assert PRIVATE_WARNING not in log
        assert (bed.pin_root / "eth0" / "conntrack").exists()  # pinned again, in the host's
        assert host.stop() == 0
        # Again from the host: the pins are there now, the attachment is still netlink's.
        again = Daemon(bed, BACKENDS, tmp_path / "again.log")
        log = again.wait_for("serving the REST API")
        assert "swapped the new program in through netlink in native mode" in log, log
        assert "adopted the pinned state; 0 map updates" in log, log
        assert again.stop() == 0
        detach(bed)
        assert not (bed.pin_root / "eth0").exists()
    finally:
        private.stop()
        subprocess.run(bed.rusty_rail("detach", "--device", "eth0"), capture_output=True)


def test_a_restart_under_ip_netns_exec_adopts_the_hosts_pinned_link_with_zero_loss(
    bed: Bed, tmp_path: Path
) -> None:
    """The traceback of the issue: the link pinned in the host's bpffs is invisible to a
    daemon in a private mount namespace, whose attach then met EBUSY."""
    host = Daemon(bed, BACKENDS, tmp_path / "host.log")
    try:
        host.wait_for("attached in native mode")
        assert host.stop() == 0
        with Stream(bed) as stream:
            time.sleep(0.5)
            private = PrivateDaemon(bed, tmp_path / "private.log")
            log = private.wait_for("serving the REST API")
            time.sleep(0.5)
            assert private.stop() == 0  # its private pins go; the host's link holds on
            time.sleep(1.0)
        assert stream.lost() == 0, f"{stream.lost()} of {len(stream.sent)} packets lost"
        assert "Traceback" not in log and "EBUSY" not in log, log
        assert "found the balancer on eth0 through the kernel" in log, log
        assert "swapped the new program into the pinned native XDP link" in log, log
        assert "adopted the pinned state; 0 map updates" in log, log
        warnings = [line for line in log.splitlines() if PRIVATE_WARNING in line]
        assert len(warnings) == 1 and "bpf_link stays pinned outside" in warnings[0], log
    finally:
        host.stop()
    detach(bed)


def test_another_program_on_the_interface_is_refused_in_one_line(bed: Bed) -> None:
    with BpfObject.open(bpf_object_path("testbed_pass")) as obj:
        obj.load()
        with in_netns(bed.lb.name):
            link = attach_xdp(bed.lb.ifindex("eth0"), obj.program("xdp_pass"), "native")
        with link:
            for command in (
                bed.rusty_rail("run", "--no-api"),
                ["ip", "netns", "exec", bed.lb.name, *bed.rusty_rail("run", "--no-api")[2:]],
            ):
                result = subprocess.run(
                    command, env=bed.env(BACKENDS), capture_output=True, text=True, timeout=60
                )
                assert result.returncode == 2, result.stderr
                assert "Traceback" not in result.stderr
                assert "eth0 runs another XDP program" in result.stderr, result.stderr
                assert "'xdp_pass'" in result.stderr and "not xdp_balancer" in result.stderr
                assert "nothing was attached or changed" in result.stderr
            with in_netns(bed.lb.name):
                attached = query_xdp(bed.lb.ifindex("eth0"))
            assert attached is not None and attached.prog_id == obj.program("xdp_pass").id


def test_a_second_daemon_from_another_mount_namespace_is_refused(bed: Bed, tmp_path: Path) -> None:
    """Its pin directory is another (a private bpffs), so the directory's flock cannot see the
    first daemon: the hold on the interface in its network namespace does."""
    private = PrivateDaemon(bed, tmp_path / "private.log")
    try:
        private.wait_for("serving the REST API")
        second = subprocess.run(
            bed.rusty_rail("run", "--no-api"),
            env=bed.env(BACKENDS[:1]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert "another rusty-rail run drives eth0 in this network namespace" in second.stderr
        assert "nothing was attached or changed" in second.stderr
        assert not (bed.pin_root / "eth0").exists()
        sent = flows(200)
        test_run.check_forwarded(bed, sent, test_run.send_and_capture(bed, sent), BACKENDS)
    finally:
        assert private.stop() == 0
    detach(bed)


def test_an_attach_the_kernel_refuses_is_one_line_not_a_traceback(bed: Bed) -> None:
    bed.lb.ip("link", "set", "lo", "up")
    result = subprocess.run(
        bed.rusty_rail("run", "--no-api", "--next-hop-timeout", "1"),
        env=bed.env(BACKENDS) | {"RR_DEVICE": "lo"},  # the loopback driver has no native XDP
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot attach the balancer to lo" in result.stderr, result.stderr
    assert "no native XDP support" in result.stderr
    assert "nothing was attached or changed" in result.stderr
    with in_netns(bed.lb.name):
        assert query_xdp(socket.if_nametoindex("lo")) is None
    assert not (bed.pin_root / "lo").exists()
