"""`rusty-rail check --config FILE`: is this configuration file valid? (as `keepalived -t`).
No daemon and no root needed; every problem is one line, ``FILE:LINE:COLUMN: where: value:
why``, as a compiler prints them."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rusty_rail.cli import EXIT_FAILURE, EXIT_OK, Subparsers

if TYPE_CHECKING:
    from rusty_rail.config import ConfigError

#: How a TOML syntax error's position is written (config/sources.py).
_SYNTAX = re.compile(r"line (?P<line>\d+), column (?P<column>\d+)(?: \(end of file\))?")


def add_parser(commands: Subparsers) -> None:
    check = commands.add_parser(
        "check",
        help="check a configuration file without running anything (no root needed)",
        description="Reads and validates a TOML configuration file exactly as `rusty-rail run "
        "--config FILE` would, and prints every problem with its file, line and column. Exit "
        "status 0 when it is valid, 1 when not, 2 for a usage error. The environment's RR_ "
        "variables are not applied: the file is checked as written.",
        epilog="Example: rusty-rail check --config /etc/rusty-rail/eth0.toml",
    )
    check.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the TOML file to check"
    )
    check.set_defaults(handler=cmd_check)


def problem_lines(error: ConfigError, text: str, source: str) -> list[str]:
    """Each problem of a ConfigError in the TOML ``text`` as ``SOURCE:LINE:COLUMN: path:
    value: reason`` (the position of the value, or of the nearest enclosing key written)."""
    from rusty_rail.config.positions import locate, toml_positions

    positions = toml_positions(text)
    lines = []
    for problem in error.problems:
        where = locate(positions, problem.loc)
        prefix = f"{source}:{where[0]}:{where[1]}" if where else source
        lines.append(f"{prefix}: {problem}")
    return lines


def cmd_check(args: argparse.Namespace) -> int:
    from rusty_rail.config import ConfigError, config_from_toml_text

    path: Path = args.config
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        print(f"{path}: cannot read the file: {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    except UnicodeDecodeError as error:
        print(f"{path}: not UTF-8 text (byte {error.start} of the file)", file=sys.stderr)
        return EXIT_FAILURE
    try:
        config = config_from_toml_text(text, str(path))
    except ConfigError as error:
        for problem in error.problems:  # invalid TOML: tomllib gave the position
            found = _SYNTAX.fullmatch(str(problem.loc[0])) if problem.loc else None
            if found is not None:
                print(f"{path}:{found['line']}:{found['column']}: {problem.reason}",
                      file=sys.stderr)  # fmt: skip
                return EXIT_FAILURE
        for line in problem_lines(error, text, str(path)):
            print(line, file=sys.stderr)
        count = len(error.problems)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return EXIT_FAILURE
    backends = sum(len(vip.backends) for vip in config.vips) + len(config.default_backends)
    print(f"{path}: ok: {len(config.vips)} VIPs, {backends} backends")
    return EXIT_OK
