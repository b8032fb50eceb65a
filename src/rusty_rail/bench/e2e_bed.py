"""The bed of `rusty-rail bench e2e`: namespaces, veth, the generator, the balancer fed by the
real daemon, the floor forwarder and the counting sinks (docs/benchmarks.md draws it).

Two chains side by side, so the balancer and the floor are measured in the same run without
swapping programs::

    gen: g-lb  -> lb: eth0 [balancer, daemon] eth1 -> srv: eth0 [sink]
    gen: g-fl  -> fl: eth0 [floor forwarder]  eth1 -> fs:  eth0 [sink]
    gen: g-spare (down) [the generator, attached only to be kept in the XDP dispatcher]

The generator (bpf/bench_gen.bpf.c) runs in live-frames mode with its ingress interface
g-lb or g-fl: its XDP_TX sends the frame into the balancer's (or the floor's) veth. Every
veth has as many queues as the machine has CPUs, so each CPU's frames stay on that CPU.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Final

from rusty_rail.config import Config, validate_as
from rusty_rail.control.daemon import Daemon
from rusty_rail.control.options import DaemonOptions
from rusty_rail.dataplane.libbpf import (
    BPFFS,
    BpfObject,
    Link,
    Program,
    attach_xdp,
    bpf_object_path,
    ensure_bpffs,
    num_possible_cpus,
    remove_pin_dir,
)
from rusty_rail.dataplane.maps import BalancerMaps
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.model.flowhash import Flow
from rusty_rail.testbed.netns import Namespace, Netns, run
from rusty_rail.wire.constants import PROTO_TCP
from rusty_rail.wire.fields import mac as mac_bytes
from rusty_rail.wire.frames import Outer, gre_frame

GEN_OUTER: Final = "198.18.0.1"
LB_ADDRESS: Final = "198.18.0.2"
#: The balancer's (and the floor's) side of the segment to the server, and the server's.
EGRESS: Final = "198.18.2.1"
SERVER: Final = "198.18.2.2"
BACKEND_ROUTE: Final = "198.18.64.0/18"
BACKENDS: Final = tuple(f"198.18.64.{i}" for i in range(1, 5))
VIP: Final = "198.18.1.1"
VIP_PORT: Final = 80
#: Inner source addresses are 198.19.0.0 + (flow >> 15), source ports 1024 + (flow & 0x7fff): the
#: generator's numbering of flows (bpf/bench_gen.bpf.c), 2^31 of them.
INNER_SOURCE_NET: Final = "198.19.0.0"
FLOW_LIMIT: Final = 1 << 31
_PORT_BITS: Final = 15
_PORT_BASE: Final = 1024
#: The connection table: four times the most flows a case keeps, so that no set overflows.
CONNTRACK_SIZE: Final = 1 << 22
#: Frames built and run per live-frames batch: the kernel's default (NAPI_POLL_WEIGHT); the
#: largest (256) fills the balancer veth's 256-frame queue and drops frames there.
BATCH: Final = 64


class BenchBedError(RuntimeError):
    """The bed could not be built or driven; the message names the step."""


def _veth(a: Namespace, a_name: str, b: Namespace, b_name: str, queues: int) -> None:
    """A veth pair with ``queues`` queues each way (the Netns helper makes single-queue ones)."""
    temp = f"rre{uuid.uuid4().hex[:8]}"
    q = str(queues)
    run(["ip", "link", "add", temp, "numtxqueues", q, "numrxqueues", q, "type", "veth",
         "peer", "name", f"{temp}p", "numtxqueues", q, "numrxqueues", q])  # fmt: skip
    try:
        run(["ip", "link", "set", temp, "netns", a.name, "name", a_name])
        run(["ip", "link", "set", f"{temp}p", "netns", b.name, "name", b_name])
    except Exception:
        run(["ip", "link", "del", temp], check=False)
        raise
    a.ip("link", "set", a_name, "up")
    b.ip("link", "set", b_name, "up")


def flow_of(number: int) -> Flow:
    """The generator's flow ``number`` (bpf/bench_gen.bpf.c numbers them the same way)."""
    if not 0 <= number < FLOW_LIMIT:
        raise ValueError(f"flow numbers are 0..{FLOW_LIMIT - 1}, not {number}")
    source = int(IPv4Address(INNER_SOURCE_NET)) + (number >> _PORT_BITS)
    return Flow(
        IPv4Address(source).packed,
        IPv4Address(VIP).packed,
        PROTO_TCP,
        _PORT_BASE + (number & ((1 << _PORT_BITS) - 1)),
        VIP_PORT,
    )


def flow_frame(number: int, dst_mac: bytes, src_mac: bytes) -> bytes:
    """The frame the generator sends for flow ``number``."""
    outer = Outer(eth_dst=dst_mac, eth_src=src_mac, src=GEN_OUTER, dst=LB_ADDRESS)
    return gre_frame(flow_of(number), outer=outer)


