"""The REST API's handlers: reads answer from the daemon's state (readers in readmodels.py);
writes compute the whole new configuration (changes.py) and hand it to the daemon, one at a
time, under its change lock. Routes are in server.py, middlewares in middlewares.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Final

from aiohttp import web

from rusty_rail._types import IPAddress
from rusty_rail.config import Config, ConfigError, Problem
from rusty_rail.control.cluster import StoreWriteError
from rusty_rail.control.daemon import SOURCE_API, ChangeResult, Daemon
from rusty_rail.control.errors import ApplyError, PersistError, StartupError
from rusty_rail.control.fingerprint import config_fingerprint
from rusty_rail.control.plan import Plan, PlanError
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import CtEntry

from . import changes, openapi, readmodels, schemas
from .changes import BODY, Target
from .context import DAEMON, METRICS, PLAN_LOCK, json_response
from .errors import ApiError
from .flow_counts import FlowCounts

log = logging.getLogger("rusty_rail.api")

DEFAULT_FLOW_LIMIT: Final = 100
MAX_FLOW_LIMIT: Final = 10_000
FLOW_SCAN: Final = 1_000_000
DEFAULT_PLAN_FLOWS: Final = 100_000
#: How long a request's body may take to arrive.
BODY_SECONDS: Final = 30.0
#: The most table slots one dry run may build: two tables of the largest size (about 130 MB
#: each while they are built). More is refused with 422, before anything is built.
MAX_PLAN_BUILD_SLOTS: Final = 1 << 25
#: How long a dry run may spend on the tracked flows; past it, the counts are partial.
PLAN_FLOW_SECONDS: Final = 10.0
DEFAULT_EVENT_LIMIT: Final = 100
MAX_EVENT_LIMIT: Final = 1000
OPENAPI: Final = openapi.document()


def _reject_constant(text: str) -> None:
    raise ValueError(f"{text} is not a JSON number")


async def _body(request: web.Request) -> object:
    """The request's JSON body, or 400 (413 for a body over MAX_BODY, from aiohttp)."""
    # Any Content-Type is read as JSON: `curl -d` sends form-urlencoded unless told otherwise.
    try:
        async with asyncio.timeout(BODY_SECONDS):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(
            HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {BODY_SECONDS:g} s"
        ) from None
    if not raw.strip():
        problem = Problem((), "a JSON body is needed")
        raise ApiError(HTTPStatus.BAD_REQUEST, "the request has no body", [problem])
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        where = (
            f"line {error.lineno}, column {error.colno}: {error.msg}"
            if isinstance(error, json.JSONDecodeError)
            else str(error)
        )
        problem = Problem((), f"not JSON: {where}")
        raise ApiError(
            HTTPStatus.BAD_REQUEST, f"the body is not JSON ({where})", [problem]
        ) from None


def _check_if_match(request: web.Request, current: Config) -> None:
    wanted = request.headers.get("If-Match")
    if wanted is None:
        return
    tags = [tag.strip().removeprefix("W/").strip('"') for tag in wanted.split(",")]
    if "*" in tags or request.app[DAEMON].config_marks(current)[0] in tags:
        return
    raise ApiError(
        HTTPStatus.PRECONDITION_FAILED,
        "the desired state changed since it was read (If-Match does not match its ETag); "
        "read it again and retry",
    )


def _check_if_none_match(request: web.Request, created: bool) -> None:
    """``If-None-Match: *`` makes a PUT create-only: 412 when the object exists."""
    wanted = request.headers.get("If-None-Match")
    if wanted is None or created:
        return
    if wanted.strip() != "*":
        raise ApiError.bad_parameter("If-None-Match", wanted, 'only "*" is understood')
    raise ApiError(
        HTTPStatus.PRECONDITION_FAILED,
        f"{request.path.removeprefix('/v1/vips/')} exists (If-None-Match: *): change it with "
        "PATCH, or PUT without If-None-Match to replace it",
        exists=True,
    )


def _change_error(error: Exception) -> ApiError:
    if isinstance(error, StartupError):
        return ApiError(HTTPStatus.CONFLICT, str(error), [Problem((), str(error))])
    if isinstance(error, PersistError | ApplyError):
        return ApiError(HTTPStatus.SERVICE_UNAVAILABLE, str(error))
    if isinstance(error, ConfigError):
        return ApiError.invalid(error)
    return ApiError(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        f"the data plane cannot hold this configuration: {error}",
        [Problem((), str(error))],
    )


