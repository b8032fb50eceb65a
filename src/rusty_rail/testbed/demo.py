"""`rusty-rail demo`: the test bed with live traffic. Brings it up, drives short HTTP requests
and long-lived TCP connections from the clients to the IPv4 VIP and the IPv6 VIP, kills a
balancer, removes a backend, and shows what happened to every connection of each family; then
tears everything down. Any ingress (GRE from the XDP router, or routed by the kernel's ECMP)
and any egress method (TestbedSpec): a balancer's failure is its removal from the router's
set either way (the XDP router's balancer set, or the kernel's nexthop group).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from rusty_rail.testbed.topology import (
    ECHO_PORT,
    HTTP_PORT,
    VIP,
    VIP6,
    VIPS,
    Testbed,
    TestbedSpec,
)
from rusty_rail.testbed.traffic import LongLived, http_requests

#: What a balancer counts for a packet it forwarded (docs/packet-path.md).
FORWARD_STATS = ("CT_HIT", "CT_MISS", "CT_STALE")


def _fraction(survived: int, total: int) -> float:
    return survived / total if total else 1.0


def _say_family(family: str) -> str:
    return "IPv4" if family == "ipv4" else "IPv6"


def _say_ingress(spec: TestbedSpec) -> str:
    if spec.ingress == "routed":
        return "routed (kernel ECMP, each VIP by its family)"
    return f"GRE over {_say_family(spec.underlay)}"


def run_demo(
    spec: TestbedSpec | None = None,
    *,
    requests: int = 1500,
    long_lived: int = 30,
    changes: int = 50,
    outage: float = 10.0,
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run the whole demo; returns the summary (the JSON of `rusty-rail demo --json`).

    Both VIPs carry traffic: ``requests`` HTTP requests to each, one after the other, then
    ``long_lived`` echo connections to each, open at once through the balancer failure and
    the backend removal. The summary's top-level keys are the IPv4 VIP's (as before the test
    bed was dual stack); ``families`` holds each family's own. A cluster bed then measures
    (cluster_measure.measure_cluster: ``changes`` changes, etcd frozen ``outage`` seconds, lb1
    killed) into ``cluster``."""
    started = time.monotonic()
    errors: list[str] = []
    families: dict[str, dict[str, Any]] = {family: {"vip": vip} for family, vip in VIPS.items()}
    say("demo: building the test bed (clients, router, balancers, servers) ...")
    with Testbed.up(spec) as bed:
        say(
            f"demo: up in {time.monotonic() - started:.1f} s: {bed.spec.clients} clients, "
            f"{bed.spec.lbs} balancers, {bed.spec.servers} servers, VIPs {VIP} and {VIP6}, "
            f"{_say_ingress(bed.spec)} to the balancers, {bed.spec.egress} to the "
            f"{bed.spec.backends} backends"
        )

        echoes = {
            family: LongLived(bed.clients, vip, ECHO_PORT, long_lived)
            for family, vip in VIPS.items()
        }
        for family, echo in echoes.items():
            say(
                f"demo: {long_lived} long-lived {_say_family(family)} connections open: "
                f"{dict(sorted(echo.per_backend().items()))}"
            )

        for family, vip in VIPS.items():
            say(f"demo: sending {requests} HTTP requests to {vip}, each on a new connection ...")
            families[family].update(_requests_phase(bed, vip, requests, errors, say))

        for family, echo in echoes.items():
            failed = echo.check()
            errors += [
                f"{family}, before any failure: {c.client} -> {c.backend} broke" for c in failed
            ]

        for family, echo in echoes.items():
            families[family]["long_lived_through_failed_lb"] = sum(
                bed.lb_of(c.flow) == 0 for c in echo.connections
            )
        say(
            "demo: balancer lb1 fails (the router takes it out of ECMP); long-lived connections "
            "that ran through it: "
            + ", ".join(
                f"{_say_family(f)} {families[f]['long_lived_through_failed_lb']}" for f in VIPS
            )
            + " ..."
        )
        bed.set_lbs(list(range(1, bed.spec.lbs)))
        for family, echo in echoes.items():
            alive_before = sum(c.alive for c in echo.connections)
            failed = echo.check()
            survived = alive_before - len(failed)
            families[family]["lb_failover_connections_survived"] = _fraction(survived, alive_before)
            after_failover = http_requests(bed.clients, VIPS[family], HTTP_PORT, 200)
            errors += [f"{family}, after lb1 failed: {e}" for e in after_failover.errors]
            say(
                f"demo: {_say_family(family)}: {survived}/{alive_before} long-lived connections "
                f"survived; new requests: {after_failover.ok} ok, "
                f"{len(after_failover.errors)} errors"
            )

        say("demo: lb1 comes back; the long-lived connections keep talking ...")
        bed.set_lbs(list(range(bed.spec.lbs)))
        # Flows the router now sends to a balancer that has not seen them (routed ingress: a
        # returning next hop takes buckets of others) are learnt there while the backend set
        # is the one every balancer shares; real connections keep sending, so do these.
        for family, echo in echoes.items():
            errors += [
                f"{family}, after lb1 came back: {c.client} -> {c.backend} broke"
                for c in echo.check()
            ]

        removed = f"s{bed.spec.servers}"
        say(
            f"demo: backend {removed} is removed from the configuration of both VIPs "
            + (
                "(one write through lb1's API)"
                if bed.spec.cluster
                else "(SIGHUP to every balancer)"
            )
            + " ..."
        )
        bed.set_backends(list(range(bed.spec.servers - 1)))
        for family, echo in echoes.items():
            survivors = [c for c in echo.connections if c.alive and c.backend != removed]
            broken = {id(c) for c in echo.check()}
            survivors_ok = sum(1 for c in survivors if id(c) not in broken)
            after_removal = http_requests(bed.clients, VIPS[family], HTTP_PORT, 300)
            errors += [f"{family}, after removing {removed}: {e}" for e in after_removal.errors]
            if after_removal.per_backend.get(removed):
                errors.append(
                    f"{family}: {after_removal.per_backend[removed]} new requests still "
                    f"reached {removed}"
                )
            families[family].update(
                backend_removal_survivors_survived=_fraction(survivors_ok, len(survivors)),
                requests_after_removal_per_backend=dict(sorted(after_removal.per_backend.items())),
                long_lived_per_backend=dict(
                    sorted(Counter(c.backend for c in echo.connections).items())
                ),
            )
            say(
                f"demo: {_say_family(family)}: {survivors_ok}/{len(survivors)} connections to "
                "the surviving backends survived; new requests went to "
                f"{families[family]['requests_after_removal_per_backend']}"
            )
        for echo in echoes.values():
            echo.close()
        if bed.spec.cluster:
            from rusty_rail.testbed.cluster_measure import cluster_failed, measure_cluster

            measured = measure_cluster(
                bed, say, changes=changes, outage=outage, long_lived=long_lived
            )
            errors += [f"cluster: {problem}" for problem in cluster_failed(measured)]
        say("demo: tearing down ...")
    ipv4 = families["ipv4"]
    summary: dict[str, Any] = {
        key: ipv4[key]
        for key in (
            "requests_per_backend",
            "requests_per_lb",
            "packets_per_lb",
            "long_lived_through_failed_lb",
            "router_packets_per_lb",
            "replies",
            "non_gre_packets_seen_by_lbs",
            "long_lived_per_backend",
            "lb_failover_connections_survived",
            "backend_removal_survivors_survived",
            "requests_after_removal_per_backend",
        )
    }
    summary["families"] = families
    summary["underlay"] = bed.spec.underlay
    summary["ingress"] = bed.spec.ingress
    summary["egress"] = bed.spec.egress
    summary["backends"] = {
        f"s{i + 1}": bed.spec.backend_address(i) for i in range(bed.spec.servers)
    }
    if bed.spec.cluster:
        summary["cluster"] = measured
    summary["errors"] = errors
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def _requests_phase(
    bed: Testbed, vip: str, requests: int, errors: list[str], say: Callable[[str], None]
) -> dict[str, Any]:
    """``requests`` HTTP requests to ``vip``, each on a new connection, and what the router
    and the balancers counted meanwhile."""
    forwarded_before = bed.lb_packets(FORWARD_STATS)
    # PASS_NOT_GRE: plain IPv4/IPv6 reaching a balancer and not taken (with routed ingress:
    # not to a VIP); replies that took the wrong way would show up there.
    not_gre_before = sum(bed.lb_packets(["PASS_NOT_GRE"]))
    new_flows_before = bed.lb_packets(["CT_MISS"])
    lb_before = bed.router_lb_counters()
    http = http_requests(bed.clients, vip, HTTP_PORT, requests)
    errors += [f"{vip}: {error}" for error in http.errors]
    forwarded_after = bed.lb_packets(FORWARD_STATS)
    not_gre_after = sum(bed.lb_packets(["PASS_NOT_GRE"]))
    new_flows_after = bed.lb_packets(["CT_MISS"])
    lb_after = bed.router_lb_counters()
    # Every request is a new connection, so a balancer's new flows are its requests.
    requests_per_lb = {
        f"lb{i + 1}": new_flows_after[i] - new_flows_before[i] for i in range(bed.spec.lbs)
    }
    packets_per_lb = {
        f"lb{i + 1}": forwarded_after[i] - forwarded_before[i] for i in range(bed.spec.lbs)
    }
    router_per_lb = {
        address: lb_after[address]["packets"] - lb_before.get(address, {"packets": 0})["packets"]
        for address in lb_after
    }
    replies_through_lbs = not_gre_after - not_gre_before
    say(
        f"demo: requests per backend {dict(sorted(http.per_backend.items()))}, "
        f"{len(http.errors)} errors"
    )
    say(
        f"demo: requests per balancer {requests_per_lb}; packets forwarded per balancer "
        f"{packets_per_lb} (the router sent {router_per_lb})"
    )
    say(
        f"demo: {http.ok} replies reached the clients; the balancers saw "
        f"{replies_through_lbs} packets not theirs (PASS_NOT_GRE) meanwhile (direct server "
        "return)"
    )
    return {
        "requests_per_backend": dict(sorted(http.per_backend.items())),
        "requests_per_lb": requests_per_lb,
        "packets_per_lb": packets_per_lb,
        "router_packets_per_lb": router_per_lb,
        "replies": http.ok,
        "non_gre_packets_seen_by_lbs": replies_through_lbs,
    }


