"""Active health checks as coroutines: a TCP connect, an HTTP GET, and the tunnel probe, an
ICMP echo sent inside GRE from the balancer's own address: the path the balanced traffic takes.

The checks talk to the backend's own address; the tunnel probe is what tells a backend that
serves but cannot take GRE (docs/health.md) from one that is fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final

from rusty_rail._types import IPAddress
from rusty_rail.config import CheckType, HealthSettings
from rusty_rail.wire.build import gre, icmp, ipv4
from rusty_rail.wire.constants import (
    ETH_P_IPV4,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    PROTO_GRE,
    PROTO_ICMP,
)

SOL_RAW: Final = 255
ICMP_FILTER: Final = 1  # linux/icmp.h: a bit per type to *block* on a raw ICMP socket
#: How many echoes a probe sends within its timeout: one lost packet is not a dead backend.
PROBE_ATTEMPTS: Final = 3
MAX_STATUS_LINE: Final = 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    detail: str


def _endpoint(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _why(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno).lower()  # asyncio's own text repeats the address
    return str(error) or type(error).__name__


async def tcp_check(address: IPAddress, port: int, timeout: float) -> Outcome:
    """Healthy when a TCP connection to ``address``:``port`` opens within ``timeout``."""
    where = _endpoint(address, port)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(str(address), port)
    except (OSError, TimeoutError) as error:
        return Outcome(False, f"tcp {where}: {_why(error)}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Outcome(True, f"tcp {where}: connected")


def http_request(address: IPAddress, settings: HealthSettings, port: int) -> bytes:
    host = settings.host
    if host is None:
        host = f"[{address}]" if address.version == 6 else str(address)
        if port != 80:
            host += f":{port}"
    return (
        f"GET {settings.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rusty-rail-health\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


def parse_status(line: bytes) -> int | None:
    """The status of an HTTP status line, or None when it is not one."""
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    status = int(parts[1])
    return status if 100 <= status <= 599 else None


async def http_check(address: IPAddress, settings: HealthSettings, timeout: float) -> Outcome:
    """Healthy when GET ``settings.path`` answers, within ``timeout``, with a status that
    ``settings.expect_status`` accepts. Only the status line is read."""
    port = settings.port
    assert port is not None, "the configuration gives every http check a port"
    what = f"http {_endpoint(address, port)} GET {settings.path}"
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(str(address), port)
            writer.write(http_request(address, settings, port))
            await writer.drain()
            line = await reader.readline()
    except (OSError, TimeoutError, ValueError) as error:
        return Outcome(False, f"{what}: {_why(error)}")
    finally:
        if writer is not None:
            writer.close()
    status = parse_status(line[:MAX_STATUS_LINE].strip())
    if status is None:
        return Outcome(False, f"{what}: not an HTTP answer: {line[:60]!r}")
    ok = settings.status_ok(status)
    return Outcome(ok, f"{what}: {status}" + ("" if ok else " (not an expected status)"))


def probe_packet(
    lb_address: IPv4Address, backend: IPv4Address, ident: int, sequence: int, token: bytes
) -> bytes:
    """One probe as it leaves the balancer: outer IPv4 from the balancer to ``backend``, GRE,
    then an echo request from the balancer to the backend's own address carrying ``token``.
    Unwrapped, the backend answers it like any ping: straight back, not through GRE."""
    rest = (ident << 16) | sequence
    inner = ipv4(
        lb_address.packed, backend.packed, PROTO_ICMP,
        icmp(ICMP_ECHO_REQUEST, 0, token, rest=rest), ident=sequence,
    )  # fmt: skip
    return ipv4(
        lb_address.packed, backend.packed, PROTO_GRE, gre(ETH_P_IPV4, inner),
        ident=sequence, dont_fragment=True,
    )  # fmt: skip


def echo_reply_of(packet: bytes) -> tuple[bytes, int, int, bytes] | None:
    """(source address, ident, sequence, payload) of an IPv4 echo reply as a raw ICMP socket
    reads it (IP header included); None for anything else."""
    if len(packet) < 20:
        return None
    header_len = (packet[0] & 0x0F) * 4
    message = packet[header_len:]
    if len(message) < 8 or message[0] != ICMP_ECHO_REPLY:
        return None
    ident, sequence = struct.unpack_from("!HH", message, 4)
    return packet[12:16], ident, sequence, message[8:]


class TunnelProber:
    """ICMP echoes inside GRE from ``lb_address`` to backends, and their replies.

    Sending needs a raw IP socket (the outer header is built here, so its source is the
    balancer's address whatever the routing says); replies are read from a raw ICMP socket
    that lets echo replies through only. Each echo carries a random token: a forged reply
    cannot keep a dead backend in. Root (CAP_NET_RAW) is needed; the daemon has it."""

    def __init__(self, lb_address: IPv4Address) -> None:
        self.lb_address = lb_address
        self._send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            self._receive = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except OSError:
            self._send.close()
            raise
        blocked = ~(1 << ICMP_ECHO_REPLY) & 0xFFFFFFFF
        self._receive.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", blocked))
        self._receive.setblocking(False)
        self._send.setblocking(False)
        self._ident = secrets.randbits(16)
        self._sequence = secrets.randbits(16)
        self._waiting: dict[tuple[bytes, int], tuple[bytes, asyncio.Future[float]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0
        self.answered = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._receive.fileno(), self._on_readable)

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_reader(self._receive.fileno())
        self._send.close()
        self._receive.close()
        for _, waiter in self._waiting.values():
            waiter.cancel()
        self._waiting.clear()

    async def probe(self, backend: IPAddress, timeout: float) -> Outcome:
        """Healthy when an echo sent through the tunnel comes back within ``timeout``."""
        if not isinstance(backend, IPv4Address):
            return Outcome(False, f"tunnel {backend}: IPv6 backends are not probed yet")
        assert self._loop is not None, "start() the prober first"
        started = time.monotonic()
        waiters: list[tuple[bytes, int]] = []
        done: asyncio.Future[float] = self._loop.create_future()
        try:
            for attempt in range(PROBE_ATTEMPTS):
                self._sequence = (self._sequence + 1) & 0xFFFF
                token = secrets.token_bytes(16)
                key = (backend.packed, self._sequence)
                self._waiting[key] = (token, done)
                waiters.append(key)
                try:
                    packet = probe_packet(
                        self.lb_address, backend, self._ident, self._sequence, token
                    )
                    self._send.sendto(packet, (str(backend), 0))
                    self.sent += 1
                except OSError as error:
                    return Outcome(False, f"tunnel {backend}: cannot send: {_why(error)}")
                left = timeout - (time.monotonic() - started)
                wait = left / (PROBE_ATTEMPTS - attempt)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0)):
                        answered = await asyncio.shield(done) - started
                        return Outcome(
                            True, f"tunnel {backend}: echo reply in {answered * 1000:.1f} ms"
                        )
        finally:
            for key in waiters:
                self._waiting.pop(key, None)
        return Outcome(False, f"tunnel {backend}: no echo reply through GRE in {timeout:g} s")

    def _on_readable(self) -> None:
        while True:
            try:
                packet = self._receive.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._take(packet)

    def _take(self, packet: bytes) -> None:
        reply = echo_reply_of(packet)
        if reply is None or reply[1] != self._ident:
            return
        source, _, sequence, payload = reply
        waiting = self._waiting.get((source, sequence))
        if waiting is None:
            return
        token, done = waiting
        if payload[: len(token)] == token and not done.done():
            self.answered += 1
            done.set_result(time.monotonic())


async def run_check(
    settings: HealthSettings, address: IPAddress, prober: TunnelProber | None
) -> Outcome:
    """One round of the backend's configured check."""
    if settings.check is CheckType.TCP:
        assert settings.port is not None
        return await tcp_check(address, settings.port, settings.timeout)
    if settings.check is CheckType.HTTP:
        return await http_check(address, settings, settings.timeout)
    if settings.check is CheckType.TUNNEL:
        if prober is None:
            return Outcome(False, "tunnel probes are unavailable on this node (no raw sockets)")
        return await prober.probe(address, settings.timeout)
    return Outcome(True, "no check")
