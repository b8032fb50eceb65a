"""The tunnel probe (docs/health.md) between two real namespaces: the balancer's side sends
echoes inside GRE from its own addresses, the backend's side runs `rusty-rail decap` (or not).
An IPv6 backend that decapsulates answers through IPv6 GRE; one that does not, one that allows
only IPv4 balancers, and an address nothing answers at are unhealthy, and say so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from rusty_rail._types import IPAddress
from rusty_rail.control.checks import Outcome, TunnelProber
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.decap.agent import decap_attach, decap_detach, decap_status
from tests.support.veth import VethPair

pytestmark = pytest.mark.e2e

LB4, LB6 = IPv4Address(VethPair.NEAR4), IPv6Address(VethPair.NEAR6)
BACKEND4, BACKEND6 = IPv4Address(VethPair.FAR4), IPv6Address(VethPair.FAR6)
#: On the link, but no namespace has it: neighbour discovery finds no one.
NOBODY6 = IPv6Address("2001:2::99")
#: Long enough that a backend that answers always does, even on a loaded machine.
ANSWER_WITHIN = 5.0
#: How long a probe that cannot be answered waits.
NO_ANSWER_WITHIN = 0.3


def probe(
    pair: VethPair, backends: list[IPAddress], timeout: float, lb_ipv6: IPv6Address | None = LB6
) -> list[Outcome]:
    """Probe ``backends`` one after the other from the near namespace (the sockets are made
    there, so they send and receive there)."""

    async def run() -> list[Outcome]:
        with in_netns(pair.near):
            prober = TunnelProber(LB4, lb_ipv6)
        prober.start(asyncio.get_running_loop())
        try:
            return [await prober.probe(backend, timeout) for backend in backends]
        finally:
            prober.close()

    return asyncio.run(run())


@pytest.fixture
def decap(veth_pair: VethPair, bpffs_dir: Path) -> Iterator[Path]:
    """Decapsulation on the far end, taking GRE from both of the near end's addresses."""
    decap_attach(veth_pair.far_if, [str(LB4), str(LB6)], netns=veth_pair.far, pin_root=bpffs_dir)
    try:
        yield bpffs_dir
    finally:
        decap_detach(veth_pair.far_if, netns=veth_pair.far, pin_root=bpffs_dir)


def decapsulated(pair: VethPair, pins: Path) -> int:
    status = decap_status(pair.far_if, netns=pair.far, pin_root=pins)
    return int(status["counters"]["decapsulated"]["packets"])


def test_an_ipv6_backend_that_decapsulates_answers_the_probe(
    veth_pair: VethPair, decap: Path
) -> None:
    ipv6, ipv4 = probe(veth_pair, [BACKEND6, BACKEND4], ANSWER_WITHIN)
    assert ipv6.ok and ipv6.detail.startswith(f"tunnel {BACKEND6}: echo reply in ")
    assert ipv4.ok and ipv4.detail.startswith(f"tunnel {BACKEND4}: echo reply in ")
    # The echoes went through GRE: the backend's decap took them off.
    assert decapsulated(veth_pair, decap) >= 2


def test_an_ipv6_backend_without_decap_is_unhealthy(veth_pair: VethPair) -> None:
    (outcome,) = probe(veth_pair, [BACKEND6], NO_ANSWER_WITHIN)
    assert outcome == Outcome(
        False, f"tunnel {BACKEND6}: no echo reply through GRE in {NO_ANSWER_WITHIN:g} s"
    )


def test_an_ipv6_backend_whose_decap_allows_only_ipv4_balancers_is_unhealthy(
    veth_pair: VethPair, bpffs_dir: Path
) -> None:
    decap_attach(veth_pair.far_if, [str(LB4)], netns=veth_pair.far, pin_root=bpffs_dir)
    try:
        ipv6, ipv4 = probe(veth_pair, [BACKEND6, BACKEND4], ANSWER_WITHIN)
    finally:
        decap_detach(veth_pair.far_if, netns=veth_pair.far, pin_root=bpffs_dir)
    assert not ipv6.ok and "no echo reply through GRE" in ipv6.detail
    assert ipv4.ok


def test_an_ipv6_address_nothing_answers_at_is_unhealthy(veth_pair: VethPair, decap: Path) -> None:
    (outcome,) = probe(veth_pair, [NOBODY6], NO_ANSWER_WITHIN)
    assert not outcome.ok
    assert (
        outcome.detail == f"tunnel {NOBODY6}: no echo reply through GRE in {NO_ANSWER_WITHIN:g} s"
    )


def test_without_an_ipv6_address_to_probe_from_an_ipv6_probe_says_so(
    veth_pair: VethPair, decap: Path
) -> None:
    ipv6, ipv4 = probe(veth_pair, [BACKEND6, BACKEND4], ANSWER_WITHIN, lb_ipv6=None)
    assert ipv6 == Outcome(
        False,
        f"tunnel {BACKEND6}: cannot send: this node has no IPv6 address to probe from "
        "(lb_address_ipv6)",
    )
    assert ipv4.ok
