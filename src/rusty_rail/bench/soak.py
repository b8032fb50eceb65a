"""`rusty-rail bench soak`: the balancers under everything at once for N minutes in the test
bed (live traffic, API churn, health flaps, ICMP bursts), watched for leaks and losses: each
daemon's RSS and open fds over time, its connection table, its packet counters' balance,
the churn's API latency, broken connections, 5xx answers and errors. Needs root.

The parts of the workload are in bench/soak_load.py; docs/operations.md says how to read the
report.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from rusty_rail.api.client import ApiClient, ApiFailed, ApiUnreachable
from rusty_rail.bench.health import HealthBedSettings, reload_balancers, wait_all_healthy
from rusty_rail.bench.soak_load import (
    API,
    Churn,
    Flaps,
    IcmpBursts,
    Requests,
    Worker,
    percentile,
)
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.testbed.topology import (
    ECHO_PORT,
    VIP,
    Testbed,
    TestbedSpec,
    balancer_config,
    server_address,
)
from rusty_rail.testbed.traffic import LongLived

#: --minutes: more than 0, at most a day.
MAX_MINUTES: Final = 24 * 60
#: RSS and fds are sampled (and the long-lived connections checked) this often.
SAMPLE_INTERVAL: Final = 2.0
#: The warm-up: the first minute, or the first fifth of a shorter soak. RSS and fd growth are
#: measured from its end (a daemon's first minute grows its heap; that is not a leak).
WARMUP_MAX: Final = 60.0
WARMUP_SHARE: Final = 0.2
#: The budget: the most each may be (RSS growth as a share of the RSS after the warm-up).
BUDGETS: Final = {
    "rss_growth": 0.05,
    "fd_growth": 0,
    "surviving_connections_broken": 0,
    "http_5xx": 0,
    "counters_unbalanced": 0,
}
#: The test bed: s1 and s2 survive (never removed, never flapped), s3 flaps, s4 is the spare
#: backend the API churn adds and removes.
SPEC: Final = TestbedSpec(clients=2, lbs=2, servers=4)
SURVIVORS: Final = ("s1", "s2")
FLAPPED: Final = 2
SPARE: Final = 3
#: Long-lived echo connections, opened before the churn (so only to s1..s3).
LONG_LIVED: Final = 12


def check_minutes(minutes: float) -> float:
    """``minutes`` if it is a soak's length (0 < minutes <= MAX_MINUTES), else ValueError."""
    if not math.isfinite(minutes) or not 0 < minutes <= MAX_MINUTES:
        raise ValueError(
            f"--minutes must be more than 0 and at most {MAX_MINUTES} (a day), got {minutes:g}"
        )
    return minutes


@dataclass(frozen=True)
class SoakSettings:
    """How hard the soak pushes: rates and periods of each part of the workload."""

    minutes: float = 10.0
    request_rate: float = 40.0
    churn_interval: float = 0.3
    flap_down: float = 3.0
    flap_up: float = 4.0
    icmp_every: float = 10.0
    icmp_burst: float = 1.0
    icmp_rate: int = 1000

    def __post_init__(self) -> None:
        check_minutes(self.minutes)

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def warmup(self) -> float:
        return min(WARMUP_MAX, self.seconds * WARMUP_SHARE)


def soak_config(spec: TestbedSpec) -> str:
    """The IPv4 VIP with s1..s3 (the spare is the API's to add), with HTTP checks."""
    servers = [i for i in range(spec.servers) if i != SPARE]
    return balancer_config(spec, servers, vips=[VIP]) + HealthBedSettings().toml()


# --- reading the balancers ---------------------------------------------------------------------


def process_sample(pid: int) -> tuple[int, int]:
    """A process's resident memory (KiB, VmRSS of /proc/PID/status) and open fds."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def metrics(bed: Testbed, lb: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Balancer ``lb``'s /metrics: per sample name, (labels, value) pairs."""
    with in_netns(bed.lbs[lb].name):
        text = ApiClient(API, timeout=10).request("GET", "/metrics").body
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(str(text)):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> int:
    return int(sum(value for _, value in samples.get(name, [])))


def rx_packets(bed: Testbed, lb: int) -> tuple[int, int]:
    """Frames the balancer's eth0 received, and those it dropped before XDP (/proc/net/dev of
    its namespace: the veth's receive counters; in native mode every received frame goes
    through the XDP program, which counts each under exactly one reason)."""
    with in_netns(bed.lbs[lb].name), open("/proc/thread-self/net/dev") as table:
        for line in table:
            name, _, fields = line.partition(":")
            if name.strip() == "eth0":
                values = fields.split()
                return int(values[1]), int(values[3])
    raise RuntimeError(f"no eth0 in {bed.lbs[lb].name}")


@dataclass(frozen=True)
class CounterSnapshot:
    """A balancer's receive counters and its per-reason packet counters, read together."""

    received: int
    dropped_before_xdp: int
    by_reason: dict[str, int]


def counter_snapshot(bed: Testbed, lb: int, tries: int = 500) -> CounterSnapshot:
    """The veth's counters and the balancer's, from a moment no frame arrived in between
    (read the veth, the stats map, the veth again; retried until the two veth reads agree).
    The stats map is the one /metrics reads for rusty_rail_packets_total."""
    for _ in range(tries):
        before = rx_packets(bed, lb)
        stats = {name: packets for name, (packets, _) in bed.lb_stats(lb).items()}
        if rx_packets(bed, lb) == before:
            return CounterSnapshot(before[0], before[1], stats)
        time.sleep(0.001)
    raise RuntimeError(f"lb{lb + 1}: no quiet moment to read its counters in {tries} tries")


def counter_balance(
    start: CounterSnapshot, end: CounterSnapshot, actions: dict[str, str]
) -> dict[str, Any]:
    """Packets in (the veth's received frames) against the balancer's packets by reason,
    between two snapshots: they balance when every frame in was counted exactly once."""
    by_reason = {
        name: end.by_reason.get(name, 0) - start.by_reason.get(name, 0) for name in end.by_reason
    }
    by_action: Counter[str] = Counter()
    for name, count in by_reason.items():
        by_action[actions.get(name.lower(), "unknown")] += count
    received = end.received - start.received
    counted = sum(by_reason.values())
    return {
        "in": received,
        "in_from": "rx_packets of the balancer's eth0 (the veth), in its namespace",
        "counted": counted,
        "counted_from": "the balancer's stats map, as rusty_rail_packets_total{reason,action}",
        "difference": received - counted,
        "dropped_before_xdp": end.dropped_before_xdp - start.dropped_before_xdp,
        "by_action": dict(sorted(by_action.items())),
        "by_reason": {name.lower(): count for name, count in sorted(by_reason.items()) if count},
        "balanced": received == counted,
    }


def packet_actions(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, str]:
    """reason -> action, from /metrics' rusty_rail_packets_total labels."""
    return {
        labels["reason"]: labels["action"]
        for labels, _ in samples.get("rusty_rail_packets_total", [])
    }


