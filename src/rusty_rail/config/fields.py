"""The configuration's field types: each an annotated type whose validator takes what a TOML
file, the environment or a JSON body may hold and gives the house message when it is wrong,
and whose constraints (Field) say the same in the models' JSON schema."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Annotated, Any, Final, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from rusty_rail._types import IPAddress

from .enums import (
    Action,
    AdminState,
    Affinity,
    AllUnhealthy,
    CheckType,
    Encap,
    IcmpPolicy,
    Ingress,
    Protocol,
    XdpMode,
)
from .errors import show_value

MAX_SEED: Final = (1 << 64) - 1
DEFAULT_TABLE_SIZE: Final = 65537
MIN_TABLE_SIZE: Final = 2
MAX_TABLE_SIZE: Final = 1 << 24
DEFAULT_CONNTRACK_SIZE: Final = 1 << 20
MIN_CONNTRACK_SIZE: Final = 1024
MAX_CONNTRACK_SIZE: Final = 1 << 27
MAX_WEIGHT: Final = 65535
MAX_VNI: Final = (1 << 24) - 1
#: Linux's IFNAMSIZ is 16 bytes including the terminating NUL.
MAX_IFNAME_BYTES: Final = 15

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


#: Why an address with a scope id (``fe80::1%eth0``, ``2001:2::1%3``) is refused.
ZONE_INDEX: Final = (
    'has a zone index (scope id, the "%..." part), which a backend or VIP address cannot use:'
    " write the address without it"
)


def check_address(value: object) -> IPAddress:
    """One unicast address that can be a VIP, a backend or the balancer's own; raises
    ValueError with the house message. Loopback addresses are accepted in both families
    (127.0.0.0/8, ::1: tests run backends on one host); IPv4 link-local (169.254.0.0/16) is
    routed like any other address, IPv6 link-local is not."""
    if isinstance(value, IPv4Address | IPv6Address):
        address = value
    elif isinstance(value, str):
        if "/" in value:
            raise ValueError("is a network or has a prefix length; write a single address")
        if "%" in value:
            raise ValueError(ZONE_INDEX)
        if value.startswith("[") and value.endswith("]"):
            raise ValueError(f"is in brackets, which only a VIP key with a port needs: write "
                             f"{json.dumps(value[1:-1])}")  # fmt: skip
        try:
            address = ip_address(value)
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None
    else:
        raise ValueError("must be an IP address written as a string")
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        raise ValueError(ZONE_INDEX)
    if address.is_unspecified:
        raise ValueError("is the unspecified address")
    if address.is_multicast:
        raise ValueError("is a multicast address")
    if address == IPv4Address("255.255.255.255"):
        raise ValueError("is the broadcast address")
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        raise ValueError(f'is an IPv4-mapped IPv6 address; write "{address.ipv4_mapped}"')
    if isinstance(address, IPv6Address) and address.is_link_local:
        raise ValueError(
            "is an IPv6 link-local address (fe80::/10), which means something only on one link"
            " and is not routed: write a global or unique local (fc00::/7) address"
        )
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


def _ingress(value: object) -> tuple[Ingress, ...]:
    """One or both ingress modes: a list, or one string with the items separated by ","."""
    items: object = value
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    if not isinstance(items, list | tuple):
        raise ValueError('must be a list such as ["gre", "routed"], or a string "gre,routed"')
    if not items:
        raise ValueError('must name at least one ingress: "gre", "routed" or both')
    check = _choice(Ingress)
    modes = tuple(check(item) for item in items)
    if len(set(modes)) != len(modes):
        raise ValueError("names an ingress twice")
    return modes


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


class AlsoAccepts:
    """Marks a field type that also reads another form (a seed as a string, a backend as its
    address): its JSON schema becomes anyOf the type's own and ``schema``."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [handler(core_schema), self.schema]}


ADDRESS_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "description": "One unicast IPv4 or IPv6 address (not a network, not unspecified, "
    "multicast or broadcast, no zone index, not IPv4-mapped, not IPv6 link-local).",
    "examples": ["198.18.1.1", "2001:2::1"],
}
SEED_TEXT_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "pattern": "^(0[xX][0-9a-fA-F_]+|[0-9_]+)$",
}

