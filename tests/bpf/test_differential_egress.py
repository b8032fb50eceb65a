"""The XDP balancer against the reference pipeline for routed ingress and the egress methods
(docs/packet-path.md sections 2c and 8b): the generated stream of test_differential with every
backend slot given a random method and VNI, GRE ingress sometimes off and routed ingress
sometimes on, and plain packets (to VIPs and not, whole, truncated, broken, fragments) beside
the GRE ones. Every legal (ingress, outer, egress, backend family, inner family) combination
must be forwarded at least once."""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import replace

import pytest

from rusty_rail.model import pipeline
from rusty_rail.model.parse import parse_ethernet
from rusty_rail.model.state import (
    BackendEntry,
    DataplaneState,
    Egress,
    NextHop,
    Settings,
    Stat,
)
from rusty_rail.wire.build import ethernet, ipv4, ipv4_fragments
from rusty_rail.wire.constants import ETH_HEADER_LEN, ETH_P_IPV4, ETH_P_IPV6
from rusty_rail.wire.frames import LB_MAC, ROUTER_MAC
from tests.bpf.test_differential import (
    CHUNK,
    SEED,
    Generator,
    balancer,
    compare_packet,
    one_cpu,
)
from tests.support.balancer_harness import Balancer

pytestmark = pytest.mark.bpf
__all__ = ["balancer", "one_cpu"]  # the fixtures, shared

EGRESS_PACKETS = 12_000
ROUNDS = 12
#: Stats a routed packet may end with when it is not taken (section 2c).
ROUTED_PASS = {Stat.PASS_NOT_GRE, Stat.PASS_NOT_LOCAL}


class EgressGenerator(Generator):
    """Generator's states with egress methods and ingress settings, and routed frames too."""

    def settings(self) -> Settings:
        return replace(
            super().settings(),
            gre_ingress=self.rng.random() < 0.85,
            routed_ingress=self.rng.random() < 0.75,
        )

    def next_hop(self) -> NextHop | None:
        """Generator's next hops, a small MTU (section 8c) rarer: most packets are sent."""
        hop = super().next_hop()
        if hop is not None and self.pmtu_rng.random() < 0.6:
            hop = replace(hop, mtu=0)
        return hop

    def backend(self, vip_index: int) -> BackendEntry:
        return replace(
            super().backend(vip_index),
            egress=self.choice(list(Egress)),
            vni=self.choice((0, 1, 4096, 0xFFFFFF, self.rng.randrange(1 << 24))),
        )

    def state(self) -> DataplaneState:
        """Generator's state, its slots given every (method, family) in turn: a state of a
        few dozen slots then holds each one."""
        state = super().state()
        kinds = [(egress, family) for egress in Egress for family in (4, 6)]
        for number, index in enumerate(sorted(state.backends)):
            egress, family = kinds[(number + self.rng.randrange(2)) % len(kinds)]
            entry = state.backends[index]
            addr = entry.addr
            if len(addr) != (16 if family == 6 else 4):
                addr = self._address(entry.vip_index, family)
            state.backends[index] = replace(entry, addr=addr, egress=egress)
        return state

    def _address(self, vip_index: int, family: int) -> bytes:
        host = self.rng.randrange(1, 250)
        if family == 6:
            return ipaddress.IPv6Address(f"2001:2:0:{10 + vip_index}::{host}").packed
        return ipaddress.IPv4Address(f"198.18.{10 + vip_index}.{host}").packed

    def change(self, state: DataplaneState, balancer: Balancer) -> str:
        """Generator's changes, and half the time a slot given another method, VNI and address
        (of either family) in place."""
        if self.rng.random() < 0.5:
            return super().change(state, balancer)
        index = self.choice(sorted(state.backends))
        entry = state.backends[index]
        fresh = self.backend(entry.vip_index)
        changed = replace(entry, addr=fresh.addr, egress=fresh.egress, vni=fresh.vni)
        state.backends[index] = changed
        balancer.maps.set_backend(index, changed)
        return f"backend {index} -> {changed.egress.name} vni {changed.vni}"

    def routed_frame(self) -> bytes:
        """A plain IPv4 or IPv6 packet to a VIP or not, sometimes cut short or broken."""
        rng = self.rng
        ipv6 = rng.random() < 0.4
        if ipv6:
            packet = self.inner6(self.choice(self.flows6))
        elif rng.random() < 0.1:
            flow = self.choice(self.flows)
            datagram = ipv4(flow.src, flow.dst, flow.proto, rng.randbytes(rng.randrange(9, 99)))
            packet = self.choice(ipv4_fragments(datagram, 8 * rng.randrange(1, 4)))
        else:
            packet = self.inner(self.choice(self.flows))
        if rng.random() < 0.1:  # a broken byte in the header or the ports
            broken = bytearray(packet)
            broken[rng.randrange(min(len(broken), 44))] = rng.randrange(256)
            packet = bytes(broken)
        frame = ethernet(
            LB_MAC, ROUTER_MAC, ETH_P_IPV6 if ipv6 else ETH_P_IPV4, packet,
            vlans=self.vlans(), pad_to=self.choice((0, 0, 0, 60, 128)),
        )  # fmt: skip
        if rng.random() < 0.08:
            frame = frame[: rng.randrange(ETH_HEADER_LEN, len(frame) + 1)]
        return frame

    def frame(self) -> tuple[str, bytes]:
        if self.rng.random() < 0.4:
            return "routed", self.routed_frame()
        return super().frame()


