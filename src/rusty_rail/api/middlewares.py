"""The API's middlewares: every error as JSON, and the bearer token for everything but a
read, checked before any body is read. (daemon.py adds the connection bounds of
control/connections.py in front of these.)"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Final

from aiohttp import web

from .context import DAEMON, json_response
from .errors import ApiError

log = logging.getLogger("rusty_rail.api")

#: Methods that read; every other one (writes, and POST /v1/plan) needs the bearer token.
READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: A configuration with every backend the data plane holds is about 1 MB of JSON.
MAX_BODY: Final = 16 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: The media type of an error (RFC 9457).
PROBLEM_JSON: Final = "application/problem+json"


def error_response(error: ApiError, request: web.Request | None = None) -> web.Response:
    """``error`` as its problem-details body and status (401s say how to authenticate)."""
    headers = {}
    if error.status == HTTPStatus.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="rusty-rail"'
    instance = request.path if request is not None else None
    response = json_response(error.body(instance), error.status, **headers)
    response.content_type = PROBLEM_JSON
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON: the API's own, aiohttp's (no such route, wrong method), and any
    other exception as a logged 500."""
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error, request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        message = error.text or error.reason
        if error.status == HTTPStatus.NOT_FOUND:
            message = f"no route {request.method} {request.path}: see /openapi.json"
        elif error.status == HTTPStatus.METHOD_NOT_ALLOWED:
            message = f"{request.method} is not allowed on {request.path}"
        elif error.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            message = f"the body is larger than {MAX_BODY} bytes"
        response = error_response(ApiError(error.status, message), request)
        for name in ("Allow",):
            if name in error.headers:
                response.headers[name] = error.headers[name]
        return response
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(
            ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the daemon's log"),
            request,
        )


@web.middleware
async def authorised(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Everything but a read needs the token (when the daemon has one), checked before the
    request's body is read."""
    if request.method not in READ_METHODS:
        _authorise(request)
    return await handler(request)


def _authorise(request: web.Request) -> None:
    """Writes need ``Authorization: Bearer <token>`` when the daemon has a token."""
    daemon = request.app[DAEMON]
    token = daemon.options.api.token if daemon.options.api else None
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(HTTPStatus.UNAUTHORIZED, "this write needs Authorization: Bearer <token>")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(HTTPStatus.UNAUTHORIZED, "wrong bearer token")
