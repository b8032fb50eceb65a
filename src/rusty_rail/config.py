"""The configuration model: a TOML file, the environment or an API body becomes one validated,
immutable Config; every mistake is reported in a ConfigError naming the field, value and reason.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Annotated, Any, Final, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    model_serializer,
    model_validator,
)

from rusty_rail._types import IPAddress
from rusty_rail.model.flowhash import DEFAULT_SEED
from rusty_rail.wire.constants import PROTO_TCP, PROTO_UDP

MAX_SEED: Final = (1 << 64) - 1
DEFAULT_TABLE_SIZE: Final = 65537
MIN_TABLE_SIZE: Final = 2
MAX_TABLE_SIZE: Final = 1 << 24
DEFAULT_CONNTRACK_SIZE: Final = 1 << 20
MIN_CONNTRACK_SIZE: Final = 1024
MAX_CONNTRACK_SIZE: Final = 1 << 27
MAX_WEIGHT: Final = 65535
#: Linux's IFNAMSIZ is 16 bytes including the terminating NUL.
MAX_IFNAME_BYTES: Final = 15


class XdpMode(StrEnum):
    """How the XDP program is attached: in the driver, or in the kernel's generic hook."""

    NATIVE = "native"
    GENERIC = "generic"


class Action(StrEnum):
    """What to do with a packet the balancer does not forward."""

    PASS = "pass"
    DROP = "drop"


class AdminState(StrEnum):
    """A backend's administrative state. ``drain`` keeps existing flows but takes no new ones."""

    UP = "up"
    DRAIN = "drain"
    DOWN = "down"


class Protocol(StrEnum):
    """The transport protocol a port-specific VIP matches."""

    TCP = "tcp"
    UDP = "udp"

    @property
    def number(self) -> int:
        """The IP protocol number."""
        return PROTO_TCP if self is Protocol.TCP else PROTO_UDP


class Encap(StrEnum):
    """How packets are carried from the balancer to a VIP's backends."""

    GRE = "gre"


class CheckType(StrEnum):
    """An active health check: none, a TCP connect, an HTTP GET, or a tunnel probe (an ICMP
    echo inside GRE from the balancer's address: the path the traffic takes)."""

    NONE = "none"
    TCP = "tcp"
    HTTP = "http"
    TUNNEL = "tunnel"


class IcmpPolicy(StrEnum):
    """What an ICMP destination unreachable about a backend does: make it suspect until a
    tunnel probe confirms, take it out at once, or nothing."""

    SUSPECT = "suspect"
    TRUST = "trust"
    OFF = "off"


class AllUnhealthy(StrEnum):
    """What a VIP whose every backend is unhealthy does: keep sending to all of them
    (fail open) or drop its traffic."""

    FAIL_OPEN = "fail-open"
    DROP = "drop"


# ---------------------------------------------------------------------------------------------
# Problems and the one exception type


class _NoValue(Enum):
    NO_VALUE = "no value"


#: Marks a problem that has no offending value to show (a missing key, say).
NO_VALUE: Final = _NoValue.NO_VALUE

Loc = tuple[str | int, ...]


#: The longest key shown in a problem's path.
MAX_SHOWN_KEY: Final = 80


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration: where (``loc``), the value found there, and why."""

    loc: Loc
    reason: str
    value: object = NO_VALUE

    @property
    def path(self) -> str:
        """The location as written in messages, e.g. ``vips[0].backends[1].weight``."""
        text = ""
        for part in self.loc:
            if isinstance(part, int):
                text += f"[{part}]"
            else:
                # A key is the client's text: a hostile one may be megabytes long.
                if len(part) > MAX_SHOWN_KEY:
                    part = part[: MAX_SHOWN_KEY - 3] + "..."
                text += f".{part}" if text else part
        return text

    def under(self, prefix: Loc) -> Problem:
        """The same problem, located inside ``prefix``."""
        return Problem(prefix + self.loc, self.reason, self.value)

    def __str__(self) -> str:
        parts = [self.path] if self.loc else []
        if self.value is not NO_VALUE:
            parts.append(show_value(self.value))
        parts.append(self.reason)
        return ": ".join(parts)


class ConfigError(ValueError):
    """An invalid configuration. ``problems`` lists everything found; ``source`` says where the
    configuration came from (a file path, "environment", "request body", ...)."""

    def __init__(self, problems: Iterable[Problem], source: str) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        if not self.problems:
            raise ValueError("a ConfigError needs at least one problem")
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return f"configuration error in {self.source}: {self.problems[0]}"
        lines = [f"{len(self.problems)} configuration errors in {self.source}:"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)


class _Invalid(ValueError):
    """Raised inside validators to report several problems at once, located relative to the
    object being validated; turned into located Problems when the ValidationError is read."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(problem) for problem in problems))


def show_value(value: object, limit: int = 80) -> str:
    """A value as it would be written in TOML, shortened for a one-line message. Only about
    ``limit`` characters are ever rendered, and nesting deeper than MAX_SHOWN_DEPTH is shown
    as ``...``: a hostile value (megabytes, or nested a thousand deep) costs no more than a
    short one."""
    out: list[str] = []
    with contextlib.suppress(_Shown):
        _toml_like(value, out, limit, 0)
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Nesting shown in messages before ``...``.
MAX_SHOWN_DEPTH: Final = 8


