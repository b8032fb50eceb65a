"""`rusty-rail testbed` (build, show or remove the test bed) and `rusty-rail demo` (the test bed
with live traffic)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from rusty_rail.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Subparsers,
    add_json_option,
    needs_root,
    print_json,
    print_result,
)

if TYPE_CHECKING:
    from rusty_rail.testbed.topology import TestbedSpec


def _add_size_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--clients", type=int, default=2, help="client namespaces (2)")
    command.add_argument("--lbs", type=int, help="balancers (2; 3 with --cluster)")
    command.add_argument("--servers", type=int, default=3, help="servers (3)")
    command.add_argument(
        "--xdp-mode", choices=["native", "generic"], default="native", help="XDP mode"
    )
    command.add_argument(
        "--underlay",
        choices=["ipv4", "ipv6"],
        default="ipv4",
        help="the outer family from the router to the balancers: GRE over IPv4 (default) or "
        "over IPv6 (2001:2:0:3::/64 on the balancer segment)",
    )
    command.add_argument(
        "--backends",
        choices=["ipv4", "mixed"],
        default="ipv4",
        help="the servers as backends: all by IPv4 (default), or mixed: s2, s4, ... by their "
        "IPv6 address, behind both VIPs",
    )
    command.add_argument(
        "--ingress",
        choices=["gre", "routed"],
        default="gre",
        help="how the router hands VIP traffic to the balancers: gre (default), the XDP router "
        "wraps it in GRE; routed, plain kernel routing with ECMP over the balancers as next "
        'hops (the balancers run with ingress = ["routed"])',
    )
    command.add_argument(
        "--egress",
        choices=["gre", "ipip", "vxlan", "geneve", "route"],
        default="gre",
        help="the VIPs' encap, how the balancers reach the servers: gre (default), ipip, "
        "vxlan, geneve (rusty-rail decap on the servers; vxlan: a kernel VXLAN device, see "
        "--vxlan-server) or route (direct routing: the VIP on lo, nothing else)",
    )
    command.add_argument(
        "--vxlan-server",
        choices=["kernel", "decap"],
        default="kernel",
        help="with --egress vxlan, what unwraps it on the servers: the kernel's VXLAN device "
        "(default) or rusty-rail decap --methods vxlan",
    )


def _add_cluster_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--cluster",
        action="store_true",
        help="a cluster (docs/cluster.md): an etcd server in its own namespace holds the "
        "balancers' one desired state (each runs with --store and --node-name lbN), BIRD 2 on "
        "the router learns the VIPs from the balancers by BGP (each daemon announces them "
        "itself) and installs ECMP routes; the router's balancer set is those routes (gre: the "
        "XDP router asks the kernel's FIB per flow; routed: the kernel routes by them)",
    )


def _spec(args: argparse.Namespace) -> TestbedSpec | None:
    """The spec of the options, or None after saying why they do not go together."""
    from rusty_rail.testbed.topology import TestbedSpec

    try:
        return _checked_spec(args, TestbedSpec)
    except ValueError as error:
        print(f"rusty-rail {args.command}: {error}", file=sys.stderr)
        return None


def _checked_spec(args: argparse.Namespace, make: type[TestbedSpec]) -> TestbedSpec:
    cluster = getattr(args, "cluster", False)
    return make(
        args.clients,
        args.lbs if args.lbs is not None else 3 if cluster else 2,
        args.servers,
        args.xdp_mode,
        args.underlay,
        args.backends,
        args.ingress,
        args.egress,
        args.vxlan_server,
        cluster,
    )


def add_parser(commands: Subparsers) -> None:
    """`demo` and `testbed`."""
    demo = commands.add_parser(
        "demo",
        help="the test bed with live traffic: distribution, DSR, balancer failure, backend removal",
        description="Builds the test bed (clients, a router: XDP GRE/ECMP or kernel ECMP "
        "routes, balancers running `rusty-rail run`, servers taking the egress method: "
        "`rusty-rail decap`, kernel VXLAN or the VIP alone) in network namespaces, sends "
        "HTTP requests over new connections and keeps long-lived TCP connections open, takes "
        "a balancer out of the router's ECMP set, removes a backend, reports what survived, "
        "and tears everything down. Exit status 1 if any connection that should survive broke.",
        epilog="Example: rusty-rail demo --json; rusty-rail demo --underlay ipv6; "
        "rusty-rail demo --json --ingress routed --egress ipip; rusty-rail demo --cluster",
    )
    _add_size_options(demo)
    _add_cluster_option(demo)
    demo.add_argument(
        "--changes",
        type=int,
        help="--cluster: changes through lb1's API, each timed until every node has it (50)",
    )
    demo.add_argument(
        "--outage-seconds",
        type=float,
        help="--cluster: how long etcd is frozen (SIGSTOP) under traffic (10; at least 5)",
    )
    demo.add_argument("--requests", type=int, default=1500, help="HTTP requests to each VIP (1500)")
    demo.add_argument(
        "--long-lived", type=int, default=30, help="echo connections to each VIP (30)"
    )
    add_json_option(demo, help="machine-readable summary")
    demo.set_defaults(handler=cmd_demo)
    needs_root(demo, "it builds network namespaces and runs balancers in them")

    testbed = commands.add_parser(
        "testbed",
        help="build, show or remove the test bed (network namespaces)",
        description="up: build the test bed and leave it running; status: show what runs; "
        "down: stop and remove every test bed (namespaces, processes, pins); ctl LB ARGS: "
        "run `rusty-rail ctl ARGS` against balancer LB's API (inside its namespace).",
        epilog="Example: rusty-rail testbed up && rusty-rail testbed ctl lb1 vip list && "
        "rusty-rail testbed down",
    )
    actions = testbed.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser(
        "up",
        help="build the test bed and leave it running",
        description="Builds the test bed and leaves it running; prints its status as JSON.",
        epilog="Example: rusty-rail testbed up --lbs 3 --underlay ipv6; "
        "rusty-rail testbed up --cluster --lbs 3 --ingress routed",
    )
    _add_size_options(up)
    _add_cluster_option(up)
    actions.add_parser(
        "status",
        help="show every running test bed",
        description="Every running test bed's status as JSON.",
        epilog="Example: rusty-rail testbed status",
    )
    down = actions.add_parser(
        "down",
        help="stop and remove every test bed (or one: --tag)",
        description="Stops and removes every test bed (namespaces, processes, pins), or only "
        "the one --tag names.",
        epilog="Example: rusty-rail testbed down --tag 3c11b004",
    )
    ctl = actions.add_parser(
        "ctl",
        help="`rusty-rail ctl` against one balancer of the test bed",
        description="Runs `rusty-rail ctl ARGS` inside balancer LB's network namespace, "
        "where its API listens.",
        epilog="Example: rusty-rail testbed ctl lb1 vip list",
    )
    for parser in (down, ctl):
        parser.add_argument(
            "--tag",
            metavar="TAG",
            help="the test bed (its tag, as `up` and `status` show it); other runs' beds are "
            "left alone (ctl: needed only when several run)",
        )
    ctl.add_argument("lb", metavar="LB", help="the balancer: lb1, lb2, ...")
    ctl.add_argument("ctl_args", nargs=argparse.REMAINDER, metavar="ARGS", help="the ctl arguments")
    testbed.set_defaults(handler=cmd_testbed)
    needs_root(testbed, "it builds, reads and removes network namespaces and BPF pins")


def cmd_demo(args: argparse.Namespace) -> int:
    from rusty_rail.testbed.demo import demo_failed, render_demo, run_demo

    spec = _spec(args)
    if spec is None:
        return EXIT_USAGE
    if not spec.cluster and (args.changes, args.outage_seconds) != (None, None):
        print("rusty-rail demo: --changes and --outage-seconds need --cluster", file=sys.stderr)
        return EXIT_USAGE
    from rusty_rail.testbed.cluster_measure import MIN_OUTAGE_S

    changes = 50 if args.changes is None else args.changes
    outage = 10.0 if args.outage_seconds is None else args.outage_seconds
    if changes < 1 or not outage >= MIN_OUTAGE_S:
        print(
            f"rusty-rail demo: --changes {changes}, --outage-seconds "
            f"{outage:g}: give at least 1 change and an outage of at least "
            f"{MIN_OUTAGE_S:g} s (every node must notice it)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    summary = run_demo(
        spec,
        requests=args.requests,
        long_lived=args.long_lived,
        changes=changes,
        outage=outage,
    )
    print_result(summary, args.json, render_demo)
    return EXIT_FAILURE if demo_failed(summary) else EXIT_OK


def cmd_testbed(args: argparse.Namespace) -> int:
    from rusty_rail.testbed.topology import VIP, VIP6, Testbed, down_all, running_testbeds

    if args.action == "up":
        spec = _spec(args)
        if spec is None:
            return EXIT_USAGE
        bed = Testbed.up(spec)
        bed.keep_running()
        print_json(bed.status())
        client = bed.clients[0].name
        fetch = [
            f'  ip netns exec {client} python3 -c "import urllib.request; '
            f"print(urllib.request.urlopen('http://{host}/').read())\""
            for host in (VIP, f"[{VIP6}]")
        ]
        print(
            f"test bed {bed.tag} is up. Try (IPv4 and IPv6 VIP):\n"
            + "\n".join(fetch)
            + "\n"
            + "\n".join(
                f"  rusty-rail testbed ctl lb{i + 1} vip list    # ctl against balancer lb{i + 1}"
                for i in range(len(bed.lbs))
            )
            + "\n  rusty-rail testbed status\n  rusty-rail testbed down",
            file=sys.stderr,
        )
        return EXIT_OK
    if args.action == "ctl":
        return _ctl_in_testbed(args.tag, [args.lb, *args.ctl_args])
    if args.action == "status":
        tags = running_testbeds()
        print_json([Testbed.load(tag).status() for tag in tags])
        return EXIT_OK
    if args.tag is not None:
        if args.tag not in running_testbeds():
            known = ", ".join(running_testbeds()) or "none runs"
            print(f"rusty-rail testbed down: error: no test bed {args.tag} ({known})",
                  file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        problems = Testbed.load(args.tag).down()
    else:
        problems = down_all()
    for problem in problems:
        print(f"rusty-rail testbed down: {problem}", file=sys.stderr)
    return EXIT_FAILURE if problems else EXIT_OK


def _ctl_in_testbed(tag: str | None, arguments: list[str]) -> int:
    """`rusty-rail ctl ARGS` in balancer LB's network namespace, where its API listens."""
    from rusty_rail.cli import main
    from rusty_rail.dataplane.netlink import in_netns
    from rusty_rail.testbed.topology import Testbed, running_testbeds

    tags = [tag] if tag is not None else running_testbeds()
    if len(tags) != 1:
        which = "none runs" if not tags else f"several run ({', '.join(tags)}): give --tag"
        print(f"rusty-rail testbed ctl: error: no single test bed: {which}", file=sys.stderr)
        return EXIT_USAGE
    bed = Testbed.load(tags[0])
    names = [f"lb{i + 1}" for i in range(len(bed.lbs))]
    if not arguments or arguments[0] not in names:
        print(f"rusty-rail testbed ctl: error: name a balancer ({', '.join(names)}) and then "
              "the ctl arguments, e.g. lb1 vip list", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    with in_netns(bed.lbs[names.index(arguments[0])].name):
        return main(["ctl", *arguments[1:]])
