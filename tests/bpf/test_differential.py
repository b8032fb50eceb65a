"""The XDP balancer against rusty_rail.model.pipeline, the executable spec: on the same bytes and
the same starting state both must give the same verdict, output bytes, counter deltas (stats, VIP,
backend and ICMP counters), connection-table contents, ICMP reports and watch. Hand-written
cases, then a seeded stream of generated frames (valid ones of every kind, every truncation of
some, broken GRE, fragments, options, VLAN tags, traffic for the host, ICMP unreachables quoting
GRE, random bytes) with state changes between chunks.
Also: the C flow hash against the Python one and the checked-in vectors, through a probe
program; and Maglev table swaps racing new flows.
"""

from __future__ import annotations

import json
import os
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest

from rusty_rail.dataplane.libbpf import BpfObject, Program
from rusty_rail.model import pipeline
from rusty_rail.model.flowhash import Flow, flow_hash, mix64
from rusty_rail.model.icmp import IcmpStat, IcmpWatch
from rusty_rail.model.parse import parse_ethernet
from rusty_rail.model.pmtu import TOO_BIG_BURST, Bucket, TooBigLimiter
from rusty_rail.model.state import (
    NONE_INDEX,
    Action,
    Affinity,
    BackendEntry,
    BackendState,
    CtEntry,
    DataplaneState,
    Egress,
    NextHop,
    Settings,
    Stat,
    Verdict,
    VipKey,
)
from rusty_rail.wire.build import (
    ethernet,
    gre,
    icmp,
    ipv4,
    ipv4_fragments,
    ipv6,
    ipv6_chain,
    ipv6_fragment_header,
    l4_for,
    tcp,
    udp,
)
from rusty_rail.wire.constants import (
    ETH_HEADER_LEN,
    ETH_P_8021AD,
    ETH_P_ARP,
    ETH_P_IPV4,
    ETH_P_IPV6,
    IPV6_EXT_DEST_OPTIONS,
    IPV6_EXT_FRAGMENT,
    IPV6_EXT_HOP_BY_HOP,
    IPV6_EXT_ROUTING,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
)
from rusty_rail.wire.describe import describe
from rusty_rail.wire.fields import VlanTag, ipv4_address, ipv6_address, mac
from rusty_rail.wire.frames import (
    LB_IPV4,
    LB_IPV6,
    LB_MAC,
    OUTER_IPV6,
    ROUTER_IPV4,
    ROUTER_IPV6,
    ROUTER_MAC,
    Outer,
    encapsulate,
    inner_ipv4,
    inner_ipv6,
)
from tests.support.balancer_harness import REDIRECT_IFINDEXES, Balancer, loaded_balancer
from tests.support.cases import CASES, PacketCase
from tests.support.cases._base import BUCKET_STAMP_FUTURE

pytestmark = pytest.mark.bpf

VECTORS = json.loads((Path(__file__).parent.parent / "unit" / "flowhash_vectors.json").read_text())
SEED = int(os.environ.get("RUSTY_RAIL_DIFFERENTIAL_SEED", "20240601"))
GENERATED_PACKETS = 20_000
CHUNK = 500  # packets between state changes and whole-table comparisons
FUTURE_NS = 1 << 63  # a too-big bucket's stamp no clock reaches: never refilled (section 8c)


@pytest.fixture(scope="module")
def balancer(require_root: None) -> Iterator[Balancer]:
    with loaded_balancer() as loaded:
        yield loaded


# --- The hash: C against Python, through a probe --------------------------------------------


@pytest.fixture(scope="module")
def hash_probe(compile_bpf: Callable[[str], Path]) -> Iterator[Program]:
    with BpfObject.open(compile_bpf("hash_probe")) as probe_object:
        probe_object.load()
        yield probe_object.program("hash_probe")


PROBE_WORDS = 16


def _probe(program: Program, seed: int, words: list[int], *, mode: int = 0) -> int:
    padded = words + [0] * (PROBE_WORDS - len(words))
    frame = struct.pack(f"<QII{PROBE_WORDS}I", seed, len(words), mode, *padded)
    run = program.test_run(frame)
    assert Verdict(run.retval) == Verdict.PASS
    value: int = struct.unpack_from("<Q", run.data)[0]
    return value


@pytest.mark.parametrize("case", VECTORS["mix"], ids=lambda c: f"{len(c['words'])}w")
def test_c_mix_matches_the_vectors(hash_probe: Program, case: dict[str, object]) -> None:
    words = case["words"]
    assert isinstance(words, list)
    result = _probe(hash_probe, int(str(case["seed"])), words)
    assert result == case["mix64"]
    assert result & 0xFFFFFFFF == case["hash32"]


def _flow_key_words(flow: Flow) -> tuple[list[int], int]:
    """The probe's words for ``flow``'s key (struct flow_key, or flow6_key for IPv6) and the
    mode that hashes it."""
    key = flow.src + flow.dst + struct.pack("!HH", flow.sport, flow.dport)
    key += bytes([flow.proto, 0, 0, 0])
    return list(struct.unpack(f"<{len(key) // 4}I", key)), 2 if flow.is_ipv6 else 1


@pytest.mark.parametrize("case", VECTORS["flows"], ids=lambda c: f"{c['src']}-{c['proto']}")
def test_c_flow_hash_matches_the_vectors(hash_probe: Program, case: dict[str, object]) -> None:
    flow = Flow.of(
        str(case["src"]), str(case["dst"]), int(str(case["proto"])),
        int(str(case["sport"])), int(str(case["dport"])),
    )  # fmt: skip
    words, mode = _flow_key_words(flow)
    result = _probe(hash_probe, int(str(case["seed"])), words, mode=mode)
    assert result & 0xFFFFFFFF == case["hash32"]


