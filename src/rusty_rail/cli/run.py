"""`rusty-rail run` (the balancer daemon) and `rusty-rail detach`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rusty_rail.api.client import TOKEN_VARIABLE, URL_VARIABLE
from rusty_rail.api.credentials import DEFAULT_TOKEN_FILE, token_file
from rusty_rail.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Subparsers,
    add_pin_root_option,
    needs_root,
)
from rusty_rail.control.options import METRICS_BACKEND_LIMIT


def _count(text: str) -> int:
    """A whole number of 0 or more, for argparse."""
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise argparse.ArgumentTypeError(f"{text}: not a whole number from 0 to 999999999")
    return int(text)


def add_parser(commands: Subparsers) -> None:
    """`run` and `detach`."""
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
    add_pin_root_option(run)
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
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines on stderr as text (default) or as one JSON object per line "
        "(docs/deploy.md)",
    )
    run.add_argument(
        "--api-token-file",
        type=Path,
        metavar="FILE",
        help=f"the bearer token API writes need (else ${TOKEN_VARIABLE}, else "
        f"{DEFAULT_TOKEN_FILE}, made at the first start; docs/api.md)",
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
    run.add_argument(
        "--metrics-backend-limit",
        type=_count,
        default=METRICS_BACKEND_LIMIT,
        metavar="N",
        help="/metrics has series per backend while the VIPs hold at most N backends in all "
        f"(default {METRICS_BACKEND_LIMIT}); beyond, per-VIP counts only (docs/api.md)",
    )
    run.add_argument(
        "--store",
        metavar="URL",
        help="keep the desired state in etcd, shared by every node given the same URL "
        "(etcd://HOST:PORT[,HOST:PORT...]/PREFIX; docs/cluster.md); without it the state file "
        "alone holds it",
    )
    run.add_argument(
        "--node-name",
        metavar="NAME",
        help="this node's name in the store (default: HOSTNAME-DEVICE)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(handler=cmd_run)
    needs_root(run, "it loads the XDP balancer, pins its maps and attaches it to the device")

    detach = commands.add_parser(
        "detach",
        help="detach the balancer from a device and remove its pinned state",
        description="Detaches the XDP balancer from DEVICE and removes its pins (maps, "
        "connection table, counters); a balancer attached to DEVICE without pins under the pin "
        "root (pinned in another mount namespace, or in one that is gone) is detached too.",
        epilog="Example: rusty-rail detach --device eth0",
    )
    detach.add_argument("--device", required=True, help="the interface")
    add_pin_root_option(detach)
    detach.set_defaults(handler=cmd_detach)
    needs_root(detach, "it detaches an XDP program and removes its pins")


def api_token(path: Path | None, default: Path = DEFAULT_TOKEN_FILE) -> tuple[str, str]:
    """The bearer token API writes need, and where it came from: ``path`` (which must exist),
    else $RUSTY_RAIL_API_TOKEN, else the host's token file ``default`` (made at the first
    start). Raises TokenFileError."""
    if path is not None:
        return token_file(path, create=False), str(path)
    from_environment = os.environ.get(TOKEN_VARIABLE)
    if from_environment:
        return from_environment, f"${TOKEN_VARIABLE}"
    return token_file(default, create=True), str(default)


def cmd_run(args: argparse.Namespace) -> int:
    from rusty_rail import logsetup
    from rusty_rail.api.server import create_app
    from rusty_rail.config import ConfigError
    from rusty_rail.control import state_file
    from rusty_rail.control.daemon import run
    from rusty_rail.control.errors import StartupError
    from rusty_rail.control.options import ApiOptions, DaemonOptions, parse_api_address
    from rusty_rail.control.plan import PlanError
    from rusty_rail.control.store import parse_store
    from rusty_rail.dataplane.loader import LoaderError

    logsetup.configure(args.verbose, args.log_format)
    environ = dict(os.environ)
    environ.pop(TOKEN_VARIABLE, None)
    environ.pop(URL_VARIABLE, None)
    if args.xdp_mode is not None:
        environ["RR_XDP_MODE"] = args.xdp_mode
    if args.device is not None:
        environ["RR_DEVICE"] = args.device
    try:
        store = None if args.store is None else parse_store(args.store)
    except ValueError as error:
        print(f"rusty-rail run: {error}", file=sys.stderr)
        print("rusty-rail run: nothing was attached or changed", file=sys.stderr)
        return EXIT_USAGE
    try:
        api = None
        if not args.no_api:
            host, port = parse_api_address(args.api)
            token, token_source = api_token(args.api_token_file)
            api = ApiOptions(host, port, token, token_source=token_source)
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
        metrics_backend_limit=args.metrics_backend_limit,
        store=store,
        node_name=args.node_name,
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
        f"rusty-rail detach: no balancer is pinned for {args.device} under {args.pin_root} "
        "or attached to it in this network namespace",
        file=sys.stderr,
    )
    return EXIT_FAILURE
