"""A real etcd server for the cluster tests, started on the loopback of a test's network
namespace (so its ports cannot collide with anything else), with its data in a temporary
directory; paused (SIGSTOP) and resumed to make the store unreachable; always stopped."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rusty_rail.control.store import EtcdClient, StoreAddress, StoreError, parse_store
from tests.support.environment import skip_or_fail

CLIENT_PORT = 2379
PEER_PORT = 2380


@dataclass
class EtcdServer:
    process: subprocess.Popen[bytes]
    address: StoreAddress
    log: Path
    command: list[str]

    @property
    def client(self) -> EtcdClient:
        return EtcdClient(self.address)

    def pause(self) -> None:
        """The store stops answering (connections hang, as with a lost network)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """The store is gone: connections are refused."""
        self.process.kill()
        self.process.wait(timeout=30)

    def start_again(self) -> None:
        """The same member on the same data directory."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        _wait_ready(self.client, self.process, self.log)


def _wait_ready(client: EtcdClient, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            client.get("ready")
            return
        except StoreError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def etcd_server(namespace: str, directory: Path) -> Iterator[EtcdServer]:
    """etcd on 127.0.0.1 inside ``namespace``; the prefix is unique to this server."""
    binary = shutil.which("etcd")
    if binary is None:
        skip_or_fail("etcd is not installed: run scripts/setup (Debian's etcd-server)")
        raise AssertionError("unreachable")
    client_url = f"http://127.0.0.1:{CLIENT_PORT}"
    peer_url = f"http://127.0.0.1:{PEER_PORT}"
    log = directory / "etcd.log"
    command = [
        "ip", "netns", "exec", namespace, binary,
        "--name", "test", "--data-dir", str(directory / "etcd"),
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"test={peer_url}",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = EtcdServer(
        process,
        parse_store(f"etcd://127.0.0.1:{CLIENT_PORT}/rr-{uuid.uuid4().hex[:8]}"),
        log,
        command,
    )
    try:
        _wait_ready(server.client, process, log)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.process.send_signal(signal.SIGCONT)
            server.process.kill()
        server.process.wait(timeout=30)
