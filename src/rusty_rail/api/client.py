"""A small synchronous client of the REST API (stdlib urllib): what `rusty-rail ctl`, the
benches and the tests talk to a running daemon with.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_URL: Final = "http://127.0.0.1:9180"
URL_VARIABLE: Final = "RUSTY_RAIL_API"
TOKEN_VARIABLE: Final = "RUSTY_RAIL_API_TOKEN"


class ApiUnreachable(RuntimeError):
    """No daemon answers at the URL."""


class NotRustyRail(ApiUnreachable):
    """Something answers at the URL, but not a rusty-rail API (no JSON where JSON is due)."""


class ApiFailed(RuntimeError):
    """The daemon answered with an error; ``body`` is its JSON error (docs/api.md)."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"{status}: {message or body}")


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any


class ApiClient:
    """A small synchronous client of the API (also what the tests and the bench use)."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        headers: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> Response:
        """One request; the JSON answer decoded (text for /metrics). Raises ApiUnreachable,
        or ApiFailed for a 4xx/5xx when ``check``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return self._ours(
                    path, _response(answer.status, dict(answer.headers), answer.read())
                )
        except urllib.error.HTTPError as error:
            response = self._ours(path, _response(error.code, dict(error.headers), error.read()))
            if check:
                raise ApiFailed(response.status, response.body) from None
            return response
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            raise ApiUnreachable(
                f"cannot reach the rusty-rail API at {self.url}: {reason}. Is `rusty-rail run` "
                f"running here, with its API on? Point at it with --api URL or ${URL_VARIABLE}."
            ) from None

    def _ours(self, path: str, response: Response) -> Response:
        """``response``, unless it cannot come from rusty-rail: every answer but /metrics is
        JSON (errors too). Raises NotRustyRail."""
        if path.split("?")[0] == "/metrics" or isinstance(response.body, dict | list):
            return response
        kind = next((v for k, v in response.headers.items() if k.lower() == "content-type"), "")
        kind = kind.split(";")[0].strip() or "no content type"
        raise NotRustyRail(
            f"no rusty-rail API at {self.url} (got {response.status} {kind} for {path}): "
            f"point at the daemon's API with --api ADDRESS:PORT or ${URL_VARIABLE}"
        )

    def get(self, path: str) -> Any:
        return self.request("GET", path).body

    def put(self, path: str, body: object) -> Any:
        return self.request("PUT", path, body).body

    def patch(self, path: str, body: object) -> Any:
        return self.request("PATCH", path, body).body

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path).body

    def post(self, path: str, body: object) -> Any:
        return self.request("POST", path, body).body


def _response(status: int, headers: dict[str, str], raw: bytes) -> Response:
    kind = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    text = raw.decode("utf-8", "replace")
    if "json" in kind:
        try:
            return Response(status, headers, json.loads(text))
        except ValueError:
            pass
    return Response(status, headers, text)


def api_url(text: str) -> str:
    """The API's URL from what an operator writes: a URL, ``ADDRESS:PORT`` (as `run --api`
    takes it: ``127.0.0.1:9180``, ``[::1]:9180``) or a bare port. Raises ValueError."""
    text = text.strip()
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if scheme not in ("http", "https"):
            raise ValueError(f"{text}: the API is reached over http or https")
        return text.rstrip("/")
    if text.isascii() and text.isdigit():
        return f"http://127.0.0.1:{text}"
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise ValueError(f"{text}: write ADDRESS:PORT (127.0.0.1:9180, [::1]:9180) or a URL")
    if ":" in host and not host.startswith("["):
        raise ValueError(f"{text}: write an IPv6 address in brackets: [{host}]:{port}")
    return f"http://{host}:{port}"


def vip_path(vip: str) -> str:
    """The path of a VIP (or ``default``); the key's / is percent-encoded."""
    return "/v1/vips/" + urllib.parse.quote(vip, safe=":[]")


def backend_path(vip: str, address: str) -> str:
    return f"{vip_path(vip)}/backends/{urllib.parse.quote(address, safe=':')}"
