"""`rusty-rail demo`: the test bed with live traffic. Brings it up, drives short HTTP requests
and long-lived TCP connections from the clients, kills a balancer, removes a backend, and shows
what happened to every connection; then tears everything down.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

from rusty_rail.testbed.router import choose_lb
from rusty_rail.testbed.topology import (
    ECHO_PORT,
    HTTP_PORT,
    VIP,
    Testbed,
    TestbedSpec,
    lb_address,
)
from rusty_rail.testbed.traffic import LongLived, http_requests

#: What a balancer counts for a packet it forwarded (docs/packet-path.md).
FORWARD_STATS = ("CT_HIT", "CT_MISS", "CT_STALE")


def _fraction(survived: int, total: int) -> float:
    return survived / total if total else 1.0


def run_demo(
    spec: TestbedSpec | None = None,
    *,
    requests: int = 1500,
    long_lived: int = 30,
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run the whole demo; returns the summary (the JSON of `rusty-rail demo --json`)."""
    started = time.monotonic()
    errors: list[str] = []
    say("demo: building the test bed (clients, router, balancers, servers) ...")
    with Testbed.up(spec) as bed:
        say(
            f"demo: up in {time.monotonic() - started:.1f} s: {bed.spec.clients} clients, "
            f"{bed.spec.lbs} balancers, {bed.spec.servers} servers, VIP {VIP}"
        )

        echo = LongLived(bed.clients, VIP, ECHO_PORT, long_lived)
        say(
            f"demo: {long_lived} long-lived connections open: "
            f"{dict(sorted(echo.per_backend().items()))}"
        )

        # PASS_NOT_GRE: plain IPv4/IPv6 reaching a balancer; replies that took the wrong way
        # would show up there.
        forwarded_before = bed.lb_packets(FORWARD_STATS)
        not_gre_before = sum(bed.lb_packets(["PASS_NOT_GRE"]))
        new_flows_before = bed.lb_packets(["CT_MISS"])
        lb_before = bed.router.lb_counters() if bed.router else {}
        say(f"demo: sending {requests} HTTP requests, each on a new connection ...")
        http = http_requests(bed.clients, VIP, HTTP_PORT, requests)
        errors += http.errors
        forwarded_after = bed.lb_packets(FORWARD_STATS)
        not_gre_after = sum(bed.lb_packets(["PASS_NOT_GRE"]))
        new_flows_after = bed.lb_packets(["CT_MISS"])
        lb_after = bed.router.lb_counters() if bed.router else {}
        # Every request is a new connection, so a balancer's new flows are its requests.
        requests_per_lb = {
            f"lb{i + 1}": new_flows_after[i] - new_flows_before[i] for i in range(bed.spec.lbs)
        }
        packets_per_lb = {
            f"lb{i + 1}": forwarded_after[i] - forwarded_before[i] for i in range(bed.spec.lbs)
        }
        router_per_lb = {
            address: lb_after[address]["packets"]
            - lb_before.get(address, {"packets": 0})["packets"]
            for address in lb_after
        }
        say(
            f"demo: requests per backend {dict(sorted(http.per_backend.items()))}, "
            f"{len(http.errors)} errors"
        )
        say(
            f"demo: requests per balancer {requests_per_lb}; packets forwarded per balancer "
            f"{packets_per_lb} (the router sent {router_per_lb})"
        )
        replies_through_lbs = not_gre_after - not_gre_before
        say(
            f"demo: {http.ok} replies reached the clients; the balancers saw "
            f"{replies_through_lbs} non-GRE packets meanwhile (direct server return)"
        )

        failed = echo.check()
        errors += [f"before any failure: {c.client} -> {c.backend} broke" for c in failed]

        all_lbs = [lb_address(i) for i in range(bed.spec.lbs)]
        on_lb1 = sum(
            choose_lb(c.flow, all_lbs) == IPv4Address(all_lbs[0]) for c in echo.connections
        )
        say(
            f"demo: balancer lb1 fails (the router takes it out of ECMP); {on_lb1} long-lived "
            "connections ran through it ..."
        )
        bed.set_lbs(list(range(1, bed.spec.lbs)))
        alive_before = sum(c.alive for c in echo.connections)
        failed = echo.check()
        failover_survived = _fraction(alive_before - len(failed), alive_before)
        after_failover = http_requests(bed.clients, VIP, HTTP_PORT, 200)
        errors += [f"after lb1 failed: {e}" for e in after_failover.errors]
        say(
            f"demo: {alive_before - len(failed)}/{alive_before} long-lived connections survived; "
            f"new requests: {after_failover.ok} ok, {len(after_failover.errors)} errors"
        )

        say("demo: lb1 comes back ...")
        bed.set_lbs(list(range(bed.spec.lbs)))

        removed = f"s{bed.spec.servers}"
        say(
            f"demo: backend {removed} is removed from the configuration "
            "(SIGHUP to every balancer) ..."
        )
        bed.set_backends(list(range(bed.spec.servers - 1)))
        survivors = [c for c in echo.connections if c.alive and c.backend != removed]
        broken = {id(c) for c in echo.check()}
        survivors_ok = sum(1 for c in survivors if id(c) not in broken)
        removal_survived = _fraction(survivors_ok, len(survivors))
        after_removal = http_requests(bed.clients, VIP, HTTP_PORT, 300)
        errors += [f"after removing {removed}: {e}" for e in after_removal.errors]
        if after_removal.per_backend.get(removed):
            errors.append(
                f"{after_removal.per_backend[removed]} new requests still reached {removed}"
            )
        say(
            f"demo: {survivors_ok}/{len(survivors)} connections to the surviving backends "
            f"survived; new requests went to {dict(sorted(after_removal.per_backend.items()))}"
        )
        echo.close()
        say("demo: tearing down ...")
    summary: dict[str, Any] = {
        "requests_per_backend": dict(sorted(http.per_backend.items())),
        "requests_per_lb": requests_per_lb,
        "packets_per_lb": packets_per_lb,
        "long_lived_through_failed_lb": on_lb1,
        "router_packets_per_lb": router_per_lb,
        "replies": http.ok,
        "non_gre_packets_seen_by_lbs": replies_through_lbs,
        "long_lived_per_backend": dict(
            sorted(Counter(c.backend for c in echo.connections).items())
        ),
        "lb_failover_connections_survived": failover_survived,
        "backend_removal_survivors_survived": removal_survived,
        "requests_after_removal_per_backend": dict(sorted(after_removal.per_backend.items())),
        "errors": errors,
        "seconds": round(time.monotonic() - started, 1),
    }
    return summary


def render_demo(summary: dict[str, Any]) -> str:
    lines = [
        "rusty-rail demo summary",
        f"  requests per backend:   {summary['requests_per_backend']}",
        f"  requests per balancer:  {summary['requests_per_lb']}",
        f"  replies to clients:     {summary['replies']} (balancers saw "
        f"{summary['non_gre_packets_seen_by_lbs']} non-GRE packets: replies bypass them)",
        f"  balancer failure:       {summary['lb_failover_connections_survived']:.0%} of "
        f"long-lived connections survived ({summary['long_lived_through_failed_lb']} of them "
        "had run through the failed balancer)",
        f"  backend removal:        {summary['backend_removal_survivors_survived']:.0%} of "
        "connections to the survivors survived; new requests went to "
        f"{summary['requests_after_removal_per_backend']}",
        f"  errors:                 {len(summary['errors'])}",
        *[f"    {error}" for error in summary["errors"][:20]],
        f"  took {summary['seconds']} s",
    ]
    return "\n".join(lines)
