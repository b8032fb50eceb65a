"""`rusty-rail selfcheck`: does this installation work? Builds a Maglev table, sends a sample
GRE packet through the reference packet path and checks the compiled BPF objects."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from typing import Any

from rusty_rail.config import config_from_toml_text
from rusty_rail.control.plan import Allocation, compile_plan
from rusty_rail.model import pipeline
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import NextHop, Verdict
from rusty_rail.wire.constants import PROTO_TCP
from rusty_rail.wire.describe import describe
from rusty_rail.wire.frames import LB_IPV4, gre_frame

SAMPLE_CONFIG = """
[[vips]]
address = "198.19.0.10"
protocol = "tcp"
port = 80
backends = ["198.18.1.1", "198.18.1.2", { address = "198.18.1.3", weight = 2 }]
"""
SAMPLE_FLOW = Flow.of("198.18.200.1", "198.19.0.10", PROTO_TCP, 40000, 80)
SAMPLE_NEXT_HOP = NextHop(1, bytes.fromhex("020000000010"), bytes.fromhex("020000000020"))
BPF_OBJECTS = ("balancer", "bench_floor", "testbed_pass")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def run(self, name: str, check: Callable[[], str]) -> None:
        """Run one check; an exception is a failed check with its message, never a crash."""
        try:
            self.checks.append(Check(name, True, check()))
        except Exception as error:  # every failure is reported, none is fatal
            self.checks.append(Check(name, False, f"{type(error).__name__}: {error}"))

    def render(self) -> str:
        lines = [f"{'ok' if c.ok else 'FAIL':4}  {c.name}: {c.detail}" for c in self.checks]
        lines.append("selfcheck: all checks passed" if self.ok else "selfcheck: FAILED")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def _maglev_check() -> str:
    plan = _sample_plan()
    (table,) = plan.tables.values()
    counts = table.slot_counts()
    shares = ", ".join(
        f"{address} w{weight}: {count / table.size:.1%}"
        for address, weight, count in zip(table.backends, table.weights, counts, strict=True)
    )
    return f"M={table.size} built with the {table.impl} population: {shares}"


def _sample_plan() -> Any:
    return compile_plan(
        config_from_toml_text(SAMPLE_CONFIG, "selfcheck"),
        Allocation(),
        lb_ipv4=IPv4Address(LB_IPV4),
        resolve_next_hop=lambda address: SAMPLE_NEXT_HOP,
    )


def _reference_check() -> str:
    plan = _sample_plan()
    frame = gre_frame(SAMPLE_FLOW)
    started = time.perf_counter()
    result = pipeline.process(plan.state, frame)
    elapsed_us = (time.perf_counter() - started) * 1e6
    if result.verdict is not Verdict.TX or result.decision is None:
        raise RuntimeError(f"sample packet was not forwarded: {result.stat.name}")
    backend = plan.state.backends[result.decision.backend_index]
    return (
        f"{SAMPLE_FLOW} -> backend {ip_address(backend.addr)} ({result.stat.name}, "
        f"{result.verdict.name}, {elapsed_us:.0f} us); out: {describe(result.frame).summary()}"
    )


def _bpf_objects_check() -> str:
    from rusty_rail.dataplane.libbpf import bpf_object_path

    paths = [bpf_object_path(name) for name in BPF_OBJECTS]
    return ", ".join(f"{path.name} ({path.stat().st_size} bytes)" for path in paths)


def run_selfcheck() -> Report:
    report = Report()
    report.run("maglev", _maglev_check)
    report.run("reference packet path", _reference_check)
    report.run("bpf objects", _bpf_objects_check)
    return report
