"""`rusty-rail bench control`: how fast a change made through the REST API is live in the data
plane, and how long a restart takes to rebuild and apply every table. Needs root (BPF).

The daemon runs in this process, on a veth pair in a private network namespace, with its API
on the namespace's loopback; the changes go over HTTP as an operator's would.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, Final

import numpy as np

from rusty_rail.api.client import ApiClient, backend_path
from rusty_rail.api.server import create_app
from rusty_rail.config import Config, validate_as
from rusty_rail.control.background import BackgroundDaemon
from rusty_rail.control.daemon import Daemon
from rusty_rail.control.options import ApiOptions, DaemonOptions
from rusty_rail.control.plan import slot_table
from rusty_rail.dataplane.libbpf import BPFFS, Map, ensure_bpffs, remove_pin_dir
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.model.maglev import build_table
from rusty_rail.testbed.netns import Netns

TABLE_SIZE: Final = 65537
RESTART_VIPS: Final = 64
RESTART_BACKENDS: Final = 100
BUDGET_CHANGE_P99_MS: Final = 25.0
BUDGET_RESTART_SECONDS: Final = 1.0
#: The whole first start of a daemon with RESTART_VIPS x RESTART_BACKENDS = 6400 backends.
BUDGET_START_SECONDS: Final = 1.5
GATEWAY: Final = "198.18.0.1"
LB: Final = "198.18.0.2"
#: Backends live behind the gateway, so every next hop resolves at once (a permanent neighbour).
BACKEND_ROUTE: Final = "198.18.64.0/18"
VIP: Final = "198.18.1.1"
#: How often the watcher process looks at the VIP's table pointer (seconds).
POLL_INTERVAL: Final = 0.0001


def backend_address(index: int) -> str:
    return f"198.18.{64 + index // 250}.{1 + index % 250}"


def vip_config(vips: int, backends: int) -> Config:
    data = {
        "device": "eth0",
        "lb_address": LB,
        "vips": [
            {
                "address": VIP if vips == 1 else f"198.18.{1 + v // 200}.{1 + v % 200}",
                "protocol": "tcp",
                "port": 80,
                "backends": [backend_address(v * backends + i) for i in range(backends)],
            }
            for v in range(vips)
        ],
    }
    return validate_as(Config, data, "bench")


@contextlib.contextmanager
def _bench_namespace() -> Iterator[tuple[str, Path]]:
    """A namespace with eth0 (the balancer's side of a veth pair) and a bpffs directory."""
    with Netns() as net:
        router, lb = net.namespace("bench-r"), net.namespace("bench-lb")
        net.veth(router, "eth0", lb, "eth0")
        router.ip("addr", "add", f"{GATEWAY}/24", "dev", "eth0")
        lb.ip("addr", "add", f"{LB}/24", "dev", "eth0")
        lb.ip("route", "add", BACKEND_ROUTE, "via", GATEWAY)
        lb.ip("neigh", "replace", GATEWAY, "lladdr", router.mac("eth0"), "dev", "eth0",
              "nud", "permanent")  # fmt: skip
        ensure_bpffs()
        pins = BPFFS / f"rusty_rail_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        pins.mkdir(mode=0o700)
        try:
            yield lb.name, pins
        finally:
            remove_pin_dir(pins)


def _daemon(config: Config, pins: Path, state: Path, *, detach: bool) -> Daemon:
    options = DaemonOptions(
        pin_root=pins,
        detach_on_exit=detach,
        api=ApiOptions("127.0.0.1", 0),
        state_file=state,
        next_hop_timeout=3.0,
    )
    daemon = Daemon(config, options)
    daemon.start()
    return daemon


def _live_table_matches(daemon: Daemon, name: str) -> bool:
    """Whether the table in the map is the one the daemon planned (the change is live)."""
    assert daemon.plan is not None and daemon.balancer is not None
    plan = daemon.plan
    wanted = slot_table(plan.tables[name], name, plan.allocation)
    live = daemon.balancer.maps.read_table(plan.allocation.vip_index[name])
    return live is not None and bool(np.array_equal(np.asarray(live, dtype=np.uint32), wanted))


def _percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def _watch_table(map_id: int, vip_index: int, out: Connection, stop: EventType) -> None:
    """In a process of its own: report (time, inner map id) whenever the VIP's slot in the
    outer table map points at another table, i.e. the moment a swap is live for packets."""
    key = struct.pack("=I", vip_index)
    with Map.from_id(map_id) as tables:
        last = tables.inner_id(key)
        out.send(None)
        while not stop.is_set():
            current = tables.inner_id(key)
            if current != last:
                out.send((time.perf_counter(), current))
                last = current
            time.sleep(POLL_INTERVAL)


def _live_after(events: Connection, started: float, answered: float) -> float:
    """When the first swap after ``started`` was seen; the answer bounds it."""
    seen = answered
    while events.poll(0.05):
        event = events.recv()
        if event is not None and started <= event[0] <= seen:
            seen = event[0]
    return seen


def _serve_daemon(config: Config, pins: Path, state: Path, control: Connection) -> None:
    """In a process of its own, as `rusty-rail run` would be: start the daemon, serve its API,
    answer the bench's questions over ``control`` until told to stop."""
    daemon = _daemon(config, pins, state, detach=True)
    assert daemon.balancer is not None and daemon.plan is not None
    name = str(config.vips[0].key)
    server = BackgroundDaemon(daemon, create_app)
    server.start()
    try:
        control.send((server.url, daemon.balancer.maps.tables.id,
                      daemon.plan.allocation.vip_index[name]))  # fmt: skip
        while (request := control.recv()) != "stop":
            assert request == "live?"
            control.send(_live_table_matches(daemon, name))
    finally:
        server.stop()
        daemon.close()
        control.close()


def _change_to_live(pins: Path, state: Path, changes: int, backends: int) -> dict[str, Any]:
    config = vip_config(1, backends)
    name = str(config.vips[0].key)
    # The daemon, the watcher and this client are three processes, as in production: none
    # waits for another's interpreter lock. Fork before any of them starts a thread.
    context = multiprocessing.get_context("fork")
    control, daemon_end = context.Pipe()
    daemon = context.Process(target=_serve_daemon, args=(config, pins, state, daemon_end))
    daemon.start()
    events, sender = context.Pipe(duplex=False)
    stop = context.Event()
    watcher = None
    try:
        if not control.poll(60):
            raise RuntimeError("the bench's daemon did not start within 60 s")
        url, tables_id, vip_index = control.recv()
        watcher = context.Process(
            target=_watch_table, args=(tables_id, vip_index, sender, stop), daemon=True
        )
        watcher.start()
        events.recv()  # watching
        client = ApiClient(url)
        extra = backend_address(backends + 1)
        path = backend_path(name, extra)
        for _ in range(2):  # warm-up: first requests pay for imports and connections
            client.put(path, {"weight": 1})
            client.delete(path)
        timings, answers, built, applied, unverified = [], [], [], [], 0
        _live_after(events, time.perf_counter(), time.perf_counter())  # the warm-up's swaps
        for change in range(changes):
            started = time.perf_counter()
            result = client.put(path, {"weight": 1}) if change % 2 == 0 else client.delete(path)
            answered = time.perf_counter()
            answers.append(answered - started)
            timings.append(_live_after(events, started, answered) - started)
            built.append(result["build_ms"])
            applied.append(result["apply_ms"])
            control.send("live?")
            unverified += not control.recv()
        existing = backend_path(name, backend_address(0))
        noop = []
        for _ in range(changes):
            started = time.perf_counter()
            result = client.put(existing, {"weight": 1})
            noop.append(time.perf_counter() - started)
            assert not result["changed"]
        maglev = []
        addresses = [(backend.address, backend.weight) for backend in config.vips[0].backends]
        for _ in range(5):
            started = time.perf_counter()
            build_table(addresses, TABLE_SIZE, config.hash_seed)
            maglev.append(time.perf_counter() - started)
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=10)
        with contextlib.suppress(OSError):
            control.send("stop")
        daemon.join(timeout=60)
        if daemon.is_alive():
            daemon.kill()
    p50, p99 = _percentile(timings, 50) * 1000, _percentile(timings, 99) * 1000
    noop_ms = statistics.median(noop) * 1000
    maglev_ms = min(maglev) * 1000
    return {
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "changes": changes,
        "backends": backends,
        "table_size": TABLE_SIZE,
        "answered_p50_ms": round(_percentile(answers, 50) * 1000, 3),
        "answered_p99_ms": round(_percentile(answers, 99) * 1000, 3),
        "tables_not_live_after_answer": unverified,
        "server_build_ms_p50": round(statistics.median(built), 3),
        "server_apply_ms_p50": round(statistics.median(applied), 3),
        "baseline_noop_write_ms_p50": round(noop_ms, 3),
        "baseline_maglev_build_ms": round(maglev_ms, 3),
        "p50_over_noop_write": round(p50 / noop_ms, 2),
        "p50_over_maglev_build": round(p50 / maglev_ms, 2),
        "budget_p99_ms": BUDGET_CHANGE_P99_MS,
    }


