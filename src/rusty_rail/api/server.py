"""The aiohttp application of the REST API: its routes (handlers.py), its middlewares
(middlewares.py) and what they share (context.py). A new route is a handler in handlers.py,
a line here and its entry in openapi.py.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from rusty_rail.control.daemon import Daemon

from . import handlers
from .context import DAEMON, METRICS, PLAN_LOCK
from .health_metrics import HealthCollector
from .metrics import Metrics
from .middlewares import MAX_BODY, authorised, errors

#: A VIP key in a path: the address (IPv6 in brackets), then optionally :port/protocol; the
#: protocol's slash may also come percent-encoded.
VIP_SEGMENT: Final = r"{vip:[^/]+(?:/[A-Za-z0-9]+)?}"


def create_app(daemon: Daemon) -> web.Application:
    """The API of ``daemon``; the daemon serves it from its own loop."""
    app = web.Application(middlewares=[errors, authorised], client_max_size=MAX_BODY)
    app[DAEMON] = daemon
    app[PLAN_LOCK] = asyncio.Lock()
    app[METRICS] = Metrics(daemon)
    app[METRICS].registry.register(HealthCollector(daemon))
    router = app.router
    router.add_get("/healthz", handlers.healthz)
    router.add_get("/metrics", handlers.metrics)
    router.add_get("/openapi.json", handlers.openapi_document)
    router.add_get("/v1/vips", handlers.list_vips)
    backend_path = f"/v1/vips/{VIP_SEGMENT}/backends/{{address}}"
    router.add_get(backend_path, handlers.get_backend)
    router.add_put(backend_path, handlers.put_backend)
    router.add_patch(backend_path, handlers.patch_backend)
    router.add_delete(backend_path, handlers.delete_backend)
    # Before the VIP's own path, whose key would read "backends" as a protocol.
    router.add_get(f"/v1/vips/{VIP_SEGMENT}/backends", handlers.list_backends)
    vip_path = f"/v1/vips/{VIP_SEGMENT}"
    router.add_get(vip_path, handlers.get_vip)
    router.add_put(vip_path, handlers.put_vip)
    router.add_delete(vip_path, handlers.delete_vip)
    router.add_get("/v1/config", handlers.get_config)
    router.add_put("/v1/config", handlers.put_config)
    router.add_post("/v1/plan", handlers.plan)
    router.add_post("/v1/node/drain", handlers.drain_node)
    router.add_post("/v1/node/undrain", handlers.undrain_node)
    router.add_get("/v1/flows", handlers.list_flows)
    router.add_get("/v1/lookup", handlers.lookup)
    router.add_get("/v1/events", handlers.list_events)
    router.add_get("/v1/health", handlers.backend_health)
    return app
