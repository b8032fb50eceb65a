"""What each API write does to the desired configuration, as pure functions: the running
Config and a request in, the whole new Config out (validated whole), or an ApiError.

Nothing here touches the daemon; the server hands the result to it, and /v1/plan computes
the same result without applying it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from rusty_rail._types import IPAddress
from rusty_rail.config import (
    Backend,
    Config,
    ConfigError,
    Problem,
    Vip,
    VipKey,
    parse_vip_key,
    validate_as,
)
from rusty_rail.control.plan import DEFAULT_SET

from .errors import ApiError, relocate

BODY: Final = "request body"
#: The keys a backend body may carry (PUT); PATCH takes the same, all optional.
BACKEND_KEYS: Final = tuple(Backend.model_fields)
#: The keys of a VIP body; address, protocol and port may be left out (the path has them).
VIP_KEYS: Final = tuple(Vip.model_fields)


@dataclass(frozen=True)
class Target:
    """What a ``{vip}`` path segment names: a VIP, or the default set (``default``)."""

    key: VipKey | None

    @property
    def name(self) -> str:
        """The service name, as the plan and /healthz use it."""
        return DEFAULT_SET if self.key is None else str(self.key)

    @property
    def is_default(self) -> bool:
        return self.key is None


def parse_target(text: str) -> Target:
    """``default``, or a VIP key (``198.18.100.1``, ``198.18.100.1:80/tcp``, ...)."""
    if text == DEFAULT_SET:
        return Target(None)
    try:
        return Target(parse_vip_key(text, "the path"))
    except ConfigError as error:
        raise ApiError.bad_parameter("vip", text, error.problems[0].reason) from None


def parse_address(text: str, name: str = "address") -> IPAddress:
    """A backend address from the path."""
    try:
        return validate_as(Backend, {"address": text}, "the path").address
    except ConfigError as error:
        raise ApiError.bad_parameter(name, text, error.problems[0].reason) from None


#: How many VIP keys a 404 for a VIP names in its message (all are in known_vips).
KNOWN_VIPS_SHOWN: Final = 10


def not_found(target: Target, config: Config, address: IPAddress | None = None) -> ApiError:
    """404: no such VIP (the answer lists the known ones, in ``known_vips``), or no such
    backend of it."""
    what = "the default set" if target.is_default else f"VIP {target.name}"
    if address is not None:
        return ApiError(HTTPStatus.NOT_FOUND, f"{what} has no backend {address}")
    known = [str(vip.key) for vip in config.vips] + (["default"] if config.default_backends else [])
    message = "there is no default set" if target.is_default else f"no VIP {target.name}"
    if not known:
        message += "; there are no VIPs"
    else:
        shown = ", ".join(known[:KNOWN_VIPS_SHOWN])
        more = f" and {len(known) - KNOWN_VIPS_SHOWN} more" if len(known) > KNOWN_VIPS_SHOWN else ""
        message += f"; the VIPs are: {shown}{more}"
    return ApiError(HTTPStatus.NOT_FOUND, message, known_vips=known)


def _require_object(body: object, loc: tuple[str | int, ...] = ()) -> dict[str, Any]:
    if not isinstance(body, dict):
        problem = Problem(loc, "must be a JSON object", body)
        raise ApiError.invalid(ConfigError([problem], BODY))
    return body


def vip_index(config: Config, key: VipKey) -> int | None:
    """The position of the VIP with ``key`` in ``config.vips``."""
    return next((i for i, vip in enumerate(config.vips) if vip.key == key), None)


def backends_of(config: Config, target: Target) -> tuple[Backend, ...] | None:
    """The backends of the targeted set; None when the VIP (or default set) does not exist."""
    if target.key is None:
        return config.default_backends or None
    index = vip_index(config, target.key)
    return None if index is None else config.vips[index].backends


def _fields(config: Config) -> dict[str, Any]:
    # Instances, not dumps: pydantic takes them as they are (they were validated when made),
    # and runs the configuration-wide checks; 1000 backends validate in a few milliseconds.
    return {name: getattr(config, name) for name in Config.model_fields}


def _vip_fields(vip: Vip) -> dict[str, Any]:
    return {name: getattr(vip, name) for name in Vip.model_fields}


def _with_backends(
    config: Config, target: Target, backends: Sequence[Backend | dict[str, Any]]
) -> tuple[dict[str, Any], tuple[str | int, ...]]:
    """The configuration's fields with the target's backends replaced, and where they sit."""
    fields = _fields(config)
    if target.key is None:
        fields["default_backends"] = tuple(backends)
        return fields, ("default_backends",)
    index = vip_index(config, target.key)
    assert index is not None
    vips: list[Any] = list(config.vips)
    vips[index] = _vip_fields(config.vips[index]) | {"backends": tuple(backends)}
    fields["vips"] = tuple(vips)
    return fields, ("vips", index, "backends")


def _validated(fields: Mapping[str, Any], prefix: tuple[str | int, ...]) -> Config:
    try:
        return validate_as(Config, dict(fields), BODY)
    except ConfigError as error:
        raise ApiError.invalid(relocate(error, prefix, BODY)) from None


# --- VIPs -------------------------------------------------------------------------------------


def put_vip(config: Config, target: Target, body: object) -> tuple[Config, bool]:
    """Create or replace a VIP (or the default set's backends); True when created."""
    data = dict(_require_object(body))
    if target.key is None:
        unknown = sorted(set(data) - {"backends"})
        if unknown:
            problems = [
                Problem((key,), "the default set has only backends (its table_size is the "
                        "configuration's)", data[key])
                for key in unknown
            ]  # fmt: skip
            raise ApiError.invalid(ConfigError(problems, BODY))
        fields = _fields(config) | {"default_backends": data.get("backends", ())}
        return _validated(fields, ("default_backends",)), not config.default_backends
    key = target.key
    path_fields: dict[str, Any] = {
        "address": str(key.address),
        "protocol": key.protocol.value if key.protocol is not None else None,
        "port": key.port,
    }
    for name, value in path_fields.items():
        data.setdefault(name, value)
    try:
        vip = validate_as(Vip, data, BODY)
    except ConfigError as error:
        raise ApiError.invalid(error) from None
    wrong = [
        name
        for name, found, wanted in (
            ("address", vip.address, key.address),
            ("protocol", vip.protocol, key.protocol),
            ("port", vip.port, key.port),
        )
        if found != wanted
    ]
    if wrong:
        reason = f"does not match the VIP in the path ({key})"
        problems = [Problem((name,), reason, data[name]) for name in wrong]
        raise ApiError.invalid(ConfigError(problems, BODY))
    index = vip_index(config, key)
    created = index is None
    vips = list(config.vips)
    if index is None:
        vips.append(vip)
        index = len(vips) - 1
    else:
        vips[index] = vip
    return _validated(_fields(config) | {"vips": tuple(vips)}, ("vips", index)), created


def delete_vip(config: Config, target: Target) -> Config:
    """Remove a VIP (or the default set)."""
    if target.key is None:
        if not config.default_backends:
            raise not_found(target, config)
        return _validated(_fields(config) | {"default_backends": ()}, ())
    index = vip_index(config, target.key)
    if index is None:
        raise not_found(target, config)
    vips = config.vips[:index] + config.vips[index + 1 :]
    return _validated(_fields(config) | {"vips": vips}, ())


# --- backends ---------------------------------------------------------------------------------


def _backend_from(data: dict[str, Any], address: IPAddress) -> Backend:
    data.setdefault("address", str(address))
    try:
        backend = validate_as(Backend, data, BODY)
    except ConfigError as error:
        raise ApiError.invalid(error) from None
    if backend.address != address:
        problem = Problem(("address",), f"does not match the path ({address})", data["address"])
        raise ApiError.invalid(ConfigError([problem], BODY))
    return backend


def _set_backend(
    config: Config, target: Target, backends: tuple[Backend, ...], backend: Backend
) -> Config:
    position = next((i for i, b in enumerate(backends) if b.address == backend.address), None)
    updated = list(backends)
    if position is None:
        updated.append(backend)
        position = len(updated) - 1
    else:
        updated[position] = backend
    fields, prefix = _with_backends(config, target, updated)
    return _validated(fields, (*prefix, position))


def put_backend(
    config: Config, target: Target, address: IPAddress, body: object
) -> tuple[Config, bool]:
    """Create or replace a backend of a VIP (or of the default set); True when created.
    The default set is created by its first backend; a VIP must exist first."""
    backend = _backend_from(dict(_require_object(body)), address)
    backends = backends_of(config, target)
    if backends is None and not target.is_default:
        raise not_found(target, config)
    backends = backends or ()
    created = all(b.address != address for b in backends)
    return _set_backend(config, target, backends, backend), created


def patch_backend(config: Config, target: Target, address: IPAddress, body: object) -> Config:
    """Change some of a backend's fields (weight, state)."""
    changes = _require_object(body)
    backends = backends_of(config, target)
    if backends is None:
        raise not_found(target, config)
    current = next((b for b in backends if b.address == address), None)
    if current is None:
        raise not_found(target, config, address)
    data = current.model_dump(mode="json") | changes
    return _set_backend(config, target, backends, _backend_from(data, address))


def delete_backend(config: Config, target: Target, address: IPAddress) -> Config:
    """Remove a backend; its flows move to the others (docs/packet-path.md)."""
    backends = backends_of(config, target)
    if backends is None:
        raise not_found(target, config)
    if all(b.address != address for b in backends):
        raise not_found(target, config, address)
    fields, _ = _with_backends(config, target, [b for b in backends if b.address != address])
    return _validated(fields, ())


# --- the whole configuration ------------------------------------------------------------------


def replace_config(current: Config, body: object, fixed: Mapping[str, str]) -> Config:
    """The configuration ``body`` describes. Keys in ``fixed`` (name -> why) may be left out
    (they keep their running value) or repeated, but not changed: 409 names each."""
    data = dict(_require_object(body))
    running = current.model_dump(mode="json")
    for name in fixed:
        if name in running:  # a key left out of dumps while unset (bgp) stays unset
            data.setdefault(name, running[name])
    try:
        config = validate_as(Config, data, BODY)
    except ConfigError as error:
        raise ApiError.invalid(error) from None
    problems = [
        Problem((name,), f"cannot be changed through the API: {why}", data[name])
        for name, why in fixed.items()
        if getattr(config, name) != getattr(current, name)
    ]
    if problems:
        raise ApiError(HTTPStatus.CONFLICT, str(ConfigError(problems, BODY)), problems)
    return config


# --- a list of changes (/v1/plan) -------------------------------------------------------------

OPERATIONS: Final = ("put_vip", "delete_vip", "put_backend", "patch_backend", "delete_backend")


def apply_change(config: Config, change: object) -> Config:
    """One item of /v1/plan's ``changes``: ``{"op": ..., "vip": ..., "backend": ...,
    "body": {...}}``, as the route of the same name would do it."""
    item = _require_object(change)
    op = item.get("op")
    if op not in OPERATIONS:
        reason = f"must be one of: {', '.join(OPERATIONS)}"
        raise ApiError.invalid(ConfigError([Problem(("op",), reason, op)], BODY))
    unknown = sorted(set(item) - {"op", "vip", "backend", "body"})
    if unknown:
        problems = [
            Problem((k,), "unknown key; known keys: op, vip, backend, body") for k in unknown
        ]
        raise ApiError.invalid(ConfigError(problems, BODY))
    vip_text = item.get("vip")
    if not isinstance(vip_text, str):
        raise ApiError.invalid(ConfigError([Problem(("vip",), "must be a VIP key string")], BODY))
    target = parse_target(vip_text)
    address: IPAddress | None = None
    if op.endswith("_backend"):
        backend_text = item.get("backend")
        if not isinstance(backend_text, str):
            problem = Problem(("backend",), "must be a backend address string")
            raise ApiError.invalid(ConfigError([problem], BODY))
        address = parse_address(backend_text, "backend")
    body = item.get("body", {})
    try:
        if op == "put_vip":
            return put_vip(config, target, body)[0]
        if op == "delete_vip":
            return delete_vip(config, target)
        assert address is not None
        if op == "put_backend":
            return put_backend(config, target, address, body)[0]
        if op == "patch_backend":
            return patch_backend(config, target, address, body)
        return delete_backend(config, target, address)
    except ApiError as error:
        # The routes locate problems in their body; here the body is one key of the item.
        problems = [p if p.loc[:1] == ("config",) else p.under(("body",)) for p in error.problems]
        raise ApiError(error.status, error.message, problems) from None


def apply_changes(config: Config, changes: object) -> Config:
    """Every change in order; a problem is located at ``changes[n]...``."""
    if not isinstance(changes, list) or not changes:
        problem = Problem(("changes",), "must be a non-empty array of changes", changes)
        raise ApiError.invalid(ConfigError([problem], BODY))
    for position, change in enumerate(changes):
        try:
            config = apply_change(config, change)
        except ApiError as error:
            problems = [p.under(("changes", position)) for p in error.problems]
            message = f"changes[{position}]: {error.message}"
            raise ApiError(error.status, message, problems) from None
    return config
