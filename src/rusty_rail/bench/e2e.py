"""`rusty-rail bench e2e`: packets per second through the real balancer, end to end on this
machine, each case next to a floor forwarder measured in the same run (docs/benchmarks.md).

A generator of the project's own (bpf/bench_gen.bpf.c, live frames) sends GRE frames into the
balancer's veth; the balancer (the daemon's program, attached natively) forwards them to a
backend behind a second veth, where a sink counts and drops them. The floor chain is the
same with bench_forward.bpf.c in the balancer's place. The rate is what the sink counted over
the wall time of the run; a case's figure is the best of its rounds, balancer and floor
alternating so that a noisy neighbour slows both alike. Drops are counted by reason: the
balancer's own outcomes that are not a forward, and the frames lost before it (its veth's
queue) or after it (between it and the sink).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Final

from rusty_rail.bench.e2e_bed import Bed, BenchBedError, Chain, FlowSpan, build_bed
from rusty_rail.model.state import Stat

#: Flows per case; None: a new flow every packet.
CASES: Final[dict[str, int | None]] = {
    "one_flow": 1,
    "established_100k": 100_000,
    "established_1m": 1_000_000,
    "new_flow": None,
}
#: Budgets of issue 12, as ratios to the floor forwarder's rate in the same run.
BUDGETS: Final = {"established_100k": 0.85, "new_flow": 0.40}
CPU_COUNTS: Final = (1, 2)
#: The outcomes that forward a packet; every other one is a drop (or a pass) by its reason.
FORWARDED: Final = (Stat.CT_HIT, Stat.CT_MISS, Stat.CT_STALE)
FRAMES_PER_CPU: Final = 2_000_000
ROUNDS: Final = 3
QUICK_FRAMES_PER_CPU: Final = 20_000
QUICK_ROUNDS: Final = 1
#: New flows of CPU k are numbered from (k + 1) << 29 on: beyond every established case's.
_NEW_FLOW_SHIFT: Final = 29
#: How long the frames still on their way after a run may take to reach the sink.
_SETTLE_SECONDS: Final = 5.0
#: Reads 20 ms apart that must find the same count.
_SETTLED_READS: Final = 5


def case_name(case: str, cpus: int) -> str:
    return case if cpus == 1 else f"{case}_{cpus}cpu"


@dataclass
class _Run:
    """One timed run of one chain."""

    seconds: float
    generated: int
    sunk: int
    stats: dict[Stat, int] = field(default_factory=dict)

    @property
    def mpps(self) -> float:
        return self.sunk / self.seconds / 1e6


def _settle(chain: Chain) -> int:
    """The sink's count once it stops moving: the frames still queued have arrived (under
    load the kernel may hand the rest of the work to ksoftirqd, which runs later)."""
    deadline = time.monotonic() + _SETTLE_SECONDS
    last, unchanged = chain.sink.packets(), 0
    while unchanged < _SETTLED_READS and time.monotonic() < deadline:
        time.sleep(0.02)
        now = chain.sink.packets()
        unchanged = unchanged + 1 if now == last else 0
        last = now
    return last


def _stats(bed: Bed) -> dict[Stat, int]:
    return {stat: packets for stat, (packets, _) in bed.maps.read_stats().items()}


def _run(bed: Bed, chain: Chain, frames_per_cpu: int, cpus: list[int]) -> _Run:
    is_balancer = chain is bed.balancer
    generated, sunk = bed.generator.sent(), _settle(chain)
    stats = _stats(bed) if is_balancer else {}
    seconds = bed.generator.send(chain.gen_ifindex, frames_per_cpu, cpus)
    after_sunk = _settle(chain)
    run = _Run(seconds, bed.generator.sent() - generated, after_sunk - sunk)
    if is_balancer:
        run.stats = {stat: count - stats[stat] for stat, count in _stats(bed).items()}
    return run


def _spans(
    flows: int | None, cpus: list[int], new_flow_next: dict[int, int]
) -> dict[int, FlowSpan]:
    """Each CPU's flows: an established case's split between the CPUs (as RSS would split
    them), one flow sent by all, or new flows numbered on from where the last run ended."""
    if flows is None:
        return {
            cpu: FlowSpan(
                (k + 1) << _NEW_FLOW_SHIFT, 0, new_flow_next.get(cpu, (k + 1) << _NEW_FLOW_SHIFT)
            )
            for k, cpu in enumerate(cpus)
        }
    if flows == 1:
        return {cpu: FlowSpan(0, 1) for cpu in cpus}
    share = flows // len(cpus)
    return {cpu: FlowSpan(k * share, (k + 1) * share) for k, cpu in enumerate(cpus)}


def _configure(bed: Bed, chain: Chain, spans: dict[int, FlowSpan]) -> None:
    listed = [spans.get(cpu, FlowSpan(0, 1)) for cpu in range(bed.generator.cpus)]
    bed.generator.configure(chain.frame, listed)


def _prepopulate(bed: Bed, flows: int, cpu: int) -> dict[str, int]:
    """Send every flow of an established case once through the balancer, so that the timed
    runs find them in the connection table."""
    _configure(bed, bed.balancer, {cpu: FlowSpan(0, flows)})
    run = _run(bed, bed.balancer, flows, [cpu])
    return {"frames": run.generated, "new_flows": run.stats[Stat.CT_MISS]}


def _case(
    bed: Bed, flows: int | None, cpus: list[int], frames_per_cpu: int, rounds: int,
    new_flow_next: dict[int, int],
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    detail: dict[str, Any] = {"flows": flows if flows is not None else "a new one per packet"}
    if flows is not None and flows > 1:
        detail["prepopulated"] = _prepopulate(bed, flows, cpus[0])
    balancer_runs: list[_Run] = []
    floor_runs: list[_Run] = []
    for _ in range(rounds):
        for chain, runs in ((bed.floor, floor_runs), (bed.balancer, balancer_runs)):
            _configure(bed, chain, _spans(flows, cpus, new_flow_next))
            runs.append(_run(bed, chain, frames_per_cpu, cpus))
            if flows is None:
                positions = bed.generator.positions()
                new_flow_next.update((cpu, positions[cpu]) for cpu in cpus)
    outcomes = {stat: sum(run.stats[stat] for run in balancer_runs) for stat in Stat}
    forwarded = sum(outcomes[stat] for stat in FORWARDED)
    seen = sum(outcomes.values())
    generated = sum(run.generated for run in balancer_runs)
    sunk = sum(run.sunk for run in balancer_runs)
    drops = {
        stat.name.lower(): count
        for stat, count in outcomes.items()
        if count and stat not in FORWARDED
    }
    drops["before_balancer"] = generated - seen
    drops["after_balancer"] = forwarded - sunk
    mpps = max(run.mpps for run in balancer_runs)
    floor_mpps = max(run.mpps for run in floor_runs)
    result = {
        "mpps": round(mpps, 3),
        "floor_mpps": round(floor_mpps, 3),
        "ratio": round(mpps / floor_mpps, 3),
        "cpus": len(cpus),
        "drops": drops,
    }
    detail.update(
        generated=generated,
        forwarded=forwarded,
        sunk=sunk,
        ct_hit=outcomes[Stat.CT_HIT],
        ct_miss=outcomes[Stat.CT_MISS],
        ct_stale=outcomes[Stat.CT_STALE],
        runs_mpps=[round(run.mpps, 3) for run in balancer_runs],
        floor_runs_mpps=[round(run.mpps, 3) for run in floor_runs],
        floor_lost=sum(run.generated - run.sunk for run in floor_runs),
        # What the balancer adds to the floor's time per packet, per CPU sending.
        extra_ns_per_packet=round(len(cpus) * (1 / mpps - 1 / floor_mpps) * 1000, 1),
    )
    return result, detail


def _cpus(count: int) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < count:
        raise BenchBedError(
            f"bench e2e runs its generator on {count} CPUs; this process may use only "
            f"{len(allowed)} ({allowed})"
        )
    return allowed[:count]


def run_e2e_bench(*, frames_per_cpu: int = FRAMES_PER_CPU, rounds: int = ROUNDS) -> dict[str, Any]:
    """Every case on 1 CPU and on 2, as the issue's JSON shape (details beside it)."""
    if os.geteuid() != 0:
        raise PermissionError("bench e2e needs root: it loads BPF and makes namespaces")
    if frames_per_cpu < 1:
        raise ValueError(f"frames per CPU must be at least 1, not {frames_per_cpu}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    cases: dict[str, Any] = {}
    details: dict[str, Any] = {}
    new_flow_next: dict[int, int] = {}
    load_before = os.getloadavg()[0]
    with build_bed() as bed:
        for count in CPU_COUNTS:
            cpus = _cpus(count)
            for case, flows in CASES.items():
                name = case_name(case, count)
                cases[name], details[name] = _case(
                    bed, flows, cpus, frames_per_cpu, rounds, new_flow_next
                )
    budgets = {
        case_name(case, count): budget for case, budget in BUDGETS.items() for count in CPU_COUNTS
    }
    return {
        "cases": cases,
        "budgets": budgets,
        "budgets_met": all(cases[name]["ratio"] >= budget for name, budget in budgets.items()),
        "details": details,
        "frames_per_cpu": frames_per_cpu,
        "rounds": rounds,
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": os.uname().release,
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
        },
    }


