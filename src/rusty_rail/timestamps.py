"""Times in the API's JSON: RFC 3339, in UTC, to the millisecond ("2026-12-05T20:50:01.123Z").
Prometheus metrics keep Unix seconds, as Prometheus wants."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["from_rfc3339", "rfc3339"]


def rfc3339(seconds: float) -> str:
    """Unix time ``seconds`` as RFC 3339 text."""
    text = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def from_rfc3339(text: str) -> float:
    """RFC 3339 text (as rfc3339 writes it, or with any offset) as Unix time."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