class _Shown(Exception):
    """Enough of a value has been rendered."""


def _emit(out: list[str], text: str, limit: int) -> None:
    out.append(text[: limit + 1])
    if sum(map(len, out)) > limit:
        raise _Shown


def _toml_like(value: object, out: list[str], limit: int, depth: int) -> None:
    if depth > MAX_SHOWN_DEPTH:
        _emit(out, "...", limit)
    elif isinstance(value, bool):
        _emit(out, "true" if value else "false", limit)
    elif isinstance(value, Enum):
        _toml_like(value.value, out, limit, depth)
    elif isinstance(value, str | IPv4Address | IPv6Address | Path):
        _emit(out, json.dumps(str(value)[: limit + 1], ensure_ascii=False), limit)
    elif isinstance(value, int) and value.bit_length() > 4 * limit:
        _emit(out, f"<an integer of {value.bit_length()} bits>", limit)
    elif isinstance(value, int | float):
        _emit(out, repr(value), limit)
    elif isinstance(value, BaseModel):
        _toml_like(value.model_dump(), out, limit, depth)
    elif isinstance(value, Mapping):
        _emit(out, "{", limit)
        for position, (key, item) in enumerate(value.items()):
            _emit(out, f"{', ' if position else ''}{str(key)[: limit + 1]} = ", limit)
            _toml_like(item, out, limit, depth + 1)
        _emit(out, "}", limit)
    elif isinstance(value, list | tuple):
        _emit(out, "[", limit)
        for position, item in enumerate(value):
            if position:
                _emit(out, ", ", limit)
            _toml_like(item, out, limit, depth + 1)
        _emit(out, "]", limit)
    else:
        _emit(out, repr(value)[: limit + 1], limit)


# ---------------------------------------------------------------------------------------------
# Checks of single values. Each takes what a TOML file, the environment or a JSON body may hold
# and returns the typed value or raises ValueError with the reason as the operator should read it.


def is_prime(number: int) -> bool:
    """Whether ``number`` is prime (trial division: table sizes are at most 2**24)."""
    if number < 2:
        return False
    if number % 2 == 0:
        return number == 2
    return all(number % divisor for divisor in range(3, math.isqrt(number) + 1, 2))


def _integer(value: object, low: int, high: int, high_text: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high_text or high}")
    return value


def _integer_between(low: int, high: int) -> Callable[[object], int]:
    return lambda value: _integer(value, low, high)


def _optional(check: Callable[[object], Any]) -> Callable[[object], Any]:
    return lambda value: None if value is None else check(value)


def _address(value: object) -> IPAddress:
    if isinstance(value, IPv4Address | IPv6Address):
        address = value
    elif isinstance(value, str):
        if "/" in value:
            raise ValueError("is a network or has a prefix length; write a single address")
        if "%" in value:
            raise ValueError("has a zone index (%...), which is not supported")
        try:
            address = ip_address(value)
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None
    else:
        raise ValueError("must be an IP address written as a string")
    if address.is_unspecified:
        raise ValueError("is the unspecified address")
    if address.is_multicast:
        raise ValueError("is a multicast address")
    if address == IPv4Address("255.255.255.255"):
        raise ValueError("is the broadcast address")
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        raise ValueError(f'is an IPv4-mapped IPv6 address; write "{address.ipv4_mapped}"')
    return address


def _device_name(value: object) -> str:
    """Linux's rules for an interface name (dev_valid_name in net/core/dev.c)."""
    if not isinstance(value, str):
        raise ValueError("must be an interface name (a string)")
    if value == "":
        raise ValueError("must not be empty")
    if value in (".", ".."):
        raise ValueError("is not a valid interface name")
    bad = sorted({char for char in value if char in "/:\0" or char.isspace()})
    if bad:
        listed = ", ".join(json.dumps(char) for char in bad)
        raise ValueError(f"must not contain {listed} (not allowed in interface names)")
    length = len(value.encode("utf-8", "surrogateescape"))
    if length > MAX_IFNAME_BYTES:
        raise ValueError(f"is {length} bytes long; interface names have at most 15")
    return value


_DECIMAL = re.compile(r"[0-9](_?[0-9])*")
_HEXADECIMAL = re.compile(r"0[xX][0-9a-fA-F](_?[0-9a-fA-F])*")


def _seed(value: object) -> int:
    if isinstance(value, str):
        text = value.strip()
        if _HEXADECIMAL.fullmatch(text):
            value = int(text[2:].replace("_", ""), 16)
        elif _DECIMAL.fullmatch(text):
            value = int(text.replace("_", ""))
        else:
            raise ValueError("not a number: write an integer, or 0x and hexadecimal digits")
    elif isinstance(value, bool) or not isinstance(value, int):
        raise ValueError('must be an integer or a string such as "0x1234abcd"')
    return _integer(value, 0, MAX_SEED, f"{MAX_SEED:#x}")


