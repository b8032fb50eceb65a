"""Log lines of the daemon: a flood of one line is held back and counted."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from rusty_rail.logsetup import JsonFormatter, RepeatFilter, configure


def test_repeated_log_lines_are_held_back_and_counted() -> None:
    repeat = RepeatFilter(seconds=60)

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("rusty_rail.api", logging.ERROR, __file__, 1, text, None, None)

    passed = [r for r in (record("accept failed") for _ in range(1000)) if repeat.filter(r)]
    assert len(passed) == 1
    assert repeat.filter(record("another line"))
    repeat.seconds = 0
    last = record("accept failed")
    assert repeat.filter(last) and "999 times more" in last.getMessage()


def test_what_the_daemon_did_is_never_held_back() -> None:
    repeat = RepeatFilter(seconds=60)
    line = logging.LogRecord("rusty_rail.daemon", logging.INFO, __file__, 1, "reloaded", None, None)
    assert all(repeat.filter(line) for _ in range(3))


def test_json_lines_carry_time_level_logger_message_and_a_health_event() -> None:
    formatter = JsonFormatter()
    line = logging.LogRecord(
        "rusty_rail.events", logging.WARNING, __file__, 1, "event %s", ("x",), None
    )
    line.created = 1795799179.25
    line.__dict__["event"] = {"id": 3, "kind": "health", "to": "unhealthy"}
    parsed = json.loads(formatter.format(line))
    assert list(parsed) == ["time", "level", "logger", "message", "event"]
    assert parsed["time"] == "2026-11-27T17:06:19.250+00:00"
    assert parsed["level"] == "warning" and parsed["logger"] == "rusty_rail.events"
    assert parsed["message"] == "event x" and parsed["event"]["to"] == "unhealthy"
    try:
        raise OSError("boom")
    except OSError:
        failed = logging.LogRecord(
            "rusty_rail.api", logging.ERROR, __file__, 1, "accept failed", None, sys.exc_info()
        )
    text = formatter.format(failed)
    assert "\n" not in text  # one line, the traceback inside the JSON string
    assert "OSError: boom" in json.loads(text)["exception"]


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format must be one of text, json, got 'xml'"):
        configure(False, "xml")