class Events:
    """Every balancer's health events, fetched as they come (GET /v1/events?since=), counted
    by backend, kind, new state and cause: "198.18.0.23 health unhealthy (check)"."""

    def __init__(self, lbs: int) -> None:
        self.counts: dict[str, Counter[str]] = {f"lb{lb + 1}": Counter() for lb in range(lbs)}
        self._since = dict.fromkeys(self.counts, 0)

    def skip_past(self, bed: Testbed) -> None:
        """Count from now on: forget the events so far (the bed's start, its first checks)."""
        self.fetch(bed)
        self.counts = {name: Counter() for name in self.counts}

    def fetch(self, bed: Testbed) -> None:
        for lb, name in enumerate(self.counts):
            while True:
                with in_netns(bed.lbs[lb].name):
                    answer = ApiClient(API, timeout=10).get(
                        f"/v1/events?since={self._since[name]}&limit=1000"
                    )
                for event in answer["events"]:
                    subject = event["backend"] or event["vip"]
                    self.counts[name][
                        f"{subject} {event['kind']} {event['to']} ({event['cause']})"
                    ] += 1
                    self._since[name] = max(self._since[name], event["id"])
                if len(answer["events"]) < 1000:
                    break


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Timeline:
    """Per balancer, a sample every SAMPLE_INTERVAL: seconds since the start, RSS (KiB), open
    fds, connection-table entries."""

    samples: dict[str, list[dict[str, float]]]
    #: Samples that could not be taken (a daemon gone, its API not answering), by kind.
    errors: Counter[str] = field(default_factory=Counter)

    def take(self, bed: Testbed, at: float) -> None:
        for lb in range(bed.spec.lbs):
            name = f"lb{lb + 1}"
            try:
                rss, fds = process_sample(bed.pids[name])
                flows = one(metrics(bed, lb), "rusty_rail_conntrack_entries")
            except (OSError, ApiUnreachable, ApiFailed) as error:
                self.errors[f"{name}: sample: {type(error).__name__}"] += 1
                continue
            self.samples[name].append(
                {"t_s": round(at, 1), "rss_kib": rss, "fds": fds, "conntrack_entries": flows}
            )


def growth(samples: list[dict[str, float]], key: str, since: float) -> dict[str, Any]:
    """``key`` at the end of the warm-up (the first sample at or after ``since``) and at the
    end (the last sample); the smallest of three samples each, so one request in flight (an
    fd, a buffer) is not taken for growth."""
    after = [sample[key] for sample in samples if sample["t_s"] >= since] or [samples[-1][key]]
    baseline, final = min(after[:3]), min(after[-3:])
    return {
        "after_warmup": baseline,
        "end": final,
        "growth": final - baseline,
        "growth_ratio": round((final - baseline) / baseline, 4) if baseline else 0.0,
        "max": max(sample[key] for sample in samples),
    }


def run_soak_bench(settings: SoakSettings | None = None) -> dict[str, Any]:
    """The soak in a fresh test bed (2 clients, 2 balancers, 4 servers)."""
    settings = settings or SoakSettings()
    with Testbed.up(SPEC) as bed:
        reload_balancers(bed, soak_config(SPEC))
        wait_all_healthy(bed)
        return _soak(bed, settings)


def _soak(bed: Testbed, settings: SoakSettings) -> dict[str, Any]:
    lbs = range(bed.spec.lbs)
    actions = packet_actions(metrics(bed, 0))
    connections = LongLived(bed.clients, VIP, ECHO_PORT, LONG_LIVED)
    requests = Requests(bed.clients, settings.request_rate)
    churn = Churn(bed, server_address(SPARE), settings.churn_interval)
    flaps = Flaps(
        bed.servers[FLAPPED], server_address(FLAPPED), settings.flap_down, settings.flap_up
    )
    icmp = IcmpBursts(
        bed.clients[0], [server_address(i) for i in range(bed.spec.servers)], bed.spec.lbs,
        settings.icmp_every, settings.icmp_burst, settings.icmp_rate,
    )  # fmt: skip
    workers: list[Worker] = [requests, churn, flaps, icmp]
    timeline = Timeline({f"lb{lb + 1}": [] for lb in lbs})
    events = Events(bed.spec.lbs)
    events.skip_past(bed)
    broken: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    start = [counter_snapshot(bed, lb) for lb in lbs]
    started = time.monotonic()
    try:
        for worker in workers:
            worker.start()
        while (now := time.monotonic() - started) < settings.seconds:
            timeline.take(bed, now)
            events.fetch(bed)
            for connection in connections.check():
                broken[connection.backend] += 1
            time.sleep(max(0.0, SAMPLE_INTERVAL - (time.monotonic() - started - now)))
    finally:
        for worker in workers:
            worker.stop()
        flaps.recover()
    for connection in connections.check():
        broken[connection.backend] += 1
    connections.close()
    timeline.take(bed, time.monotonic() - started)
    events.fetch(bed)
    end = [counter_snapshot(bed, lb) for lb in lbs]
    errors.update(timeline.errors)
    for worker in workers:
        errors.update(worker.errors)
    for lb in lbs:
        name = f"lb{lb + 1}"
        if not _alive(bed.pids[name]):
            errors[f"{name}: the daemon exited"] += 1
        if "Traceback" in bed.log(name).read_text():
            errors[f"{name}: a traceback in its log"] += 1
    return _report(
        bed, settings, timeline, events, broken, errors, requests, churn, flaps, icmp,
        {f"lb{lb + 1}": counter_balance(start[lb], end[lb], actions) for lb in lbs},
        time.monotonic() - started,
    )  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def budget_checks(**values: float) -> dict[str, dict[str, Any]]:
    """Each measured value next to its budget (BUDGETS) and whether it is within."""
    return {
        name: {"value": value, "budget": BUDGETS[name], "ok": value <= BUDGETS[name]}
        for name, value in values.items()
    }