def _combination(
    state: DataplaneState, frame: bytes, result: pipeline.Result
) -> tuple[str, int, Egress, int, int]:
    """A forwarded packet's (ingress, arriving outer family, egress, backend, inner family)."""
    assert result.flow is not None and result.decision is not None
    assert result.decision.backend_index is not None
    ethertype, l3 = parse_ethernet(frame)
    backend = state.backends[result.decision.backend_index]
    outer = 6 if ethertype == ETH_P_IPV6 else 4
    inner = 6 if result.flow.is_ipv6 else 4
    # A routed packet's header is its flow's own; a GRE one's destination is this node's.
    routed = (
        frame[l3 + (24 if outer == 6 else 16) :][: 16 if outer == 6 else 4] == (result.flow.dst)
        and outer == inner
    )
    family = 6 if len(backend.addr) == 16 else 4
    return ("routed" if routed else "gre", outer, backend.egress, family, inner)


def test_routed_ingress_and_every_egress_agree_with_the_reference(
    balancer: Balancer, one_cpu: None
) -> None:
    generator = EgressGenerator(random.Random(SEED + 11))
    seen: set[tuple[str, int, Egress, int, int]] = set()
    outcomes: dict[Stat, int] = {}
    start = time.monotonic()
    for round_ in range(ROUNDS):  # fresh states: each gives its slots other methods
        state = generator.state()
        balancer.load_state(state, generator.watch)
        generator.buckets(balancer)  # section 8c: the same buckets on both sides
        stream: list[tuple[str, bytes]] = []
        for _ in range(2):  # every truncation of a few routed frames
            frame = generator.routed_frame()
            stream += [(f"routed cut to {cut}", frame[:cut]) for cut in range(14, len(frame) + 1)]
        while len(stream) < EGRESS_PACKETS // ROUNDS:
            stream.append(generator.frame())
        for number, (kind, frame) in enumerate(stream):
            if number and number % CHUNK == 0:
                assert balancer.maps.dump_conntrack() == state.conntrack, f"before {number}"
                generator.change(state, balancer)
                balancer.vip_indexes = list(range(8))
                balancer.backend_indexes = list(range(48))
            ingress = 1 if generator.rng.random() < 0.9 else 2
            what = f"round {round_} packet {number} ({kind})"
            result = compare_packet(
                balancer, state, frame, what, ingress, generator.watch, generator.limiter
            )
            outcomes[result.stat] = outcomes.get(result.stat, 0) + 1
            if result.decision is not None and result.decision.forwards:  # sent, or too big
                seen.add(_combination(state, frame, result))
        assert balancer.maps.dump_conntrack() == state.conntrack

    every = {
        ("gre", outer, egress, backend, inner)
        for outer in (4, 6)
        for egress in Egress
        for backend in (4, 6)
        for inner in (4, 6)
    } | {
        ("routed", inner, egress, backend, inner)
        for egress in Egress
        for backend in (4, 6)
        for inner in (4, 6)
    }
    assert every <= seen, f"never forwarded: {sorted(every - seen)}"
    assert {Stat.PASS_NOT_GRE, Stat.PASS_NOT_LOCAL, Stat.PASS_UNSUPPORTED} <= set(outcomes)
    print(f"{EGRESS_PACKETS} packets in {time.monotonic() - start:.1f} s; outcomes {outcomes}")
