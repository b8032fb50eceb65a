"""Section 8c of docs/packet-path.md in the kernel, beyond the packet cases: the per-VIP, per-CPU
token bucket over many packets (its burst, then the limit; its refill from the clock), the
per-VIP counters, and the next hop's MTU written and read back through the maps."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rusty_rail.model import pmtu
from rusty_rail.model.pmtu import (
    ICMP_ERROR_TOS,
    ICMP_ERROR_TTL,
    TOO_BIG_BURST,
    TOO_BIG_REFILL_SHIFT,
    Bucket,
    TooBig,
)
from rusty_rail.model.state import Stat, Verdict
from tests.support.balancer_harness import Balancer, loaded_balancer
from tests.support.cases import WEB_PORT_VIP, case_by_name
from tests.support.cases._base import BUCKET_STAMP_FUTURE

pytestmark = pytest.mark.bpf

#: A routed IPv4 packet with DF, one byte too big for IPIP to its backend: the packet case that
#: answers with an ICMP error while the web VIP's bucket holds a token.
TOO_BIG = case_by_name("pmtu-ipip-4in4-one-byte-over")


@pytest.fixture(scope="module")
def balancer(require_root: None) -> Iterator[Balancer]:
    with loaded_balancer() as loaded:
        yield loaded


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """This thread on one CPU: the buckets are per CPU."""
    cpus = os.sched_getaffinity(0)
    cpu = min(cpus)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, cpus)


def _verdicts(balancer: Balancer, count: int) -> list[Verdict]:
    return [Verdict(balancer.run(TOO_BIG.frame).retval) for _ in range(count)]


def test_a_vip_answers_its_burst_then_drops(balancer: Balancer, one_cpu: int) -> None:
    balancer.load_state(TOO_BIG.state())
    balancer.too_big.set_bucket(WEB_PORT_VIP, Bucket(BUCKET_STAMP_FUTURE, TOO_BIG_BURST))
    before = balancer.counters()

    verdicts = _verdicts(balancer, TOO_BIG_BURST + 5)

    assert verdicts == [Verdict.TX] * TOO_BIG_BURST + [Verdict.DROP] * 5
    delta = balancer.counters().delta_since(before)
    size = len(TOO_BIG.frame)
    assert delta.stats == {
        Stat.TOO_BIG_ICMP: (TOO_BIG_BURST, TOO_BIG_BURST * size),
        Stat.TOO_BIG_LIMITED: (5, 5 * size),
    }
    assert delta.too_big == {
        (WEB_PORT_VIP, TooBig.ICMP): (TOO_BIG_BURST, TOO_BIG_BURST * size),
        (WEB_PORT_VIP, TooBig.LIMITED): (5, 5 * size),
    }
    assert delta.vips == {} and delta.backends == {}  # nothing reached a backend
    assert balancer.too_big.read_buckets(WEB_PORT_VIP)[one_cpu].tokens == 0


def test_an_empty_bucket_is_refilled_by_the_clock(balancer: Balancer, one_cpu: int) -> None:
    balancer.load_state(TOO_BIG.state())
    # Empty, stamped at boot: far more than 64 refill intervals (2^20 ns each) ago.
    balancer.too_big.set_bucket(WEB_PORT_VIP, Bucket(stamp_ns=1, tokens=0))
    started = time.monotonic_ns()

    assert _verdicts(balancer, 1) == [Verdict.TX]

    bucket = balancer.too_big.read_buckets(WEB_PORT_VIP)[one_cpu]
    assert bucket.tokens == TOO_BIG_BURST - 1  # full, less the one taken
    assert started <= bucket.stamp_ns <= time.monotonic_ns()  # CLOCK_MONOTONIC, as ktime


def test_an_unwritten_bucket_is_full(balancer: Balancer, one_cpu: int) -> None:
    balancer.load_state(TOO_BIG.state())  # writes every bucket all zero

    assert _verdicts(balancer, TOO_BIG_BURST + 1) == [Verdict.TX] * TOO_BIG_BURST + [Verdict.DROP]


def test_each_vip_has_its_own_bucket(balancer: Balancer, one_cpu: int) -> None:
    balancer.load_state(TOO_BIG.state())
    balancer.too_big.set_bucket(WEB_PORT_VIP, Bucket(BUCKET_STAMP_FUTURE, 0))
    other = case_by_name("pmtu-icmp-leaves-by-the-ingress")  # the DNS VIP's
    balancer.load_state(other.state())
    balancer.too_big.set_bucket(WEB_PORT_VIP, Bucket(BUCKET_STAMP_FUTURE, 0))

    assert Verdict(balancer.run(other.frame).retval) == Verdict.TX


def test_the_next_hop_mtu_is_written_and_read_back(balancer: Balancer) -> None:
    state = TOO_BIG.state()
    balancer.load_state(state)
    assert balancer.maps.read_state(conntrack=False).backends == state.backends
    index, entry = next(
        (i, b) for i, b in state.backends.items() if b.next_hop is not None and b.next_hop.mtu
    )
    assert balancer.maps.read_backend(index) == entry


def test_the_constants_agree_with_pmtu_h() -> None:
    source = (Path(pmtu.__file__).parent.parent / "bpf" / "pmtu.h").read_text()
    defines = dict(re.findall(r"^#define (\w+) (\S+)", source, re.MULTILINE))
    assert int(defines["TOO_BIG_BURST"]) == TOO_BIG_BURST
    assert int(defines["TOO_BIG_REFILL_SHIFT"]) == TOO_BIG_REFILL_SHIFT
    assert int(defines["ICMP_ERROR_TOS"], 16) == ICMP_ERROR_TOS
    assert int(defines["ICMP_ERROR_TTL"]) == ICMP_ERROR_TTL
