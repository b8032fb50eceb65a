"""The `rusty-rail` command: turns arguments into calls on the library, nothing more.

One module per command (run, decap, testbed, bench, ctl, selfcheck), each with
``add_parser(subparsers)`` and its handlers; ``main`` wires them. Every handler is a function the
tests can call; the work happens in the modules it names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
#: The reader of the output went away (`... | head`): as a shell reports a command that
#: SIGPIPE ended (128 + 13), without a word on stderr.
EXIT_PIPE = 141
#: Set to see the traceback of an unexpected error instead of its one line.
DEBUG_VARIABLE = "RUSTY_RAIL_DEBUG"


class NeedsRoot(Exception):
    """A command run without the privileges it needs: ``why`` says what it does with them."""

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(why)


def require_root(why: str) -> None:
    """Raise NeedsRoot unless this process is root (``main`` prints it as one line)."""
    if os.geteuid() != 0:
        raise NeedsRoot(why)


def needs_root(parser: argparse.ArgumentParser, why: str) -> None:
    """Mark a command as root-only: ``main`` refuses it for other users before it starts."""
    parser.set_defaults(needs_root=why)


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
    from rusty_rail import __version__
    from rusty_rail.cli import bench, check, completion, ctl, decap, run, selfcheck, testbed

    parser = argparse.ArgumentParser(
        prog="rusty-rail",
        description=(
            "rusty-rail: a Maglev-style, line-rate, distributed layer-4 load balancer "
            "(Python control plane, XDP data plane)."
        ),
        epilog="Example: rusty-rail bench maglev --json",
    )
    parser.add_argument(
        "--version", action="version", version=f"rusty-rail {__version__}", help="the version"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run.add_parser(commands)
    testbed.add_parser(commands)
    decap.add_parser(commands)
    ctl.add_parser(commands)
    selfcheck.add_parser(commands)
    bench.add_parser(commands)
    check.add_parser(commands)
    completion.add_parser(commands)
    return parser


def _command(args: argparse.Namespace) -> str:
    words = ["rusty-rail"]
    for name in ("command", "bench", "ctl_command", "action"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            words.append(value)
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. No traceback reaches the user: a missing privilege, a closed pipe and
    an unexpected error are each one line on stderr and a documented exit status
    (docs/operations.md, "Every command: exit status and errors")."""
    parser = build_parser()
    command = "rusty-rail"
    try:
        args = parser.parse_args(argv)  # --help and usage errors write too: inside the try
        handler: Handler = args.handler
        command = _command(args)
        why = getattr(args, "needs_root", None)
        if why is not None:
            require_root(why)
        status = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Nothing more can be written; leave the interpreter's last flush nowhere to fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except NeedsRoot as error:
        print(f"{command}: error: needs root: {error.why}; run it as root", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:
        if os.environ.get(DEBUG_VARIABLE):
            raise
        print(
            f"{command}: error: {type(error).__name__}: {error} (unexpected; "
            f"{DEBUG_VARIABLE}=1 shows where)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
