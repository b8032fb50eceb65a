"""`rusty-rail completion bash|zsh`: the shell completion script for every command, option
and sub-command (generated from the parser by shtab, so it cannot fall behind)."""

from __future__ import annotations

import argparse
import sys

from rusty_rail.cli import EXIT_OK, Subparsers

SHELLS = ("bash", "zsh")


def add_parser(commands: Subparsers) -> None:
    completion = commands.add_parser(
        "completion",
        help="print the shell completion script (bash or zsh)",
        description="Prints a completion script for the shell. bash: "
        "`rusty-rail completion bash > /etc/bash_completion.d/rusty-rail`; zsh: "
        '`rusty-rail completion zsh > "${fpath[1]}/_rusty-rail"`.',
        epilog="Example: source <(rusty-rail completion bash)",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell: bash or zsh")
    completion.set_defaults(handler=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from rusty_rail.cli import build_parser

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK
