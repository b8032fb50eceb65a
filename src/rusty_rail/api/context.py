"""What the API's handlers and middlewares share: the application's keys and the JSON
response every route answers with."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web

from rusty_rail.control.daemon import Daemon

from .metrics import Metrics

DAEMON: Final = web.AppKey("daemon", Daemon)
METRICS: Final = web.AppKey("metrics", Metrics)
#: Dry runs go one at a time: each may build tables up to MAX_PLAN_BUILD_SLOTS.
PLAN_LOCK: Final = web.AppKey("plan_lock", asyncio.Lock)


def json_response(data: Any, status: int = HTTPStatus.OK, **headers: str) -> web.Response:
    """``data`` as indented JSON (NaN and infinities refused)."""
    text = json.dumps(data, indent=1, allow_nan=False)
    return web.Response(text=text + "\n", status=status, content_type="application/json",
                        headers=headers)  # fmt: skip