def _drops_text(drops: dict[str, int]) -> str:
    shown = [f"{reason} {count}" for reason, count in drops.items() if count]
    return ", ".join(shown) or "none"


def render_e2e_bench(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        "end to end: generator -> balancer (the daemon's, native XDP on veth) -> sink, beside "
        "generator -> floor forwarder -> sink, measured in the same run",
        f"best of {result['rounds']} runs of {result['frames_per_cpu']} frames per CPU; "
        f"{machine['cpus']} CPUs, kernel {machine['kernel']}, load average "
        f"{machine['load_average_before']} before, {machine['load_average_after']} after",
        f"{'case':<22} {'cpus':>4} {'Mpps':>7} {'floor':>7} {'ratio':>6} {'+ns/pkt':>8} "
        f"{'ct miss':>8}  {'budget':<16} drops",
    ]
    for name, case in result["cases"].items():
        budget = result["budgets"].get(name)
        verdict = ""
        if budget is not None:
            verdict = f">= {budget:.2f} " + ("met" if case["ratio"] >= budget else "MISSED")
        detail = result["details"][name]
        lines.append(
            f"{name:<22} {case['cpus']:>4} {case['mpps']:>7.2f} {case['floor_mpps']:>7.2f} "
            f"{case['ratio']:>6.2f} {detail['extra_ns_per_packet']:>8.0f} "
            f"{100 * detail['ct_miss'] / max(1, detail['generated']):>7.2f}%  {verdict:<16} "
            f"{_drops_text(case['drops'])}"
        )
    lines.append(
        "+ns/pkt: the balancer's time per packet and CPU beyond the floor's; ct miss: timed "
        "frames that found no connection (new flows; established flows evicted from a full set)"
    )
    lines.append("budgets met" if result["budgets_met"] else "a budget was missed")
    return "\n".join(lines)
