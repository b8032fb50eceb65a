"""The OpenAPI 3 document of the REST API, served at /openapi.json: every route, parameter,
request body, response and error, so that clients and fuzzers can rely on it.

The paths are written out here; every schema they name is generated from the code: request
bodies from the configuration model (rusty_rail.config), with which the server validates
them, and answers from the types the server builds them as (api/schemas.py). The two cannot
drift on what is accepted or answered.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import TypeAdapter

from rusty_rail import __version__
from rusty_rail.config import Backend, Config, Vip

from . import schemas

JSON: Final = "application/json"
#: Errors are RFC 9457 problem details.
PROBLEM_JSON: Final = "application/problem+json"
Schema = dict[str, Any]
REF_PREFIX: Final = "#/components/schemas/"

#: The types whose schemas the paths name, generated with everything they refer to.
GENERATED: Final[tuple[type, ...]] = (
    Config,
    Vip,
    Backend,
    schemas.PlanRequest,
    schemas.NodeHealth,
    schemas.VipList,
    schemas.VipView,
    schemas.BackendView,
    schemas.BackendList,
    schemas.ChangeResult,
    schemas.Error,
    schemas.PlanResult,
    schemas.FlowList,
    schemas.Decision,
    schemas.EventList,
    schemas.HealthList,
    schemas.DrainState,
)
#: Component names that differ from the type's: the configuration's health tables are the
#: HealthSettings of the document, its Health and BackendHealth the answers of /healthz and
#: /v1/health.
RENAMED: Final = {
    "Health": "HealthSettings",
    "BackendHealth": "BackendHealthSettings",
    "NodeHealth": "Health",
    "BackendHealthView": "BackendHealth",
}
#: What the configuration's own docstring does not say about it as an API body.
CONFIG_DESCRIPTION: Final = (
    "The whole desired state of one node (docs/configuration.md). In a PUT, device, xdp_mode, "
    "conntrack_size, bgp and keys set by the daemon's environment may be left out (they keep "
    "their values) but not changed."
)
VIP_BODY_DESCRIPTION: Final = (
    "A VIP. address, protocol and port come from the path and may be left out; if given they "
    "must match it. For the default set, only backends."
)


def _ref(name: str) -> Schema:
    return {"$ref": f"{REF_PREFIX}{name}"}


def _renamed(value: Any, *, properties: bool = False) -> Any:
    """``value`` with RENAMED applied to its references and pydantic's titles left out (a
    property named title, were there one, stays)."""
    if isinstance(value, list):
        return [_renamed(item) for item in value]
    if not isinstance(value, dict):
        return value
    result = {}
    for key, item in value.items():
        if key == "title" and not properties and isinstance(item, str):
            continue
        if key == "$ref" and isinstance(item, str):
            name = item.removeprefix(REF_PREFIX)
            item = REF_PREFIX + RENAMED.get(name, name)
        result[key] = _renamed(item, properties=key == "properties" and not properties)
    return result


def _without_required(schema: Schema, description: str) -> Schema:
    body = {key: value for key, value in schema.items() if key != "required"}
    return body | {"description": description}


def component_schemas() -> dict[str, Schema]:
    """Every schema the document names: generated from GENERATED (pydantic's JSON schema,
    its references rewritten from $defs to components), and the bodies derived from them."""
    _, top = TypeAdapter.json_schemas(
        [(kind, "validation", TypeAdapter(kind)) for kind in GENERATED],
        ref_template=REF_PREFIX + "{model}",
    )
    generated = {RENAMED.get(name, name): schema for name, schema in top["$defs"].items()}
    result: dict[str, Schema] = _renamed(generated)
    result["Config"]["description"] = CONFIG_DESCRIPTION
    result["VipBody"] = _without_required(result["Vip"], VIP_BODY_DESCRIPTION)
    result["BackendBody"] = _without_required(
        result["Backend"], "A backend; address comes from the path."
    )
    result["BackendPatch"] = _without_required(
        result["Backend"], "The fields to change; the others keep their values."
    )
    return result


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _ref("Error")}}}


def _ok(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


VIP_PARAMETER: Final = {
    "name": "vip",
    "in": "path",
    "required": True,
    "description": "A VIP key (198.18.100.1, 198.18.100.1:80/tcp, [2001:2::1]:53/udp, "
    "2001:2::1; the / may be written %2F, the brackets %5B and %5D), or default for the "
    "default backend set.",
    "schema": {"type": "string"},
}
ADDRESS_PARAMETER: Final = {
    "name": "address",
    "in": "path",
    "required": True,
    "description": "The backend's address (198.18.2.1, 2001:2::21; no brackets).",
    "schema": {"type": "string"},
}
IF_MATCH: Final = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": "Apply only if the desired state's config_fingerprint (the ETag of GET "
    '/v1/config) is still this; else 412. Quoted or not; "*" matches anything.',
    "schema": {"type": "string"},
}
IF_NONE_MATCH: Final = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": '"*": create only; 412 when it exists already (what `ctl ... add` sends). '
    "Any other value is a 400.",
    "schema": {"type": "string", "enum": ["*"]},
}

READ_ERRORS: Final = {"400": _error("A parameter cannot be read")}
WRITE_ERRORS: Final = {
    "400": _error("The body is not JSON, or a parameter cannot be read"),
    "401": _error("A bearer token is needed and was missing or wrong"),
    "409": _error("The change asks for something that cannot change while running"),
    "412": _error(
        "If-Match did not match the current config_fingerprint, or If-None-Match: * and it exists"
    ),
    "413": _error("The body is too large"),
    "422": _error("The body, or the configuration it would make, is invalid; nothing changed"),
    "503": _error("The change could not be saved or applied"),
}


def _write(
    summary: str,
    operation_id: str,
    tag: str,
    *,
    body: str | None,
    ok: dict[str, Any],
    not_found: bool = True,
    parameters: list[dict[str, Any]] | None = None,
    create_only: bool = False,
) -> dict[str, Any]:
    headers = [IF_MATCH, IF_NONE_MATCH] if create_only else [IF_MATCH]
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "parameters": [*(parameters or []), *headers],
        "security": [{"bearer": []}],
        "responses": {**ok, **WRITE_ERRORS},
    }
    if not_found:
        operation["responses"]["404"] = _error("No such VIP or backend")
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": _ref(body)}},
        }
    return operation


def _drain(drained: bool) -> dict[str, Any]:
    return {
        "operationId": "drainNode" if drained else "undrainNode",
        "tags": ["node"],
        "summary": "Withdraw the VIPs' BGP routes; what still arrives is forwarded"
        if drained
        else "Announce the VIPs again (while attached)",
        "description": "Needs the bearer token. Answered once the speaker has the change; "
        "without a [bgp] section only the flag changes. Not kept across a restart.",
        "security": [{"bearer": []}],
        "responses": {
            "200": _ok("DrainState"),
            "401": _error("A bearer token is needed and was missing or wrong"),
        },
    }


#: The operations' groups.
TAGS: Final = {
    "node": "The node itself: health, metrics, this document",
    "vips": "VIPs and the default backend set",
    "backends": "A VIP's backends",
    "config": "The whole desired state, and dry runs of changes",
    "flows": "Tracked flows and flow lookups",
    "health": "Backend health and events",
}


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    vip_params = [VIP_PARAMETER]
    backend_params = [VIP_PARAMETER, ADDRESS_PARAMETER]
    changed = {"200": _ok("ChangeResult", "Applied (or nothing to do)")}
    created = {**changed, "201": _ok("ChangeResult", "Created and applied")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rusty-rail",
            "version": __version__,
            "description": "The control API of one rusty-rail balancer node (docs/api.md). "
            "Writes are validated whole before anything is applied; an error names each bad "
            "field and leaves the running state unchanged. Writes need the bearer token "
            "(reads need none); errors are RFC 9457 problem details.",
        },
        "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "getHealthz",
                    "tags": ["node"],
                    "summary": "200 when attached and the last change is applied, else 503",
                    "responses": {
                        "200": _ok("Health", "Healthy"),
                        "503": _ok("Health", "Unhealthy: reasons says why"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "getMetrics",
                    "tags": ["node"],
                    "summary": "Prometheus text exposition",
                    "responses": {
                        "200": {
                            "description": "Metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenapi",
                    "tags": ["node"],
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/v1/vips": {
                "get": {
                    "operationId": "listVips",
                    "tags": ["vips"],
                    "summary": "Every VIP (and the default set) with backends, table, counters",
                    "responses": {"200": _ok("VipList")},
                }
            },
            "/v1/vips/{vip}": {
                "get": {
                    "operationId": "getVip",
                    "tags": ["vips"],
                    "summary": "One VIP",
                    "parameters": vip_params,
                    "responses": {
                        "200": _ok("VipView"),
                        **READ_ERRORS,
                        "404": _error("No such VIP"),
                    },
                },
                "put": _write(
                    "Create or replace a VIP with its backends",
                    "putVip",
                    "vips",
                    body="VipBody",
                    ok=created,
                    parameters=vip_params,
                    create_only=True,
                ),
                "delete": _write(
                    "Remove a VIP; its flows are dropped (or go to the default set)",
                    "deleteVip",
                    "vips",
                    body=None,
                    ok=changed,
                    parameters=vip_params,
                ),
            },
            "/v1/vips/{vip}/backends": {
                "get": {
                    "operationId": "listBackends",
                    "tags": ["backends"],
                    "summary": "A VIP's backends (as in GET /v1/vips/{vip})",
                    "parameters": vip_params,
                    "responses": {
                        "200": _ok("BackendList"),
                        **READ_ERRORS,
                        "404": _error("No such VIP (the answer lists the known ones)"),
                    },
                }
            },
            "/v1/vips/{vip}/backends/{address}": {
                "get": {
                    "operationId": "getBackend",
                    "tags": ["backends"],
                    "summary": "One backend of a VIP",
                    "parameters": backend_params,
                    "responses": {
                        "200": _ok("BackendView"),
                        **READ_ERRORS,
                        "404": _error("No such VIP or backend"),
                    },
                },
                "put": _write(
                    "Create or replace a backend (weight, admin state up/drain/down)",
                    "putBackend",
                    "backends",
                    body="BackendBody",
                    ok=created,
                    parameters=backend_params,
                    create_only=True,
                ),
                "patch": _write(
                    "Change a backend's weight or admin state",
                    "patchBackend",
                    "backends",
                    body="BackendPatch",
                    ok=changed,
                    parameters=backend_params,
                ),
                "delete": _write(
                    "Remove a backend; its flows move to the others",
                    "deleteBackend",
                    "backends",
                    body=None,
                    ok=changed,
                    parameters=backend_params,
                ),
            },
            "/v1/config": {
                "get": {
                    "operationId": "getConfig",
                    "tags": ["config"],
                    "summary": "The whole desired state (ETag: its config_fingerprint)",
                    "responses": {"200": _ok("Config")},
                },
                "put": _write(
                    "Replace the whole desired state, transactionally",
                    "putConfig",
                    "config",
                    body="Config",
                    ok=changed,
                    not_found=False,
                ),
            },
            "/v1/node/drain": {"post": _drain(True)},
            "/v1/node/undrain": {"post": _drain(False)},
            "/v1/plan": {
                "post": {
                    "operationId": "planChange",
                    "tags": ["config"],
                    "summary": "Dry run: per VIP, the share of table slots and of tracked flows "
                    "a change would move; nothing is applied",
                    "description": "Needs the bearer token. One dry "
                    "run at a time; one that would build more than 2^25 table slots is "
                    "refused (422); the tracked flows are counted for at most 10 s "
                    "(flows_complete says whether all were).",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": _ref("PlanRequest")}},
                    },
                    "responses": {
                        "200": _ok("PlanResult"),
                        **{k: v for k, v in WRITE_ERRORS.items() if k != "503"},
                        "404": _error("A change names a VIP or backend that does not exist"),
                    },
                }
            },
            "/v1/flows": {
                "get": {
                    "operationId": "listFlows",
                    "tags": ["flows"],
                    "summary": "A sample of tracked flows and their backends",
                    "parameters": [
                        {
                            "name": "vip",
                            "in": "query",
                            "required": False,
                            "description": "Only this VIP's flows (a VIP key, or default).",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        },
                    ],
                    "responses": {"200": _ok("FlowList"), **READ_ERRORS},
                }
            },
            "/v1/lookup": {
                "get": {
                    "operationId": "lookupFlow",
                    "tags": ["flows"],
                    "summary": "Which backend a flow would get now, and why",
                    "parameters": [
                        {
                            "name": "flow",
                            "in": "query",
                            "required": True,
                            "description": "SOURCE[:PORT]->DESTINATION[:PORT]/PROTOCOL, e.g. "
                            "198.18.5.5:40000->198.18.100.1:80/tcp or "
                            "[2001:2::1]:40000->[2001:2::10]:80/tcp",
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": _ok("Decision"), **READ_ERRORS},
                }
            },
            "/v1/events": {
                "get": {
                    "operationId": "listEvents",
                    "tags": ["health"],
                    "summary": "Health events (transitions with their cause, fail-open, the ICMP "
                    "floor holding), oldest first",
                    "parameters": [
                        {
                            "name": "since",
                            "in": "query",
                            "required": False,
                            "description": "Only events with a higher id (0: all kept).",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**53},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "vip",
                            "in": "query",
                            "required": False,
                            "description": "Only this VIP's events (a VIP key, or default).",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {"200": _ok("EventList"), **READ_ERRORS},
                }
            },
            "/v1/health": {
                "get": {
                    "operationId": "getBackendHealth",
                    "tags": ["health"],
                    "summary": "Every backend's health (checks, ICMP) and each VIP's fail-open",
                    "parameters": [
                        {
                            "name": "vip",
                            "in": "query",
                            "required": False,
                            "description": "Only this VIP (a VIP key, or default).",
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _ok("HealthList"),
                        **READ_ERRORS,
                        "503": _error("The daemon is not started"),
                    },
                }
            },
        },
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
