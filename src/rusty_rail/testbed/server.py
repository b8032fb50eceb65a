"""The test bed's server application: an HTTP server that answers with its own name, and a
TCP echo service for long-lived connections. Run inside a server's namespace:

    python -m rusty_rail.testbed.server --name s1 --http-port 80 --echo-port 7
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

#: The first line of every echo connection, so a client knows which server it reached.
ECHO_GREETING = "rusty-rail echo from {name}\n"


async def _http(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive: every request gets the server's name as its body."""
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            if not request:
                break
            body = f"{name}\n".encode()
            close = b"connection: close" in request.lower()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {len(body)}\r\nX-Backend: {name}\r\n".encode()
                + (b"Connection: close\r\n" if close else b"")
                + b"\r\n"
                + body
            )
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def _echo(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(ECHO_GREETING.format(name=name).encode())
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(name: str, host: str | None, http_port: int, echo_port: int) -> None:
    """Both services on ``host``, or (None) on every address of both families."""
    http = await asyncio.start_server(lambda r, w: _http(name, r, w), host, http_port)
    echo = await asyncio.start_server(lambda r, w: _echo(name, r, w), host, echo_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    where = host or "*"
    print(f"server {name}: http on {where}:{http_port}, echo on {where}:{echo_port}", flush=True)
    async with http, echo:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rusty-rail test-bed server (HTTP + echo)")
    parser.add_argument("--name", required=True, help="the name every answer carries")
    parser.add_argument(
        "--host", default=None, help="address to bind (default every IPv4 and IPv6 address)"
    )
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--echo-port", type=int, default=7)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.name, args.host, args.http_port, args.echo_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
