"""Issue 15, item 6: metrics hygiene, on a real daemon's /metrics. No `*_created` series; the
admin and data-plane states of each backend as two families with every state 0 or 1; the
process collector; and the whole exposition clean under `promtool check metrics`.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from rusty_rail.config import AdminState
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import BackendState, CtEntry
from rusty_rail.wire.constants import PROTO_TCP
from tests.support.control_bed import VIP, VIP_PATH, Node

pytestmark = pytest.mark.bpf


def scrape(node: Node) -> str:
    answer = node.call("GET", "/metrics")
    assert answer.status == 200
    assert isinstance(answer.body, str)
    return answer.body


def samples(text: str, family: str, **labels: str) -> dict[str, float]:
    """The ``state`` label -> value of ``family``'s samples with ``labels``."""
    found = {}
    for line in text.splitlines():
        if not line.startswith(family + "{"):
            continue
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(pairs.get(key) == value for key, value in labels.items()):
            found[pairs["state"]] = float(line.rsplit(" ", 1)[1])
    return found


def test_no_created_series(node: Node) -> None:
    """prometheus_client adds `*_created` to every counter and histogram by default: the
    changes counter and the duration histograms have samples."""
    assert node.call("PATCH", f"{VIP_PATH}/backends/198.18.64.1", {"weight": 2}).status == 200
    text = scrape(node)
    assert "rusty_rail_changes_total{" in text and "rusty_rail_apply_seconds_count" in text
    assert "_created" not in text


def test_admin_and_dataplane_states_are_families_with_every_state(node: Node) -> None:
    assert node.call("PATCH", f"{VIP_PATH}/backends/198.18.64.3", {"state": "drain"}).status == 200
    assert node.call("PATCH", f"{VIP_PATH}/backends/198.18.64.2", {"state": "down"}).status == 200
    text = scrape(node)
    admin_states = {state.value for state in AdminState}
    live_states = {state.name.lower() for state in BackendState}
    for backend, admin, live in (
        ("198.18.64.1", "up", "up"),
        ("198.18.64.2", "down", "down"),
        ("198.18.64.3", "drain", "drain"),
    ):
        labels = {"vip": VIP, "backend": backend}
        assert samples(text, "rusty_rail_backend_admin_state", **labels) == {
            state: float(state == admin) for state in admin_states
        }, backend
        assert samples(text, "rusty_rail_backend_dataplane_state", **labels) == {
            state: float(state == live) for state in live_states
        }, backend


def test_the_process_collector_reports_memory_files_and_start_time(node: Node) -> None:
    text = scrape(node)
    for family in (
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
    ):
        assert re.search(rf"^{family} [0-9.e+]+$", text, re.MULTILINE), family


def test_the_exposition_passes_promtool_check_metrics(node: Node) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "scripts/setup installs prometheus (promtool)"
    # Flows, a drained backend and a refused change: series of every kind have samples.
    flow = Flow.of("198.18.5.1", "198.18.100.1", PROTO_TCP, 20000, 80)
    plan = node.daemon.plan
    assert plan is not None
    slot = next(iter(plan.state.backends))
    node.maps.set_conntrack(flow, CtEntry(slot, plan.state.backends[slot].generation))
    node.call("PATCH", f"{VIP_PATH}/backends/198.18.64.3", {"state": "drain"})
    node.call("PATCH", f"{VIP_PATH}/backends/198.18.64.3", {"weight": -1})
    text = scrape(node)

    def check(exposition: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([promtool, "check", "metrics"], input=exposition,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    result = check(text)
    problems = result.stdout + result.stderr
    assert result.returncode == 0 and not problems.strip(), problems
    # The check finds what it should: a counter named without _total, a family without help.
    bad = check(text + "# TYPE rusty_rail_oops counter\nrusty_rail_oops 1\n")
    assert bad.returncode != 0 and "rusty_rail_oops" in bad.stdout + bad.stderr
