"""Logging for the long-running commands: one format, and repeated lines held back, so that a
flood (a client opening connections in a loop, a neighbour that never answers) cannot fill
the disk with the same message."""

from __future__ import annotations

import logging
import time
from typing import Final

#: The same warning or error (logger, level, text) at most once per this many seconds.
REPEAT_SECONDS: Final = 10.0


class RepeatFilter(logging.Filter):
    """Lets a warning or error through at most once per ``seconds``; the next one that
    passes says how many were held back. Lower levels always pass."""

    def __init__(self, seconds: float = REPEAT_SECONDS) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # what the daemon did (a reload, a change) is never held back
        text = record.getMessage()
        key = (record.name, record.levelno, text)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.seconds:
            self._last[key] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        if held:
            record.msg = f"{text} (and {held} times more in the last {self.seconds:g} s)"
            record.args = None
        self._last[key] = (now, 0)
        if len(self._last) > 4096:
            self._last.clear()
        return True


def configure(verbose: bool) -> None:
    """The root logger for a daemon: INFO (DEBUG when ``verbose``), repeats held back."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter())