def test_c_hash_matches_python_on_random_input(hash_probe: Program) -> None:
    rng = random.Random(SEED)
    for _ in range(2000):
        seed = rng.getrandbits(64)
        words = [rng.getrandbits(32) for _ in range(rng.randrange(PROBE_WORDS + 1))]
        assert _probe(hash_probe, seed, words) == mix64(seed, words)
    for _ in range(2000):
        seed = rng.getrandbits(64)
        flow = Flow(
            rng.randbytes(4), rng.randbytes(4), rng.randrange(256),
            rng.randrange(65536), rng.randrange(65536),
        )  # fmt: skip
        words, mode = _flow_key_words(flow)
        assert _probe(hash_probe, seed, words, mode=mode) == mix64(seed, flow.words())
    for _ in range(2000):
        seed = rng.getrandbits(64)
        flow = Flow(
            rng.randbytes(16), rng.randbytes(16), rng.randrange(256),
            rng.randrange(65536), rng.randrange(65536),
        )  # fmt: skip
        words, mode = _flow_key_words(flow)
        assert mode == 2
        assert _probe(hash_probe, seed, words, mode=mode) == mix64(seed, flow.words())


# --- Comparing one packet ---------------------------------------------------------------------


def _show(frame: bytes) -> str:
    try:
        return str(describe(frame))
    except Exception as error:  # describing garbage is best effort; the hex is the truth
        return f"undescribable ({error})"


def compare_packet(
    balancer: Balancer,
    state: DataplaneState,
    frame: bytes,
    what: str,
    ingress: int = 1,
    watch: IcmpWatch | None = None,
    limiter: TooBigLimiter | None = None,
) -> pipeline.Result:
    """Run ``frame`` through both; fail with the whole story on any difference."""
    before = balancer.counters()
    run = balancer.run(frame, ingress)
    got_counters = balancer.counters().delta_since(before)
    got_reports = balancer.reports()
    expected = pipeline.process(state, frame, ingress, icmp=watch, too_big_limiter=limiter)

    def story(problem: str) -> str:
        return (
            f"{what}: {problem}\n  frame {frame.hex()}\n  {_show(frame)}\n"
            f"  reference: {expected.verdict.name} {expected.stat.name} {expected.decision}\n"
            f"  program:   verdict {run.retval}, counters {got_counters}"
        )

    assert Verdict(run.retval) == expected.verdict, story("verdicts differ")
    assert run.data == expected.frame, story(f"output differs: {run.data.hex()}")
    assert got_counters == expected.counters, story(f"counters differ: {expected.counters}")
    expected_reports = [] if expected.report is None else [expected.report]
    assert got_reports == expected_reports, story(f"reports differ: {got_reports}")
    if expected.flow is not None:
        got_entry = balancer.conntrack_entry(expected.flow)
        assert got_entry == state.conntrack.get(expected.flow), story(
            f"connection-table entry {got_entry} != {state.conntrack.get(expected.flow)}"
        )
    return expected


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if len(c.frame) >= ETH_HEADER_LEN and c.watch().ring_free is None],
    ids=lambda c: c.name,
)
def test_hand_written_case_agrees_with_the_reference(balancer: Balancer, case: PacketCase) -> None:
    state, watch = case.state(), case.watch()
    balancer.load_state(state, watch)
    for vip_index, tokens in case.buckets:
        balancer.too_big.set_bucket(vip_index, Bucket(BUCKET_STAMP_FUTURE, tokens))
    compare_packet(
        balancer, state, case.frame, case.name, case.ingress_ifindex, watch, case.limiter()
    )
    assert balancer.maps.dump_conntrack() == state.conntrack
    assert balancer.icmp.read_watch() == watch


# --- Generated traffic ------------------------------------------------------------------------

VIP_ADDRESSES = [f"198.19.0.{n}" for n in range(1, 5)]
NOT_VIPS = ["198.19.0.99", "198.18.0.2", "0.0.0.0"]
VIP6_ADDRESSES = [f"2001:2:0:19::{n}" for n in range(1, 4)]
NOT_VIPS6 = ["2001:2:0:19::99", "::ffff:198.19.0.1", "::"]
EXTENSIONS = (IPV6_EXT_HOP_BY_HOP, IPV6_EXT_ROUTING, IPV6_EXT_DEST_OPTIONS, IPV6_EXT_FRAGMENT)
MACS = [mac(f"02:00:00:00:10:{n:02x}") for n in range(8)]
TABLE_SIZES = (1, 2, 3, 7, 13, 31, 251)
OTHER_PROTOCOLS = (PROTO_ICMP, PROTO_GRE, 0, 41, 132, 255)

T = TypeVar("T")


