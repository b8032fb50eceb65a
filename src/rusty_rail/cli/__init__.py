"""The `rusty-rail` command: turns arguments into calls on the library, nothing more.

One module per command (run, decap, testbed, bench, ctl, selfcheck), each with
``add_parser(subparsers)`` and its handlers; ``main`` wires them. Every handler is a function the
tests can call; the work happens in the modules it names.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse's _SubParsersAction, which it does not export


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_result(value: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """A command's result: its JSON with --json, else rendered for people."""
    if as_json:
        print_json(value)
    else:
        print(render(value))


def add_json_option(parser: argparse.ArgumentParser, help: str = "machine-readable output") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_pin_root_option(parser: argparse.ArgumentParser) -> None:
    from rusty_rail.dataplane.libbpf import PIN_ROOT

    parser.add_argument(
        "--pin-root", type=Path, default=PIN_ROOT, help=f"bpffs directory for pins ({PIN_ROOT})"
    )


def build_parser() -> argparse.ArgumentParser:
    from rusty_rail.cli import bench, ctl, decap, run, selfcheck, testbed

    parser = argparse.ArgumentParser(
        prog="rusty-rail",
        description=(
            "rusty-rail: a Maglev-style, line-rate, distributed layer-4 load balancer "
            "(Python control plane, XDP data plane)."
        ),
        epilog="Example: rusty-rail bench maglev --json",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run.add_parser(commands)
    testbed.add_parser(commands)
    decap.add_parser(commands)
    ctl.add_parser(commands)
    selfcheck.add_parser(commands)
    bench.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
