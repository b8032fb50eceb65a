"""Log lines of the daemon: a flood of one line is held back and counted."""

from __future__ import annotations

import logging

from rusty_rail.logsetup import RepeatFilter


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
