"""The `rusty-rail` command: turns arguments into calls on the library, nothing more.

Every sub-command is a function the tests can call; the work happens in the modules it names.
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
API_TOKEN_VARIABLE = "RUSTY_RAIL_API_TOKEN"
API_URL_VARIABLE = "RUSTY_RAIL_API"


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


def cmd_bench_dataplane(args: argparse.Namespace) -> int:
    from rusty_rail.bench.dataplane import render_dataplane_bench, run_dataplane_bench

    result = run_dataplane_bench(calls=args.calls)
    if args.json:
        _print_json(result)
    else:
        print(render_dataplane_bench(result))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from rusty_rail.testbed.demo import render_demo, run_demo
    from rusty_rail.testbed.topology import TestbedSpec

    spec = TestbedSpec(args.clients, args.lbs, args.servers, args.xdp_mode)
    summary = run_demo(spec, requests=args.requests, long_lived=args.long_lived)
    if args.json:
        _print_json(summary)
    else:
        print(render_demo(summary))
    failed = (
        summary["errors"]
        or summary["lb_failover_connections_survived"] < 1.0
        or summary["backend_removal_survivors_survived"] < 1.0
    )
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_testbed(args: argparse.Namespace) -> int:
    from rusty_rail.testbed.topology import Testbed, TestbedSpec, down_all, running_testbeds

    if args.action == "up":
        spec = TestbedSpec(args.clients, args.lbs, args.servers, args.xdp_mode)
        bed = Testbed.up(spec)
        bed.keep_running()
        _print_json(bed.status())
        print(
            f"test bed {bed.tag} is up. Try:\n"
            f'  ip netns exec {bed.clients[0].name} python3 -c "import urllib.request; '
            f"print(urllib.request.urlopen('http://198.19.0.10/').read())\"\n"
            f"  rusty-rail testbed status\n  rusty-rail testbed down",
            file=sys.stderr,
        )
        return EXIT_OK
    if args.action == "status":
        tags = running_testbeds()
        _print_json([Testbed.load(tag).status() for tag in tags])
        return EXIT_OK
    problems = down_all()
    for problem in problems:
        print(f"rusty-rail testbed down: {problem}", file=sys.stderr)
    return EXIT_FAILURE if problems else EXIT_OK


def cmd_decap(args: argparse.Namespace) -> int:
    from rusty_rail.decap.agent import DecapError, decap_attach, decap_detach, decap_status

    try:
        if args.detach:
            detached = decap_detach(args.device)
            print(f"decap {'detached from' if detached else 'was not attached to'} {args.device}")
            return EXIT_OK
        if args.status:
            _print_json(decap_status(args.device))
            return EXIT_OK
        if not args.allow:
            print("rusty-rail decap: name the balancers' prefixes with --allow", file=sys.stderr)
            return EXIT_USAGE
        status = decap_attach(args.device, args.allow, args.xdp_mode, local=args.local)
    except (DecapError, ValueError) as error:
        print(f"rusty-rail decap: {error}", file=sys.stderr)
        return EXIT_USAGE
    _print_json(status)
    return EXIT_OK


def _api_token(path: Path | None) -> str | None:
    """The API's bearer token: from a file (first line), else RUSTY_RAIL_API_TOKEN."""
    import os

    if path is not None:
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"the token file {path} is empty")
        mode = path.stat().st_mode & 0o777
        if mode & 0o044:
            print(
                f"rusty-rail run: warning: the token file {path} can be read by group or "
                f"others (mode {mode:o}); chmod 600 it",
                file=sys.stderr,
            )
        return token
    return os.environ.get(API_TOKEN_VARIABLE) or None