def _result(daemon: Daemon, result: ChangeResult, config: Config) -> schemas.ChangeResult:
    return {**result.as_json(), "config_fingerprint": daemon.config_marks(config)[1]}


async def _write(
    request: web.Request,
    make: Callable[[Config], tuple[Config, bool]],
    *,
    location: str | None = None,
) -> web.Response:
    """Under the daemon's change lock (the token was checked by middlewares.authorised):
    compute the new configuration from the current one, check If-Match, and apply it. 201
    when ``make`` created something."""
    daemon = request.app[DAEMON]
    # The addresses the change would add are resolved before the change lock is taken, so
    # that other writes need not wait for their neighbours to answer ARP.
    with contextlib.suppress(ApiError):
        candidate, _ = make(daemon.config)
        await asyncio.to_thread(daemon.resolve_ahead, candidate)

    def work() -> tuple[Config, bool, ChangeResult]:
        if daemon.store is not None:
            return _write_through_store(request, daemon, make)
        current = daemon.config
        config, created = make(current)  # a bad body is reported before a stale If-Match
        _check_if_match(request, current)
        _check_if_none_match(request, created)
        try:
            result = daemon.change(config, SOURCE_API, actor=request.remote or "a local socket")
        except (PlanError, StartupError, PersistError, ApplyError, ValueError) as error:
            raise _change_error(error) from error
        # Unchanged: answer with the running object, whose fingerprints are known already.
        return (config if result.changed else current), created, result

    config, created, result = await daemon.exclusive(work)
    if result.changed:
        log.info(
            "%s %s: generation %d, %d map updates, tables rebuilt: %s (%.1f ms)",
            request.method,
            request.path,
            result.generation,
            result.map_updates,
            ", ".join(result.tables_rebuilt) or "none",
            result.seconds * 1000,
        )
    headers = {"ETag": f'"{daemon.config_marks(config)[0]}"'}
    if created and location is not None:
        headers["Location"] = location
    status = HTTPStatus.CREATED if created else HTTPStatus.OK
    return json_response(_result(daemon, result, config), status, **headers)


def _write_through_store(
    request: web.Request, daemon: Daemon, make: Callable[[Config], tuple[Config, bool]]
) -> tuple[Config, bool, ChangeResult]:
    """With --store: the same checks, then a compare-and-swap in etcd (cluster.py), applied
    here before the answer. A lost race is computed again on the winner's state, so If-Match
    then answers 412 and a write that does not conflict is kept."""
    assert daemon.store is not None

    def checked(current: Config) -> tuple[Config, bool]:
        config, created = make(current)
        _check_if_match(request, current)
        _check_if_none_match(request, created)
        return config, created

    try:
        config, created, result = daemon.store.write(
            daemon, checked, actor=request.remote or "a local socket"
        )
    except StoreWriteError as error:
        raise ApiError(HTTPStatus(error.status), str(error)) from None
    except (PlanError, StartupError, PersistError, ApplyError, ValueError) as error:
        raise _change_error(error) from error
    return (config if result.changed else daemon.config), bool(created), result


def _snapshot(daemon: Daemon, flow_counts: FlowCounts | None = None) -> readmodels.Snapshot:
    """The daemon's state for a read; ``flow_counts`` for views that show tracked flows."""
    plan = daemon.plan
    if plan is None:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the daemon is not started")
    return readmodels.Snapshot(
        config=daemon.config,
        plan=plan,
        next_hops=dict(daemon.next_hops.known),
        next_hop_problems=dict(daemon.next_hops.problems),
        maps=daemon.balancer.maps if daemon.balancer is not None else None,
        fingerprints={name: daemon.fingerprint(name) for name in plan.tables},
        table_generations=dict(daemon.table_generations),
        flow_counts=flow_counts,
    )


def _target(request: web.Request) -> Target:
    return changes.parse_target(request.match_info["vip"])


# --- handlers ---------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    healthy, body = await asyncio.to_thread(daemon.health)
    return json_response(body, HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE)


async def drain_node(request: web.Request) -> web.Response:
    return await _drain(request, True)


async def undrain_node(request: web.Request) -> web.Response:
    return await _drain(request, False)


async def _drain(request: web.Request, drained: bool) -> web.Response:
    announced = await request.app[DAEMON].set_drained(drained)
    body: schemas.DrainState = {"drained": drained, "announced": announced}
    return json_response(body)


