"""What SIGHUP reloads did: the last refused one (until a good reload clears it), how many were
refused since start, and when the configuration file was last read into the running state.

A refused reload changes nothing in the data plane (the running configuration stays), so it
does not make the node unhealthy; it is shown in /healthz (``config_reload``, and a warning
line) and in metrics, so an operator learns that the file on disk is not what runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rusty_rail.timestamps import rfc3339

if TYPE_CHECKING:
    from rusty_rail.api import schemas

__all__ = ["ReloadRecord"]


class ReloadRecord:
    """SIGHUP outcomes. ``last_success_at`` starts at the daemon's start, when the
    configuration was first read."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.failures_total = 0
        self.last_success_at = clock()
        self.failed: schemas.FailedReload | None = None

    def refused(self, path: Path | None, error: BaseException) -> schemas.FailedReload:
        """Record a refused reload: the file, its first error line and the time."""
        lines = str(error).strip().splitlines() or [type(error).__name__]
        # A multi-problem ConfigError starts with "N configuration errors in FILE:", one
        # problem on each line after it.
        listed = lines[1:] if len(lines) > 1 and lines[0].endswith(":") else lines[:1]
        self.failures_total += 1
        self.failed = {
            "file": None if path is None else str(path),
            "error": listed[0].strip(),
            "errors": len(listed),
            "at": rfc3339(self._clock()),
        }
        return self.failed

    def succeeded(self) -> None:
        """A good reload: the refusal (if any) is cleared."""
        self.failed = None
        self.last_success_at = self._clock()

    def warning(self) -> str | None:
        """The /healthz warning line while a refused reload stands."""
        failed = self.failed
        if failed is None:
            return None
        where = failed["file"] or "the environment"
        return (
            f"the last reload of {where} was refused ({failed['error']}); the running "
            "configuration is the one before it"
        )

    def as_json(self) -> schemas.ConfigReload:
        return {
            "failed": self.failed,
            "failures_total": self.failures_total,
            "last_success_at": rfc3339(self.last_success_at),
        }