@dataclass
class Generator:
    """Seeded states, flows and frames for the differential run."""

    rng: random.Random

    def __post_init__(self) -> None:
        self.flows = [self.flow() for _ in range(400)]
        self.flows6 = [self.flow6() for _ in range(200)]
        self.watch = IcmpWatch()
        self.limiter = TooBigLimiter(now_ns=0)  # no clock: the buckets are stamped later
        #: Section 8c's draws (MTUs, methods, DF, buckets) from a generator of their own, so
        #: that the stream of the rest stays what it was.
        self.pmtu_rng = random.Random(0x8C)
        #: Session affinity's draws (each VIP's mode), likewise apart.
        self.affinity_rng = random.Random(0xAF)
        self.addresses: list[bytes] = []  # backend addresses of the current state

    def choice(self, items: list[T] | tuple[T, ...]) -> T:
        return items[self.rng.randrange(len(items))]

    # state

    def next_hop(self) -> NextHop | None:
        if self.rng.random() < 0.1:
            return None
        ifindex = self.choice((0, 1, 1, *REDIRECT_IFINDEXES))
        hop = NextHop(ifindex, self.choice(MACS), self.choice(MACS))
        return replace(hop, mtu=self.pmtu_rng.choice((0, 0, 1500, 160, 120, 90)))

    def backend(self, vip_index: int) -> BackendEntry:
        state = self.choice(
            (BackendState.UP,) * 6 + (BackendState.DRAIN, BackendState.DOWN, BackendState.UNUSED)
        )
        host = self.rng.randrange(1, 250)
        ipv6_backend = self.rng.random() < 0.35  # section 8: the outer header of its family
        methods = (Egress.GRE,) * 4 + (Egress.IPIP, Egress.VXLAN, Egress.GENEVE, Egress.ROUTE)
        egress = self.pmtu_rng.choice(methods)
        return BackendEntry(
            addr=ipv6_address(f"2001:2:0:{10 + vip_index}::{host}")
            if ipv6_backend
            else ipv4_address(f"198.18.{10 + vip_index}.{host}"),
            vip_index=vip_index,
            generation=self.rng.randrange(1, 4),
            state=state,
            next_hop=self.next_hop(),
            egress=egress,
            vni=self.pmtu_rng.randrange(1 << 24) if egress in (Egress.VXLAN, Egress.GENEVE) else 0,
        )

    def buckets(self, balancer: Balancer) -> str:
        """Section 8c: the VIPs' token buckets, the same on both sides and on every CPU; stamped
        in the future, so that neither side adds tokens while the stream runs."""
        counts = (0, 1, 3, TOO_BIG_BURST)
        tokens = {vip_index: self.pmtu_rng.choice(counts) for vip_index in range(8)}
        for vip_index, count in tokens.items():
            bucket = Bucket(stamp_ns=FUTURE_NS, tokens=count)
            self.limiter.buckets[vip_index] = replace(bucket)
            balancer.too_big.set_bucket(vip_index, bucket)
        return f"too-big buckets {tokens}"

    def table(self, state: DataplaneState, vip_index: int) -> list[int]:
        own = [i for i, b in state.backends.items() if b.vip_index == vip_index] or [0]
        size = self.choice(TABLE_SIZES)
        slots = []
        for _ in range(size):
            roll = self.rng.random()
            if roll < 0.05:
                slots.append(NONE_INDEX)
            elif roll < 0.08:
                slots.append(self.rng.randrange(40))  # another VIP's slot, or no slot at all
            else:
                slots.append(self.choice(own))
        return slots

    def settings(self) -> Settings:
        return Settings(
            lb_ipv4=ipv4_address(LB_IPV4),
            lb_ipv6=ipv6_address(LB_IPV6),
            outer_ttl=self.rng.randrange(256),
            no_vip_action=self.choice((Action.PASS, Action.DROP)),
            malformed_action=self.choice((Action.PASS, Action.DROP)),
            default_vip=self.choice((NONE_INDEX, NONE_INDEX, 4, 5)),
            hash_seed=self.rng.getrandbits(64),
        )

    def state(self) -> DataplaneState:
        state = DataplaneState(settings=self.settings())
        for vip_index, address in enumerate(VIP_ADDRESSES):
            if self.rng.random() < 0.8:
                state.vips[VipKey(ipv4_address(address), PROTO_TCP, 80)] = vip_index
            if self.rng.random() < 0.5:
                state.vips[VipKey(ipv4_address(address), PROTO_UDP, 53)] = (vip_index + 1) % 6
            if self.rng.random() < 0.6:
                state.vips[VipKey(ipv4_address(address))] = (vip_index + 2) % 6
            if self.rng.random() < 0.3:  # port 0: only unfragmented TCP to port 0 matches it
                state.vips[VipKey(ipv4_address(address), PROTO_TCP, 0)] = (vip_index + 3) % 6
        for vip_index, address in enumerate(VIP6_ADDRESSES):
            if self.rng.random() < 0.8:
                state.vips[VipKey(ipv6_address(address), PROTO_TCP, 80)] = (vip_index + 1) % 6
            if self.rng.random() < 0.5:
                state.vips[VipKey(ipv6_address(address), PROTO_UDP, 53)] = (vip_index + 2) % 6
            if self.rng.random() < 0.6:
                state.vips[VipKey(ipv6_address(address))] = (vip_index + 3) % 6
        index = 0
        for vip_index in range(6):
            for _ in range(self.rng.randrange(1, 6)):
                state.backends[index] = self.backend(vip_index)
                index += 1
        for vip_index in range(6):
            if self.rng.random() < 0.9:
                state.tables[vip_index] = self.table(state, vip_index)
        for vip_index in range(6):
            mode = self.affinity_rng.choice(list(Affinity))
            if mode is not Affinity.FIVE_TUPLE:
                state.affinity[vip_index] = mode
        # At least one table slot forwards to a backend whose next hop is not resolved.
        unresolved = self.choice([slot for table in state.tables.values() for slot in table
                                  if slot in state.backends])  # fmt: skip
        state.backends[unresolved] = replace(
            state.backends[unresolved], state=BackendState.UP, next_hop=None
        )
        for flow in self.rng.sample(self.flows, 40) + self.rng.sample(self.flows6, 20):
            state.conntrack[flow] = CtEntry(self.rng.randrange(index + 2), self.rng.randrange(4))
        # The ICMP watch holds backends of both families (section 9a, 9b).
        self.addresses = sorted({backend.addr for backend in state.backends.values()})
        watched = (
            [a for a in self.addresses if self.rng.random() < 0.7]
            + [ipv4_address(f"198.18.50.{n}") for n in range(1, 4)]
            + [ipv6_address(f"2001:2::50:{n}") for n in range(1, 4)]
        )
        self.watch = IcmpWatch({a: self.rng.random() < 0.8 for a in watched})
        return state

    def change_watch(self, balancer: Balancer) -> str:
        """Arm, disarm, watch or forget an address, on both sides."""
        roll = self.rng.randrange(4)
        address = self.choice(self.addresses)
        if roll == 0:
            for watched in self.watch.armed:  # the control plane re-arming everything
                self.watch.armed[watched] = True
            balancer.icmp.set_watch(self.watch)
            return "every watched backend re-armed"
        if roll == 1 and address in self.watch.armed:
            del self.watch.armed[address]
            balancer.icmp.set_watch(self.watch)
            return f"{address.hex()} no longer watched"
        self.watch.armed[address] = roll != 2
        balancer.icmp.set_watch(self.watch)
        return f"{address.hex()} watched, armed {roll != 2}"

    def change(self, state: DataplaneState, balancer: Balancer) -> str:
        """One state change, written to both sides with the fine-grained map writers."""
        maps = balancer.maps
        self.buckets(balancer)  # section 8c: fresh buckets at every change
        roll = self.rng.randrange(8)
        if roll >= 6:
            return self.change_watch(balancer)
        if roll == 0:
            index = self.choice(sorted(state.backends))
            entry = state.backends[index]
            changed = replace(
                entry,
                state=self.choice(list(BackendState)),
                generation=entry.generation + self.rng.randrange(2),
                next_hop=self.next_hop(),
            )
            state.backends[index] = changed
            if changed.next_hop is not None and changed.next_hop.ifindex not in (0,):
                maps.set_tx_port(changed.next_hop.ifindex)
            maps.set_backend(index, changed)
            return f"backend {index} -> {changed.state.name} gen {changed.generation}"
        if roll == 1:
            vip_index = self.rng.randrange(6)
            table = self.table(state, vip_index)
            state.tables[vip_index] = table
            mode = self.affinity_rng.choice(list(Affinity))
            state.affinity[vip_index] = mode
            if mode is Affinity.FIVE_TUPLE:
                del state.affinity[vip_index]
            maps.set_affinity(vip_index, mode)
            maps.set_table(vip_index, table)
            return f"table {vip_index} swapped (M={len(table)}, affinity {mode.name})"
        if roll == 2 and state.tables:
            vip_index = self.choice(sorted(state.tables))
            del state.tables[vip_index]
            maps.delete_table(vip_index)
            return f"table {vip_index} deleted"
        if roll == 3 and state.vips:
            key = self.choice(sorted(state.vips, key=repr))
            del state.vips[key]
            maps.delete_vip(key)
            return f"VIP {key} deleted"
        if roll == 4:
            if self.rng.random() < 0.3:
                key = VipKey(ipv6_address(self.choice(VIP6_ADDRESSES)), PROTO_TCP, 443)
            else:
                key = VipKey(ipv4_address(self.choice(VIP_ADDRESSES)), PROTO_TCP, 443)
            state.vips[key] = self.rng.randrange(6)
            maps.set_vip(key, state.vips[key])
            return f"VIP {key} added"
        state.settings = self.settings()  # a new seed too: recorded flows must follow it
        maps.set_settings(state.settings)
        return "settings replaced"

    # frames

    def flow(self) -> Flow:
        roll = self.rng.random()
        dst = self.choice(VIP_ADDRESSES) if roll < 0.85 else self.choice(NOT_VIPS)
        src = f"198.18.{self.rng.randrange(100, 104)}.{self.rng.randrange(256)}"
        return self.flow_between(src, dst, OTHER_PROTOCOLS)

    def flow6(self) -> Flow:
        roll = self.rng.random()
        dst = self.choice(VIP6_ADDRESSES) if roll < 0.85 else self.choice(NOT_VIPS6)
        src = f"2001:2:0:100::{self.rng.randrange(1, 1 << 16):x}"
        return self.flow_between(src, dst, (PROTO_ICMPV6, 51, 59, 0, PROTO_GRE))

    def flow_between(self, src: str, dst: str, others: list[int] | tuple[int, ...]) -> Flow:
        """TCP, UDP or one of ``others`` (a 3-tuple) from ``src`` to ``dst``."""
        kind = self.rng.random()
        if kind < 0.45:
            return Flow.of(
                src, dst, PROTO_TCP, self.rng.randrange(65536), self.choice((80, 443, 0))
            )
        if kind < 0.8:
            return Flow.of(src, dst, PROTO_UDP, self.rng.randrange(65536), self.choice((53, 80)))
        return Flow.of(src, dst, self.choice(others))

    def extensions(self) -> tuple[int, ...]:
        """A chain of walked extension headers: mostly none, sometimes up to the limit and one
        past it."""
        count = self.choice((0, 0, 0, 0, 1, 1, 2, 3, 4, 5))
        return tuple(self.choice(EXTENSIONS) for _ in range(count))

    def inner6(self, flow: Flow) -> bytes:
        kinds = self.extensions()
        if flow.proto in EXTENSIONS:  # a protocol the walk would take for a header
            kinds = ()
        return inner_ipv6(flow, self.rng.randbytes(self.rng.randrange(0, 80)), extensions=kinds)

    def outer6(self) -> Outer:
        return replace(self.outer(), gre_protocol=ETH_P_IPV6)

    def valid6_frame(self) -> bytes:
        flow = self.choice(self.flows6) if self.rng.random() < 0.8 else self.flow6()
        return encapsulate(self.inner6(flow), self.outer6())

    def fragment6_frame(self) -> bytes:
        """A fragment of an IPv6 datagram of one of the flows: first or later, after 0-3
        extension headers (the fragment header's next header is the flow's protocol)."""
        rng = self.rng
        flow = self.choice(self.flows6)
        before = tuple(self.choice(EXTENSIONS[:3]) for _ in range(self.choice((0, 0, 1, 3))))
        first = rng.random() < 0.5
        fragment = ipv6_fragment_header(
            flow.proto,
            offset=0 if first else rng.randrange(1, 8192),
            more=first or rng.random() < 0.5,
            ident=rng.getrandbits(32),
        )
        upper = inner_ipv6(flow)[40:] if first else rng.randbytes(rng.randrange(0, 64))
        chain = ipv6_chain(before, IPV6_EXT_FRAGMENT)
        packet = ipv6(flow.src, flow.dst, before[0] if before else IPV6_EXT_FRAGMENT,
                      chain + fragment + upper)  # fmt: skip
        return encapsulate(packet, self.outer6())

    def broken6_frame(self) -> bytes:
        """Inner IPv6 with its fields bent: version, payload length, next headers, extension
        header lengths, random bytes in the header chain."""
        rng = self.rng
        packet = bytearray(self.inner6(self.choice(self.flows6)))
        roll = rng.randrange(5)
        if roll == 0:
            packet[0] = (self.choice((4, 5, 7, 0, 15)) << 4) | (packet[0] & 0x0F)
        elif roll == 1:
            length = self.choice((0, 1, 3, 4, 7, 8, len(packet) - 40 + 1, rng.randrange(65536)))
            struct.pack_into("!H", packet, 4, length)
        elif roll == 2:
            packet[6] = self.choice((*EXTENSIONS, PROTO_TCP, PROTO_UDP, rng.randrange(256)))
        elif roll == 3 and len(packet) > 41:  # an extension header's length or next header
            packet[40 + self.choice((0, 1))] = rng.randrange(256)
        else:
            for _ in range(rng.randrange(1, 4)):
                packet[rng.randrange(len(packet))] = rng.randrange(256)
        return encapsulate(bytes(packet), self.outer6())

    def vlans(self) -> tuple[VlanTag | int, ...]:
        count = self.choice((0, 0, 0, 0, 1, 2))
        return tuple(
            VlanTag(self.rng.randrange(4096), self.choice((0x8100, ETH_P_8021AD)))
            for _ in range(count)
        )

    def outer(self) -> Outer:
        """An outer header, IPv6 (section 2b) one time in three."""
        if self.rng.random() < 1 / 3:
            return self.outer_ipv6()
        return self.outer4()

    def outer4(self) -> Outer:
        rng = self.rng
        return Outer(
            vlans=self.vlans(),
            ttl=rng.randrange(1, 256),
            ident=rng.randrange(65536),
            dont_fragment=rng.random() < 0.5,
            options=rng.randbytes(self.choice((0, 0, 0, 4, 8, 40))),
            gre_checksum=rng.random() < 0.2,
            gre_key=rng.getrandbits(32) if rng.random() < 0.3 else None,
            gre_sequence=rng.getrandbits(32) if rng.random() < 0.2 else None,
            gre_extra_flags=self.choice((0,) * 8 + (0x0008, 0x0080)),  # ignored bits
            pad_to=self.choice((0, 0, 0, 60, 128)),
        )

    def outer_ipv6(self) -> Outer:
        rng = self.rng
        return replace(
            OUTER_IPV6,
            vlans=self.vlans(),
            ttl=rng.randrange(1, 256),
            tos=rng.randrange(256),
            flow_label=self.choice((0, rng.randrange(1 << 20))),
            gre_checksum=rng.random() < 0.2,
            gre_key=rng.getrandbits(32) if rng.random() < 0.3 else None,
            gre_sequence=rng.getrandbits(32) if rng.random() < 0.2 else None,
            pad_to=self.choice((0, 0, 0, 60, 128)),
        )

    def broken_outer6_frame(self) -> bytes:
        """Outer IPv6 that section 2b judges: lying payload lengths, bent versions, other
        destinations, extension headers before the GRE, truncations."""
        rng = self.rng
        flow = self.choice(self.flows)
        inner = self.inner(flow)
        roll = rng.randrange(5)
        if roll == 0:
            frame = encapsulate(inner, self.outer_ipv6())
            length = rng.randrange(0, len(frame))
            return encapsulate(inner, replace(self.outer_ipv6(), payload_length=length))
        if roll == 1:
            outer = self.outer_ipv6()
            frame = bytearray(encapsulate(inner, outer))
            l3 = ETH_HEADER_LEN + 4 * len(outer.vlans)
            frame[l3] = (self.choice((4, 5, 7, 0, 15)) << 4) | (frame[l3] & 0x0F)
            return bytes(frame)
        if roll == 2:
            dst = self.choice(("2001:2::99", "::", "2001:2::3", "198.18.0.2"))
            if dst == "198.18.0.2":
                dst = "::ffff:198.18.0.2"
            return encapsulate(inner, replace(self.outer_ipv6(), dst=dst))
        if roll == 3:
            header = self.choice((0, 43, 44, 60, 59, 17))
            payload = bytes([PROTO_GRE, 0]) + bytes(6) + gre(ETH_P_IPV4, inner)
            packet = ipv6(ROUTER_IPV6, LB_IPV6, header, payload)
            return ethernet(LB_MAC, ROUTER_MAC, ETH_P_IPV6, packet, vlans=self.vlans())
        frame = encapsulate(inner, self.outer_ipv6())
        return frame[: rng.randrange(ETH_HEADER_LEN, len(frame) + 1)]

    def inner(self, flow: Flow) -> bytes:
        rng = self.rng
        options = rng.randbytes(self.choice((0, 0, 0, 4, 12, 40)))
        payload = l4_for(flow, rng.randbytes(rng.randrange(0, 120)))
        dont_fragment = self.pmtu_rng.random() < 0.5  # section 8c: DF asks for an ICMP error
        return ipv4(flow.src, flow.dst, flow.proto, payload, options=options,
                    ident=0x4321, dont_fragment=dont_fragment)  # fmt: skip

    def valid_frame(self) -> bytes:
        flow = self.choice(self.flows) if self.rng.random() < 0.8 else self.flow()
        return encapsulate(self.inner(flow), self.outer())

    def fragment_frame(self) -> bytes:
        flow = self.choice(self.flows)
        datagram = ipv4(
            flow.src, flow.dst, flow.proto, self.rng.randbytes(self.rng.randrange(9, 200))
        )
        pieces = ipv4_fragments(datagram, 8 * self.rng.randrange(1, 4))
        return encapsulate(self.choice(pieces), self.outer())

    def broken_frame(self) -> bytes:
        rng = self.rng
        flow = self.choice(self.flows)
        roll = rng.randrange(10)
        if roll == 0:  # GRE version, R, s, recursion and reserved bits
            bits = self.choice((0x4000, 0x0800, 0x0100, 0x0700, 0x0001, 0x0007, 0x00F8))
            extra = rng.getrandbits(16) & 0x4FFF if rng.random() < 0.3 else bits
            outer = replace(self.outer4(), gre_extra_flags=extra & ~0xB000)
            return encapsulate(self.inner(flow), outer)
        if roll == 1:  # GRE protocol
            proto = self.choice((ETH_P_IPV6, 0x6558, 0x0000, 0x0806))
            return encapsulate(self.inner(flow), replace(self.outer4(), gre_protocol=proto))
        if roll == 2:  # outer fragments and fields
            outer = replace(
                self.outer4(),
                more_fragments=rng.random() < 0.5,
                frag_offset=rng.randrange(3),
                reserved_flag=rng.random() < 0.5,
            )
            return encapsulate(self.inner(flow), outer)
        if roll == 3:  # outer total length lies
            packet = encapsulate(self.inner(flow), self.outer4())
            outer = replace(self.outer4(), total_length=rng.randrange(0, len(packet) + 20))
            return encapsulate(self.inner(flow), outer)
        if roll == 4:  # inner header fields lie
            inner = bytearray(self.inner(flow))
            if rng.random() < 0.4:  # a total length that ends inside the ports
                header_len = (inner[0] & 0xF) * 4
                inner[9] = self.choice((PROTO_TCP, PROTO_UDP))
                struct.pack_into("!H", inner, 2, header_len + rng.randrange(4))
            else:
                inner[self.choice((0, 2, 3, 6, 9))] = rng.randrange(256)
            return encapsulate(bytes(inner), self.outer4())
        if roll == 5:  # not for the balancer: other protocols, other destinations, IPv6, ARP
            kind = rng.randrange(5)
            if kind == 0:
                payload = tcp(1, 2, rng.randbytes(20))
                return ethernet(
                    LB_MAC, ROUTER_MAC, ETH_P_IPV4, ipv4(ROUTER_IPV4, LB_IPV4, 6, payload)
                )
            if kind == 1:
                return encapsulate(self.inner(flow), replace(self.outer4(), dst="198.18.0.77"))
            if kind == 2:
                nh = self.choice((PROTO_GRE, PROTO_UDP))
                body = ipv6("2001:2::1", "2001:2::2", nh, udp(1, 2, rng.randbytes(30)))
                return ethernet(
                    LB_MAC, ROUTER_MAC, ETH_P_IPV6, body[: rng.randrange(20, len(body))]
                )
            if kind == 3:
                return ethernet(LB_MAC, ROUTER_MAC, ETH_P_ARP, rng.randbytes(28))
            return encapsulate(self.inner(flow), replace(self.outer4(), vlans=(1, 2, 3)))
        if roll == 6:  # a few bytes flipped anywhere
            flipped = bytearray(self.valid_frame())
            for _ in range(rng.randrange(1, 4)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            return bytes(flipped)
        if roll == 7:  # cut short anywhere
            whole = self.valid_frame()
            return whole[: rng.randrange(ETH_HEADER_LEN, len(whole) + 1)]
        if roll == 8:  # an Ethernet + IPv4 + GRE prefix, then garbage
            header = encapsulate(b"", self.outer4())
            return header + rng.randbytes(rng.randrange(0, 80))
        return rng.randbytes(rng.randrange(ETH_HEADER_LEN, 200))

    def icmp_frame(self) -> bytes:
        flow = Flow.of("198.18.100.9", self.choice(VIP_ADDRESSES), PROTO_ICMP)
        inner = ipv4(flow.src, flow.dst, PROTO_ICMP, icmp(8, 0, self.rng.randbytes(16)))
        return encapsulate(inner, self.outer())

    def unreachable_frame(self) -> bytes:
        """An ICMP destination unreachable (mostly) quoting GRE (mostly) this node sent to a
        backend (mostly watched), cut and bent in the ways section 9 tells apart."""
        rng = self.rng
        backend = self.unreachable_backend(4)
        source = LB_IPV4 if rng.random() < 0.85 else ROUTER_IPV4
        proto = PROTO_GRE if rng.random() < 0.85 else self.choice((6, 17, 1, 41))
        sent = ipv4(
            source,
            backend,
            proto,
            gre(ETH_P_IPV4, self.inner(self.choice(self.flows)))[: rng.randrange(4, 120)],
            options=rng.randbytes(self.choice((0, 0, 0, 4, 8))),
            ident=rng.randrange(65536),
        )
        cut = self.choice((len(sent), len(sent), 28, 27, 24, 20, 8, 0, rng.randrange(len(sent))))
        quoted = bytearray(sent[:cut])
        if quoted and rng.random() < 0.08:
            quoted[0] = self.choice((0x45, 0x44, 0x65, 0x46, 0x4F, rng.randrange(256)))
        code = self.choice((2, 2, 1, 3, 4, 0, 10, 13, rng.randrange(16), rng.randrange(256)))
        type_ = 3 if rng.random() < 0.9 else self.choice((0, 8, 11, 5, 12))
        reporter = backend if rng.random() < 0.7 else ipv4_address(ROUTER_IPV4)
        destination = LB_IPV4 if rng.random() < 0.9 else self.choice(("198.18.0.77", ROUTER_IPV4))
        packet = ipv4(
            reporter,
            destination,
            PROTO_ICMP,
            icmp(type_, code, bytes(quoted), rest=rng.getrandbits(32)),
            options=rng.randbytes(self.choice((0,) * 9 + (4,))),
            more_fragments=rng.random() < 0.03,
            frag_offset=self.choice((0,) * 30 + (1,)),
        )
        frame = ethernet(
            LB_MAC, ROUTER_MAC, ETH_P_IPV4, packet, vlans=self.vlans(),
            pad_to=self.choice((0, 0, 60, 128)),
        )  # fmt: skip
        if rng.random() < 0.05:
            frame = frame[: rng.randrange(ETH_HEADER_LEN, len(frame) + 1)]
        return frame

    def unreachable_backend(self, size: int) -> bytes:
        """The quoted destination of an unreachable: mostly a watched backend of the family."""
        rng = self.rng
        watched = sorted(a for a in self.watch.armed if len(a) == size)
        roll = rng.random()
        if roll < 0.6 and watched:
            return self.choice(watched)
        known = [a for a in self.addresses if len(a) == size]
        if roll < 0.8 and known:
            return self.choice(known)
        if size == 4:
            return ipv4_address(f"198.18.{rng.randrange(256)}.{rng.randrange(256)}")
        return ipv6_address(f"2001:2::99:{rng.randrange(65536):x}")

    def unreachable6_frame(self) -> bytes:
        """An ICMPv6 message to this node quoting IPv6 (mostly GRE from this node to a
        watched backend), cut and bent in the ways section 9b tells apart."""
        rng = self.rng
        backend = self.unreachable_backend(16)
        source = LB_IPV6 if rng.random() < 0.85 else "2001:2::fe"
        proto = PROTO_GRE if rng.random() < 0.85 else self.choice((6, 17, 58))
        sent = bytearray(ipv6(source, backend, proto,
                              gre(ETH_P_IPV4, self.inner(self.choice(self.flows)))))  # fmt: skip
        if rng.random() < 0.08:
            sent[0] = self.choice((0x45, 0x60, 0x00, rng.randrange(256)))
        cut = self.choice((len(sent), len(sent), 48, 47, 40, 39, 8, 0, rng.randrange(len(sent))))
        quoted = bytes(sent[:cut])
        type_ = self.choice((1, 1, 1, 1, 2, 2, 3, 128, 4))
        code = self.choice((0, 1, 3, 3, 4, 5, rng.randrange(256)))
        message = bytes([type_, code]) + rng.randbytes(6)
        reporter = backend if rng.random() < 0.7 else "2001:2::fe"
        destination = LB_IPV6 if rng.random() < 0.9 else "2001:2::77"
        next_header = PROTO_ICMPV6 if rng.random() < 0.95 else 17
        packet = ipv6(reporter, destination, next_header, message + quoted)
        if rng.random() < 0.1:
            packet = packet[:4] + struct.pack("!H", rng.randrange(65536)) + packet[6:]
        frame = ethernet(
            LB_MAC, ROUTER_MAC, ETH_P_IPV6, packet, vlans=self.vlans(),
            pad_to=self.choice((0, 0, 60, 128)),
        )  # fmt: skip
        if rng.random() < 0.05:
            frame = frame[: rng.randrange(ETH_HEADER_LEN, len(frame) + 1)]
        return frame

    def frame(self) -> tuple[str, bytes]:
        roll = self.rng.random()
        if roll < 0.40:
            return "valid", self.valid_frame()
        if roll < 0.45:
            return "fragment", self.fragment_frame()
        if roll < 0.47:
            return "icmp", self.icmp_frame()
        if roll < 0.53:
            if self.rng.random() < 0.4:
                return "ICMPv6 unreachable", self.unreachable6_frame()
            return "unreachable", self.unreachable_frame()
        if roll < 0.63:
            return "valid inner IPv6", self.valid6_frame()
        if roll < 0.67:
            return "inner IPv6 fragment", self.fragment6_frame()
        if roll < 0.75:
            return "broken inner IPv6", self.broken6_frame()
        if roll < 0.80:
            return "broken outer IPv6", self.broken_outer6_frame()
        return "broken", self.broken_frame()


@pytest.fixture
def one_cpu() -> Iterator[None]:
    """This thread on one CPU throughout: the too-big buckets are per CPU (section 8c), and the
    reference follows one of them."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


def test_generated_traffic_agrees_with_the_reference(balancer: Balancer, one_cpu: None) -> None:
    generator = Generator(random.Random(SEED))
    state = generator.state()
    balancer.load_state(state, generator.watch)
    generator.buckets(balancer)
    # Every truncation of a few valid frames of different shapes, then the random stream.
    truncated = (
        [generator.valid_frame() for _ in range(12)]
        + [generator.fragment_frame()]
        + [generator.valid6_frame() for _ in range(8)]
        + [generator.fragment6_frame() for _ in range(2)]
    )
    stream: list[tuple[str, bytes]] = [
        (f"truncated to {cut}", frame[:cut])
        for frame in truncated
        for cut in range(ETH_HEADER_LEN, len(frame) + 1)
    ]
    while len(stream) < GENERATED_PACKETS:
        stream.append(generator.frame())

    seen: dict[Stat, int] = {}
    seen6: dict[Stat, int] = {}  # the outcomes of the inner IPv6 frames
    seen_icmp: dict[IcmpStat, int] = {}
    seen_icmp6: set[IcmpStat] = set()  # the outcomes of the ICMPv6 frames
    families: dict[tuple[int, int, int], int] = {}  # forwarded by (outer, inner, backend)
    changes = []
    start = time.monotonic()
    for number, (kind, frame) in enumerate(stream):
        if number and number % CHUNK == 0:
            assert balancer.maps.dump_conntrack() == state.conntrack, f"before packet {number}"
            assert balancer.icmp.read_watch() == generator.watch, f"before packet {number}"
            changes.append(generator.change(state, balancer))
            # A backend state change can name a VIP or slot the counters were not watching.
            balancer.vip_indexes = list(range(8))
            balancer.backend_indexes = list(range(48))
        ingress = 1 if generator.rng.random() < 0.9 else 2
        result = compare_packet(
            balancer, state, frame, f"packet {number} ({kind})", ingress, generator.watch,
            generator.limiter,
        )  # fmt: skip
        seen[result.stat] = seen.get(result.stat, 0) + 1
        if "IPv6" in kind or (result.flow is not None and result.flow.is_ipv6):
            seen6[result.stat] = seen6.get(result.stat, 0) + 1
        if result.decision is not None and result.decision.forwards:
            key = _families(state, frame, result)
            families[key] = families.get(key, 0) + 1
        for icmp_stat in result.counters.icmp:
            seen_icmp[icmp_stat] = seen_icmp.get(icmp_stat, 0) + 1
            if kind == "ICMPv6 unreachable":
                seen_icmp6.add(icmp_stat)
    assert balancer.maps.dump_conntrack() == state.conntrack
    assert balancer.icmp.read_watch() == generator.watch
    elapsed = time.monotonic() - start

    # The stream must have exercised every outcome, or it proves less than it claims. A report
    # is only lost to a full ring, which a stream that reads every report never fills.
    assert set(seen) == set(Stat), f"outcomes never produced: {set(Stat) - set(seen)}"
    inner6 = {Stat.CT_HIT, Stat.CT_MISS, Stat.NO_VIP, Stat.INNER_MALFORMED,
              Stat.INNER_L4_TRUNCATED, Stat.INNER_EXT_TOO_DEEP}  # fmt: skip
    assert inner6 <= set(seen6), f"inner IPv6 outcomes never produced: {inner6 - set(seen6)}"
    every = {(outer, inner, backend) for outer in (4, 6) for inner in (4, 6) for backend in (4, 6)}
    assert set(families) == every, (
        f"(outer, inner, backend) never forwarded: {every - set(families)}"
    )
    never = set(IcmpStat) - {IcmpStat.LOST} - set(seen_icmp)
    assert not never, f"ICMP outcomes never produced: {never}"
    never6 = set(IcmpStat) - {IcmpStat.LOST, IcmpStat.FRAG_NEEDED} - seen_icmp6
    assert not never6, f"ICMPv6 outcomes never produced: {never6}"
    assert len(stream) >= GENERATED_PACKETS
    print(
        f"{len(stream)} packets in {elapsed:.1f} s; outcomes {seen}; of them inner IPv6 "
        f"{sum(seen6.values())}: {seen6}; forwarded by (outer, inner, backend) family "
        f"{dict(sorted(families.items()))}; ICMP {seen_icmp}; "
        f"changes {changes}"
    )


def _families(state: DataplaneState, frame: bytes, result: pipeline.Result) -> tuple[int, int, int]:
    """A forwarded packet's (outer, inner, backend) address families."""
    assert result.flow is not None and result.decision is not None
    assert result.decision.backend_index is not None
    ethertype, _ = parse_ethernet(frame)
    backend = state.backends[result.decision.backend_index]
    return (
        6 if ethertype == ETH_P_IPV6 else 4,
        6 if result.flow.is_ipv6 else 4,
        6 if len(backend.addr) == 16 else 4,
    )


# --- Table swaps racing new flows -------------------------------------------------------------


def test_decisions_during_table_swaps_follow_the_old_or_the_new_table(balancer: Balancer) -> None:
    settings = Settings(lb_ipv4=ipv4_address(LB_IPV4))
    state = DataplaneState(settings=settings)
    vip = VipKey(ipv4_address(VIP_ADDRESSES[0]), PROTO_TCP, 80)
    state.vips[vip] = 0
    for index in range(20):
        state.backends[index] = BackendEntry(
            ipv4_address(f"198.18.30.{index + 1}"), 0, 1, BackendState.UP,
            NextHop(0, MACS[0], MACS[1]),
        )  # fmt: skip
    old, new = list(range(7)), list(range(7, 20))  # sizes 7 and 13: a mix would show
    state.tables[0] = old
    balancer.load_state(state)

    stop = threading.Event()
    swaps = 0

    def swap() -> None:
        nonlocal swaps
        while not stop.is_set():
            balancer.maps.set_table(0, new if swaps % 2 == 0 else old)
            swaps += 1

    swapper = threading.Thread(target=swap)
    swapper.start()
    seen = {"old": 0, "new": 0}
    deadline = time.monotonic() + 30
    number = 0
    try:
        # Until both tables decided many flows across many swaps (a busy machine may starve
        # the swapper for a while; the deadline only bounds a broken run).
        while (swaps < 20 or min(seen.values()) < 100) and time.monotonic() < deadline:
            number += 1
            flow = Flow.of(f"198.18.{200 + number // 250 % 50}.{number % 250}", VIP_ADDRESSES[0],
                           PROTO_TCP, 1024 + number % 60000, 80 + number // 3_000_000)  # fmt: skip
            run = balancer.run(encapsulate(inner_ipv4(flow)))
            assert Verdict(run.retval) == Verdict.TX, f"flow {number} was not forwarded"
            backend = int(run.data[33]) - 1  # 198.18.30.<index + 1>, the outer destination
            hashed = flow_hash(flow, settings.hash_seed)
            choices = {"old": old[hashed % len(old)], "new": new[hashed % len(new)]}
            matches = [name for name, choice in choices.items() if choice == backend]
            assert matches, f"flow {number} went to {backend}, neither table's {choices}"
            for name in matches:
                seen[name] += 1
    finally:
        stop.set()
        swapper.join()
    assert swaps >= 20 and min(seen.values()) >= 100, f"too little racing: {seen}, {swaps} swaps"