async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    exposition = await asyncio.to_thread(request.app[METRICS].exposition)
    response = web.Response(body=exposition)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi_document(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


async def list_vips(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    flow_counts = request.app[METRICS].flow_counts

    def build() -> schemas.VipList:
        snapshot = _snapshot(daemon, flow_counts)
        return {
            "generation": daemon.generation,
            "vips": [
                readmodels.service_view(snapshot, target)
                for target, _ in readmodels.targets(snapshot.config)
            ],
        }

    return json_response(await asyncio.to_thread(build))


async def get_vip(request: web.Request) -> web.Response:
    target = _target(request)
    daemon = request.app[DAEMON]
    snapshot = _snapshot(daemon, request.app[METRICS].flow_counts)
    if changes.backends_of(snapshot.config, target) is None:
        raise changes.not_found(target, snapshot.config)
    return json_response(await asyncio.to_thread(readmodels.service_view, snapshot, target))


async def list_backends(request: web.Request) -> web.Response:
    """GET /v1/vips/{vip}/backends: the VIP's backends, as GET /v1/vips/{vip} shows them."""
    target = _target(request)
    snapshot = _snapshot(request.app[DAEMON], request.app[METRICS].flow_counts)
    if changes.backends_of(snapshot.config, target) is None:
        raise changes.not_found(target, snapshot.config)
    view = await asyncio.to_thread(readmodels.service_view, snapshot, target)
    body: schemas.BackendList = {"vip": view["vip"], "backends": view["backends"]}
    return json_response(body)


async def put_vip(request: web.Request) -> web.Response:
    target = _target(request)
    body = await _body(request)
    return await _write(
        request, lambda config: changes.put_vip(config, target, body), location=request.path
    )


async def delete_vip(request: web.Request) -> web.Response:
    target = _target(request)
    return await _write(request, lambda config: (changes.delete_vip(config, target), False))


def _backend_address(request: web.Request) -> IPAddress:
    return changes.parse_address(request.match_info["address"])


async def get_backend(request: web.Request) -> web.Response:
    target = _target(request)
    address = _backend_address(request)
    snapshot = _snapshot(request.app[DAEMON], request.app[METRICS].flow_counts)
    backends = changes.backends_of(snapshot.config, target)
    if backends is None:
        raise changes.not_found(target, snapshot.config)
    view = await asyncio.to_thread(readmodels.backend_view, snapshot, target, address)
    if view is None:
        raise changes.not_found(target, snapshot.config, address)
    return json_response(view)


async def put_backend(request: web.Request) -> web.Response:
    target = _target(request)
    address = _backend_address(request)
    body = await _body(request)
    return await _write(
        request,
        lambda config: changes.put_backend(config, target, address, body),
        location=request.path,
    )


async def patch_backend(request: web.Request) -> web.Response:
    target = _target(request)
    address = _backend_address(request)
    body = await _body(request)
    return await _write(
        request, lambda config: (changes.patch_backend(config, target, address, body), False)
    )


async def delete_backend(request: web.Request) -> web.Response:
    target = _target(request)
    address = _backend_address(request)
    return await _write(
        request, lambda config: (changes.delete_backend(config, target, address), False)
    )


async def get_config(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    config = daemon.config
    return json_response(config.model_dump(mode="json"), ETag=f'"{daemon.config_marks(config)[0]}"')


async def put_config(request: web.Request) -> web.Response:
    body = await _body(request)
    daemon = request.app[DAEMON]
    return await _write(
        request, lambda config: (changes.replace_config(config, body, daemon.fixed), False)
    )


async def plan(request: web.Request) -> web.Response:
    body = await _body(request)
    daemon = request.app[DAEMON]
    if not isinstance(body, dict):
        problem = Problem((), "must be a JSON object with config or changes", body)
        raise ApiError.invalid(ConfigError([problem], BODY))
    unknown = sorted(set(body) - {"config", "changes", "max_flows"})
    kinds = [key for key in ("config", "changes") if key in body]
    problems = [Problem((key,), "unknown key; known keys: config, changes, max_flows")
                for key in unknown]  # fmt: skip
    if len(kinds) != 1:
        problems.append(Problem((), "give exactly one of config (the whole new state) or "
                                "changes (a list of writes)"))  # fmt: skip
    max_flows = body.get("max_flows", DEFAULT_PLAN_FLOWS)
    if (
        isinstance(max_flows, bool)
        or not isinstance(max_flows, int)
        or not (0 <= max_flows <= 10_000_000)
    ):
        problems.append(Problem(("max_flows",), "must be an integer from 0 to 10000000", max_flows))
    if problems:
        raise ApiError.invalid(ConfigError(problems, BODY))

    def compile_under_lock() -> tuple[Plan, Plan, Config, int]:
        before = daemon.plan
        if before is None:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the daemon is not started")
        current = daemon.config
        if "config" in body:
            try:
                config = changes.replace_config(current, body["config"], daemon.fixed)
            except ApiError as error:
                moved = [p.under(("config",)) for p in error.problems]
                raise ApiError(error.status, error.message, moved) from None
        else:
            config = changes.apply_changes(current, body["changes"])
        try:
            _, after = daemon.plan_change(config, max_build_slots=MAX_PLAN_BUILD_SLOTS)
        except (PlanError, StartupError, ValueError) as error:
            raise _change_error(error) from error
        return before, after, config, daemon.generation

    def count_flows(
        before: Plan, after: Plan
    ) -> tuple[list[tuple[Flow, CtEntry]], dict[str, schemas.VipPlan], bool]:
        maps = daemon.balancer.maps if daemon.balancer is not None else None
        flows = readmodels.tracked_flows(maps, max_flows) if maps is not None else []
        vips, complete = readmodels.dry_run(before, after, flows, seconds=PLAN_FLOW_SECONDS)
        return flows, vips, complete

    async with request.app[PLAN_LOCK]:
        # The change lock only while the plan is computed: the tracked flows (up to a full
        # connection table) are counted without it, from the plans already made.
        before, after, config, generation = await daemon.exclusive(compile_under_lock)
        flows, vips, complete = await asyncio.to_thread(count_flows, before, after)
    answer: schemas.PlanResult = {
        "generation": generation,
        "config_fingerprint": config_fingerprint(config),
        "flows_examined": len(flows),
        "flows_complete": complete,
        "vips": vips,
    }
    return json_response(answer)


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    # ASCII digits only (str.isdigit() also takes "²", which int() refuses), and no more of
    # them than the bound has: int() of thousands of digits is slow, then refused.
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(high))) or not (
        low <= int(text) <= high
    ):
        raise ApiError.bad_parameter(name, text, f"must be an integer from {low} to {high}")
    return int(text)


async def list_flows(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    vip = request.query.get("vip")
    if vip is not None:
        vip = changes.parse_target(vip).name
    limit = _query_int(request, "limit", DEFAULT_FLOW_LIMIT, 1, MAX_FLOW_LIMIT)
    snapshot = _snapshot(daemon)
    if snapshot.maps is None:
        empty: schemas.FlowList = {"flows": [], "scanned": 0, "total": 0, "complete": True}
        return json_response(empty)
    maps = snapshot.maps
    result = await asyncio.to_thread(
        readmodels.flows, snapshot.plan, maps, vip=vip, limit=limit, scan=FLOW_SCAN
    )
    return json_response(result)


async def lookup(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    text = request.query.get("flow")
    if text is None:
        raise ApiError.bad_parameter("flow", "", f"required: {readmodels.FLOW_SYNTAX}")
    try:
        flow = readmodels.parse_flow(text)
    except ValueError as error:
        raise ApiError.bad_parameter("flow", text, str(error)) from None
    snapshot = _snapshot(daemon)
    return json_response(
        await asyncio.to_thread(readmodels.lookup, snapshot.plan, snapshot.maps, flow)
    )


async def list_events(request: web.Request) -> web.Response:
    """Health events after ``since`` (an event id), oldest first."""
    daemon = request.app[DAEMON]
    since = _query_int(request, "since", 0, 0, 2**53)
    limit = _query_int(request, "limit", DEFAULT_EVENT_LIMIT, 1, MAX_EVENT_LIMIT)
    vip = request.query.get("vip")
    if vip is not None:
        vip = changes.parse_target(vip).name
    events = daemon.events.since(since, limit, vip)
    return json_response(
        {"events": [event.as_json() for event in events], "last_id": daemon.events.last_id}
    )


async def backend_health(request: web.Request) -> web.Response:
    """Every backend's health: check streaks, ICMP state, last results; per VIP, fail-open."""
    daemon = request.app[DAEMON]
    monitor = daemon.monitor
    if monitor is None:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the daemon is not started")
    vip = request.query.get("vip")
    names = None if vip is None else [changes.parse_target(vip).name]
    book = monitor.book
    return json_response(
        {
            "vips": {name: summary for name, summary in book.summary().items()
                     if names is None or name in names},
            "backends": [backend.as_json() for backend in book.ordered(names)],
        }
    )  # fmt: skip
