"""`rusty-rail bench maglev|dataplane|control|health|e2e|cluster|soak|curves`: numbers, each
next to a same-run baseline or a budget."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rusty_rail.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Handler,
    Subparsers,
    add_json_option,
    needs_root,
    print_result,
    require_root,
)
from rusty_rail.config.enums import Encap, Ingress


def add_parser(commands: Subparsers) -> None:
    bench = commands.add_parser(
        "bench",
        help="benchmarks (numbers, not tests): every timing is shown next to a same-run baseline",
        description="Benchmarks. Every timing is printed next to a baseline measured in the "
        "same run, as a ratio, because machines are noisy.",
        epilog="Example: rusty-rail bench maglev --json",
    )
    benches = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)

    def add_bench(
        name: str, help: str, description: str, handler: Handler, root: str | None = None
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = benches.add_parser(
            name,
            help=help,
            description=description,
            epilog=f"Example: rusty-rail bench {name} --json",
        )
        add_json_option(parser)
        parser.set_defaults(handler=handler)
        if root is not None:
            needs_root(parser, root)
        return parser

    add_bench(
        "maglev",
        "Maglev table build time, balance and disruption",
        "Build time (best of 5) for N = 10, 100, 1000 backends at M = 65537 and "
        "N = 1000 at M = 655373, with balance (max/min slots) and the share of slots moved when "
        "one backend is removed.",
        cmd_bench_maglev,
    )
    dataplane = add_bench(
        "dataplane",
        "ns per packet of the XDP balancer vs a floor program (BPF_PROG_TEST_RUN)",
        "Nanoseconds per packet, measured in the kernel with BPF_PROG_TEST_RUN "
        "(one packet per call), for an established flow, a new flow every packet and a "
        "non-GRE packet that passes; each as a ratio to a floor program (return XDP_TX) "
        "measured in the same run. Also the map memory per VIP table and per tracked flow.",
        cmd_bench_dataplane,
        root="it runs BPF programs in the kernel (BPF_PROG_TEST_RUN)",
    )
    dataplane.add_argument(
        "--calls", type=int, default=200_000, help="calls per case (default 200000)"
    )
    dataplane.add_argument(
        "--ingress",
        choices=[ingress.value for ingress in Ingress],
        default=Ingress.GRE.value,
        help="how the packets arrive: GRE to the node, or routed plain packets (default gre)",
    )
    dataplane.add_argument(
        "--egress",
        choices=[encap.value for encap in Encap],
        default=Encap.GRE.value,
        help="how they leave for the backends (docs/packet-path.md 8b; default gre)",
    )
    control = add_bench(
        "control",
        "API call to live table, and the rebuild after a restart (needs root)",
        "Runs the daemon on a veth pair in a private network namespace and times, "
        "through its REST API, adding and removing one backend of a VIP with 1000 backends "
        "(M = 65537) until the new table is live: p50 and p99 over 50 changes. Then the "
        "rebuild and apply of every table at a restart with 64 VIPs x 100 backends. Each "
        "timing is printed next to a same-run baseline: a no-op API write, and the bare "
        "Maglev builds.",
        cmd_bench_control,
        root="it runs the daemon in a network namespace of its own",
    )
    control.add_argument("--changes", type=int, default=50, help="changes to time (default 50)")
    control.add_argument(
        "--backends", type=int, default=1000, help="backends of the VIP (default 1000)"
    )
    health = add_bench(
        "health",
        "time for a dead backend to leave every balancer's table (needs root)",
        "Builds a test bed (2 clients, 2 balancers, 3 servers) with HTTP checks "
        "and real traffic, then times (a) a server that stops taking GRE and answers "
        "protocol-unreachable, learnt from ICMP (budget 1 s), and (b) a server whose HTTP "
        "service stops, found by the checks (budget interval x (fall + 1)), until the "
        "backend is out of every balancer's table; then how long each takes to come back, "
        "and whether any connection to a healthy backend broke (budget 0). Exits 1 when a "
        "budget is missed.",
        cmd_bench_health,
        root="it builds a test bed of network namespaces",
    )
    health.add_argument(
        "--interval", type=float, default=0.5, help="check interval in seconds (default 0.5)"
    )
    health.add_argument("--fall", type=int, default=3, help="failures to go down (default 3)")
    health.add_argument("--rise", type=int, default=2, help="successes to come back (default 2)")
    e2e = add_bench(
        "e2e",
        "Mpps end to end through the balancer vs a floor forwarder (live frames, needs root)",
        "A generator (XDP in live-frames mode) sends GRE frames into the balancer's veth, "
        "attached natively and fed by the daemon; a sink behind a second veth counts and "
        "drops them. Cases one_flow, established_100k, established_1m and new_flow (a new "
        "flow per packet), on 1 CPU and on 2 (_2cpu), each as Mpps and as a ratio to a floor "
        "forwarder (parse, rewrite the destination and MACs, redirect) measured in the same "
        "run, with drops by reason. Budgets: established_100k >= 0.85, new_flow >= 0.40. "
        "Exits 1 when a budget is missed. docs/benchmarks.md.",
        cmd_bench_e2e,
        root="it builds network namespaces and runs BPF programs",
    )
    e2e.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: one round of 20000 frames per CPU per case (seconds, not minutes)",
    )
    e2e.add_argument(
        "--frames",
        type=_at_least_one,
        default=None,
        help="frames per CPU of each timed run (default 2000000)",
    )
    e2e.add_argument(
        "--rounds",
        type=_at_least_one,
        default=None,
        help="timed runs of each chain per case (default 3)",
    )

    cluster = add_bench(
        "cluster",
        "a cluster of 3 balancers: a change to all nodes, a dead balancer's withdrawal, etcd down",
        "Brings up a --cluster test bed of three balancers (etcd, BGP to the router) and "
        "measures: changes through one node's API, each timed until every node has applied it "
        "(p50/p99; budget p99 <= 250 ms); etcd frozen under traffic (packets lost, writes "
        "refused with 503, the time until all nodes converge after it returns); a balancer "
        "daemon killed with SIGKILL (the time until the router's FIB has lost it; budget "
        "<= 3 s) and the share of established connections kept. Exits 1 when a budget is "
        "missed or a connection, packet or refusal went wrong. docs/benchmarks.md.",
        cmd_bench_cluster,
        root="it builds network namespaces and runs balancers, etcd and BIRD in them",
    )
    cluster.add_argument(
        "--changes", type=_at_least_one, default=50, help="changes timed (default 50)"
    )
    cluster.add_argument(
        "--outage-seconds",
        type=float,
        default=10.0,
        help="how long etcd is frozen (SIGSTOP) under traffic (default 10, at least 5)",
    )
    cluster.add_argument(
        "--ingress",
        choices=["gre", "routed"],
        default="gre",
        help="the router's ingress to the balancers (default gre)",
    )

    curves = add_bench(
        "curves",
        "scaling curves: packet cost vs flows, table, backends, VIPs; Maglev; API (--plot)",
        "One scaling curve as a table (or JSON), each point next to a same-run baseline: "
        "flows (ns per packet vs established flows, packets drawn from them), table (vs "
        "connection-table size), backends (vs backends per VIP), vips (vs VIPs): the balancer "
        "under BPF_PROG_TEST_RUN beside the floor program; maglev (build time vs N, then M, "
        "beside np.sort of M uint32); api (change to live table vs backends, beside a no-op "
        "write and a bare build). All but maglev need root. docs/benchmarks.md.",
        cmd_bench_curves,
    )
    curves.add_argument(
        "--curve",
        required=True,
        choices=["flows", "table", "backends", "vips", "maglev", "api"],
        help="which curve",
    )
    curves.add_argument(
        "--points",
        type=_points,
        default=None,
        metavar="POINTS",
        help="the x values, comma-separated, e.g. 1,1000,100000 (default: the curve's own, "
        "docs/benchmarks.md)",
    )
    curves.add_argument(
        "--table-sizes",
        type=_points,
        default=None,
        metavar="PRIMES",
        help="maglev only: the primes M of the sweep over M (default 257,4099,65537,655373,"
        "4194301)",
    )
    curves.add_argument(
        "--passes",
        type=_at_least_one,
        default=None,
        help="packet curves: sweeps of every point, each point's best kept (default 3; "
        "flows 1; --quick 1)",
    )
    curves.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: two small points, a few hundred calls each (seconds)",
    )
    curves.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE",
        help="also draw the curve into FILE (PNG)",
    )

    soak = add_bench(
        "soak",
        "everything at once for N minutes: leaks, losses, counters (needs root)",
        "Builds a test bed (2 clients, 2 balancers, 4 servers) and runs, together for N "
        "minutes: long-lived TCP connections and a steady rate of short HTTP requests, API "
        "churn of a spare backend (added, weighted, drained, removed, a write every 0.3 s on "
        "each balancer), health flaps of one server and bursts of forged ICMP unreachables. "
        "Reports each balancer daemon's RSS and open fds over time, its connection table, "
        "whether its packet counters balance the frames it received, the API latency (p50, "
        "p99) and every error. Budget: RSS growth <= 5% after the warm-up (the first minute), "
        "no fd growth, no broken connection to a surviving backend, no 5xx, counters "
        "balanced. Exits 1 when a budget is missed.",
        cmd_bench_soak,
        root="it builds a test bed of network namespaces",
    )
    soak.add_argument(
        "--minutes",
        type=_minutes,
        default=10.0,
        help="how long, fractions allowed (default 10; e.g. 0.5 for a quick run)",
    )


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _points(text: str) -> list[int]:
    points = []
    for part in text.split(","):
        try:
            points.append(int(part.strip().replace("_", "")))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {part.strip()!s}") from None
    return points


def _minutes(text: str) -> float:
    from rusty_rail.bench.soak import check_minutes

    try:
        return check_minutes(float(text))
    except ValueError as error:
        message = str(error) if "--minutes" in str(error) else f"not a number of minutes: {text}"
        raise argparse.ArgumentTypeError(message.removeprefix("--minutes ")) from None


def cmd_bench_maglev(args: argparse.Namespace) -> int:
    from rusty_rail.bench.maglev import render_maglev_bench, run_maglev_bench

    result = run_maglev_bench()
    print_result(result, args.json, render_maglev_bench)
    return EXIT_OK


def cmd_bench_dataplane(args: argparse.Namespace) -> int:
    from rusty_rail.bench.dataplane import render_dataplane_bench, run_dataplane_bench

    result = run_dataplane_bench(
        calls=args.calls, ingress=Ingress(args.ingress), egress=Encap(args.egress)
    )
    print_result(result, args.json, render_dataplane_bench)
    return EXIT_OK


def cmd_bench_control(args: argparse.Namespace) -> int:
    from rusty_rail.bench.control import render_control_bench, run_control_bench

    result = run_control_bench(changes=args.changes, backends=args.backends)
    print_result(result, args.json, render_control_bench)
    return EXIT_OK


def cmd_bench_health(args: argparse.Namespace) -> int:
    from rusty_rail.bench.health import HealthBedSettings, render_health_bench, run_health_bench

    settings = HealthBedSettings(interval=args.interval, fall=args.fall, rise=args.rise)
    result = run_health_bench(settings)
    print_result(result, args.json, render_health_bench)
    return EXIT_OK if result["budgets_met"] else EXIT_FAILURE


def cmd_bench_e2e(args: argparse.Namespace) -> int:
    from rusty_rail.bench import e2e

    frames = e2e.QUICK_FRAMES_PER_CPU if args.quick else e2e.FRAMES_PER_CPU
    rounds = e2e.QUICK_ROUNDS if args.quick else e2e.ROUNDS
    result = e2e.run_e2e_bench(
        frames_per_cpu=args.frames if args.frames is not None else frames,
        rounds=args.rounds if args.rounds is not None else rounds,
    )
    print_result(result, args.json, e2e.render_e2e_bench)
    return EXIT_OK if result["budgets_met"] else EXIT_FAILURE


def cmd_bench_cluster(args: argparse.Namespace) -> int:
    from rusty_rail.bench.cluster import render_cluster_bench, run_cluster_bench
    from rusty_rail.testbed.cluster_measure import MIN_OUTAGE_S

    if not args.outage_seconds >= MIN_OUTAGE_S:
        print(
            f"rusty-rail bench cluster: --outage-seconds {args.outage_seconds:g}: give at "
            f"least {MIN_OUTAGE_S:g} s (every node must notice the outage)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    result = run_cluster_bench(
        changes=args.changes, outage=args.outage_seconds, ingress=args.ingress
    )
    print_result(result, args.json, render_cluster_bench)
    return EXIT_OK if result["budgets_met"] and not result["problems"] else EXIT_FAILURE


def cmd_bench_curves(args: argparse.Namespace) -> int:
    from rusty_rail.bench.curves import (
        CURVES,
        check_points,
        check_table_sizes,
        render_curve,
        run_curve,
    )
    from rusty_rail.bench.curves_plot import INSTALL_HINT, write_plot

    curve = CURVES[args.curve]
    try:
        if args.points is not None:
            check_points(curve, args.points)
        if args.passes is not None and args.curve in ("maglev", "api"):
            raise ValueError(f"--passes: only the packet curves take it, not {args.curve}")
        if args.table_sizes is not None and args.curve != "maglev":
            raise ValueError(f"--table-sizes: only the maglev curve takes it, not {args.curve}")
        if args.table_sizes is not None:
            check_table_sizes(args.table_sizes)
        if args.plot is not None and not args.plot.absolute().parent.is_dir():
            raise ValueError(f"--plot: no directory {args.plot.absolute().parent} for {args.plot}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"error: --plot needs matplotlib: {INSTALL_HINT}", file=sys.stderr)
            return EXIT_USAGE
    if curve.needs_root:
        require_root(f"bench curves --curve {args.curve} loads BPF programs")
    result = run_curve(
        args.curve,
        args.points,
        quick=args.quick,
        table_sizes=args.table_sizes,
        passes=args.passes,
    )
    print_result(result, args.json, render_curve)
    if args.plot is not None:
        write_plot(result, args.plot)
    return EXIT_OK


def cmd_bench_soak(args: argparse.Namespace) -> int:
    from rusty_rail.bench.soak import SoakSettings, render_soak_bench, run_soak_bench

    result = run_soak_bench(SoakSettings(minutes=args.minutes))
    print_result(result, args.json, render_soak_bench)
    return EXIT_OK if result["ok"] else EXIT_FAILURE