def template_frame(dst_mac: bytes, src_mac: bytes) -> bytes:
    """The generator's template: flow 0's frame (inner source 198.19.0.0, port 1024)."""
    frame = flow_frame(0, dst_mac, src_mac)
    if len(frame) != GEN_FRAME_LEN:
        raise BenchBedError(f"the generator's frame is {len(frame)} bytes, not {GEN_FRAME_LEN}")
    return frame


#: Ethernet, outer IPv4, GRE, inner IPv4, TCP (bpf/bench_gen.bpf.c's GEN_FRAME_LEN).
GEN_FRAME_LEN: Final = 78
_GEN_CURSOR = struct.Struct("=IIIIQ")
_SINK_COUNT = struct.Struct("=QQ")
_ZERO = struct.pack("=I", 0)


@dataclass(frozen=True, slots=True)
class FlowSpan:
    """The flows one CPU sends: numbers ``first`` .. ``end`` - 1 in turn, starting at ``next``;
    ``end`` 0: no end (a new flow every packet, from ``first`` on)."""

    first: int
    end: int
    next: int = -1

    def __post_init__(self) -> None:
        if self.next == -1:
            object.__setattr__(self, "next", self.first)
        if not 0 <= self.first < FLOW_LIMIT or not 0 <= self.end <= FLOW_LIMIT:
            raise ValueError(f"flow numbers must be 0..{FLOW_LIMIT - 1}: {self}")
        if self.end and not self.first <= self.next < self.end:
            raise ValueError(f"the next flow must be in first..end - 1: {self}")


class Generator:
    """bench_gen.bpf.c, loaded once and attached to the spare interface, run in live-frames
    mode from one thread per CPU (each pinned to its CPU, inside the generator namespace)."""

    def __init__(self, namespace: str, spare: str) -> None:
        self.namespace = namespace
        self.cpus = num_possible_cpus()
        self._object = BpfObject.open(bpf_object_path("bench_gen"))
        self._object.load()
        self.program: Program = self._object.program("xdp_bench_gen")
        with in_netns(namespace):
            self._link: Link = attach_xdp(socket.if_nametoindex(spare), self.program)

    def configure(self, frame: bytes, spans: Sequence[FlowSpan]) -> None:
        """The template, and the flows each CPU sends (CPUs beyond ``spans`` send flow 0)."""
        self._object.map("gen_config").update(_ZERO, frame)
        cursors = self._object.map("gen_cursor")
        sent = [_GEN_CURSOR.unpack(v)[4] for v in cursors.lookup_percpu(_ZERO) or []]
        values = []
        for cpu in range(self.cpus):
            span = spans[cpu] if cpu < len(spans) else FlowSpan(0, 1)
            frames = sent[cpu] if cpu < len(sent) else 0
            values.append(_GEN_CURSOR.pack(span.next, span.first, span.end, 0, frames))
        cursors.update_percpu(_ZERO, values)

    def positions(self) -> list[int]:
        """Each CPU's next flow number."""
        values = self._object.map("gen_cursor").lookup_percpu(_ZERO) or []
        return [_GEN_CURSOR.unpack(v)[0] for v in values]

    def sent(self) -> int:
        """Frames made so far, all CPUs."""
        values = self._object.map("gen_cursor").lookup_percpu(_ZERO) or []
        return sum(_GEN_CURSOR.unpack(v)[4] for v in values)

    def send(self, ifindex: int, frames_per_cpu: int, cpus: Sequence[int]) -> float:
        """Send ``frames_per_cpu`` frames from each CPU of ``cpus`` at once, out of
        ``ifindex`` of the generator namespace; the wall time from the first start to the
        last end, in seconds."""
        frame = bytes(GEN_FRAME_LEN)  # the program writes every byte
        errors: list[BaseException] = []
        spans: list[tuple[float, float]] = []
        ready = threading.Barrier(len(cpus))

        def on_cpu(cpu: int) -> None:
            try:
                os.sched_setaffinity(0, {cpu})  # this thread only
                with in_netns(self.namespace):
                    ready.wait()
                    # Timed here, not by the caller: with every CPU busy sending, the caller's
                    # thread may not run until the end.
                    started = time.perf_counter()
                    self.program.run_live(
                        frame, ingress_ifindex=ifindex, repeat=frames_per_cpu, batch_size=BATCH
                    )
                    spans.append((started, time.perf_counter()))
            except BaseException as error:  # reported by the caller
                errors.append(error)
                ready.abort()

        threads = [threading.Thread(target=on_cpu, args=(cpu,)) for cpu in cpus]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise BenchBedError(f"the generator failed: {errors[0]}") from errors[0]
        return max(end for _, end in spans) - min(start for start, _ in spans)

    def close(self) -> None:
        self._link.close()
        self._object.close()


class Sink:
    """bench_sink.bpf.c on a server's veth: counts per CPU, drops."""

    def __init__(self, namespace: str, ifname: str) -> None:
        self._object = BpfObject.open(bpf_object_path("bench_sink"))
        self._object.load()
        with in_netns(namespace):
            self._link = attach_xdp(
                socket.if_nametoindex(ifname), self._object.program("xdp_bench_sink")
            )

    def packets(self) -> int:
        values = self._object.map("sink_count").lookup_percpu(_ZERO) or []
        return sum(_SINK_COUNT.unpack(v)[0] for v in values)

    def close(self) -> None:
        self._link.close()
        self._object.close()


