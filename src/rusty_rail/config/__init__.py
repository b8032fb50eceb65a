"""The configuration: a TOML file, the environment or an API body becomes one validated,
immutable Config; every mistake is reported in a ConfigError naming the field, value and reason.

The package's parts: enums (the choices), errors (Problem, ConfigError and the translation of
pydantic's errors), fields (the field types and their checks), health (the [health] settings),
model (Backend, Vip, Config) and sources (TOML files and the RR_ environment variables).
"""

from .enums import Action, AdminState, AllUnhealthy, CheckType, Encap, IcmpPolicy, Protocol, XdpMode
from .errors import NO_VALUE, ConfigError, Loc, Problem, show_value, validate_as
from .fields import (
    DEFAULT_CONNTRACK_SIZE,
    DEFAULT_TABLE_SIZE,
    MAX_CONNTRACK_SIZE,
    MAX_IFNAME_BYTES,
    MAX_SEED,
    MAX_TABLE_SIZE,
    MAX_WEIGHT,
    MIN_CONNTRACK_SIZE,
    MIN_TABLE_SIZE,
    is_prime,
)
from .health import (
    DEFAULT_TIMEOUT,
    HEALTH_DEFAULTS,
    BackendHealth,
    Health,
    HealthSettings,
    merge_health,
)
from .model import Backend, Config, Vip, VipKey, parse_vip_key
from .sources import (
    ENV_CONFIG,
    ENV_DEVICE,
    ENV_OVERRIDES,
    ENV_TARGET_IPS,
    ENV_VARIABLES,
    ENVIRONMENT,
    config_from_env,
    config_from_toml_text,
    load,
    load_toml,
)

__all__ = [
    "DEFAULT_CONNTRACK_SIZE",
    "DEFAULT_TABLE_SIZE",
    "DEFAULT_TIMEOUT",
    "ENVIRONMENT",
    "ENV_CONFIG",
    "ENV_DEVICE",
    "ENV_OVERRIDES",
    "ENV_TARGET_IPS",
    "ENV_VARIABLES",
    "HEALTH_DEFAULTS",
    "MAX_CONNTRACK_SIZE",
    "MAX_IFNAME_BYTES",
    "MAX_SEED",
    "MAX_TABLE_SIZE",
    "MAX_WEIGHT",
    "MIN_CONNTRACK_SIZE",
    "MIN_TABLE_SIZE",
    "NO_VALUE",
    "Action",
    "AdminState",
    "AllUnhealthy",
    "Backend",
    "BackendHealth",
    "CheckType",
    "Config",
    "ConfigError",
    "Encap",
    "Health",
    "HealthSettings",
    "IcmpPolicy",
    "Loc",
    "Problem",
    "Protocol",
    "Vip",
    "VipKey",
    "XdpMode",
    "config_from_env",
    "config_from_toml_text",
    "is_prime",
    "load",
    "load_toml",
    "merge_health",
    "parse_vip_key",
    "show_value",
    "validate_as",
]