def _restart_rebuild(pins: Path, state: Path) -> dict[str, Any]:
    config = vip_config(RESTART_VIPS, RESTART_BACKENDS)
    cold_started = time.perf_counter()
    cold = _daemon(config, pins, state, detach=False)
    cold_start_seconds = time.perf_counter() - cold_started
    cold_timings = dict(cold.start_timings)
    cold.close()
    started = time.perf_counter()
    restarted = _daemon(config, pins, state, detach=True)
    start_seconds = time.perf_counter() - started
    timings = dict(restarted.start_timings)
    updates = restarted.last_change["map_updates"] if restarted.last_change else None
    restarted.close()
    maglev_started = time.perf_counter()
    for vip in config.vips:
        build_table(((b.address, b.weight) for b in vip.backends), TABLE_SIZE, config.hash_seed)
    maglev_seconds = time.perf_counter() - maglev_started
    seconds = sum(timings.values())
    cold_seconds = cold_timings["build_seconds"] + cold_timings["apply_seconds"]
    return {
        "seconds": round(seconds, 4),
        "vips": RESTART_VIPS,
        "backends_per_vip": RESTART_BACKENDS,
        "table_size": TABLE_SIZE,
        "read_state_seconds": round(timings["read_state_seconds"], 4),
        "build_seconds": round(timings["build_seconds"], 4),
        "apply_seconds": round(timings["apply_seconds"], 4),
        "map_updates": updates,
        "cold_seconds": round(cold_seconds, 4),
        "cold_apply_seconds": round(cold_timings["apply_seconds"], 4),
        "daemon_start_seconds": round(start_seconds, 4),
        # The whole first start: next hops of every backend, plan, load, write, attach.
        "start_6400_backends_s": round(cold_start_seconds, 4),
        "start_6400_backends_budget_s": BUDGET_START_SECONDS,
        "start_over_maglev_builds": round(cold_start_seconds / maglev_seconds, 2),
        "baseline_maglev_builds_seconds": round(maglev_seconds, 4),
        "seconds_over_maglev_builds": round(seconds / maglev_seconds, 2),
        "cold_over_maglev_builds": round(cold_seconds / maglev_seconds, 2),
        "budget_seconds": BUDGET_RESTART_SECONDS,
    }


