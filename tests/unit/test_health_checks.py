"""The active checks against real servers on loopback (TCP connect, HTTP status), the tunnel
probe's packet and reply parsing, and the event routes and `ctl events` on a daemon that is not
started.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv6Address

import pytest
from aiohttp.test_utils import TestClient, TestServer

from rusty_rail.api.server import create_app
from rusty_rail.cli.ctl_render import event_line
from rusty_rail.config import Config, merge_health, validate_as
from rusty_rail.control.checks import (
    echo6_reply_of,
    echo_reply_of,
    http_check,
    http_request,
    parse_status,
    probe_packet,
    probe_packet6,
    run_check,
    tcp_check,
)
from rusty_rail.control.daemon import Daemon
from rusty_rail.control.options import DaemonOptions
from rusty_rail.wire.build import icmp, icmp6, ipv4
from rusty_rail.wire.checksum import internet_checksum
from rusty_rail.wire.constants import ETH_P_IPV6, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6
from rusty_rail.wire.describe import Ipv4Info, Ipv6Info, describe

LOOPBACK = IPv4Address("127.0.0.1")
LOOPBACK6 = IPv6Address("::1")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, host, 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


def answering(status_line: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    return handler


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)
    writer.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tcp_check_connects_or_says_why_not() -> None:
    async def run() -> None:
        async with serving(silent) as port:
            ok = await tcp_check(LOOPBACK, port, 1.0)
        refused = await tcp_check(LOOPBACK, closed_port(), 1.0)
        assert ok.ok and ok.detail == f"tcp 127.0.0.1:{port}: connected"
        assert not refused.ok and "connection refused" in refused.detail

    asyncio.run(run())


@pytest.mark.parametrize(
    ("answer", "ok", "detail"),
    [
        (b"HTTP/1.1 200 OK", True, ": 200"),
        (b"HTTP/1.0 302 Found", True, ": 302"),
        (b"HTTP/1.1 503 Service Unavailable", False, ": 503 (not an expected status)"),
        (b"SSH-2.0-OpenSSH_9.2", False, ": not an HTTP answer"),
    ],
)
def test_http_check_judges_the_status(answer: bytes, ok: bool, detail: str) -> None:
    async def run() -> None:
        async with serving(answering(answer)) as port:
            settings = merge_health(vip_port=port)
            outcome = await http_check(LOOPBACK, settings, 1.0)
        assert outcome.ok is ok
        assert outcome.detail.startswith(f"http 127.0.0.1:{port} GET /")
        assert detail in outcome.detail

    asyncio.run(run())


def test_http_check_times_out_on_a_silent_server() -> None:
    async def run() -> None:
        async with serving(silent) as port:
            outcome = await http_check(LOOPBACK, merge_health(vip_port=port), 0.2)
        assert not outcome.ok and outcome.detail.endswith("no answer in time")

    asyncio.run(run())


def test_run_check_runs_the_configured_kind() -> None:
    async def run() -> None:
        async with serving(answering(b"HTTP/1.1 204 No Content")) as port:
            config = validate_as(
                Config,
                {
                    "health": {"check": "http", "port": port, "expect_status": [204]},
                    "default_backends": ["127.0.0.1"],
                },
                "test",
            )
            settings = config.health_for(None, config.default_backends[0])
            assert (await run_check(settings, LOOPBACK, None)).ok
        tunnel = merge_health(validate_as(Config, {"health": {"check": "tunnel"}}, "t").health)
        without = await run_check(tunnel, LOOPBACK, None)
        assert not without.ok and "unavailable" in without.detail
        assert (await run_check(merge_health(), LOOPBACK, None)).ok

    asyncio.run(run())


def test_tcp_check_connects_to_an_ipv6_backend_or_says_why_not() -> None:
    async def run() -> None:
        async with serving(silent, "::1") as port:
            ok = await tcp_check(LOOPBACK6, port, 1.0)
        refused = await tcp_check(LOOPBACK6, port, 1.0)
        assert ok.ok and ok.detail == f"tcp [::1]:{port}: connected"
        assert not refused.ok and refused.detail == f"tcp [::1]:{port}: connection refused"

    asyncio.run(run())


def test_http_check_gets_an_ipv6_backend_naming_it_in_brackets() -> None:
    heard: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heard.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def run() -> None:
        async with serving(handler, "::1") as port:
            config = validate_as(
                Config,
                {
                    "health": {"check": "http", "port": port, "path": "/ready",
                               "expect_status": ["5xx"]},
                    "default_backends": ["::1"],
                },
                "test",
            )  # fmt: skip
            backend = config.default_backends[0]
            outcome = await run_check(config.health_for(None, backend), backend.address, None)
        assert outcome.ok and outcome.detail == f"http [::1]:{port} GET /ready: 503"
        assert heard[0].startswith(f"GET /ready HTTP/1.1\r\nHost: [::1]:{port}\r\n".encode())

    asyncio.run(run())


def test_http_requests_name_the_host_and_close() -> None:
    request = http_request(IPv4Address("198.18.0.21"), merge_health(vip_port=8080), 8080)
    assert request.startswith(b"GET / HTTP/1.1\r\nHost: 198.18.0.21:8080\r\n")
    assert b"Connection: close\r\n" in request and request.endswith(b"\r\n\r\n")
    assert parse_status(b"HTTP/1.1 404 Not Found") == 404
    assert parse_status(b"HTTP/1.1 99 Odd") is None and parse_status(b"") is None


def test_a_probe_is_an_echo_inside_gre_from_the_balancer() -> None:
    lb, backend = IPv4Address("198.18.0.11"), IPv4Address("198.18.0.21")
    packet = probe_packet(lb, backend, 0x1234, 7, b"token-0123456789")
    info = describe(b"\x02\x00\x00\x00\x00\x01" * 2 + b"\x08\x00" + packet)
    assert isinstance(info.outer, Ipv4Info) and info.outer.proto == PROTO_GRE
    assert (info.outer.src, info.outer.dst) == (lb.packed, backend.packed)
    assert isinstance(info.inner, Ipv4Info) and info.inner.proto == PROTO_ICMP
    assert (info.inner.src, info.inner.dst) == (lb.packed, backend.packed)
    assert info.l4 is not None and info.l4.icmp_type == 8 and info.problem is None
    # What the backend sends back, as a raw ICMP socket reads it.
    reply = ipv4(backend.packed, lb.packed, PROTO_ICMP, icmp(0, 0, b"token-0123456789",
                                                            rest=(0x1234 << 16) | 7))  # fmt: skip
    assert echo_reply_of(reply) == (backend.packed, 0x1234, 7, b"token-0123456789")
    assert echo_reply_of(ipv4(backend.packed, lb.packed, PROTO_ICMP, icmp(8, 0, b"x"))) is None
    assert echo_reply_of(b"\x45") is None


def test_an_ipv6_probe_is_an_icmpv6_echo_inside_ipv6_gre_from_the_balancer() -> None:
    lb, backend = IPv6Address("2001:2::11"), IPv6Address("2001:2::21")
    packet = probe_packet6(lb, backend, 0x1234, 7, b"token-0123456789")
    info = describe(b"\x02\x00\x00\x00\x00\x01" * 2 + b"\x86\xdd" + packet)
    assert isinstance(info.outer, Ipv6Info) and info.outer.proto == PROTO_GRE
    assert (info.outer.src, info.outer.dst) == (lb.packed, backend.packed)
    assert info.outer.payload_length == len(packet) - 40
    assert info.gre is not None and info.gre.protocol == ETH_P_IPV6
    assert isinstance(info.inner, Ipv6Info) and info.inner.proto == PROTO_ICMPV6
    assert (info.inner.src, info.inner.dst) == (lb.packed, backend.packed)
    echo = packet[40 + 4 + 40 :]
    assert (
        echo[0] == 128 and echo[4:8] == b"\x12\x34\x00\x07" and echo.endswith(b"token-0123456789")
    )
    # The ICMPv6 checksum covers the pseudo-header: summed with it, the message comes to 0.
    pseudo = lb.packed + backend.packed + len(echo).to_bytes(4, "big") + bytes(3) + b"\x3a"
    assert internet_checksum(pseudo + echo) == 0
    # What the backend sends back, as a raw ICMPv6 socket reads it (no IPv6 header).
    reply = icmp6(129, 0, b"token-0123456789", src=backend, dst=lb, rest=(0x1234 << 16) | 7)
    assert echo6_reply_of(reply) == (0x1234, 7, b"token-0123456789")
    assert echo6_reply_of(echo) is None and echo6_reply_of(reply[:7]) is None


# --- the event routes, with a daemon that is not started ----------------------------------------

CONFIG = validate_as(
    Config, {"device": "eth0", "lb_address": "198.18.0.2", "default_backends": ["10.1.0.1"]}, "t"
)


def test_events_and_health_routes_answer_before_the_daemon_starts() -> None:
    daemon = Daemon(CONFIG, DaemonOptions(api=None))
    daemon.events.add("health", "default", "10.1.0.1", "healthy", "unhealthy", "check", "x")
    daemon.events.add("fail-open", "default", None, "closed", "fail-open", "health", "all")

    async def run() -> None:
        async with TestClient(TestServer(create_app(daemon))) as client:
            answer = await client.get("/v1/events", params={"since": "1"})
            body = await answer.json()
            assert answer.status == 200 and body["last_id"] == 2
            assert [event["kind"] for event in body["events"]] == ["fail-open"]
            assert (await (await client.get("/v1/events?vip=default")).json())["events"]
            bad = await client.get("/v1/events", params={"limit": "0"})
            assert bad.status == 400
            assert (await client.get("/v1/health")).status == 503

    asyncio.run(run())
    line = event_line(daemon.events.since()[0].as_json())
    assert line.endswith("#1 default 10.1.0.1: healthy -> unhealthy (check: x)")
    assert json.loads(json.dumps(daemon.events.since()[1].as_json()))["to"] == "fail-open"