def _neighbouring_primes(number: int) -> list[int]:
    below = next((n for n in range(number - 1, MIN_TABLE_SIZE - 1, -1) if is_prime(n)), None)
    above = next((n for n in range(number + 1, MAX_TABLE_SIZE + 1) if is_prime(n)), None)
    return [n for n in (below, above) if n is not None]


def _table_size(value: object) -> int:
    size = _integer(value, MIN_TABLE_SIZE, MAX_TABLE_SIZE)
    if not is_prime(size):
        nearest = " and ".join(str(n) for n in _neighbouring_primes(size))
        raise ValueError(f"must be a prime number (nearest: {nearest})")
    return size


E = TypeVar("E", bound=StrEnum)


def _choice(kind: type[E], lead: str = "must be one of") -> Callable[[object], E]:
    def check(value: object) -> E:
        if isinstance(value, kind):
            return value
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
        raise ValueError(f"{lead}: {', '.join(member.value for member in kind)}")

    return check


def _seconds(low: float, high: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number of seconds")
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g} seconds")
        return float(value)

    return check


def _share(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number from 0 to 1 (a share of the VIP's backends)")
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1 (a share of the VIP's backends)")
    return float(value)


_STATUS_CLASS = re.compile(r"[1-5]xx")


def _status(value: object) -> int | str:
    if isinstance(value, str) and _STATUS_CLASS.fullmatch(value.lower()):
        return value.lower()
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError('must be an HTTP status (200) or a class of them ("2xx")')
    return _integer(value, 100, 599)


def _statuses(value: object) -> tuple[int | str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError('must be a non-empty array of statuses, e.g. [200] or ["2xx", "3xx"]')
    checked = []
    for position, item in enumerate(value):
        try:
            checked.append(_status(item))
        except ValueError as error:
            raise ValueError(f"item {position}: {show_value(item)}: {error}") from None
    return tuple(checked)


def _http_path(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string starting with /")
    if not value.startswith("/"):
        raise ValueError("must start with /")
    if len(value) > 1024:
        raise ValueError("is longer than 1024 characters")
    if any(not 0x21 <= ord(char) <= 0x7E for char in value):
        raise ValueError("must be printable ASCII without spaces (percent-encode the rest)")
    return value


def _host_header(value: object) -> str:
    if not isinstance(value, str) or value == "":
        raise ValueError("must be a non-empty string (a host name, optionally :port)")
    if len(value) > 255:
        raise ValueError("is longer than 255 characters")
    if any(not 0x21 <= ord(char) <= 0x7E for char in value):
        raise ValueError("must be printable ASCII without spaces")
    return value


# The field types. A new field usually needs only one of these, or a new line like them.
Address = Annotated[IPAddress, BeforeValidator(_address)]
OptionalAddress = Annotated[IPAddress | None, BeforeValidator(_optional(_address))]
DeviceName = Annotated[str | None, BeforeValidator(_optional(_device_name))]
Seed = Annotated[int, BeforeValidator(_seed), Field(ge=0, le=MAX_SEED)]
TableSize = Annotated[
    int, BeforeValidator(_table_size), Field(ge=MIN_TABLE_SIZE, le=MAX_TABLE_SIZE)
]
OptionalTableSize = Annotated[int | None, BeforeValidator(_optional(_table_size))]
Weight = Annotated[
    int, BeforeValidator(_integer_between(0, MAX_WEIGHT)), Field(ge=0, le=MAX_WEIGHT)
]
OptionalPort = Annotated[int | None, BeforeValidator(_optional(_integer_between(1, 65535)))]
Ttl = Annotated[int, BeforeValidator(_integer_between(1, 255)), Field(ge=1, le=255)]
ConntrackSize = Annotated[
    int,
    BeforeValidator(_integer_between(MIN_CONNTRACK_SIZE, MAX_CONNTRACK_SIZE)),
    Field(ge=MIN_CONNTRACK_SIZE, le=MAX_CONNTRACK_SIZE),
]
XdpModeField = Annotated[XdpMode, BeforeValidator(_choice(XdpMode))]
ActionField = Annotated[Action, BeforeValidator(_choice(Action))]
AdminStateField = Annotated[AdminState, BeforeValidator(_choice(AdminState))]
OptionalProtocol = Annotated[Protocol | None, BeforeValidator(_optional(_choice(Protocol)))]
EncapField = Annotated[
    Encap, BeforeValidator(_choice(Encap, "unsupported encapsulation; supported"))
]
OptionalCheckType = Annotated[CheckType | None, BeforeValidator(_optional(_choice(CheckType)))]
OptionalIcmpPolicy = Annotated[IcmpPolicy | None, BeforeValidator(_optional(_choice(IcmpPolicy)))]
OptionalAllUnhealthy = Annotated[
    AllUnhealthy | None, BeforeValidator(_optional(_choice(AllUnhealthy)))
]
OptionalHttpPath = Annotated[str | None, BeforeValidator(_optional(_http_path))]
OptionalHostHeader = Annotated[str | None, BeforeValidator(_optional(_host_header))]
OptionalStatuses = Annotated[tuple[int | str, ...] | None, BeforeValidator(_optional(_statuses))]
OptionalInterval = Annotated[float | None, BeforeValidator(_optional(_seconds(0.1, 3600)))]
OptionalTimeout = Annotated[float | None, BeforeValidator(_optional(_seconds(0.01, 60)))]
OptionalHold = Annotated[float | None, BeforeValidator(_optional(_seconds(0, 3600)))]
OptionalConfirmTimeout = Annotated[float | None, BeforeValidator(_optional(_seconds(0.01, 10)))]
OptionalCount = Annotated[int | None, BeforeValidator(_optional(_integer_between(1, 100)))]
OptionalShare = Annotated[float | None, BeforeValidator(_optional(_share))]


# ---------------------------------------------------------------------------------------------
# The model


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _OmitsNoHealth(_Model):
    """A model whose ``health`` key is left out of dumps while it is None, so configurations
    without health settings read and hash exactly as they did before there were any."""

    @model_serializer(mode="wrap")
    def _without_unset_health(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("health", ...) is None:
            del data["health"]
        return data


class BackendHealth(_Model):
    """Health settings a backend may override; every key is optional, and an unset key comes
    from the VIP's ``health``, then the top level's, then the defaults (docs/health.md)."""

    #: The active check: none, tcp, http or tunnel.
    check: OptionalCheckType = None
    #: The checked port (tcp, http); default the VIP's port.
    port: OptionalPort = None
    #: HTTP: the request path, and the Host header (default: the backend's address).
    path: OptionalHttpPath = None
    host: OptionalHostHeader = None
    #: HTTP: the statuses that mean healthy, e.g. [200] or ["2xx", "3xx"].
    expect_status: OptionalStatuses = None
    interval: OptionalInterval = None
    timeout: OptionalTimeout = None
    #: Consecutive successes that bring an unhealthy backend back, failures that take it out.
    rise: OptionalCount = None
    fall: OptionalCount = None
    #: What an ICMP destination unreachable about this backend does.
    icmp: OptionalIcmpPolicy = None

    @model_serializer(mode="wrap")
    def _set_keys_only(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> Any:
        # Unset keys mean "from the level above": a dump shows what this level sets.
        data = handler(self)
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @model_validator(mode="after")
    def _check_timeout(self) -> Self:
        if self.timeout is not None and self.interval is not None and self.timeout > self.interval:
            reason = f"must not be longer than the interval ({self.interval:g} s)"
            raise _Invalid([Problem(("timeout",), reason, self.timeout)])
        return self


class Health(BackendHealth):
    """Health settings of a VIP (or, at the top level, of every VIP and the default set):
    a backend's keys and the ones that concern the VIP as a whole."""

    #: The share of the VIP's backends that ICMP reports alone (trust mode) may take out.
    icmp_max_removed: OptionalShare = None
    #: How long after a report a backend may report again (the per-backend rate limit).
    icmp_hold: OptionalHold = None
    #: How long the tunnel probe that confirms a suspect waits for its echo.
    icmp_confirm_timeout: OptionalConfirmTimeout = None
    #: When every backend is unhealthy: "fail-open" (send to all) or "drop".
    all_unhealthy: OptionalAllUnhealthy = None


DEFAULT_TIMEOUT: Final = 1.0

#: The value of every health key that no level sets.
HEALTH_DEFAULTS: Final[Mapping[str, object]] = {
    "check": CheckType.NONE,
    "port": None,
    "path": "/",
    "host": None,
    "expect_status": ("2xx", "3xx"),
    "interval": 2.0,
    "timeout": None,  # DEFAULT_TIMEOUT, or the interval when that is shorter
    "rise": 2,
    "fall": 3,
    "icmp": IcmpPolicy.SUSPECT,
    "icmp_max_removed": 0.5,
    "icmp_hold": 1.0,
    "icmp_confirm_timeout": 0.3,
    "all_unhealthy": AllUnhealthy.FAIL_OPEN,
}


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The health settings in force for one backend of one VIP, every level merged."""

    check: CheckType
    port: int | None
    path: str
    host: str | None
    expect_status: tuple[int | str, ...]
    interval: float
    timeout: float
    rise: int
    fall: int
    icmp: IcmpPolicy
    icmp_max_removed: float
    icmp_hold: float
    icmp_confirm_timeout: float
    all_unhealthy: AllUnhealthy

    def status_ok(self, status: int) -> bool:
        """Whether an HTTP answer with ``status`` means healthy."""
        return any(
            status == wanted if isinstance(wanted, int) else str(status)[0] == wanted[0]
            for wanted in self.expect_status
        )


def merge_health(*levels: BackendHealth | None, vip_port: int | None = None) -> HealthSettings:
    """The settings of ``levels`` (least specific first): each set key wins over the levels
    before it; the port defaults to the VIP's."""
    merged: dict[str, Any] = dict(HEALTH_DEFAULTS)
    merged["port"] = vip_port
    for level in levels:
        if level is not None:
            merged |= {key: value for key, value in level if value is not None}
    if merged["timeout"] is None:
        merged["timeout"] = min(DEFAULT_TIMEOUT, merged["interval"])
    return HealthSettings(**merged)


class Backend(_OmitsNoHealth):
    """A server behind a VIP. In TOML it may be written as just its address string."""

    address: Address
    weight: Weight = 1
    state: AdminStateField = AdminState.UP
    #: This backend's own health settings, over the VIP's.
    health: BackendHealth | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_address_string(cls, data: object) -> object:
        if isinstance(data, str):
            return {"address": data}
        if not isinstance(data, Mapping | Backend):
            raise ValueError(
                'must be an address string or a table such as {address = "10.1.0.1", weight = 2}'
            )
        return data


@dataclass(frozen=True, slots=True)
class VipKey:
    """What a VIP matches: an address, and either a protocol and port or neither (address-wide).

    Its string form is canonical and is what :func:`parse_vip_key` reads:
    ``198.18.100.1``, ``198.18.100.1:80/tcp``, ``2001:2::1``, ``[2001:2::1]:80/tcp``.
    """

    address: IPAddress
    protocol: Protocol | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.protocol is None or self.port is None:
            return str(self.address)
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}/{self.protocol.value}"


class Vip(_OmitsNoHealth):
    """A virtual IP service: what it matches, how packets reach its backends, and the backends."""

    address: Address
    protocol: OptionalProtocol = None
    port: OptionalPort = None
    encap: EncapField = Encap.GRE
    #: Maglev table size for this VIP; None means the configuration's ``table_size``.
    table_size: OptionalTableSize = None
    backends: tuple[Backend, ...] = ()
    #: Health checks and ICMP learning for this VIP's backends, over the top level's.
    health: Health | None = None

    @property
    def key(self) -> VipKey:
        return VipKey(self.address, self.protocol, self.port)

    @model_validator(mode="after")
    def _check_vip(self) -> Self:
        problems: list[Problem] = []
        if self.port is not None and self.protocol is None:
            problems.append(
                Problem(
                    ("port",), 'a port needs a protocol: add protocol = "tcp" or "udp"', self.port
                )
            )
        if self.protocol is not None and self.port is None:
            problems.append(
                Problem(
                    ("protocol",), "a protocol needs a port: add port = 1..65535", self.protocol
                )
            )
        problems += _duplicate_backends(self.backends, ("backends",))
        if self.table_size is not None:
            problems += _table_fits(
                self.table_size, self.backends, ("backends",), "this VIP's table_size"
            )
        if problems:
            raise _Invalid(problems)
        return self


class Config(_OmitsNoHealth):
    """The whole configuration of one balancer node."""

    #: The interface that receives and sends the GRE traffic; None: not chosen here.
    device: DeviceName = None
    xdp_mode: XdpModeField = XdpMode.NATIVE
    #: The node's own outer address (the GRE destination); None: discovered from the device.
    lb_address: OptionalAddress = None
    hash_seed: Seed = DEFAULT_SEED
    table_size: TableSize = DEFAULT_TABLE_SIZE
    outer_ttl: Ttl = 64
    no_vip_action: ActionField = Action.PASS
    malformed_action: ActionField = Action.DROP
    conntrack_size: ConntrackSize = DEFAULT_CONNTRACK_SIZE
    #: Where GRE traffic matching no VIP goes (the seed's RR_TARGET_IPS); empty: nowhere.
    default_backends: tuple[Backend, ...] = ()
    vips: tuple[Vip, ...] = ()
    #: Health checks and ICMP learning for every VIP and the default set (docs/health.md).
    health: Health | None = None

    def table_size_for(self, vip: Vip) -> int:
        """The Maglev table size ``vip`` uses."""
        return vip.table_size if vip.table_size is not None else self.table_size

    def health_for(self, vip: Vip | None, backend: Backend) -> HealthSettings:
        """The health settings of ``backend`` of ``vip`` (None: the default set)."""
        if vip is None:
            return merge_health(self.health, backend.health)
        return merge_health(self.health, vip.health, backend.health, vip_port=vip.port)

    @field_serializer("hash_seed", when_used="json")
    def _seed_as_hex(self, seed: int) -> str:
        # JSON readers often hold numbers as doubles, which cannot carry 64 bits.
        return f"{seed:#018x}"

    @model_validator(mode="after")
    def _check_config(self) -> Self:
        problems = _duplicate_backends(self.default_backends, ("default_backends",))
        problems += _table_fits(
            self.table_size, self.default_backends, ("default_backends",), "table_size"
        )
        vip_addresses: dict[IPAddress, int] = {}
        seen_keys: dict[VipKey, int] = {}
        for index, vip in enumerate(self.vips):
            vip_addresses.setdefault(vip.address, index)
            if vip.key in seen_keys:
                reason = f"duplicate VIP, same as vips[{seen_keys[vip.key]}]"
                problems.append(Problem(("vips", index), reason, str(vip.key)))
            seen_keys.setdefault(vip.key, index)
            if vip.table_size is None:
                loc: Loc = ("vips", index, "backends")
                size_key = "table_size, or set this VIP's own"
                problems += _table_fits(self.table_size, vip.backends, loc, size_key)
            if vip.address == self.lb_address:
                reason = "is the balancer's own address (lb_address)"
                problems.append(Problem(("vips", index, "address"), reason, vip.address))

        def check_backends(backends: Sequence[Backend], loc: Loc) -> None:
            for position, backend in enumerate(backends):
                where = (*loc, position, "address")
                if backend.address == self.lb_address:
                    reason = "is the balancer's own address (lb_address)"
                    problems.append(Problem(where, reason, backend.address))
                if backend.address in vip_addresses:
                    reason = f"is a VIP address (vips[{vip_addresses[backend.address]}])"
                    problems.append(Problem(where, reason, backend.address))

        check_backends(self.default_backends, ("default_backends",))
        for index, vip in enumerate(self.vips):
            check_backends(vip.backends, ("vips", index, "backends"))
        problems += self._health_problems()
        if problems:
            raise _Invalid(problems)
        return self

    def _health_problems(self) -> list[Problem]:
        """What the merged health settings of each backend get wrong, reported at the most
        specific level that has a health table."""
        problems: list[Problem] = []
        services: list[tuple[Vip | None, Loc, tuple[Backend, ...]]] = [
            (None, (), self.default_backends)
        ]
        services += [(vip, ("vips", i), vip.backends) for i, vip in enumerate(self.vips)]
        for vip, vip_loc, backends in services:
            service_loc: Loc = (*vip_loc, "health") if vip and vip.health else ("health",)
            backends_key = "backends" if vip is not None else "default_backends"
            levels = (self.health,) if vip is None else (self.health, vip.health)
            service = merge_health(*levels)
            if service.timeout > service.interval:
                reason = f"must not be longer than the interval ({service.interval:g} s)"
                problems.append(Problem((*service_loc, "timeout"), reason, service.timeout))
            # Backends without a health table of their own share one merge (and, located at
            # the service, one problem): 1000 of them need not be merged 1000 times.
            shared: HealthSettings | None = None
            for position, backend in enumerate(backends):
                where = service_loc
                if backend.health is not None:
                    where = (*vip_loc, backends_key, position, "health")
                    settings = self.health_for(vip, backend)
                elif shared is not None:
                    continue
                else:
                    settings = shared = self.health_for(vip, backend)
                if settings.check in (CheckType.TCP, CheckType.HTTP) and settings.port is None:
                    reason = (
                        f"the {settings.check.value} check needs a port, and "
                        + ("this VIP matches every port" if vip else "the default set has none")
                        + ": set port"
                    )
                    problems.append(Problem((*where, "port"), reason))
                own = backend.health
                if (
                    own is not None
                    and (own.timeout, own.interval) != (None, None)
                    and settings.timeout > settings.interval
                ):
                    reason = f"must not be longer than the interval ({settings.interval:g} s)"
                    problems.append(Problem((*where, "timeout"), reason, settings.timeout))
        unique: dict[tuple[Loc, str], Problem] = {}
        for problem in problems:
            unique.setdefault((problem.loc, problem.reason), problem)
        return list(unique.values())


def _duplicate_backends(backends: Sequence[Backend], loc: Loc) -> list[Problem]:
    problems = []
    first: dict[IPAddress, int] = {}
    for position, backend in enumerate(backends):
        if backend.address in first:
            reason = f"duplicate backend, same as {loc[-1]}[{first[backend.address]}]"
            problems.append(Problem((*loc, position, "address"), reason, backend.address))
        first.setdefault(backend.address, position)
    return problems


def _table_fits(size: int, backends: Sequence[Backend], loc: Loc, size_key: str) -> list[Problem]:
    if len(backends) <= size:
        return []
    reason = (
        f"{len(backends)} backends do not fit in a Maglev table of {size} slots; raise {size_key}"
    )
    return [Problem(loc, reason)]


# ---------------------------------------------------------------------------------------------
# VIP keys as text (the REST API's paths use them)


_PORT = re.compile(r"[0-9]{1,5}")


def parse_vip_key(text: str, source: str = "VIP key") -> VipKey:
    """Read a VIP key in its canonical form (see :class:`VipKey`); raises ConfigError."""

    def fail(reason: str) -> ConfigError:
        return ConfigError([Problem((), reason, text)], source)

    raw = text.strip()
    protocol_text: str | None = None
    if "/" in raw:
        raw, protocol_text = raw.rsplit("/", 1)
    port_text: str | None = None
    if raw.startswith("["):
        host, bracket, rest = raw[1:].partition("]")
        if not bracket:
            raise fail('missing "]" after the IPv6 address')
        if rest:
            if not rest.startswith(":"):
                raise fail('expected ":port" after "]"')
            port_text = rest[1:]
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    else:
        host = raw
    try:
        address = _address(host)
    except ValueError as error:
        raise fail(f"address {json.dumps(host)}: {error}") from None
    if raw.startswith("[") and address.version == 4:
        raise fail("only IPv6 addresses are written in brackets")
    protocol: Protocol | None = None
    if protocol_text is not None:
        try:
            protocol = Protocol(protocol_text)
        except ValueError:
            known = ", ".join(member.value for member in Protocol)
            raise fail(f"protocol {json.dumps(protocol_text)} must be one of: {known}") from None
    if port_text is None and protocol is None:
        return VipKey(address)
    if port_text is None:
        if address.version == 6 and not raw.startswith("["):
            raise fail(
                "a protocol needs a port, and an IPv6 address with a port is written in"
                f" brackets: [address]:port/{protocol_text}"
            )
        raise fail(f'a protocol needs a port, e.g. "{_host(address)}:80/{protocol_text}"')
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise fail(f"port {json.dumps(port_text)} must be a number between 1 and 65535")
    if protocol is None:
        raise fail(f'a port needs a protocol, e.g. "{_host(address)}:{int(port_text)}/tcp"')
    return VipKey(address, protocol, int(port_text))


def _host(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


# ---------------------------------------------------------------------------------------------
# Validation with readable errors


M = TypeVar("M", bound=BaseModel)


def validate_as(
    model: type[M],
    data: object,
    source: str,
    rename: Mapping[Loc, Loc] | None = None,
) -> M:
    """Validate ``data`` (a dict from TOML or JSON, say) as ``model``; raises ConfigError.

    ``rename`` relocates problems: a problem at or under a key of it is reported at the value
    instead (the environment loader uses this to name its variables)."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = _problems_from(error, model)
        if rename:
            problems = [_relocate(problem, rename) for problem in problems]
        raise ConfigError(problems, source) from None


def _relocate(problem: Problem, rename: Mapping[Loc, Loc]) -> Problem:
    for length in range(len(problem.loc), 0, -1):
        target = rename.get(problem.loc[:length])
        if target is not None:
            return Problem(target + problem.loc[length:], problem.reason, problem.value)
    return problem


def _problems_from(error: ValidationError, model: type[BaseModel]) -> list[Problem]:
    problems: list[Problem] = []
    for detail in error.errors(include_url=False):
        loc: Loc = tuple(detail["loc"])
        kind = detail["type"]
        value = detail.get("input", NO_VALUE)
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, _Invalid):
            problems.extend(problem.under(loc) for problem in cause.problems)
        elif kind == "value_error" and isinstance(cause, ValueError):
            problems.append(Problem(loc, str(cause), value))
        elif kind == "missing":
            problems.append(Problem(loc, "required, but missing"))
        elif kind == "extra_forbidden":
            problems.append(Problem(loc, _unknown_key_reason(model, loc), value))
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            problems.append(Problem(loc, "must be a table", value))
        elif kind in ("tuple_type", "list_type", "iterable_type"):
            problems.append(Problem(loc, "must be an array", value))
        else:
            message = str(detail["msg"]).removeprefix("Input should be ")
            problems.append(Problem(loc, f"must be {message}", value))
    return problems


def _unknown_key_reason(model: type[BaseModel], loc: Loc) -> str:
    owner = _model_at(model, loc[:-1])
    if owner is None:
        return "unknown key"
    known = list(owner.model_fields)
    guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f" (did you mean {guess[0]}?)" if guess else ""
    return f"unknown key{hint}; known keys: {', '.join(known)}"


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        current = _nested_model(field.annotation) if field is not None else None
    return current


def _nested_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _nested_model(argument)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------------
# TOML


_TOML_POSITION = re.compile(
    r"^(?P<message>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$"
)


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _TOML_POSITION.match(message)
        if match is None:
            problem = Problem((), f"invalid TOML: {message}")
        else:
            if match["line"] is not None:
                where = f"line {match['line']}, column {match['column']}"
            else:
                line = text.count("\n") + 1
                column = len(text) - text.rfind("\n")
                where = f"line {line}, column {column} (end of file)"
            problem = Problem((where,), f"invalid TOML: {match['message']}")
        raise ConfigError([problem], source) from None


def _read_file(path: str | os.PathLike[str]) -> str:
    try:
        content = Path(path).read_bytes()
    except OSError as error:
        problem = Problem((), f"cannot read the file: {error.strerror or error}")
        raise ConfigError([problem], str(path)) from None
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        problem = Problem((), f"not UTF-8 text (byte {error.start} of the file)")
        raise ConfigError([problem], str(path)) from None


def config_from_toml_text(text: str, source: str = "<string>") -> Config:
    """The configuration written in ``text`` (TOML); ``source`` names it in errors."""
    return validate_as(Config, _parse_toml(text, source), source)


def load_toml(path: str | os.PathLike[str]) -> Config:
    """The configuration in the TOML file at ``path``."""
    return config_from_toml_text(_read_file(path), str(path))


# ---------------------------------------------------------------------------------------------
# The environment

ENV_DEVICE: Final = "RR_DEVICE"
ENV_TARGET_IPS: Final = "RR_TARGET_IPS"
ENV_CONFIG: Final = "RR_CONFIG"
#: Variables that set (or, with a file, override) one configuration key.
ENV_OVERRIDES: Final[Mapping[str, str]] = {
    ENV_DEVICE: "device",
    "RR_XDP_MODE": "xdp_mode",
    "RR_LB_ADDRESS": "lb_address",
    "RR_HASH_SEED": "hash_seed",
}
ENV_VARIABLES: Final = frozenset({*ENV_OVERRIDES, ENV_TARGET_IPS, ENV_CONFIG})
ENVIRONMENT: Final = "environment"
_USAGE = (
    f'set {ENV_DEVICE} and {ENV_TARGET_IPS} (e.g. {ENV_DEVICE}=eth0 {ENV_TARGET_IPS}="10.1.0.1;'
    f'10.1.0.2" rusty-rail run) or give a configuration file (--config FILE or {ENV_CONFIG}=FILE)'
)


def config_from_env(environ: Mapping[str, str]) -> Config:
    """The configuration the environment describes: RR_DEVICE and RR_TARGET_IPS (and the
    optional RR_ variables), or a file named by RR_CONFIG. The same as ``load(environ)``."""
    return load(environ)


def load(environ: Mapping[str, str], config_path: str | os.PathLike[str] | None = None) -> Config:
    """The configuration ``rusty-rail run`` uses: the file ``config_path`` (else RR_CONFIG's)
    with RR_ variables overriding its keys, or the environment alone when there is no file."""
    variables = _rr_variables(environ)
    if config_path is None and ENV_CONFIG in variables:
        config_path = variables[ENV_CONFIG]
    if config_path is None:
        return _from_environment(variables)
    if ENV_TARGET_IPS in variables:
        reason = (
            f"cannot be combined with a configuration file ({config_path}): it is ambiguous which "
            f"backends to use; put them in the file's default_backends, or unset {ENV_TARGET_IPS}"
        )
        raise ConfigError(
            [Problem((ENV_TARGET_IPS,), reason, variables[ENV_TARGET_IPS])], ENVIRONMENT
        )
    source = str(config_path)
    data = _parse_toml(_read_file(config_path), source)
    overridden = [name for name in ENV_OVERRIDES if name in variables]
    if not overridden:
        return validate_as(Config, data, source)
    data |= {ENV_OVERRIDES[name]: variables[name] for name in overridden}
    rename: dict[Loc, Loc] = {(ENV_OVERRIDES[name],): (name,) for name in overridden}
    source += f" with {', '.join(overridden)} from the {ENVIRONMENT}"
    return validate_as(Config, data, source, rename)


def _rr_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The RR_ variables, values stripped; unknown names and empty values are errors."""
    problems = []
    variables = {}
    for name, value in sorted(environ.items()):
        if not name.startswith("RR_"):
            continue
        if name not in ENV_VARIABLES:
            guess = difflib.get_close_matches(name, ENV_VARIABLES, n=1)
            hint = f" (did you mean {guess[0]}?)" if guess else ""
            known = ", ".join(sorted(ENV_VARIABLES))
            problems.append(Problem((name,), f"unknown variable{hint}; known: {known}", value))
        elif value.strip() == "" and name != ENV_TARGET_IPS:
            problems.append(Problem((name,), "is set but empty; unset it for the default", value))
        else:
            # RR_TARGET_IPS's items are stripped one by one; its value is shown as written.
            variables[name] = value if name == ENV_TARGET_IPS else value.strip()
    if problems:
        raise ConfigError(problems, ENVIRONMENT)
    return variables


def _from_environment(variables: Mapping[str, str]) -> Config:
    missing = [name for name in (ENV_DEVICE, ENV_TARGET_IPS) if name not in variables]
    if len(missing) == 2:
        raise ConfigError([Problem((), f"no configuration given: {_USAGE}")], ENVIRONMENT)
    if missing:
        reason = f"required without a configuration file: {_USAGE}"
        raise ConfigError([Problem((missing[0],), reason)], ENVIRONMENT)
    targets, rename, problems = _target_ips(variables[ENV_TARGET_IPS])
    data: dict[str, object] = {
        field: variables[name] for name, field in ENV_OVERRIDES.items() if name in variables
    }
    rename |= {(field,): (name,) for name, field in ENV_OVERRIDES.items()}
    if problems:
        # Report the other variables' problems too, so one run shows everything to fix.
        try:
            validate_as(Config, data, ENVIRONMENT, rename)
        except ConfigError as error:
            problems = [*error.problems, *problems]
        raise ConfigError(problems, ENVIRONMENT)
    data["default_backends"] = targets
    return validate_as(Config, data, ENVIRONMENT, rename)


def _target_ips(text: str) -> tuple[list[str], dict[Loc, Loc], list[Problem]]:
    """RR_TARGET_IPS's addresses, where the model's problems with each are to be reported, and
    the problems found reading it."""
    problems = []
    items: list[str] = []
    rename: dict[Loc, Loc] = {}
    first: dict[IPAddress, int] = {}
    for position, raw in enumerate(text.split(";"), start=1):
        item = raw.strip()
        if not item:
            continue
        where = f"{ENV_TARGET_IPS} item {position}"
        try:
            address = _address(item)
        except ValueError as error:
            problems.append(Problem((where,), str(error), item))
            continue
        if address in first:
            reason = f"duplicate backend, same as item {first[address]}"
            problems.append(Problem((where,), reason, item))
            continue
        first[address] = position
        rename[("default_backends", len(items), "address")] = (where,)
        rename[("default_backends", len(items))] = (where,)
        items.append(item)
    if not items and not problems:
        reason = "no backend addresses: give one or more IP addresses separated by ';'"
        problems.append(Problem((ENV_TARGET_IPS,), reason, text))
    return items, rename, problems
