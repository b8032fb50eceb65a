"""`rusty-rail decap`: the server side, GRE, IPIP, VXLAN and GENEVE from the balancers unwrapped
with XDP."""

from __future__ import annotations

import argparse
import sys

from rusty_rail.cli import EXIT_OK, EXIT_USAGE, Subparsers, needs_root, print_json


def add_parser(commands: Subparsers) -> None:
    decap = commands.add_parser(
        "decap",
        help="server side: unwrap GRE, IPIP, VXLAN, GENEVE from the balancers with XDP "
        "(no tunnel module needed)",
        description="Attaches an XDP program to DEVICE that strips the outer IPv4 or IPv6 and "
        "tunnel headers (GRE, IPIP, VXLAN, GENEVE: --methods) of packets from the --allow "
        "prefixes (the balancers) and hands the inner IPv4 or IPv6 packet to the host's stack; "
        "everything else passes untouched. docs/decap.md.",
        epilog="Example: rusty-rail decap --device eth0 --allow 198.18.0.0/24\n"
        "         rusty-rail decap --device eth0 --allow 198.18.0.0/24 --allow 2001:2::/64\n"
        "         rusty-rail decap --device eth0 --allow 198.18.0.0/24 "
        "--methods gre,ipip,vxlan --vni 100\n"
        "         rusty-rail decap --device eth0 --status",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decap.add_argument("--device", required=True, help="the server's interface")
    decap.add_argument(
        "--allow", action="append", default=[], help="balancer prefix, IPv4 or IPv6 (repeatable)"
    )
    decap.add_argument(
        "--local",
        action="append",
        default=None,
        help="outer destinations that are this host, IPv4 or IPv6 (default: the device's "
        "IPv4 addresses and its IPv6 addresses other than link-local)",
    )
    decap.add_argument(
        "--methods",
        action="append",
        default=None,
        help="the encapsulations taken, comma-separated or repeated: gre, ipip, vxlan (UDP "
        "4789), geneve (UDP 6081) (default: gre,ipip; the UDP ones only when named)",
    )
    decap.add_argument(
        "--vni",
        action="append",
        default=None,
        help="a VXLAN/GENEVE VNI taken, 0-16777215 (repeatable; default: any)",
    )
    decap.add_argument(
        "--xdp-mode",
        choices=["native", "generic"],
        default="native",
        help="attach in the driver (native, the default) or the generic skb path",
    )
    decap_action = decap.add_mutually_exclusive_group()
    decap_action.add_argument(
        "--status", action="store_true", help="show prefixes, methods and counters"
    )
    decap_action.add_argument("--detach", action="store_true", help="detach and remove pins")
    decap.set_defaults(handler=cmd_decap)
    needs_root(decap, "it loads and attaches an XDP program and reads its pinned maps")


def cmd_decap(args: argparse.Namespace) -> int:
    from rusty_rail.decap.agent import DecapError, decap_attach, decap_detach, decap_status

    try:
        if args.detach:
            detached = decap_detach(args.device)
            print(f"decap {'detached from' if detached else 'was not attached to'} {args.device}")
            return EXIT_OK
        if args.status:
            print_json(decap_status(args.device))
            return EXIT_OK
        if not args.allow:
            print("rusty-rail decap: name the balancers' prefixes with --allow", file=sys.stderr)
            return EXIT_USAGE
        status = decap_attach(
            args.device,
            args.allow,
            args.xdp_mode,
            local=args.local,
            methods=args.methods,
            vnis=args.vni,
        )
    except (DecapError, ValueError) as error:
        print(f"rusty-rail decap: {error}", file=sys.stderr)
        return EXIT_USAGE
    print_json(status)
    return EXIT_OK