def cmd_run(args: argparse.Namespace) -> int:
    import os

    from rusty_rail import logsetup
    from rusty_rail.api.server import create_app
    from rusty_rail.config import ConfigError
    from rusty_rail.control import state_file
    from rusty_rail.control.daemon import run
    from rusty_rail.control.errors import StartupError
    from rusty_rail.control.options import ApiOptions, DaemonOptions, parse_api_address
    from rusty_rail.control.plan import PlanError
    from rusty_rail.dataplane.loader import LoaderError

    logsetup.configure(args.verbose)
    environ = dict(os.environ)
    environ.pop(API_TOKEN_VARIABLE, None)
    environ.pop(API_URL_VARIABLE, None)
    if args.xdp_mode is not None:
        environ["RR_XDP_MODE"] = args.xdp_mode
    if args.device is not None:
        environ["RR_DEVICE"] = args.device
    try:
        api = None
        if not args.no_api:
            host, port = parse_api_address(args.api)
            api = ApiOptions(host, port, _api_token(args.api_token_file))
    except (ValueError, OSError) as error:
        print(f"rusty-rail run: --api / --api-token-file: {error}", file=sys.stderr)
        print("rusty-rail run: nothing was attached or changed", file=sys.stderr)
        return EXIT_USAGE
    config_path = args.config or (Path(environ["RR_CONFIG"]) if "RR_CONFIG" in environ else None)
    state_path: Path | None = None
    if not args.no_state_file:
        device = environ.get("RR_DEVICE")
        if args.state_file is not None:
            state_path = args.state_file
        elif config_path is not None or device is not None:
            state_path = state_file.default_path(config_path, device or "")
    options = DaemonOptions(
        config_path=args.config,
        pin_root=args.pin_root,
        detach_on_exit=args.detach_on_exit,
        next_hop_timeout=args.next_hop_timeout,
        api=api,
        state_file=state_path,
        reset_state=args.reset_state,
    )
    try:
        run(environ, options, app_factory=create_app)
    except (ConfigError, StartupError, PlanError, LoaderError) as error:
        print(f"rusty-rail run: {error}", file=sys.stderr)
        print("rusty-rail run: nothing was attached or changed", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_detach(args: argparse.Namespace) -> int:
    from rusty_rail.dataplane.loader import detach_balancer

    if detach_balancer(args.device, args.pin_root):
        print(f"detached the balancer from {args.device} and removed its pins")
        return EXIT_OK
    print(
        f"rusty-rail detach: no balancer is pinned for {args.device} under {args.pin_root}",
        file=sys.stderr,
    )
    return EXIT_FAILURE


def cmd_ctl(args: argparse.Namespace) -> int:
    from rusty_rail.ctl import run as run_ctl

    return run_ctl(args)


def cmd_bench_control(args: argparse.Namespace) -> int:
    from rusty_rail.bench.control import render_control_bench, run_control_bench

    result = run_control_bench(changes=args.changes, backends=args.backends)
    if args.json:
        _print_json(result)
    else:
        print(render_control_bench(result))
    return EXIT_OK


def cmd_bench_health(args: argparse.Namespace) -> int:
    from rusty_rail.bench.health import HealthBedSettings, render_health_bench, run_health_bench

    settings = HealthBedSettings(interval=args.interval, fall=args.fall, rise=args.rise)
    result = run_health_bench(settings)
    if args.json:
        _print_json(result)
    else:
        print(render_health_bench(result))
    return EXIT_OK if result["budgets_met"] else EXIT_FAILURE


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

    from rusty_rail.dataplane.libbpf import PIN_ROOT

    run = commands.add_parser(
        "run",
        help="the balancer daemon: load, attach and feed the XDP program",
        description="Loads the XDP balancer on the device, writes the configured VIPs, backends "
        "and Maglev tables into its maps and attaches it; then serves the REST API "
        "(127.0.0.1:9180 by default, docs/api.md), keeps next hops current and re-reads the "
        "configuration on SIGHUP. Changes made through the API are saved to a state file and "
        "win over the configuration file at the next start (--reset-state goes back to it). "
        "On SIGTERM/SIGINT the data plane keeps running "
        "(pinned under the pin root) unless --detach-on-exit; a later `run` adopts it without "
        "dropping packets. Configuration: --config FILE (or RR_CONFIG), or the environment: "
        "RR_DEVICE and RR_TARGET_IPS. Exit status 2: bad configuration or environment, nothing "
        "attached or changed.",
        epilog='Example: RR_DEVICE=eth0 RR_TARGET_IPS="10.1.0.1;10.1.0.2" rusty-rail run\n'
        "         rusty-rail run --config /etc/rusty-rail.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", type=Path, help="TOML configuration file (docs/configuration.md)")
    run.add_argument("--device", help="the interface (overrides RR_DEVICE and the file)")
    run.add_argument(
        "--xdp-mode",
        choices=["native", "generic"],
        help="native (driver) or generic (skb) XDP; native never falls back to generic",
    )
    run.add_argument(
        "--pin-root", type=Path, default=PIN_ROOT, help=f"bpffs directory for pins ({PIN_ROOT})"
    )
    run.add_argument(
        "--detach-on-exit",
        action="store_true",
        help="detach and unpin on SIGTERM/SIGINT instead of leaving the data plane running",
    )
    run.add_argument(
        "--next-hop-timeout",
        type=float,
        default=3.0,
        help="seconds to wait at start for backends' neighbours to resolve (default 3)",
    )
    run.add_argument(
        "--api",
        default="127.0.0.1:9180",
        metavar="ADDRESS:PORT",
        help="where the REST API listens (default 127.0.0.1:9180; [::1]:9180 for IPv6; port 0 "
        "picks a free one). Beyond loopback, a token is required (docs/api.md)",
    )
    run.add_argument("--no-api", action="store_true", help="serve no REST API")
    run.add_argument(
        "--api-token-file",
        type=Path,
        metavar="FILE",
        help=f"the bearer token API writes need (else ${API_TOKEN_VARIABLE}, if set)",
    )
    run.add_argument(
        "--state-file",
        type=Path,
        metavar="FILE",
        help="where API changes are saved and, at start, read from (default: next to the "
        "configuration file as NAME.state.json, or /var/lib/rusty-rail/DEVICE.state.json)",
    )
    run.add_argument(
        "--no-state-file",
        action="store_true",
        help="do not save API changes (they are lost when the daemon stops)",
    )
    run.add_argument(
        "--reset-state",
        action="store_true",
        help="remove the saved API state and start from the configuration file / environment",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(handler=cmd_run)

    detach = commands.add_parser(
        "detach",
        help="detach the balancer from a device and remove its pinned state",
        description="Detaches the XDP balancer from DEVICE and removes its pins (maps, "
        "connection table, counters).",
        epilog="Example: rusty-rail detach --device eth0",
    )
    detach.add_argument("--device", required=True, help="the interface")
    detach.add_argument(
        "--pin-root", type=Path, default=PIN_ROOT, help=f"bpffs directory for pins ({PIN_ROOT})"
    )
    detach.set_defaults(handler=cmd_detach)

    def add_testbed_size(command: argparse.ArgumentParser) -> None:
        command.add_argument("--clients", type=int, default=2, help="client namespaces (2)")
        command.add_argument("--lbs", type=int, default=2, help="balancers (2)")
        command.add_argument("--servers", type=int, default=3, help="servers (3)")
        command.add_argument(
            "--xdp-mode", choices=["native", "generic"], default="native", help="XDP mode"
        )

    demo = commands.add_parser(
        "demo",
        help="the test bed with live traffic: distribution, DSR, balancer failure, backend removal",
        description="Builds the test bed (clients, a GRE/ECMP router, balancers running "
        "`rusty-rail run`, servers running `rusty-rail decap`) in network namespaces, sends "
        "HTTP requests over new connections and keeps long-lived TCP connections open, takes "
        "a balancer out of the router's ECMP set, removes a backend, reports what survived, "
        "and tears everything down. Exit status 1 if any connection that should survive broke.",
        epilog="Example: rusty-rail demo --json",
    )
    add_testbed_size(demo)
    demo.add_argument("--requests", type=int, default=1500, help="HTTP requests (1500)")
    demo.add_argument("--long-lived", type=int, default=30, help="echo connections (30)")
    demo.add_argument("--json", action="store_true", help="machine-readable summary")
    demo.set_defaults(handler=cmd_demo)

    testbed = commands.add_parser(
        "testbed",
        help="build, show or remove the test bed (network namespaces)",
        description="up: build the test bed and leave it running; status: show what runs; "
        "down: stop and remove every test bed (namespaces, processes, pins).",
        epilog="Example: rusty-rail testbed up --lbs 3 && rusty-rail testbed down",
    )
    testbed.add_argument("action", choices=["up", "down", "status"])
    add_testbed_size(testbed)
    testbed.set_defaults(handler=cmd_testbed)

    decap = commands.add_parser(
        "decap",
        help="server side: unwrap GRE from the balancers with XDP (no GRE module needed)",
        description="Attaches an XDP program to DEVICE that strips the outer IPv4 + GRE "
        "header of packets from the --allow prefixes (the balancers) and hands the inner "
        "packet to the host's stack; everything else passes untouched. docs/decap.md.",
        epilog="Example: rusty-rail decap --device eth0 --allow 198.18.0.0/24\n"
        "         rusty-rail decap --device eth0 --status",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decap.add_argument("--device", required=True, help="the server's interface")
    decap.add_argument("--allow", action="append", default=[], help="balancer prefix (repeatable)")
    decap.add_argument(
        "--local",
        action="append",
        default=None,
        help="outer destinations that are this host (default: the device's IPv4 addresses)",
    )
    decap.add_argument("--xdp-mode", choices=["native", "generic"], default="native")
    decap_action = decap.add_mutually_exclusive_group()
    decap_action.add_argument("--status", action="store_true", help="show counters and prefixes")
    decap_action.add_argument("--detach", action="store_true", help="detach and remove pins")
    decap.set_defaults(handler=cmd_decap)

    ctl = commands.add_parser(
        "ctl",
        help="view and change a running daemon through its REST API (ipvsadm-like)",
        description="A client of `rusty-rail run`'s REST API (docs/operations.md): list VIPs "
        "and backends, add/remove/drain/weigh backends, dry-run a change, explain a flow, "
        "watch rates. Exit status: 0 done, 1 refused by the daemon, 2 usage, 3 no daemon.",
        epilog="Examples:\n"
        "  rusty-rail ctl list\n"
        "  rusty-rail ctl add 198.18.100.1:80/tcp 198.18.2.4 --weight 2\n"
        "  rusty-rail ctl drain 198.18.100.1:80/tcp 198.18.2.1\n"
        "  rusty-rail ctl plan remove 198.18.100.1:80/tcp 198.18.2.1\n"
        "  rusty-rail ctl lookup 198.18.5.5:40000->198.18.100.1:80/tcp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from rusty_rail.ctl import add_arguments as add_ctl_arguments

    add_ctl_arguments(ctl)
    ctl.set_defaults(handler=cmd_ctl)

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
    dataplane = benches.add_parser(
        "dataplane",
        help="ns per packet of the XDP balancer vs a floor program (BPF_PROG_TEST_RUN)",
        description="Nanoseconds per packet, measured in the kernel with BPF_PROG_TEST_RUN "
        "(one packet per call), for an established flow, a new flow every packet and a "
        "non-GRE packet that passes; each as a ratio to a floor program (return XDP_TX) "
        "measured in the same run. Also the map memory per VIP table and per tracked flow.",
        epilog="Example: rusty-rail bench dataplane --json",
    )
    dataplane.add_argument("--json", action="store_true", help="machine-readable output")
    dataplane.add_argument(
        "--calls", type=int, default=200_000, help="calls per case (default 200000)"
    )
    dataplane.set_defaults(handler=cmd_bench_dataplane)
    control = benches.add_parser(
        "control",
        help="API call to live table, and the rebuild after a restart (needs root)",
        description="Runs the daemon on a veth pair in a private network namespace and times, "
        "through its REST API, adding and removing one backend of a VIP with 1000 backends "
        "(M = 65537) until the new table is live: p50 and p99 over 50 changes. Then the "
        "rebuild and apply of every table at a restart with 64 VIPs x 100 backends. Each "
        "timing is printed next to a same-run baseline: a no-op API write, and the bare "
        "Maglev builds.",
        epilog="Example: rusty-rail bench control --json",
    )
    control.add_argument("--json", action="store_true", help="machine-readable output")
    control.add_argument("--changes", type=int, default=50, help="changes to time (default 50)")
    control.add_argument(
        "--backends", type=int, default=1000, help="backends of the VIP (default 1000)"
    )
    control.set_defaults(handler=cmd_bench_control)
    health = benches.add_parser(
        "health",
        help="time for a dead backend to leave every balancer's table (needs root)",
        description="Builds a test bed (2 clients, 2 balancers, 3 servers) with HTTP checks "
        "and real traffic, then times (a) a server that stops taking GRE and answers "
        "protocol-unreachable, learnt from ICMP (budget 1 s), and (b) a server whose HTTP "
        "service stops, found by the checks (budget interval x (fall + 1)), until the "
        "backend is out of every balancer's table; then how long each takes to come back, "
        "and whether any connection to a healthy backend broke (budget 0). Exits 1 when a "
        "budget is missed.",
        epilog="Example: rusty-rail bench health --json",
    )
    health.add_argument("--json", action="store_true", help="machine-readable output")
    health.add_argument(
        "--interval", type=float, default=0.5, help="check interval in seconds (default 0.5)"
    )
    health.add_argument("--fall", type=int, default=3, help="failures to go down (default 3)")
    health.add_argument("--rise", type=int, default=2, help="successes to come back (default 2)")
    health.set_defaults(handler=cmd_bench_health)
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
