"""Where a configuration comes from: a TOML file (or text), or the environment's RR_ variables
(with or without a file)."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from rusty_rail._types import IPAddress

from .errors import ConfigError, Loc, Problem, validate_as
from .fields import check_address
from .model import Config

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
    "RR_LB_ADDRESS_IPV6": "lb_address_ipv6",
    "RR_HASH_SEED": "hash_seed",
    "RR_INGRESS": "ingress",
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
            address = check_address(item)
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