def render_demo(summary: dict[str, Any]) -> str:
    lines = [
        "rusty-rail demo summary",
        f"  ingress: {_say_ingress_of(summary)}; egress: {summary.get('egress', 'gre')}; "
        f"backends {summary['backends']}",
    ]
    for family, result in summary["families"].items():
        lines += [
            f"  {_say_family(family)} VIP {result['vip']}",
            f"    requests per backend:   {result['requests_per_backend']}",
            f"    requests per balancer:  {result['requests_per_lb']}",
            f"    replies to clients:     {result['replies']} (balancers saw "
            f"{result['non_gre_packets_seen_by_lbs']} packets not theirs: replies bypass them)",
            f"    balancer failure:       {result['lb_failover_connections_survived']:.0%} of "
            f"long-lived connections survived ({result['long_lived_through_failed_lb']} of "
            "them had run through the failed balancer)",
            f"    backend removal:        {result['backend_removal_survivors_survived']:.0%} of "
            "connections to the survivors survived; new requests went to "
            f"{result['requests_after_removal_per_backend']}",
        ]
    if "cluster" in summary:
        change = summary["cluster"]["change_to_all_nodes"]
        store = summary["cluster"]["etcd_outage"]
        kill = summary["cluster"]["balancer_kill"]
        lines += [
            "  cluster (etcd, BGP)",
            f"    a change to all nodes:  p50 {change['p50_ms']} ms, p99 {change['p99_ms']} ms "
            f"over {change['changes']} changes ({change['converged']} with all "
            f"{change['nodes']} nodes agreeing)",
            f"    etcd frozen {store['seconds']} s:    {store['lost_packets']} packets lost, "
            f"{store['failed_requests']}/{store['requests']} requests failed, writes answered "
            f"{store['write_statuses']}; converged {store['converge_s']} s after",
            f"    {kill['balancer']} killed (SIGKILL): out of the router after "
            f"{kill['withdrawal_s']} s; {kill['survived']}/{kill['connections']} established "
            "connections survived",
        ]
    lines += [
        f"  errors:                 {len(summary['errors'])}",
        *[f"    {error}" for error in summary["errors"][:20]],
        f"  took {summary['seconds']} s",
    ]
    return "\n".join(lines)


def _say_ingress_of(summary: dict[str, Any]) -> str:
    if summary.get("ingress") == "routed":
        return "routed (kernel ECMP)"
    return f"GRE over {_say_family(summary['underlay'])}"


def demo_failed(summary: dict[str, Any]) -> bool:
    """Whether the demo saw an error or lost a connection that should have survived, in
    either family."""
    return bool(summary["errors"]) or any(
        result[key] < 1.0
        for result in summary["families"].values()
        for key in ("lb_failover_connections_survived", "backend_removal_survivors_survived")
    )