@dataclass(frozen=True, slots=True)
class Chain:
    """One forwarder between the generator and a sink: where the generator sends (its
    ingress interface, its MAC and the forwarder's) and the sink that counts."""

    name: str
    gen_ifindex: int
    frame: bytes
    sink: Sink


class Floor:
    """bench_forward.bpf.c on the floor chain's eth0: to the first backend through eth1."""

    def __init__(self, namespace: str, next_hop_mac: bytes) -> None:
        self._object = BpfObject.open(bpf_object_path("bench_forward"))
        self._object.load()
        with in_netns(namespace):
            egress = socket.if_nametoindex("eth1")
            own_mac = _mac(namespace, "eth1")
            self._object.map("forward_to").update(
                _ZERO, socket.inet_aton(BACKENDS[0]) + next_hop_mac + own_mac
            )
            self._object.map("forward_port").update(_ZERO, struct.pack("=I", egress))
            self._link = attach_xdp(
                socket.if_nametoindex("eth0"), self._object.program("xdp_floor_forward")
            )

    def close(self) -> None:
        self._link.close()
        self._object.close()


def _mac(namespace: str, ifname: str) -> bytes:
    return mac_bytes(Namespace(namespace).mac(ifname))


def balancer_config() -> Config:
    data = {
        "device": "eth0",
        "lb_address": LB_ADDRESS,
        "conntrack_size": CONNTRACK_SIZE,
        "vips": [{"address": VIP, "protocol": "tcp", "port": VIP_PORT, "backends": list(BACKENDS)}],
    }
    return validate_as(Config, data, "bench e2e")


@dataclass
class Bed:
    """Everything built: the generator, both chains, the daemon's balancer maps."""

    generator: Generator
    balancer: Chain
    floor: Chain
    maps: BalancerMaps


@contextlib.contextmanager
def build_bed() -> Iterator[Bed]:
    """Build the bed, start the daemon on the balancer's veth; tear all of it down after."""
    queues = max(1, num_possible_cpus())
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(Netns())
        gen, lb, srv = net.namespace("e2e-gen"), net.namespace("e2e-lb"), net.namespace("e2e-srv")
        fl, fs = net.namespace("e2e-fl"), net.namespace("e2e-fs")
        for namespace in (gen, lb, srv, fl, fs):
            # No IPv6 link-local chatter (router solicitations) to count among the frames.
            namespace.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            namespace.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        _veth(gen, "g-lb", lb, "eth0", queues)
        _veth(gen, "g-fl", fl, "eth0", queues)
        _veth(lb, "eth1", srv, "eth0", queues)
        _veth(fl, "eth1", fs, "eth0", queues)
        # The spare pair stays down: the generator is attached to it and sends nothing there.
        run(["ip", "-n", gen.name, "link", "add", "g-spare", "type", "veth", "peer", "name",
             "g-spare-p"])  # fmt: skip
        gen.ip("addr", "add", f"{GEN_OUTER}/24", "dev", "g-lb")
        lb.ip("addr", "add", f"{LB_ADDRESS}/24", "dev", "eth0")
        lb.ip("addr", "add", f"{EGRESS}/24", "dev", "eth1")
        srv.ip("addr", "add", f"{SERVER}/24", "dev", "eth0")
        lb.ip("route", "add", BACKEND_ROUTE, "via", SERVER)
        lb.ip("neigh", "replace", SERVER, "lladdr", srv.mac("eth0"), "dev", "eth1",
              "nud", "permanent")  # fmt: skip
        sink = Sink(srv.name, "eth0")
        stack.callback(sink.close)
        floor_sink = Sink(fs.name, "eth0")
        stack.callback(floor_sink.close)
        floor = Floor(fl.name, mac_bytes(fs.mac("eth0")))
        stack.callback(floor.close)
        generator = Generator(gen.name, "g-spare")
        stack.callback(generator.close)
        ensure_bpffs()
        pins = BPFFS / f"rusty_rail_bench_e2e_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        pins.mkdir(mode=0o700)
        stack.callback(remove_pin_dir, pins)
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rr-e2e-")))
        options = DaemonOptions(
            pin_root=pins, detach_on_exit=True, api=None, state_file=scratch / "state.json"
        )
        with in_netns(lb.name):
            daemon = Daemon(balancer_config(), options)
            daemon.start()
        stack.callback(daemon.close)
        if daemon.balancer is None:
            raise BenchBedError("the daemon started without a balancer")
        yield Bed(
            generator=generator,
            balancer=Chain(
                "balancer",
                gen.ifindex("g-lb"),
                template_frame(mac_bytes(lb.mac("eth0")), mac_bytes(gen.mac("g-lb"))),
                sink,
            ),
            floor=Chain(
                "floor",
                gen.ifindex("g-fl"),
                template_frame(mac_bytes(fl.mac("eth0")), mac_bytes(gen.mac("g-fl"))),
                floor_sink,
            ),
            maps=daemon.balancer.maps,
        )
