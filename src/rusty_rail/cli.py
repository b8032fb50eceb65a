"""The `rusty-rail` command: turns arguments into calls on the library, nothing more.

Every sub-command is a function the tests can call; the work happens in the modules it names.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def cmd_bench_maglev(args: argparse.Namespace) -> int:
    from rusty_rail.bench.maglev import render_maglev_bench, run_maglev_bench

    result = run_maglev_bench()
    if args.json:
        _print_json(result)
    else:
        print(render_maglev_bench(result))
    return EXIT_OK


def cmd_selfcheck(args: argparse.Namespace) -> int:
    from rusty_rail.selfcheck import run_selfcheck

    report = run_selfcheck()
    if args.json:
        _print_json(report.as_dict())
    else:
        print(report.render())
    return EXIT_OK if report.ok else EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rusty-rail",
        description=(
            "rusty-rail: a Maglev-style, line-rate, distributed layer-4 load balancer "
            "(Python control plane, XDP data plane)."
        ),
        epilog="Example: rusty-rail bench maglev --json",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    selfcheck = commands.add_parser(
        "selfcheck",
        help="check this installation: Maglev table, flow hash, reference packet path, BPF objects",
        description="Builds a Maglev table, forwards a sample GRE packet through the reference "
        "pipeline and checks that the compiled BPF objects are present.",
        epilog="Example: rusty-rail selfcheck --json",
    )
    selfcheck.add_argument("--json", action="store_true", help="machine-readable output")
    selfcheck.set_defaults(handler=cmd_selfcheck)

    bench = commands.add_parser(
        "bench",
        help="benchmarks (numbers, not tests): every timing is shown next to a same-run baseline",
        description="Benchmarks. Every timing is printed next to a baseline measured in the "
        "same run, as a ratio, because machines are noisy.",
        epilog="Example: rusty-rail bench maglev --json",
    )
    benches = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    maglev = benches.add_parser(
        "maglev",
        help="Maglev table build time, balance and disruption",
        description="Build time (best of 5) for N = 10, 100, 1000 backends at M = 65537 and "
        "N = 1000 at M = 655373, with balance (max/min slots) and the share of slots moved when "
        "one backend is removed.",
        epilog="Example: rusty-rail bench maglev --json",
    )
    maglev.add_argument("--json", action="store_true", help="machine-readable output")
    maglev.set_defaults(handler=cmd_bench_maglev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
