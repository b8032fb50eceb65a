"""Where each value of a configuration file is written: a map from key paths (``("vips", 0,
"backends", 1, "weight")``, as a Problem locates it) to the line and column of the value, for
TOML and JSON text. `rusty-rail check` and `ctl config put` use it to print every problem as
``FILE:LINE:COLUMN: ...``, as a compiler would.

The scanners read only what positions need (keys, tables, arrays, inline tables, strings,
comments); the file is parsed for real by tomllib / json, which alone decides what is valid.
On text they cannot follow they stop, and the positions found so far are kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Final

__all__ = ["Path", "Position", "json_positions", "locate", "toml_positions"]

Path = tuple[str | int, ...]
#: 1-based line and column.
Position = tuple[int, int]

_BARE_KEY: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Stop(Exception):
    """The text goes where the scanner does not follow."""


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0
        self.line_starts = [0]
        for index, char in enumerate(text):
            if char == "\n":
                self.line_starts.append(index + 1)

    def position(self, offset: int | None = None) -> Position:
        offset = self.at if offset is None else offset
        low, high = 0, len(self.line_starts) - 1
        while low < high:  # the last line start at or before offset
            middle = (low + high + 1) // 2
            if self.line_starts[middle] <= offset:
                low = middle
            else:
                high = middle - 1
        return low + 1, offset - self.line_starts[low] + 1

    def peek(self, count: int = 1) -> str:
        return self.text[self.at : self.at + count]

    def blank(self, newlines: bool) -> None:
        """Skip spaces (and newlines and comments when ``newlines``)."""
        while self.at < len(self.text):
            char = self.text[self.at]
            if char in " \t\r" or (newlines and char == "\n"):
                self.at += 1
            elif char == "#":
                end = self.text.find("\n", self.at)
                self.at = len(self.text) if end < 0 else end
            else:
                return

    def string(self) -> str:
        """A basic or literal string, single- or multi-line; returns its raw content."""
        for quote in ('"""', "'''", '"', "'"):
            if self.text.startswith(quote, self.at):
                break
        else:
            raise _Stop
        self.at += len(quote)
        start = self.at
        while self.at < len(self.text):
            if quote[0] == '"' and self.text[self.at] == "\\":
                self.at += 2
                continue
            if self.text.startswith(quote, self.at):
                content = self.text[start : self.at]
                self.at += len(quote)
                return content
            self.at += 1
        raise _Stop


# --- TOML ----------------------------------------------------------------------------------------


def _toml_key(text: _Text) -> list[str]:
    """A (dotted) key: its parts."""
    parts = []
    while True:
        text.blank(newlines=False)
        if text.peek() in ('"', "'"):
            parts.append(text.string())
        else:
            start = text.at
            while text.at < len(text.text) and text.text[text.at] in _BARE_KEY:
                text.at += 1
            if text.at == start:
                raise _Stop
            parts.append(text.text[start : text.at])
        text.blank(newlines=False)
        if text.peek() != ".":
            return parts
        text.at += 1


def _array(
    text: _Text,
    path: Path,
    found: dict[Path, Position],
    value: Callable[[_Text, Path, dict[Path, Position]], None],
) -> None:
    """An array at ``[`` (TOML's and JSON's alike): each element's ``value`` at its index."""
    text.at += 1
    index = 0
    while True:
        text.blank(newlines=True)
        if text.peek() == "]":
            text.at += 1
            return
        value(text, (*path, index), found)
        index += 1
        text.blank(newlines=True)
        if text.peek() == ",":
            text.at += 1


def _toml_value(text: _Text, path: Path, found: dict[Path, Position]) -> None:
    text.blank(newlines=False)
    found[path] = text.position()
    char = text.peek()
    if char in ('"', "'"):
        text.string()
    elif char == "[":
        _array(text, path, found, _toml_value)
    elif char == "{":
        text.at += 1
        while True:
            text.blank(newlines=False)
            if text.peek() == "}":
                text.at += 1
                return
            key = _toml_key(text)
            if text.peek() != "=":
                raise _Stop
            text.at += 1
            _toml_value(text, (*path, *key), found)
            text.blank(newlines=False)
            if text.peek() == ",":
                text.at += 1
    else:
        while text.at < len(text.text) and text.text[text.at] not in ",]}\n#":
            text.at += 1


def toml_positions(source: str) -> dict[Path, Position]:
    """Key path -> where its value (or table header) starts, for TOML ``source``."""
    text = _Text(source)
    found: dict[Path, Position] = {}
    table: Path = ()
    counts: dict[Path, int] = {}  # array-of-tables path -> elements seen
    try:
        while True:
            text.blank(newlines=True)
            if text.at >= len(text.text):
                return found
            if text.peek(2) == "[[":
                where = text.position()
                text.at += 2
                key = tuple(_toml_key(text))
                counts[key] = counts.get(key, -1) + 1
                table = (*key, counts[key])
                found[table] = where
                found.setdefault(key, where)
                text.at += 2  # ]]
            elif text.peek() == "[":
                where = text.position()
                text.at += 1
                table = tuple(_toml_key(text))
                found[table] = where
                text.at += 1  # ]
            else:
                parts = _toml_key(text)
                if text.peek() != "=":
                    raise _Stop
                text.at += 1
                _toml_value(text, (*table, *parts), found)
    except (_Stop, IndexError):
        return found


# --- JSON ----------------------------------------------------------------------------------------


def _json_value(text: _Text, path: Path, found: dict[Path, Position]) -> None:
    text.blank(newlines=True)
    found[path] = text.position()
    char = text.peek()
    if char == '"':
        text.string()
    elif char == "[":
        _array(text, path, found, _json_value)
    elif char == "{":
        text.at += 1
        while True:
            text.blank(newlines=True)
            if text.peek() == "}":
                text.at += 1
                return
            key = text.string()
            text.blank(newlines=True)
            if text.peek() != ":":
                raise _Stop
            text.at += 1
            _json_value(text, (*path, key), found)
            text.blank(newlines=True)
            if text.peek() == ",":
                text.at += 1
    elif char:
        while text.at < len(text.text) and text.text[text.at] not in ",]}\n\t\r ":
            text.at += 1
    else:
        raise _Stop


def json_positions(source: str) -> dict[Path, Position]:
    """Key path -> where its value starts, for JSON ``source`` (no comments: JSON has none;
    the scanner's "#" handling never meets one outside strings in valid JSON)."""
    text = _Text(source)
    found: dict[Path, Position] = {}
    with contextlib.suppress(_Stop, IndexError):
        _json_value(text, (), found)
    return found


def locate(positions: Mapping[Path, Position], loc: Sequence[str | int]) -> Position | None:
    """Where ``loc`` is written, or its nearest written ancestor (a missing key is reported
    where its table is); None when nothing of it is."""
    path = tuple(loc)
    while path:
        if path in positions:
            return positions[path]
        path = path[:-1]
    return None
