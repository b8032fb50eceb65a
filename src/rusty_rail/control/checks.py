"""Active health checks as coroutines: a TCP connect, an HTTP GET, and the tunnel probe, an
ICMP (ICMPv6 for an IPv6 backend) echo sent inside GRE from the balancer's own address of the
backend's family: the path the balanced traffic takes.

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
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from rusty_rail._types import IPAddress
from rusty_rail.config import CheckType, HealthSettings
from rusty_rail.wire.build import gre, icmp, icmp6, ipv4, ipv6
from rusty_rail.wire.constants import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
)

SOL_RAW: Final = 255
ICMP_FILTER: Final = 1  # linux/icmp.h: a bit per type to *block* on a raw ICMP socket
ICMP6_FILTER: Final = 1  # linux/icmpv6.h: 256 bits, one per type to *block*, level IPPROTO_ICMPV6
IPV6_HDRINCL: Final = 36  # linux/in6.h: the IPv6 header is the caller's (not in Python's socket)
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


def probe_packet6(
    lb_address: IPv6Address, backend: IPv6Address, ident: int, sequence: int, token: bytes
) -> bytes:
    """The IPv6 probe: outer IPv6 from the balancer's IPv6 address to ``backend``, GRE
    (protocol 0x86DD), then an ICMPv6 echo request from the balancer to the backend's own
    address carrying ``token``. Unwrapped, the backend answers it straight back."""
    echo = icmp6(
        ICMPV6_ECHO_REQUEST, 0, token,
        src=lb_address.packed, dst=backend.packed, rest=(ident << 16) | sequence,
    )  # fmt: skip
    inner = ipv6(lb_address.packed, backend.packed, PROTO_ICMPV6, echo)
    return ipv6(lb_address.packed, backend.packed, PROTO_GRE, gre(ETH_P_IPV6, inner))


def echo6_reply_of(message: bytes) -> tuple[int, int, bytes] | None:
    """(ident, sequence, payload) of an ICMPv6 echo reply as a raw ICMPv6 socket reads it (no
    IPv6 header: the source comes with recvfrom); None for anything else."""
    if len(message) < 8 or message[0] != ICMPV6_ECHO_REPLY:
        return None
    ident, sequence = struct.unpack_from("!HH", message, 4)
    return ident, sequence, message[8:]


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
    """ICMP echoes inside GRE from the balancer's addresses to backends, and their replies.

    Sending needs a raw socket that takes the whole IP header (the outer header is built here,
    so its source is the balancer's address whatever the routing says): AF_INET with
    IPPROTO_RAW, and AF_INET6 with IPPROTO_RAW and IPV6_HDRINCL (an ordinary IPv6 raw socket
    writes the header itself, from the routing's source). Replies are read from raw ICMP and
    ICMPv6 sockets that let echo replies through only. Each echo carries a random token: a
    forged reply cannot keep a dead backend in. Root (CAP_NET_RAW) is needed; the daemon has
    it. IPv6 probes go out from ``lb_ipv6``; without it, or without IPv6 raw sockets, an IPv6
    backend's probe fails and says why (IPv4 probes are unaffected)."""

    def __init__(self, lb_address: IPv4Address, lb_ipv6: IPv6Address | None = None) -> None:
        self.lb_address = lb_address
        self.lb_ipv6 = lb_ipv6
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
        self._send6: socket.socket | None = None
        self._receive6: socket.socket | None = None
        #: Why IPv6 probes cannot be sent on this node, or None.
        self.ipv6_unavailable: str | None = None
        try:
            self._send6, self._receive6 = _ipv6_sockets()
        except OSError as error:
            self.ipv6_unavailable = f"no raw IPv6 sockets: {_why(error)}"
        self._ident = secrets.randbits(16)
        self._sequence = secrets.randbits(16)
        self._waiting: dict[tuple[bytes, int], tuple[bytes, asyncio.Future[float]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0
        self.answered = 0

    def _receivers(self) -> list[socket.socket]:
        return [s for s in (self._receive, self._receive6) if s is not None]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._receive.fileno(), self._on_readable)
        if self._receive6 is not None:
            loop.add_reader(self._receive6.fileno(), self._on_readable6)

    def close(self) -> None:
        receivers = self._receivers()
        if self._loop is not None and not self._loop.is_closed():
            for receiver in receivers:
                with contextlib.suppress(ValueError, RuntimeError):
                    self._loop.remove_reader(receiver.fileno())
        for sock in (self._send, self._send6, *receivers):
            if sock is not None:
                sock.close()
        for _, waiter in self._waiting.values():
            waiter.cancel()
        self._waiting.clear()

    def _packet(self, backend: IPAddress, token: bytes) -> tuple[socket.socket, bytes] | str:
        """The socket and bytes of one echo to ``backend``, or why none can be sent."""
        if isinstance(backend, IPv4Address):
            packet = probe_packet(self.lb_address, backend, self._ident, self._sequence, token)
            return self._send, packet
        if self._send6 is None:
            return f"cannot send: {self.ipv6_unavailable}"
        if self.lb_ipv6 is None:
            return "cannot send: this node has no IPv6 address to probe from (lb_address_ipv6)"
        packet = probe_packet6(self.lb_ipv6, backend, self._ident, self._sequence, token)
        return self._send6, packet

    async def probe(self, backend: IPAddress, timeout: float) -> Outcome:
        """Healthy when an echo sent through the tunnel comes back within ``timeout``."""
        assert self._loop is not None, "start() the prober first"
        started = time.monotonic()
        waiters: list[tuple[bytes, int]] = []
        done: asyncio.Future[float] = self._loop.create_future()
        try:
            for attempt in range(PROBE_ATTEMPTS):
                self._sequence = (self._sequence + 1) & 0xFFFF
                token = secrets.token_bytes(16)
                prepared = self._packet(backend, token)
                if isinstance(prepared, str):
                    return Outcome(False, f"tunnel {backend}: {prepared}")
                key = (backend.packed, self._sequence)
                self._waiting[key] = (token, done)
                waiters.append(key)
                sender, packet = prepared
                try:
                    sender.sendto(packet, (str(backend), 0))
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
            except OSError:  # BlockingIOError (drained) included
                return
            reply = echo_reply_of(packet)
            if reply is not None:
                self._take(*reply)

    def _on_readable6(self) -> None:
        assert self._receive6 is not None
        while True:
            try:
                message, peer = self._receive6.recvfrom(2048)
            except OSError:
                return
            reply = echo6_reply_of(message)
            if reply is not None:
                source = IPv6Address(str(peer[0]).partition("%")[0]).packed
                self._take(source, *reply)

    def _take(self, source: bytes, ident: int, sequence: int, payload: bytes) -> None:
        if ident != self._ident:
            return
        waiting = self._waiting.get((source, sequence))
        if waiting is None:
            return
        token, done = waiting
        if payload[: len(token)] == token and not done.done():
            self.answered += 1
            done.set_result(time.monotonic())


def _ipv6_sockets() -> tuple[socket.socket, socket.socket]:
    """The IPv6 prober's sockets: a raw one that takes the whole IPv6 header (IPPROTO_RAW
    implies IPV6_HDRINCL on Linux since 4.5; set anyway, so the intent is stated), and a raw
    ICMPv6 one that lets only echo replies through (ICMP6_FILTER: a set bit blocks a type)."""
    send = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        send.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
        receive = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    except OSError:
        send.close()
        raise
    blocked = [0xFFFFFFFF] * 8
    blocked[ICMPV6_ECHO_REPLY >> 5] &= ~(1 << (ICMPV6_ECHO_REPLY & 31)) & 0xFFFFFFFF
    receive.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *blocked))
    send.setblocking(False)
    receive.setblocking(False)
    return send, receive


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
