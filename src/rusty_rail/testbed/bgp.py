"""BGP in the test bed's ``--cluster`` mode: BIRD 2 on the router, learning the balancers from
the balancer daemons' own speakers (their ``[bgp]`` section, control/bird.py). The router's
BIRD configuration is written here and run in the foreground (``bird -f``) as a test-bed
process.

The router (AS 65000) takes dynamic eBGP sessions from any IPv4 address of the balancer
segment (``neighbor range``, AS 65001): one session per balancer carrying both families
(multiprotocol BGP), as the daemon's speaker opens it, the IPv6 routes with the balancer's
lb_address_ipv6 as their next hop. It accepts only host routes inside the test bed's VIP
prefixes and exports what it learns to the kernel with ``merge paths``: several balancers
announcing one VIP make one ECMP route with a next hop per balancer. Hold time 3 s, keepalive
1 s: a balancer whose session goes silent is gone from the router's FIB 3 s after its last
keepalive; one that closes its session (its daemon stopped or killed) or withdraws its routes
(drained) is gone at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path

from rusty_rail.testbed.netns import Namespace

__all__ = [
    "HOLD_TIME",
    "KEEPALIVE_TIME",
    "LB_ASN",
    "ROUTER_ASN",
    "fib_next_hops",
    "router_config",
    "wait_next_hops",
]

ROUTER_ASN = 65000
LB_ASN = 65001
#: Seconds: BIRD's smallest hold time, and the keepalive that goes with it.
HOLD_TIME = 3
KEEPALIVE_TIME = 1
BIRD = "/usr/sbin/bird"


def _timers() -> str:
    return (
        f"  hold time {HOLD_TIME};\n  keepalive time {KEEPALIVE_TIME};\n"
        "  connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 2;\n"
    )


def router_config(router_id: str, lb_net: str, vip_prefixes: dict[int, Sequence[str]]) -> str:
    """The router's BIRD configuration: one dynamic eBGP protocol taking peers from ``lb_net``
    (IPv4), with a channel per family accepting host routes inside ``vip_prefixes[family]``,
    exported to the kernel as ECMP routes."""
    parts = [
        "# rusty-rail test bed: the router's BGP (bird2)\n",
        "log stderr all;\n",
        f"router id {router_id};\n",
        "protocol device {\n  scan time 2;\n}\n",
    ]
    channels = []
    for family, channel, host in ((4, "ipv4", 32), (6, "ipv6", 128)):
        prefixes = ", ".join(f"{prefix}{{{host},{host}}}" for prefix in vip_prefixes[family])
        parts += [
            f"filter vips{family} {{\n  if net ~ [ {prefixes} ] then accept;\n  reject;\n}}\n",
            f"protocol kernel kernel{family} {{\n  {channel} {{ import none; export all; }};\n"
            "  merge paths on;\n}\n",
        ]
        channels.append(f"  {channel} {{ import filter vips{family}; export none; }};\n")
    parts.append(
        f"protocol bgp lbs {{\n  local as {ROUTER_ASN};\n"
        f"  neighbor range {lb_net} as {LB_ASN};\n"
        '  dynamic name "lb_";\n' + _timers() + "".join(channels) + "}\n"
    )
    return "".join(parts)


def bird_command(config: Path, workdir: Path, name: str) -> list[str]:
    """BIRD in the foreground on ``config``, its control socket and pid file in ``workdir``."""
    if not Path(BIRD).is_file():
        raise RuntimeError(f"--cluster needs BIRD 2 ({BIRD}): run scripts/setup (Debian's bird2)")
    return [
        BIRD, "-f", "-c", str(config),
        "-s", str(workdir / f"{name}.ctl"), "-P", str(workdir / f"{name}.pid"),
    ]  # fmt: skip


def fib_next_hops(namespace: Namespace, vip: str) -> set[str]:
    """The gateways of ``namespace``'s route to ``vip`` (its host route), empty for none."""
    family = "-6" if ip_address(vip).version == 6 else "-4"
    out = namespace.ip(family, "-j", "route", "show", "exact", vip, check=False)
    routes = json.loads(out) if out.strip() else []
    hops = set()
    for route in routes:
        if "gateway" in route:
            hops.add(str(route["gateway"]))
        hops.update(str(hop["gateway"]) for hop in route.get("nexthops", ()) if "gateway" in hop)
    return hops


def wait_next_hops(
    namespace: Namespace, vip: str, expected: set[str], timeout: float = 15
) -> float:
    """Wait until the route to ``vip`` has exactly the gateways ``expected``; return the
    seconds it took. TimeoutError (naming what the route had) after ``timeout``."""
    start = time.monotonic()
    while True:
        hops = fib_next_hops(namespace, vip)
        if hops == expected:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(
                f"the router's route to {vip} has next hops {sorted(hops)}, not "
                f"{sorted(expected)}, after {timeout} s"
            )
        time.sleep(0.05)