def _report(
    bed: Testbed,
    settings: SoakSettings,
    timeline: Timeline,
    events: Events,
    broken: Counter[str],
    errors: Counter[str],
    requests: Requests,
    churn: Churn,
    flaps: Flaps,
    icmp: IcmpBursts,
    balance: dict[str, dict[str, Any]],
    took: float,
) -> dict[str, Any]:
    daemons: dict[str, dict[str, Any]] = {}
    for name, samples in timeline.samples.items():
        final = metrics(bed, int(name[2:]) - 1)
        daemons[name] = {
            "rss_kib": growth(samples, "rss_kib", settings.warmup),
            "fds": growth(samples, "fds", settings.warmup),
            "conntrack": {
                "max_entries": max(sample["conntrack_entries"] for sample in samples),
                "end_entries": samples[-1]["conntrack_entries"],
                "capacity": one(final, "rusty_rail_conntrack_capacity"),
            },
            "packets": balance[name],
            "icmp_packets": {
                labels["outcome"]: int(value)
                for labels, value in final.get("rusty_rail_icmp_packets_total", [])
            },
            "events": dict(sorted(events.counts[name].items())),
            "samples": samples,
        }
    survivors_broken = sum(broken[name] for name in SURVIVORS)
    rss_growth = max(d["rss_kib"]["growth_ratio"] for d in daemons.values())
    fd_growth = max(d["fds"]["growth"] for d in daemons.values())
    server_errors = requests.server_errors + churn.server_errors
    checks = budget_checks(
        rss_growth=rss_growth,
        fd_growth=fd_growth,
        surviving_connections_broken=survivors_broken,
        http_5xx=server_errors,
        counters_unbalanced=sum(1 for b in balance.values() if not b["balanced"]),
    )
    return {
        "minutes": settings.minutes,
        "took_s": round(took, 1),
        "warmup_s": settings.warmup,
        "settings": asdict(settings),
        "testbed": {
            "clients": bed.spec.clients,
            "lbs": bed.spec.lbs,
            "servers": bed.spec.servers,
            "surviving": list(SURVIVORS),
            "flapped": f"s{FLAPPED + 1}",
            "spare": f"s{SPARE + 1}",
        },
        "daemons": daemons,
        "traffic": {
            "requests_by_status": {str(k): v for k, v in sorted(requests.statuses.items())},
            "requests_by_backend": dict(sorted(requests.backends.items())),
            "long_lived": LONG_LIVED,
            "long_lived_broken_by_backend": dict(sorted(broken.items())),
        },
        "api": {
            "writes": churn.writes,
            "by_status": {str(k): v for k, v in sorted(churn.statuses.items())},
            "p50_ms": _ms(percentile(churn.latencies_ms, 0.5)),
            "p99_ms": _ms(percentile(churn.latencies_ms, 0.99)),
        },
        "flaps": flaps.flaps,
        "icmp": {"bursts": icmp.bursts, "sent": icmp.sent},
        "errors": dict(sorted(errors.items())),
        "checks": checks,
        "ok": all(check["ok"] for check in checks.values()),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def render_soak_bench(result: dict[str, Any]) -> str:
    checks = result["checks"]

    def verdict(name: str) -> str:
        return "ok" if checks[name]["ok"] else "OVER BUDGET"

    bed, api, traffic = result["testbed"], result["api"], result["traffic"]
    lines = [
        f"soak: {result['minutes']:g} min in the test bed ({bed['clients']} clients, "
        f"{bed['lbs']} balancers, {bed['servers']} servers): {traffic['long_lived']} long-lived "
        f"connections, {result['settings']['request_rate']:g} requests/s, the spare "
        f"{bed['spare']} churned through the API, {bed['flapped']}'s checks flapped "
        f"{result['flaps']} times, {result['icmp']['bursts']} ICMP bursts "
        f"({result['icmp']['sent']} forged unreachables)",
        f"  RSS and fds: from the end of the warm-up ({result['warmup_s']:g} s) to the end",
    ]
    for name, daemon in result["daemons"].items():
        rss, fds, flows = daemon["rss_kib"], daemon["fds"], daemon["conntrack"]
        lines.append(
            f"  {name}: RSS {rss['after_warmup']} -> {rss['end']} KiB "
            f"({rss['growth_ratio']:+.1%}), fds {fds['after_warmup']} -> {fds['end']}, "
            f"connection table max {flows['max_entries']} of {flows['capacity']}"
        )
        packets = daemon["packets"]
        actions = ", ".join(f"{action} {count}" for action, count in packets["by_action"].items())
        lines.append(
            f"    packets in (eth0 received) {packets['in']} = counted {packets['counted']} "
            f"({actions}): {'balanced' if packets['balanced'] else 'OFF BY '}"
            f"{'' if packets['balanced'] else packets['difference']}; dropped before XDP "
            f"{packets['dropped_before_xdp']}"
        )
        icmp = ", ".join(f"{outcome} {count}" for outcome, count in daemon["icmp_packets"].items())
        lines.append(f"    ICMP by outcome: {icmp or 'none'}")
        lines.append(
            "    events: "
            + ", ".join(f"{what} x{count}" for what, count in daemon["events"].items())
        )
        lines.append(
            "    by reason: "
            + ", ".join(f"{reason} {count}" for reason, count in packets["by_reason"].items())
        )
    lines += [
        f"  API churn: {api['writes']} writes, p50 {api['p50_ms']} ms, p99 {api['p99_ms']} ms, "
        f"by status {api['by_status']}",
        f"  requests by status {traffic['requests_by_status']}, by backend "
        f"{traffic['requests_by_backend']}",
        f"  long-lived connections broken by backend: "
        f"{traffic['long_lived_broken_by_backend'] or 'none'}",
        f"  errors: {result['errors'] or 'none'}",
        f"  RSS growth {checks['rss_growth']['value']:.1%} (budget "
        f"{checks['rss_growth']['budget']:.0%}): {verdict('rss_growth')}",
        f"  fd growth {checks['fd_growth']['value']} (budget 0): {verdict('fd_growth')}",
        f"  connections broken on surviving backends ({', '.join(bed['surviving'])}) "
        f"{checks['surviving_connections_broken']['value']} (budget 0): "
        f"{verdict('surviving_connections_broken')}",
        f"  5xx answers {checks['http_5xx']['value']} (budget 0): {verdict('http_5xx')}",
        f"  balancers whose counters do not balance {checks['counters_unbalanced']['value']} "
        f"(budget 0): {verdict('counters_unbalanced')}",
        f"  budget met: {'yes' if result['ok'] else 'NO'}",
    ]
    return "\n".join(lines)
