"""A real BGP router for the BGP tests: BIRD 2 in a test's network namespace, AS 65000,
passive, taking any peer of AS 65001 from the balancers' segment and installing what it
learns in the namespace's kernel routing table (ECMP merged), as a router would."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rusty_rail.control.bird import bird_binary
from rusty_rail.testbed.netns import Namespace
from tests.support.environment import skip_or_fail

ROUTER_ASN = 65000
BALANCER_ASN = 65001


def router_config(router_id: str, segment: str, hold_time: int = 3) -> str:
    return f"""router id {router_id};
protocol device {{ }}
protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}
protocol kernel {{ ipv6 {{ import none; export all; }}; merge paths on; }}
protocol bgp balancers {{
  local as {ROUTER_ASN};
  neighbor range {segment} as {BALANCER_ASN};
  passive on;
  hold time {hold_time};
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"""


@dataclass
class BirdRouter:
    namespace: Namespace
    process: subprocess.Popen[bytes]
    control: Path

    def routes(self, prefix: str) -> str:
        """The kernel's route to ``prefix`` in the router's namespace as BIRD installed it
        ("" when there is none)."""
        family = "-6" if ":" in prefix else "-4"
        return self.namespace.ip(family, "route", "show", prefix, "proto", "bird").strip()

    def birdc(self, *command: str) -> str:
        return self.namespace.exec("birdc", "-s", str(self.control), *command)

    def established(self) -> int:
        """Sessions with balancers that are established."""
        return self.birdc("show", "protocols").count("Established")

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 20) -> float:
        """Poll until ``condition``; the seconds it took."""
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{what}: not within {timeout} s; router: "
                                     f"{self.birdc('show', 'route', 'all')}")  # fmt: skip
            time.sleep(0.02)
        return time.monotonic() - start


@contextlib.contextmanager
def bird_router(
    namespace: Namespace, directory: Path, router_id: str, segment: str, hold_time: int = 3
) -> Iterator[BirdRouter]:
    binary = bird_binary()
    if binary is None:
        skip_or_fail("BIRD 2 is not installed: run scripts/setup (Debian's bird2)")
        raise AssertionError("unreachable")
    config = directory / "router-bird.conf"
    config.write_text(router_config(router_id, segment, hold_time))
    control = directory / "router-bird.ctl"
    log = (directory / "router-bird.log").open("wb")
    process = namespace.popen(binary, "-f", "-c", str(config), "-s", str(control),
                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    router = BirdRouter(namespace, process, control)
    try:
        deadline = time.monotonic() + 10
        while not control.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"BIRD did not start: {config.read_text()}")
            time.sleep(0.02)
        yield router
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
