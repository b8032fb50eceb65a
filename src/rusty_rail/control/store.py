"""etcd as the cluster's store (docs/cluster.md): the ``--store`` address, and a small client
of etcd's v3 JSON gateway (``/v3/...``, served by etcd 3.4 and later on its client port).

The unary calls (range, transaction, put, leases) are plain blocking HTTP with a short
timeout: the daemon makes them on its worker threads, where changes run. The watch is a
streaming POST read on the daemon's asyncio loop (aiohttp), so it is cancelled with the loop's
other tasks. Keys and values travel base64-encoded, revisions as decimal strings (the
gateway's JSON mapping of int64).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

#: How long one unary call may take before the store counts as unreachable.
CALL_SECONDS: Final = 2.0
#: The key that holds the whole desired configuration, under the prefix.
CONFIG_KEY: Final = "config"
#: Where nodes register themselves (one key per node, bound to its lease).
NODES_KEY: Final = "nodes/"


class StoreError(RuntimeError):
    """etcd answered, but not as asked (an HTTP error, an answer that is not etcd's)."""


class StoreUnavailable(StoreError):
    """No endpoint of the store answered. ``maybe_sent``: a request may have reached one
    (it timed out rather than being refused), so etcd may still carry it out later."""

    def __init__(self, message: str, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class Compacted(StoreError):
    """The watch asked for revisions etcd has compacted away: read the key whole again."""


@dataclass(frozen=True)
class StoreAddress:
    """``etcd://HOST:PORT[,HOST:PORT...]/PREFIX``: the endpoints and the key prefix (which
    always ends with ``/``)."""

    endpoints: tuple[str, ...]
    prefix: str

    @property
    def config_key(self) -> str:
        return self.prefix + CONFIG_KEY

    @property
    def nodes_prefix(self) -> str:
        return self.prefix + NODES_KEY

    def __str__(self) -> str:
        return f"etcd://{','.join(self.endpoints)}/{self.prefix.strip('/')}"


def parse_store(text: str) -> StoreAddress:
    """Parse ``--store``; raises ValueError naming what is wrong."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme != "etcd":
        raise ValueError(f"--store {text!r}: write etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    hosts, slash, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not slash or not prefix:
        raise ValueError(
            f"--store {text!r}: a key prefix is needed, e.g. etcd://{hosts}/rusty-rail"
        )
    if any(c.isspace() for c in prefix):
        raise ValueError(f"--store {text!r}: the prefix {prefix!r} contains white space")
    endpoints = []
    for endpoint in hosts.split(","):
        host, colon, port = endpoint.strip().rpartition(":")
        if not colon or not host:
            raise ValueError(f"--store {text!r}: endpoint {endpoint!r} is not HOST:PORT")
        if not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
            raise ValueError(f"--store {text!r}: endpoint {endpoint!r}: bad port {port!r}")
        endpoints.append(f"{host}:{port}")
    return StoreAddress(tuple(endpoints), prefix + "/")


def _b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix``."""
    data = bytearray(prefix.encode())
    data[-1] += 1
    return base64.b64encode(bytes(data)).decode()


@dataclass(frozen=True)
class Value:
    """A key's value and the revision that last changed it (0: no such key)."""

    data: bytes | None
    mod_revision: int
    #: The store's revision when it was read.
    revision: int


class EtcdClient:
    """The calls rusty-rail makes, against the first endpoint that answers."""

    def __init__(self, address: StoreAddress, timeout: float = CALL_SECONDS) -> None:
        self.address = address
        self.timeout = timeout
        self._preferred = 0

    # --- transport ---------------------------------------------------------------------------

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the endpoints in turn."""
        endpoints = self.address.endpoints
        failures = []
        maybe_sent = False
        for step in range(len(endpoints)):
            index = (self._preferred + step) % len(endpoints)
            url = f"http://{endpoints[index]}/v3/{path}"
            request = urllib.request.Request(
                url, json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    raw = answer.read()
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:200]
                raise StoreError(
                    f"etcd {endpoints[index]} answered {error.code}: {detail}"
                ) from None
            except (OSError, TimeoutError) as error:
                reason = getattr(error, "reason", error)
                maybe_sent = maybe_sent or isinstance(reason, TimeoutError)
                failures.append(f"{endpoints[index]}: {reason}")
                continue
            self._preferred = index
            try:
                document = json.loads(raw)
            except ValueError:
                raise StoreError(f"{endpoints[index]} is not etcd's v3 gateway") from None
            if not isinstance(document, dict):
                raise StoreError(f"{endpoints[index]} is not etcd's v3 gateway")
            return document
        raise StoreUnavailable(f"etcd unreachable ({'; '.join(failures)})", maybe_sent)

    # --- keys --------------------------------------------------------------------------------

    def get(self, key: str) -> Value:
        answer = self.call("kv/range", {"key": _b64(key)})
        revision = int(answer.get("header", {}).get("revision", 0))
        for kv in answer.get("kvs", []):
            return Value(_unb64(kv.get("value", "")), int(kv["mod_revision"]), revision)
        return Value(None, 0, revision)

    def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            body["lease"] = str(lease)
        return int(self.call("kv/put", body).get("header", {}).get("revision", 0))

    def delete(self, key: str) -> int:
        return int(self.call("kv/deleterange", {"key": _b64(key)}).get("header", {})["revision"])

    def compare_and_put(self, key: str, value: bytes, mod_revision: int) -> tuple[bool, Value]:
        """Put ``value`` if ``key`` was last changed at ``mod_revision`` (0: it does not
        exist). Returns (True, the value written at its revision) or (False, the key as it is
        now), in one transaction."""
        answer = self.call(
            "kv/txn",
            {
                "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                             "mod_revision": str(mod_revision)}],
                "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
        )  # fmt: skip
        revision = int(answer.get("header", {}).get("revision", 0))
        if answer.get("succeeded", False):
            return True, Value(value, revision, revision)
        for response in answer.get("responses", []):
            for kv in response.get("response_range", {}).get("kvs", []):
                return False, Value(_unb64(kv.get("value", "")), int(kv["mod_revision"]), revision)
        return False, Value(None, 0, revision)

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        answer = self.call("kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return {
            _unb64(kv["key"]).decode(errors="replace"): _unb64(kv.get("value", ""))
            for kv in answer.get("kvs", [])
        }

    # --- leases ------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self.call("lease/grant", {"TTL": str(ttl)})["ID"])

    def keep_alive(self, lease: int) -> int:
        """Renew ``lease``; its remaining TTL (0: it expired)."""
        answer = self.call("lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.call("lease/revoke", {"ID": str(lease)})

    # --- watch -------------------------------------------------------------------------------

    async def watch(
        self, key: str, start_revision: int, idle_seconds: float | None = None
    ) -> AsyncIterator[list[tuple[int, bytes | None]]]:
        """The changes of ``key`` from ``start_revision`` on, a batch at a time, as
        (mod_revision, value or None for a delete). Raises StoreUnavailable when no endpoint
        answers or nothing arrives for ``idle_seconds`` (None: no limit; the caller checks
        the store's liveness otherwise), Compacted when the revision is gone."""
        import aiohttp

        endpoint = self.address.endpoints[self._preferred]
        body = {"create_request": {"key": _b64(key), "start_revision": str(start_revision),
                                   "progress_notify": False}}  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=idle_seconds)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(f"http://{endpoint}/v3/watch", json=body) as answer,
            ):
                if answer.status != 200:
                    raise StoreError(f"etcd {endpoint} answered {answer.status} to a watch")
                async for line in answer.content:
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    if int(result.get("compact_revision", 0)) > 0:
                        raise Compacted(f"revision {start_revision} is compacted")
                    if result.get("canceled"):
                        raise StoreError(f"etcd cancelled the watch: {result.get('cancel_reason')}")
                    batch = [
                        (int(event["kv"]["mod_revision"]),
                         None if event.get("type") == "DELETE"
                         else _unb64(event["kv"].get("value", "")))
                        for event in result.get("events", [])
                    ]  # fmt: skip
                    yield batch
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise StoreUnavailable(f"etcd watch on {endpoint} lost: {error or 'timeout'}") from None
        raise StoreUnavailable(f"etcd {endpoint} closed the watch")