# The field types. A new field usually needs only one of these, or a new line like them: a
# BeforeValidator that gives the house message, around a type carrying the constraints (Field)
# it enforces, so that the models' JSON schema (and the API's OpenAPI document) says them too.
# The constraints go on the inner type: after a BeforeValidator they would reach the schema as
# stray "ge" and "le" keys instead of minimum and maximum.
_Address = Annotated[IPAddress, WithJsonSchema(ADDRESS_SCHEMA)]
Address = Annotated[_Address, BeforeValidator(check_address)]
OptionalAddress = Annotated[_Address | None, BeforeValidator(_optional(check_address))]
_DeviceName = Annotated[str, Field(min_length=1, max_length=MAX_IFNAME_BYTES)]
DeviceName = Annotated[_DeviceName | None, BeforeValidator(_optional(_device_name))]
_Seed = Annotated[
    int,
    Field(ge=0, le=MAX_SEED, description="Answered as a 0x-prefixed hexadecimal string."),
    AlsoAccepts(SEED_TEXT_SCHEMA),
]
Seed = Annotated[_Seed, BeforeValidator(_seed)]
_TableSize = Annotated[
    int,
    Field(
        ge=MIN_TABLE_SIZE, le=MAX_TABLE_SIZE, description="A prime number of Maglev table slots."
    ),
]
TableSize = Annotated[_TableSize, BeforeValidator(_table_size)]
OptionalTableSize = Annotated[_TableSize | None, BeforeValidator(_optional(_table_size))]
_Weight = Annotated[int, Field(ge=0, le=MAX_WEIGHT)]
Weight = Annotated[_Weight, BeforeValidator(_integer_between(0, MAX_WEIGHT))]
_Port = Annotated[int, Field(ge=1, le=65535)]
OptionalPort = Annotated[_Port | None, BeforeValidator(_optional(_integer_between(1, 65535)))]
_Ttl = Annotated[int, Field(ge=1, le=255)]
Ttl = Annotated[_Ttl, BeforeValidator(_integer_between(1, 255))]
_ConntrackSize = Annotated[int, Field(ge=MIN_CONNTRACK_SIZE, le=MAX_CONNTRACK_SIZE)]
ConntrackSize = Annotated[
    _ConntrackSize, BeforeValidator(_integer_between(MIN_CONNTRACK_SIZE, MAX_CONNTRACK_SIZE))
]
XdpModeField = Annotated[XdpMode, BeforeValidator(_choice(XdpMode))]
ActionField = Annotated[Action, BeforeValidator(_choice(Action))]
AdminStateField = Annotated[AdminState, BeforeValidator(_choice(AdminState))]
OptionalProtocol = Annotated[Protocol | None, BeforeValidator(_optional(_choice(Protocol)))]
EncapField = Annotated[
    Encap, BeforeValidator(_choice(Encap, "unsupported encapsulation; supported"))
]
AffinityField = Annotated[
    Affinity, BeforeValidator(_choice(Affinity, "unsupported session affinity; supported"))
]
OptionalEncapField = Annotated[
    Encap | None,
    BeforeValidator(_optional(_choice(Encap, "unsupported encapsulation; supported"))),
]
_Vni = Annotated[int, Field(ge=0, le=MAX_VNI)]
OptionalVni = Annotated[_Vni | None, BeforeValidator(_optional(_integer_between(0, MAX_VNI)))]
_Ingresses = Annotated[tuple[Ingress, ...], Field(min_length=1, max_length=len(Ingress))]
IngressField = Annotated[_Ingresses, BeforeValidator(_ingress)]
OptionalCheckType = Annotated[CheckType | None, BeforeValidator(_optional(_choice(CheckType)))]
OptionalIcmpPolicy = Annotated[IcmpPolicy | None, BeforeValidator(_optional(_choice(IcmpPolicy)))]
OptionalAllUnhealthy = Annotated[
    AllUnhealthy | None, BeforeValidator(_optional(_choice(AllUnhealthy)))
]
_HttpPath = Annotated[str, Field(pattern=r"^/[\x21-\x7e]*$", max_length=1024)]
OptionalHttpPath = Annotated[_HttpPath | None, BeforeValidator(_optional(_http_path))]
_HostHeader = Annotated[str, Field(pattern=r"^[\x21-\x7e]+$", max_length=255)]
OptionalHostHeader = Annotated[_HostHeader | None, BeforeValidator(_optional(_host_header))]
_Status = Annotated[int, Field(ge=100, le=599)] | Annotated[str, Field(pattern="^[1-5][xX][xX]$")]
_Statuses = Annotated[tuple[_Status, ...], Field(min_length=1)]
OptionalStatuses = Annotated[_Statuses | None, BeforeValidator(_optional(_statuses))]
_Interval = Annotated[float, Field(ge=0.1, le=3600)]
OptionalInterval = Annotated[_Interval | None, BeforeValidator(_optional(_seconds(0.1, 3600)))]
_Timeout = Annotated[float, Field(ge=0.01, le=60)]
OptionalTimeout = Annotated[_Timeout | None, BeforeValidator(_optional(_seconds(0.01, 60)))]
_Hold = Annotated[float, Field(ge=0, le=3600)]
OptionalHold = Annotated[_Hold | None, BeforeValidator(_optional(_seconds(0, 3600)))]
_ConfirmTimeout = Annotated[float, Field(ge=0.01, le=10)]
OptionalConfirmTimeout = Annotated[
    _ConfirmTimeout | None, BeforeValidator(_optional(_seconds(0.01, 10)))
]
_Count = Annotated[int, Field(ge=1, le=100)]
OptionalCount = Annotated[_Count | None, BeforeValidator(_optional(_integer_between(1, 100)))]
_Share = Annotated[float, Field(ge=0, le=1)]
OptionalShare = Annotated[_Share | None, BeforeValidator(_optional(_share))]


class FrozenModel(BaseModel):
    """The base of every configuration model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
