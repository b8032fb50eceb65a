"""The [health] settings a configuration may set at three levels (top, VIP, backend) and
their merge into the settings in force for one backend (docs/health.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Self

from pydantic import (
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from .enums import AllUnhealthy, CheckType, IcmpPolicy
from .errors import Invalid, Problem
from .fields import (
    FrozenModel,
    OptionalAllUnhealthy,
    OptionalCheckType,
    OptionalConfirmTimeout,
    OptionalCount,
    OptionalHold,
    OptionalHostHeader,
    OptionalHttpPath,
    OptionalIcmpPolicy,
    OptionalInterval,
    OptionalPort,
    OptionalShare,
    OptionalStatuses,
    OptionalTimeout,
)


class BackendHealth(FrozenModel):
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
            raise Invalid([Problem(("timeout",), reason, self.timeout)])
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
