"""The OpenAPI 3 document of the REST API, served at /openapi.json: every route, parameter,
request body, response and error, written out so that clients and fuzzers can rely on it.

The configuration schemas follow docs/configuration.md; the server validates bodies with the
configuration model itself (rusty_rail.config), so the two cannot drift on what is accepted.
"""

from __future__ import annotations

from typing import Any, Final

from rusty_rail import __version__
from rusty_rail.config import (
    DEFAULT_CONNTRACK_SIZE,
    DEFAULT_TABLE_SIZE,
    MAX_CONNTRACK_SIZE,
    MAX_SEED,
    MAX_TABLE_SIZE,
    MAX_WEIGHT,
    MIN_CONNTRACK_SIZE,
    MIN_TABLE_SIZE,
)

JSON: Final = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


ADDRESS: Final[Schema] = {
    "type": "string",
    "description": "One unicast IPv4 or IPv6 address (not a network, not unspecified, "
    "multicast or broadcast, no zone index, not IPv4-mapped).",
    "examples": ["198.18.1.1", "2001:2::1"],
}
STATE: Final[Schema] = {"type": "string", "enum": ["up", "drain", "down"]}
WEIGHT: Final[Schema] = {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT}
TABLE_SIZE: Final[Schema] = {
    "type": "integer",
    "minimum": MIN_TABLE_SIZE,
    "maximum": MAX_TABLE_SIZE,
    "description": "A prime number of Maglev table slots.",
}
ACTION: Final[Schema] = {"type": "string", "enum": ["pass", "drop"]}
STATS: Final[Schema] = {
    "type": "object",
    "properties": {
        "packets": {"type": "integer", "minimum": 0},
        "bytes": {"type": "integer", "minimum": 0},
    },
    "required": ["packets", "bytes"],
    "additionalProperties": False,
}
FINGERPRINT: Final[Schema] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}


def _health_settings(*, vip_wide: bool) -> Schema:
    """docs/health.md's keys; every one optional (unset keys come from the level above)."""
    seconds = {"type": "number"}
    properties: Schema = {
        "check": {"type": "string", "enum": ["none", "tcp", "http", "tunnel"]},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "path": {"type": "string", "pattern": "^/[\\x21-\\x7e]*$", "maxLength": 1024},
        "host": {"type": "string", "pattern": "^[\\x21-\\x7e]+$", "maxLength": 255},
        "expect_status": {
            "type": "array",
            "minItems": 1,
            "items": {
                "anyOf": [
                    {"type": "integer", "minimum": 100, "maximum": 599},
                    {"type": "string", "pattern": "^[1-5][xX][xX]$"},
                ]
            },
        },
        "interval": {**seconds, "minimum": 0.1, "maximum": 3600},
        "timeout": {**seconds, "minimum": 0.01, "maximum": 60},
        "rise": {"type": "integer", "minimum": 1, "maximum": 100},
        "fall": {"type": "integer", "minimum": 1, "maximum": 100},
        "icmp": {"type": "string", "enum": ["suspect", "trust", "off"]},
    }
    if vip_wide:
        properties |= {
            "icmp_max_removed": {"type": "number", "minimum": 0, "maximum": 1},
            "icmp_hold": {**seconds, "minimum": 0, "maximum": 3600},
            "icmp_confirm_timeout": {**seconds, "minimum": 0.01, "maximum": 10},
            "all_unhealthy": {"type": "string", "enum": ["fail-open", "drop"]},
        }
    return {
        "type": "object",
        "description": "Health checks and ICMP learning (docs/health.md). Unset keys come "
        "from the level above: backend, then VIP, then the top level, then the defaults.",
        "properties": {name: _nullable(schema) for name, schema in properties.items()},
        "additionalProperties": False,
    }


def _backend(required: list[str]) -> Schema:
    return {
        "type": "object",
        "properties": {
            "address": ADDRESS,
            "weight": {**WEIGHT, "default": 1},
            "state": {**STATE, "default": "up"},
            "health": _nullable(_ref("BackendHealthSettings")),
        },
        "required": required,
        "additionalProperties": False,
    }


def _vip_body(required: list[str]) -> Schema:
    return {
        "type": "object",
        "description": "A VIP. address, protocol and port come from the path and may be left "
        "out; if given they must match it. For the default set, only backends.",
        "properties": {
            "address": ADDRESS,
            "protocol": _nullable({"type": "string", "enum": ["tcp", "udp"]}),
            "port": _nullable({"type": "integer", "minimum": 1, "maximum": 65535}),
            "encap": {"type": "string", "enum": ["gre"], "default": "gre"},
            "table_size": _nullable(TABLE_SIZE),
            "backends": {"type": "array", "items": _ref("BackendOrAddress"), "default": []},
            "health": _nullable(_ref("HealthSettings")),
        },
        "required": required,
        "additionalProperties": False,
    }


