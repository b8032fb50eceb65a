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
    command.add_argument("--lbs", type=int, default=2, help="balancers (2)")
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


def _spec(args: argparse.Namespace) -> TestbedSpec | None:
    """The spec of the options, or None after saying why they do not go together."""
    from rusty_rail.testbed.topology import TestbedSpec

    try:
        return _checked_spec(args, TestbedSpec)
    except ValueError as error:
        print(f"rusty-rail {args.command}: {error}", file=sys.stderr)
        return None


def _checked_spec(args: argparse.Namespace, make: type[TestbedSpec]) -> TestbedSpec:
    return make(
        args.clients,
        args.lbs,
        args.servers,
        args.xdp_mode,
        args.underlay,
        args.backends,
        args.ingress,
        args.egress,
        args.vxlan_server,
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
        "rusty-rail demo --json --ingress routed --egress ipip",
    )
    _add_size_options(demo)
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
        "down: stop and remove every test bed (namespaces, processes, pins).",
        epilog="Example: rusty-rail testbed up --lbs 3 --underlay ipv6 && rusty-rail testbed down",
    )
    testbed.add_argument(
        "action",
        choices=["up", "down", "status"],
        help="up: build and start it; status: what runs; down: remove every test bed (or the "
        "one --tag names)",
    )
    testbed.add_argument(
        "--tag",
        metavar="TAG",
        help="down: only this test bed (its tag as `up` and `status` show it); other runs' "
        "beds are left alone",
    )
    _add_size_options(testbed)
    testbed.set_defaults(handler=cmd_testbed)
    needs_root(testbed, "it builds, reads and removes network namespaces and BPF pins")


def cmd_demo(args: argparse.Namespace) -> int:
    from rusty_rail.testbed.demo import demo_failed, render_demo, run_demo

    spec = _spec(args)
    if spec is None:
        return EXIT_USAGE
    summary = run_demo(spec, requests=args.requests, long_lived=args.long_lived)
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
            f"test bed {bed.tag} is up. Try (IPv4 and IPv6 VIP):\n" + "\n".join(fetch) + "\n"
            "  rusty-rail testbed status\n  rusty-rail testbed down",
            file=sys.stderr,
        )
        return EXIT_OK
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
