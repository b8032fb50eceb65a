"""`rusty-rail selfcheck`: does this installation work? (the checks: rusty_rail.selfcheck)"""

from __future__ import annotations

import argparse

from rusty_rail.cli import EXIT_FAILURE, EXIT_OK, Subparsers, add_json_option, print_json


def add_parser(commands: Subparsers) -> None:
    selfcheck = commands.add_parser(
        "selfcheck",
        help="check this installation: Maglev table, flow hash, reference packet path, BPF objects",
        description="Builds a Maglev table, forwards a sample GRE packet through the reference "
        "pipeline and checks that the compiled BPF objects are present.",
        epilog="Example: rusty-rail selfcheck --json",
    )
    add_json_option(selfcheck)
    selfcheck.set_defaults(handler=cmd_selfcheck)


def cmd_selfcheck(args: argparse.Namespace) -> int:
    from rusty_rail.selfcheck import run_selfcheck

    report = run_selfcheck()
    if args.json:
        print_json(report.as_dict())
    else:
        print(report.render())
    return EXIT_OK if report.ok else EXIT_FAILURE