SCHEMAS: Final[dict[str, Schema]] = {
    "HealthSettings": _health_settings(vip_wide=True),
    "BackendHealthSettings": _health_settings(vip_wide=False),
    "Backend": _backend(["address"]),
    "BackendOrAddress": {"anyOf": [_ref("Backend"), ADDRESS]},
    "BackendBody": {**_backend([]), "description": "A backend; address comes from the path."},
    "BackendPatch": {
        **_backend([]),
        "description": "The fields to change; the others keep their values.",
    },
    "VipBody": _vip_body([]),
    "Vip": _vip_body(["address"]),
    "Config": {
        "type": "object",
        "description": "The whole desired state of one node (docs/configuration.md). In a PUT, "
        "device, xdp_mode, conntrack_size and keys set by the daemon's environment may be "
        "left out (they keep their values) but not changed.",
        "properties": {
            "device": _nullable({"type": "string", "minLength": 1, "maxLength": 15}),
            "xdp_mode": {"type": "string", "enum": ["native", "generic"]},
            "lb_address": _nullable(ADDRESS),
            "hash_seed": {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
                    {"type": "string", "pattern": "^(0[xX][0-9a-fA-F_]+|[0-9_]+)$"},
                ],
                "description": "Answered as a 0x-prefixed hexadecimal string.",
            },
            "table_size": {**TABLE_SIZE, "default": DEFAULT_TABLE_SIZE},
            "outer_ttl": {"type": "integer", "minimum": 1, "maximum": 255, "default": 64},
            "no_vip_action": {**ACTION, "default": "pass"},
            "malformed_action": {**ACTION, "default": "drop"},
            "conntrack_size": {
                "type": "integer",
                "minimum": MIN_CONNTRACK_SIZE,
                "maximum": MAX_CONNTRACK_SIZE,
                "default": DEFAULT_CONNTRACK_SIZE,
            },
            "default_backends": {"type": "array", "items": _ref("BackendOrAddress")},
            "vips": {"type": "array", "items": _ref("Vip")},
            "health": _nullable(_ref("HealthSettings")),
        },
        "additionalProperties": False,
    },
    "NextHop": {
        "type": "object",
        "properties": {
            "ifindex": {"type": "integer"},
            "src_mac": {"type": "string"},
            "dst_mac": {"type": "string"},
        },
        "required": ["ifindex", "src_mac", "dst_mac"],
        "additionalProperties": False,
    },
    "BackendView": {
        "type": "object",
        "description": "A backend as configured (address, weight, state) and as the data "
        "plane holds it.",
        "properties": {
            "address": {"type": "string"},
            "weight": WEIGHT,
            "state": STATE,
            "dataplane_state": {
                "type": "string",
                "enum": ["up", "drain", "down", "unused", "absent"],
                "description": "up takes new flows; drain keeps its flows only; down forwards "
                "nothing; absent: not in the maps (the last change is not applied).",
            },
            "next_hop": _nullable(_ref("NextHop")),
            "next_hop_problem": _nullable({"type": "string"}),
            "slots": {"type": "integer", "minimum": 0},
            "slot_share": {"type": "number", "minimum": 0, "maximum": 1},
            "stats": STATS,
        },
        "required": [
            "address",
            "weight",
            "state",
            "dataplane_state",
            "next_hop",
            "next_hop_problem",
            "slots",
            "slot_share",
            "stats",
        ],
        "additionalProperties": False,
    },
    "VipView": {
        "type": "object",
        "properties": {
            "vip": {"type": "string", "description": "The VIP key, or default."},
            "address": _nullable({"type": "string"}),
            "protocol": _nullable({"type": "string", "enum": ["tcp", "udp"]}),
            "port": _nullable({"type": "integer"}),
            "encap": _nullable({"type": "string"}),
            "table_size": _nullable({"type": "integer"}),
            "table": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "size": {"type": "integer"},
                        "fingerprint": _nullable(FINGERPRINT),
                        "generation": {"type": "integer", "minimum": 0},
                        "backends_in_table": {"type": "integer", "minimum": 0},
                    },
                    "required": ["size", "fingerprint", "generation", "backends_in_table"],
                    "additionalProperties": False,
                }
            ),
            "stats": STATS,
            "backends": {"type": "array", "items": _ref("BackendView")},
        },
        "required": [
            "vip",
            "address",
            "protocol",
            "port",
            "encap",
            "table_size",
            "table",
            "stats",
            "backends",
        ],
        "additionalProperties": False,
    },
    "VipList": {
        "type": "object",
        "properties": {
            "generation": {"type": "integer", "minimum": 0},
            "vips": {"type": "array", "items": _ref("VipView")},
        },
        "required": ["generation", "vips"],
        "additionalProperties": False,
    },
    "ChangeResult": {
        "type": "object",
        "description": "What a write did. generation counts changes of the desired state.",
        "properties": {
            "generation": {"type": "integer", "minimum": 0},
            "changed": {"type": "boolean"},
            "map_updates": {"type": "integer", "minimum": 0},
            "tables_rebuilt": {"type": "array", "items": {"type": "string"}},
            "build_ms": {"type": "number", "minimum": 0},
            "apply_ms": {"type": "number", "minimum": 0},
            "total_ms": {"type": "number", "minimum": 0},
            "config_fingerprint": FINGERPRINT,
        },
        "required": [
            "generation",
            "changed",
            "map_updates",
            "tables_rebuilt",
            "build_ms",
            "apply_ms",
            "total_ms",
            "config_fingerprint",
        ],
        "additionalProperties": False,
    },
    "Problem": {
        "type": "object",
        "properties": {
            "path": {
                "type": "string",
                "description": "Where: a key path in the request body (backends[1].weight), a "
                "parameter name, or config.… for the rest of the configuration.",
            },
            "value": {"type": "string", "description": "The value found there, as written."},
            "reason": {"type": "string"},
        },
        "required": ["path", "reason"],
        "additionalProperties": False,
    },
    "Error": {
        "type": "object",
        "properties": {
            "status": {"type": "integer"},
            "error": {"type": "string"},
            "message": {"type": "string"},
            "problems": {"type": "array", "items": _ref("Problem")},
        },
        "required": ["status", "error", "message", "problems"],
    },
    "Health": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "warnings": {
                "type": "array",
                "items": {"type": "string"},
                "description": "What runs differs from what is configured (e.g. an adopted "
                "connection table of another size); the node stays healthy.",
            },
            "device": {"type": "string"},
            "attached": {"type": "boolean"},
            "generation": {"type": "integer", "minimum": 0},
            "config_fingerprint": FINGERPRINT,
            "last_change": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "generation": {"type": "integer"},
                        "source": {"type": "string"},
                        "at": {"type": "number"},
                        "map_updates": {"type": "integer"},
                    },
                    "required": ["generation", "source", "at", "map_updates"],
                }
            ),
            "vips": {
                "type": "object",
                "description": "Per VIP key (and default): the live table's fingerprint and "
                "how many times it was swapped in since this daemon started.",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "fingerprint": _nullable(FINGERPRINT),
                        "generation": {"type": "integer", "minimum": 0},
                        "table_size": {"type": "integer"},
                        "backends_in_table": {"type": "integer"},
                    },
                    "required": ["fingerprint", "generation", "table_size", "backends_in_table"],
                },
            },
            "unresolved_next_hops": {"type": "array", "items": {"type": "string"}},
            "backend_health": {
                "type": "object",
                "description": "Per VIP key (and default): its backends' health.",
                "additionalProperties": _ref("VipHealth"),
            },
        },
        "required": [
            "status",
            "reasons",
            "device",
            "attached",
            "generation",
            "config_fingerprint",
            "last_change",
            "vips",
            "unresolved_next_hops",
        ],
    },
    "VipHealth": {
        "type": "object",
        "properties": {
            "backends": {"type": "integer", "minimum": 0},
            "unhealthy": {"type": "array", "items": {"type": "string"}},
            "suspect": {"type": "array", "items": {"type": "string"}},
            "all_unhealthy": {
                "type": "boolean",
                "description": "Every backend that is not admin down is unhealthy.",
            },
            "fail_open": {
                "type": "boolean",
                "description": "All unhealthy, and all_unhealthy is fail-open: traffic goes to "
                "every backend.",
            },
            "icmp_floor_held": {"type": "integer", "minimum": 0},
        },
        "required": [
            "backends",
            "unhealthy",
            "suspect",
            "all_unhealthy",
            "fail_open",
            "icmp_floor_held",
        ],
        "additionalProperties": False,
    },
    "BackendHealth": {
        "type": "object",
        "properties": {
            "vip": {"type": "string"},
            "backend": {"type": "string"},
            "status": {"type": "string", "enum": ["healthy", "suspect", "unhealthy"]},
            "admin": STATE,
            "check": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["none", "tcp", "http", "tunnel"]},
                    "ok": {"type": "boolean"},
                    "successes": {"type": "integer", "minimum": 0},
                    "failures": {"type": "integer", "minimum": 0},
                    "last": _nullable({"type": "string"}),
                },
                "required": ["type", "ok", "successes", "failures", "last"],
                "additionalProperties": False,
            },
            "icmp": {
                "type": "object",
                "properties": {
                    "policy": {"type": "string", "enum": ["suspect", "trust", "off"]},
                    "state": {"type": "string", "enum": ["ok", "suspect", "down"]},
                    "confirmed": {"type": "boolean"},
                    "probe_successes": {"type": "integer", "minimum": 0},
                    "last_report": _nullable({"type": "string"}),
                },
                "required": ["policy", "state", "confirmed", "probe_successes", "last_report"],
                "additionalProperties": False,
            },
        },
        "required": ["vip", "backend", "status", "admin", "check", "icmp"],
        "additionalProperties": False,
    },
    "HealthList": {
        "type": "object",
        "properties": {
            "vips": {"type": "object", "additionalProperties": _ref("VipHealth")},
            "backends": {"type": "array", "items": _ref("BackendHealth")},
        },
        "required": ["vips", "backends"],
        "additionalProperties": False,
    },
    "Event": {
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "at": {"type": "number", "description": "Unix time"},
            "kind": {"type": "string", "enum": ["health", "admin", "fail-open", "floor"]},
            "vip": {"type": "string"},
            "backend": _nullable({"type": "string"}),
            "from": _nullable({"type": "string"}),
            "to": _nullable({"type": "string"}),
            "cause": {"type": "string"},
            "detail": {"type": "string"},
        },
        "required": ["id", "at", "kind", "vip", "backend", "from", "to", "cause", "detail"],
        "additionalProperties": False,
    },
    "EventList": {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "last_id": {"type": "integer", "minimum": 0},
        },
        "required": ["events", "last_id"],
        "additionalProperties": False,
    },
    "Change": {
        "type": "object",
        "description": "One write, as the route of the same name would do it.",
        "properties": {
            "op": {
                "type": "string",
                "enum": ["put_vip", "delete_vip", "put_backend", "patch_backend", "delete_backend"],
            },
            "vip": {"type": "string"},
            "backend": {"type": "string"},
            "body": {"type": "object"},
        },
        "required": ["op", "vip"],
        "additionalProperties": False,
    },
    "PlanRequest": {
        "type": "object",
        "description": "Either config (the whole new desired state) or changes (writes applied "
        "in order to the current one).",
        "properties": {
            "config": _ref("Config"),
            "changes": {"type": "array", "items": _ref("Change"), "minItems": 1},
            "max_flows": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
        },
        "additionalProperties": False,
    },
    "PlanResult": {
        "type": "object",
        "properties": {
            "generation": {"type": "integer"},
            "config_fingerprint": FINGERPRINT,
            "flows_examined": {"type": "integer", "minimum": 0},
            "flows_complete": {"type": "boolean"},
            "vips": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "change": {
                            "type": "string",
                            "enum": ["added", "removed", "changed", "unchanged"],
                        },
                        "table_slots_moved": _nullable({"type": "number"}),
                        "flows_tracked": {"type": "integer"},
                        "flows_moved": {"type": "integer"},
                        "flows_moved_share": {"type": "number"},
                        "fingerprint_before": _nullable(FINGERPRINT),
                        "fingerprint_after": _nullable(FINGERPRINT),
                    },
                    "required": [
                        "change",
                        "table_slots_moved",
                        "flows_tracked",
                        "flows_moved",
                        "flows_moved_share",
                        "fingerprint_before",
                        "fingerprint_after",
                    ],
                },
            },
        },
        "required": [
            "generation",
            "config_fingerprint",
            "flows_examined",
            "flows_complete",
            "vips",
        ],
    },
    "Decision": {
        "type": "object",
        "properties": {
            "flow": {"type": "string"},
            "hash": {"type": "integer"},
            "outcome": {"type": "string"},
            "forwards": {"type": "boolean"},
            "match": {"type": "string"},
            "vip": _nullable({"type": "string"}),
            "table_slot": _nullable({"type": "integer"}),
            "table_size": _nullable({"type": "integer"}),
            "backend": _nullable({"type": "string"}),
            "backend_state": _nullable({"type": "string"}),
            "conntrack": {"type": "string", "enum": ["valid", "stale", "none"]},
            "explanation": {"type": "string"},
        },
        "required": [
            "flow",
            "hash",
            "outcome",
            "forwards",
            "match",
            "vip",
            "table_slot",
            "table_size",
            "backend",
            "backend_state",
            "conntrack",
            "explanation",
        ],
    },
    "FlowList": {
        "type": "object",
        "properties": {
            "flows": {"type": "array", "items": _ref("Decision")},
            "scanned": {"type": "integer", "minimum": 0},
            "complete": {"type": "boolean"},
        },
        "required": ["flows", "scanned", "complete"],
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _ok(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


VIP_PARAMETER: Final = {
    "name": "vip",
    "in": "path",
    "required": True,
    "description": "A VIP key (198.18.100.1, 198.18.100.1:80/tcp, [2001:2::1]:53/udp; the / "
    "may be written %2F), or default for the default backend set.",
    "schema": {"type": "string"},
}
ADDRESS_PARAMETER: Final = {
    "name": "address",
    "in": "path",
    "required": True,
    "description": "The backend's address.",
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

READ_ERRORS: Final = {"400": _error("A parameter cannot be read")}
WRITE_ERRORS: Final = {
    "400": _error("The body is not JSON, or a parameter cannot be read"),
    "401": _error("A bearer token is needed and was missing or wrong"),
    "409": _error("The change asks for something that cannot change while running"),
    "412": _error("If-Match did not match the current config_fingerprint"),
    "413": _error("The body is too large"),
    "422": _error("The body, or the configuration it would make, is invalid; nothing changed"),
    "503": _error("The change could not be saved or applied"),
}


def _write(
    summary: str,
    *,
    body: str | None,
    ok: dict[str, Any],
    not_found: bool = True,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [*(parameters or []), IF_MATCH],
        "security": [{}, {"bearer": []}],
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


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    vip_params = [VIP_PARAMETER]
    backend_params = [VIP_PARAMETER, ADDRESS_PARAMETER]
    changed = {"200": _ok("ChangeResult", "Applied (or nothing to do)")}
    created = {**changed, "201": _ok("ChangeResult", "Created and applied")}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "rusty-rail",
            "version": __version__,
            "description": "The control API of one rusty-rail balancer node (docs/api.md). "
            "Writes are validated whole before anything is applied; an error names each bad "
            "field and leaves the running state unchanged. Writes need a bearer token when "
            "the daemon has one (always when it listens beyond loopback).",
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "200 when attached and the last change is applied, else 503",
                    "responses": {
                        "200": _ok("Health", "Healthy"),
                        "503": _ok("Health", "Unhealthy: reasons says why"),
                    },
                }
            },
            "/metrics": {
                "get": {
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
                    "summary": "Every VIP (and the default set) with backends, table, counters",
                    "responses": {"200": _ok("VipList")},
                }
            },
            "/v1/vips/{vip}": {
                "get": {
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
                    body="VipBody",
                    ok=created,
                    parameters=vip_params,
                ),
                "delete": _write(
                    "Remove a VIP; its flows are dropped (or go to the default set)",
                    body=None,
                    ok=changed,
                    parameters=vip_params,
                ),
            },
            "/v1/vips/{vip}/backends/{address}": {
                "get": {
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
                    body="BackendBody",
                    ok=created,
                    parameters=backend_params,
                ),
                "patch": _write(
                    "Change a backend's weight or admin state",
                    body="BackendPatch",
                    ok=changed,
                    parameters=backend_params,
                ),
                "delete": _write(
                    "Remove a backend; its flows move to the others",
                    body=None,
                    ok=changed,
                    parameters=backend_params,
                ),
            },
            "/v1/config": {
                "get": {
                    "summary": "The whole desired state (ETag: its config_fingerprint)",
                    "responses": {"200": _ok("Config")},
                },
                "put": _write(
                    "Replace the whole desired state, transactionally",
                    body="Config",
                    ok=changed,
                    not_found=False,
                ),
            },
            "/v1/plan": {
                "post": {
                    "summary": "Dry run: per VIP, the share of table slots and of tracked flows "
                    "a change would move; nothing is applied",
                    "description": "Needs the bearer token when the daemon has one. One dry "
                    "run at a time; one that would build more than 2^25 table slots is "
                    "refused (422); the tracked flows are counted for at most 10 s "
                    "(flows_complete says whether all were).",
                    "security": [{}, {"bearer": []}],
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
                    "summary": "Which backend a flow would get now, and why",
                    "parameters": [
                        {
                            "name": "flow",
                            "in": "query",
                            "required": True,
                            "description": "SOURCE[:PORT]->DESTINATION[:PORT]/PROTOCOL, e.g. "
                            "198.18.5.5:40000->198.18.100.1:80/tcp",
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": _ok("Decision"), **READ_ERRORS},
                }
            },
            "/v1/events": {
                "get": {
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
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
