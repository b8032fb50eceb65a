"""The API's one error type and its JSON form: an RFC 9457 problem details object
(``application/problem+json``: type, title, status, detail, instance) whose extension members
keep the API's own keys: ``error`` (the status phrase), ``message`` (the detail) and, for bad
input, ``problems``, every problem found, each naming the field (``backends[1].weight``),
the value and the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from rusty_rail.config import NO_VALUE, ConfigError, Problem, show_value


class ApiError(Exception):
    """A request the API refuses; nothing was changed. ``problems`` locate bad input."""

    def __init__(
        self, status: int, message: str, problems: Iterable[Problem] = (), **extra: Any
    ) -> None:
        self.status = status
        self.message = message
        self.problems = tuple(problems)
        self.extra = extra
        super().__init__(message)

    @classmethod
    def invalid(cls, error: ConfigError, status: int = HTTPStatus.UNPROCESSABLE_ENTITY) -> ApiError:
        """A validation failure: every problem of ``error``, located in the request."""
        return cls(status, str(error), error.problems)

    @classmethod
    def bad_parameter(cls, name: str, value: str, reason: str) -> ApiError:
        """A path or query parameter that cannot be read."""
        problem = Problem((name,), reason, value)
        return cls(HTTPStatus.BAD_REQUEST, f"bad {name}: {problem}", [problem])

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The problem details; ``instance``: the request's path, when known."""
        phrase = HTTPStatus(self.status).phrase
        body: dict[str, Any] = {
            "type": "about:blank",  # the status says it all (RFC 9457, 4.2.1)
            "title": phrase,
            "status": self.status,
            "detail": self.message,
        }
        if instance is not None:
            body["instance"] = instance
        return body | {
            "error": phrase,
            "message": self.message,
            "problems": [problem_json(problem) for problem in self.problems],
            **self.extra,
        }


def problem_json(problem: Problem) -> dict[str, Any]:
    """A problem as the API reports it; ``value`` is written as in the messages (TOML-like)."""
    result: dict[str, Any] = {"path": problem.path, "reason": problem.reason}
    if problem.value is not NO_VALUE:
        result["value"] = show_value(problem.value)
    return result


def relocate(error: ConfigError, prefix: tuple[str | int, ...], source: str) -> ConfigError:
    """``error``'s problems as the client wrote them: those under ``prefix`` (the part of the
    configuration the request body became) relative to the body, the others (the rest of the
    configuration, which the change made invalid) under ``config``."""
    problems = []
    for problem in error.problems:
        if problem.loc[: len(prefix)] == prefix:
            problems.append(Problem(problem.loc[len(prefix) :], problem.reason, problem.value))
        else:
            problems.append(problem.under(("config",)))
    return ConfigError(problems, source)
