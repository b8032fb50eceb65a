"""Logging for the long-running commands: one format, and repeated lines held back, so that a
flood (a client opening connections in a loop, a neighbour that never answers) cannot fill
the disk with the same message."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
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


#: The values of ``--log-format``.
LOG_FORMATS: Final = ("text", "json")
#: Structured fields a log call may attach with ``extra=`` that the JSON format carries.
STRUCTURED_FIELDS: Final = ("event",)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for journald and log shippers: ``time`` (RFC 3339, UTC,
    milliseconds), ``level`` (lower case), ``logger``, ``message``, ``exception`` when there
    is one, and the structured fields of STRUCTURED_FIELDS when a line has them (a health
    event's fields under ``event``). Keys are always in this order."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        for name in STRUCTURED_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        return json.dumps(line, default=str)


def configure(verbose: bool, log_format: str = "text") -> None:
    """The root logger for a daemon on stderr: INFO (DEBUG when ``verbose``), repeats held
    back, as text lines or JSON lines (``log_format``, one of LOG_FORMATS)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