def run_control_bench(changes: int = 50, backends: int = 1000) -> dict[str, Any]:
    """Both measurements, as the issue's JSON shape (with the baselines beside them)."""
    if os.geteuid() != 0:
        raise PermissionError("bench control needs root: it loads BPF and makes a namespace")
    with (
        tempfile.TemporaryDirectory(prefix="rusty-rail-bench-") as scratch,
        _bench_namespace() as (namespace, pins),
        in_netns(namespace),
    ):
        change = _change_to_live(pins / "a", Path(scratch) / "a.json", changes, backends)
        restart = _restart_rebuild(pins / "b", Path(scratch) / "b.json")
    return {"change_to_live": change, "restart_rebuild": restart}


def render_control_bench(result: dict[str, Any]) -> str:
    change, restart = result["change_to_live"], result["restart_rebuild"]
    lines = [
        f"change to live: one backend added or removed through the API, VIP of "
        f"{change['backends']} backends, M = {change['table_size']}, {change['changes']} changes",
        f"  live (the new table's pointer swapped in, seen by a watcher process): p50 "
        f"{change['p50_ms']:.2f} ms, p99 {change['p99_ms']:.2f} ms (budget p99 <= "
        f"{change['budget_p99_ms']:g} ms)",
        f"  answered (the API's reply, after the kernel's RCU grace period): p50 "
        f"{change['answered_p50_ms']:.2f} ms, p99 {change['answered_p99_ms']:.2f} ms",
        f"  server side p50: build {change['server_build_ms_p50']:.2f} ms, apply "
        f"{change['server_apply_ms_p50']:.2f} ms",
        f"  baseline: no-op API write {change['baseline_noop_write_ms_p50']:.2f} ms "
        f"(live p50 = {change['p50_over_noop_write']}x), bare Maglev build "
        f"{change['baseline_maglev_build_ms']:.2f} ms (p50 = {change['p50_over_maglev_build']}x)",
        f"  tables not yet live when the API answered: {change['tables_not_live_after_answer']}",
        f"restart rebuild: {restart['vips']} VIPs x {restart['backends_per_vip']} backends",
        f"  restart (adopting the pinned maps): {restart['seconds']:.3f} s = read "
        f"{restart['read_state_seconds']:.3f} + build {restart['build_seconds']:.3f} + apply "
        f"{restart['apply_seconds']:.3f} (budget <= {restart['budget_seconds']:g} s)",
        f"  cold (fresh maps, every table written): {restart['cold_seconds']:.3f} s",
        f"  whole daemon start on the pinned maps: {restart['daemon_start_seconds']:.3f} s",
        f"  first start, {restart['vips'] * restart['backends_per_vip']} backends (next hops, "
        f"plan, load, write, attach): {restart['start_6400_backends_s']:.3f} s (budget <= "
        f"{restart['start_6400_backends_budget_s']:g} s; "
        f"{restart['start_over_maglev_builds']}x the bare Maglev builds)",
        f"  baseline: {restart['vips']} bare Maglev builds "
        f"{restart['baseline_maglev_builds_seconds']:.3f} s (restart = "
        f"{restart['seconds_over_maglev_builds']}x, cold = {restart['cold_over_maglev_builds']}x)",
    ]
    return "\n".join(lines)
