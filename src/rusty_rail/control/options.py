"""How `rusty-rail run` is told to run: the REST API's address, token and connection
bounds, and the daemon's options; binding the API's socket."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rusty_rail.control.connections import (
    DEFAULT_IDLE_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
)
from rusty_rail.control.errors import StartupError
from rusty_rail.control.store import StoreAddress
from rusty_rail.dataplane.libbpf import PIN_ROOT

DEFAULT_API_PORT: Final = 9180
#: The shortest token accepted for an API that listens beyond loopback.
MIN_TOKEN_LENGTH: Final = 16


@dataclass(frozen=True)
class ApiOptions:
    """Where the REST API listens and the bearer token its writes need (None: no token)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_API_PORT
    token: str | None = None
    #: Connections served at once; more are closed as they are accepted.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: A connection that starts no request for this long is closed.
    idle_seconds: float = DEFAULT_IDLE_SECONDS
    #: Where the token came from (a file, the environment), for the log.
    token_source: str | None = None

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_api_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9180``, ``[::1]:9180``, ``0.0.0.0:9180`` or a bare port; raises ValueError."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{text!r}: write an IPv6 address as [address]:port")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r}: write ADDRESS:PORT, e.g. 127.0.0.1:{DEFAULT_API_PORT}")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) or not (
        0 <= int(port_text) <= 65535
    ):
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


#: Backends (one per VIP and backend) up to which /metrics has series per backend: about 10
#: series each, so the default keeps a scrape to about 1 MB.
METRICS_BACKEND_LIMIT: Final = 1024


@dataclass
class DaemonOptions:
    config_path: Path | None = None
    pin_root: Path = PIN_ROOT
    detach_on_exit: bool = False
    #: How long start-up waits for backends' next hops to answer ARP before going on without.
    next_hop_timeout: float = 3.0
    #: How often unresolved next hops are retried, and (x30) resolved ones refreshed.
    refresh_interval: float = 1.0
    #: The REST API; None: no API.
    api: ApiOptions | None = field(default_factory=ApiOptions)
    #: Where API changes are saved; None: not saved (they are lost on restart).
    state_file: Path | None = None
    #: Start from the configuration file (or environment), removing a saved state.
    reset_state: bool = False
    #: Attach the program (tests of the API alone may leave it loaded but not attached).
    attach: bool = True
    #: /metrics has series per backend while the VIPs hold at most this many backends in all
    #: (one per VIP and backend); beyond it, per-VIP counts only (docs/api.md).
    metrics_backend_limit: int = METRICS_BACKEND_LIMIT
    #: The cluster's store (docs/cluster.md); None: the embedded state file alone.
    store: StoreAddress | None = None
    #: This node's name in the store (default: host name and device).
    node_name: str | None = None


def raise_file_limit(connections: int) -> None:
    """Lift the soft limit on open files towards the hard one: the maps, the health checks
    and ``connections`` API clients all need descriptors (the default soft limit is 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(soft, 4 * connections + 1024, 65536)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def bind_api(api: ApiOptions) -> socket.socket:
    family = socket.AF_INET6 if ":" in api.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((api.host, api.port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise StartupError(
            f"cannot listen for the API on {api.url}: {error.strerror or error}; choose "
            "another address with --api ADDRESS:PORT, or --no-api"
        ) from error
    return sock
