"""What is wrong with a configuration: Problems, the one exception type ConfigError, and the
translation of pydantic's errors into the house messages (field, value, reason)."""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Final, TypeVar

from pydantic import BaseModel, ValidationError

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


class Invalid(ValueError):
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
        if isinstance(cause, Invalid):
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
