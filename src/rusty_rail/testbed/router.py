"""The test bed's router: bpf/testbed_router.bpf.c on the client-facing interface wraps IPv4 and
IPv6 to the VIPs in GRE (protocol 0x0800 or 0x86DD) towards one live LB per flow; the LB set
changes at run time (an LB dies, one comes back). The outer header is IPv4 or IPv6, the family
of the router's outer source address (``source``): every LB of the set has that family too.

LB choice is rendezvous hashing over the live set (``choose_lb`` is its Python twin): stateless,
independent of the order LBs are listed in, and removing an LB moves only the flows it had
(hash mod N, the plainest ECMP, would move three flows in four when 4 LBs become 3). Each
LB's Ethernet next hop is resolved by the kernel when the set is given and stored with it,
not looked up per packet (bpf_fib_lookup): XDP traffic never refreshes a neighbour entry, so
a per-packet lookup would start failing once the kernel expired the entry.

The wrapped packet is what a Linux GRE tunnel would send: inner TTL or hop limit - 1 (<= 1 goes
to the stack, which answers with ICMP), outer TOS (IPv4) or traffic class (IPv6) copied from the
inner TOS or traffic class; an outer IPv4 header has DF set and ID 0, an outer IPv6 header flow
label 0 (an ip6gre tunnel's default) and no extension header; the outer TTL or hop limit is
``outer_ttl``. An IPv6 LB's score hashes its four address words where an IPv4 LB's hashes its
one (``lb_scores``). An IPv6 flow is hashed with its ports when TCP or UDP follows the fixed
header, else as (source, destination, next header): fragments and packets behind extension
headers keep to one LB per address pair. Too big for the LB link's MTU is dropped and counted;
give that link the client MTU + 24 (+ 44 for outer IPv6). A sender on a veth must not offload
its checksums (ethtool -K DEV tx off): the router turns its packet into a bare frame, and the
checksum the veth left for "hardware" is never completed.

FIB mode (``Router.load(..., fib=True)``, the test bed's ``--cluster``): no LB set at all. The
program asks the kernel's FIB of the router's namespace (``bpf_fib_lookup``) for the route to
the inner destination, giving it the inner flow's addresses, protocol and ports, so that with
``fib_multipath_hash_policy=1`` the kernel's own L4 multipath hash picks one of the ECMP next
hops (the balancers BGP installed). The kernel returns that next hop's gateway (in the lookup's
``ipv4_dst``, or ``ipv6_dst`` with the family turned to AF_INET6 for an IPv6 gateway: see
``bpf_ipv4_fib_lookup`` in net/core/filter.c), the egress interface and both MACs; the gateway
is the outer destination and its family the outer family (outer source: ``source`` for IPv4,
``source6`` for IPv6). No route, a blackhole or a route without a gateway is DROP_NO_LB; a
gateway without a neighbour entry DROP_NO_NEIGH (the kernel resolves neighbours only for
packets it sends itself); too big for the egress MTU (checked by the FIB with the outer
length) DROP_TOO_BIG. Packets per balancer are counted as in the rendezvous mode, for the
addresses given to ``count_lbs``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from socket import if_nametoindex
from typing import Any

from pyroute2 import IPRoute

from rusty_rail.dataplane.libbpf import (
    BPF_NOEXIST,
    LibbpfError,
    Map,
    Program,
    XdpMode,
    num_possible_cpus,
)
from rusty_rail.dataplane.netlink import in_netns, wait_next_hop
from rusty_rail.dataplane.pinned import Closeable, PinnedXdpProgram, PinnedXdpSpec
from rusty_rail.decap.agent import parse_prefixes
from rusty_rail.model.flowhash import Flow, mix64, words_of
from rusty_rail.model.state import NextHop

__all__ = [
    "GRE6_OVERHEAD",
    "GRE_OVERHEAD",
    "MAX_LBS",
    "ROUTER_SEED",
    "LbTarget",
    "Router",
    "RouterStat",
    "choose_lb",
    "lb_scores",
]

OBJECT_NAME = "testbed_router"
PROGRAM_NAME = "xdp_router"

#: The router's flow-hash seed. Deliberately not the balancer's: the LBs hash the same flows
#: again, and a shared hash would correlate the two choices.
ROUTER_SEED = int.from_bytes(b"rr-ecmp!", "big")
#: ROUTER_MAX_LBS in bpf/testbed_router.bpf.c.
MAX_LBS = 32
#: What the router adds in front of the inner packet: outer IPv4 (20) and GRE (4).
GRE_OVERHEAD = 24
#: The same with an outer IPv6 header (40).
GRE6_OVERHEAD = 44

# struct router_lb_set and struct router_lb (bpf/testbed_router.bpf.c); addresses are 16 bytes,
# an IPv4 one mapped (::ffff:a.b.c.d).
_SET_HEADER = struct.Struct("=IBBBx16sQ16s")
_LB = struct.Struct("=16sI6s6sI")
_SET_SIZE = _SET_HEADER.size + MAX_LBS * _LB.size
_PREFIX = struct.Struct("=I4s")
_PREFIX_V6 = struct.Struct("=I16s")
_COUNTER = struct.Struct("=QQ")
_U32 = struct.Struct("=I")


class RouterStat(IntEnum):
    """Per-reason outcomes, the index into router_stats (enum router_stat)."""

    ENCAPSULATED = 0
    PASS_NOT_IP = 1
    PASS_MALFORMED = 2
    PASS_NOT_VIP = 3
    PASS_TTL_EXPIRED = 4
    DROP_NO_LB = 5
    DROP_TOO_BIG = 6
    DROP_ERROR = 7
    DROP_NO_NEIGH = 8


@dataclass(frozen=True, slots=True)
class LbTarget:
    """One LB as the router sends to it: the outer destination, the Ethernet next hop and the
    egress link's MTU (0: not checked)."""

    address: IPv4Address | IPv6Address
    next_hop: NextHop
    mtu: int = 0

    def encode(self) -> bytes:
        return _LB.pack(
            _packed16(self.address),
            self.next_hop.ifindex,
            self.next_hop.dst_mac,
            self.next_hop.src_mac,
            self.mtu,
        )


# -- the choice, in Python -----------------------------------------------------------------

Address = IPv4Address | IPv6Address


def _packed16(address: Address) -> bytes:
    """The 16 bytes the program keeps for an address: IPv6 as is, IPv4 mapped."""
    if isinstance(address, IPv6Address):
        return address.packed
    return bytes(10) + b"\xff\xff" + address.packed


def _unpacked16(data: bytes) -> Address:
    address = IPv6Address(data)
    return address.ipv4_mapped or address


def _lb_address(value: Address | str, what: str = "LB") -> Address:
    """An LB (or source) address of either family; an IPv4-mapped IPv6 address is refused (the
    program keeps IPv4 addresses in that form)."""
    address = ip_address(value)
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        raise ValueError(f"{what} {value}: an IPv4-mapped IPv6 address; give the IPv4 address")
    return address


def _same_family(addresses: Sequence[Address]) -> None:
    if len({address.version for address in addresses}) > 1:
        raise ValueError(f"LBs {', '.join(map(str, addresses))}: one set holds one address family")


def _flow_state(flow: Flow, seed: int) -> int:
    return mix64(seed, flow.words())


def lb_scores(flow: Flow, lbs: Sequence[Address | str], seed: int = ROUTER_SEED) -> list[int]:
    """Each LB's rendezvous score for ``flow``: mix64(mix64(seed, flow words), address words),
    one word for an IPv4 LB, four for an IPv6 one."""
    state = _flow_state(flow, seed)
    return [mix64(state, words_of(_lb_address(lb).packed)) for lb in lbs]


def choose_lb(flow: Flow, lbs: Sequence[Address | str], seed: int = ROUTER_SEED) -> Address | None:
    """The LB bpf/testbed_router.bpf.c sends ``flow`` to (None for no LBs): the highest score, ties
    to the higher address. ``flow`` has ports 0 for fragments and protocols without ports. The
    LBs are of one family, as in a set the router holds."""
    if not lbs:
        return None
    addresses = [_lb_address(lb) for lb in lbs]
    _same_family(addresses)
    scored = zip(lb_scores(flow, addresses, seed), addresses, strict=True)
    return max(scored, key=lambda pair: (pair[0], int(pair[1])))[1]


def _network_of_key(key: bytes) -> IPv4Network | IPv6Network:
    if len(key) == _PREFIX_V6.size:
        prefixlen, address = _PREFIX_V6.unpack(key)
        return IPv6Network((address, prefixlen))
    prefixlen, address = _PREFIX.unpack(key)
    return IPv4Network((address, prefixlen))


# -- the router ----------------------------------------------------------------------------


def _interface_mtu(ifindex: int, netns: str | None) -> int:
    with IPRoute(netns=netns) as ipr:
        return int(ipr.link("get", index=ifindex)[0].get("IFLA_MTU"))


#: Map name in the object -> pin name in a pinned router's directory.
_MAP_PINS = {
    "router_vips": "vips",
    "router_vips_v6": "vips_v6",
    "router_lb_sets": "lb_sets",
    "router_active": "active",
    "router_stats": "stats",
    "router_lb_stats": "lb_stats",
}
ROUTER = PinnedXdpSpec(OBJECT_NAME, PROGRAM_NAME, _MAP_PINS)
_NO_PROGRAM = "a router adopted from pins has no program object to run"


class Router(Closeable):
    """The router program's maps, and its attachment to one interface (or none).

    Made by ``Router.load`` (a fresh program) or ``Router.from_pinned`` (one that an earlier
    process pinned). ``netns`` is where interfaces, next hops and MTUs are looked up; programs
    and maps themselves are global. ``close()`` detaches the program unless it is pinned."""

    def __init__(
        self,
        xdp: PinnedXdpProgram,
        *,
        source: Address,
        seed: int,
        outer_ttl: int,
        netns: str | None,
        lbs: Sequence[LbTarget] = (),
        source6: IPv6Address | None = None,
    ) -> None:
        self._xdp = xdp
        maps = xdp.maps
        self._vips = maps["router_vips"]
        self._vips_v6 = maps["router_vips_v6"]
        self._sets = maps["router_lb_sets"]
        self._active = maps["router_active"]
        self._stats = maps["router_stats"]
        self._lb_stats = maps["router_lb_stats"]
        if self._sets.value_size != _SET_SIZE:
            raise RuntimeError(
                f"bpf/testbed_router.bpf.o has LB sets of {self._sets.value_size} bytes, this "
                f"module writes {_SET_SIZE}: rebuild with scripts/setup"
            )
        self.source = source
        #: FIB mode's outer IPv6 source (``source`` is then the IPv4 one); None: rendezvous mode.
        self.source6 = source6
        self.seed = seed
        self.outer_ttl = outer_ttl
        self.netns = netns
        self._lbs: tuple[LbTarget, ...] = tuple(lbs)

    @classmethod
    def load(
        cls,
        *,
        source: str,
        vips: Sequence[str] = (),
        seed: int = ROUTER_SEED,
        outer_ttl: int = 64,
        netns: str | None = None,
        source6: str | None = None,
    ) -> Router:
        """Load bpf/testbed_router.bpf.o with ``source`` as the outer source address (the router's
        LB-side address, IPv4 or IPv6: the outer family and the LBs' family) and the VIP
        prefixes; no LBs yet (VIP traffic is dropped and counted as DROP_NO_LB until
        set_lbs). ``outer_ttl`` is the outer TTL or hop limit.

        With ``source6`` (the router's IPv6 LB-side address; ``source`` is then its IPv4 one)
        the router runs in FIB mode (the module's docstring): the kernel's routes choose the
        LB, set_lbs is refused."""
        if not 1 <= outer_ttl <= 255:
            raise ValueError(f"outer_ttl must be 1..255, got {outer_ttl}")
        address = _lb_address(source, "source")
        address6 = None
        if source6 is not None:
            if address.version != 4 or _lb_address(source6, "source6").version != 6:
                raise ValueError(
                    f"source {source}, source6 {source6}: FIB mode takes an IPv4 source and an "
                    "IPv6 source6"
                )
            address6 = IPv6Address(source6)
        xdp = PinnedXdpProgram.load(ROUTER, None)
        try:
            router = cls(
                xdp,
                source=address,
                seed=seed,
                outer_ttl=outer_ttl,
                netns=netns,
                source6=address6,
            )
            router.set_vips(vips)
            router.set_lb_targets(())
        except BaseException:
            xdp.close()
            raise
        return router

    @classmethod
    def from_pinned(cls, directory: Path, *, netns: str | None = None) -> Router:
        """Adopt a router that ``pin(directory)`` left running: its maps, its link (if it was
        attached) and the settings and LB set of its active bank."""
        xdp = PinnedXdpProgram.from_pins(ROUTER, directory)
        try:
            settings, lbs = _read_active_set(xdp.maps["router_lb_sets"], xdp.maps["router_active"])
            return cls(xdp, netns=netns, lbs=lbs, **settings)
        except BaseException:
            xdp.close()
            raise

    @property
    def program(self) -> Program:
        """The loaded program (for test runs); a router adopted from pins has none."""
        if self._xdp.obj is None:
            raise RuntimeError(_NO_PROGRAM)
        return self._xdp.program

    # attachment

    def attach(self, ifname: str, mode: XdpMode = "native") -> None:
        """Run the router on ``ifname`` (the client-facing interface, in ``netns``)."""
        if self._xdp.link is not None:
            raise RuntimeError("the router is attached already: detach it first")
        if self._xdp.obj is None:
            raise RuntimeError(_NO_PROGRAM)
        with in_netns(self.netns):
            self._xdp.attach(if_nametoindex(ifname), mode)

    def pin(self, directory: Path) -> None:
        """Let the router outlive this process: its maps and link pinned in ``directory`` (a
        new directory on a bpffs), where Router.from_pinned finds them. Removing the
        directory (libbpf.remove_pin_dir) detaches a router nobody else holds."""
        if self._xdp.directory is not None:
            raise RuntimeError(f"the router is pinned already, at {self._xdp.directory}")
        self._xdp.pin(directory)

    def detach(self) -> None:
        """Take the program off its interface now (pinned or not)."""
        self._xdp.detach()

    def close(self) -> None:
        """Release the router: detached unless pinned, in which case it keeps running."""
        try:
            if self._xdp.directory is None:
                self._xdp.detach()
        finally:
            self._xdp.close()

    # configuration

    def set_vips(self, prefixes: Sequence[str]) -> None:
        """The destinations that are wrapped in GRE: IPv4 and IPv6 prefixes, or addresses as /32
        and /128. Both families are checked before either table changes."""
        networks = parse_prefixes(prefixes, "vips")
        wanted = {
            table: {
                layout.pack(network.prefixlen, network.network_address.packed)
                for network in networks
                if network.version == version
            }
            for table, layout, version in ((self._vips, _PREFIX, 4), (self._vips_v6, _PREFIX_V6, 6))
        }
        for table, keys in wanted.items():
            if len(keys) > table.max_entries:
                family = "IPv4" if table is self._vips else "IPv6"
                raise ValueError(
                    f"vips: {len(keys)} {family} prefixes, at most {table.max_entries}"
                )
        for table, keys in wanted.items():
            current = set(table.keys())
            for key in keys - current:
                table.update(key, _U32.pack(1))
            for key in current - keys:
                table.delete(key)

    def vips(self) -> list[IPv4Network | IPv6Network]:
        """The VIP prefixes, IPv4 first."""
        v4 = sorted(map(_network_of_key, self._vips.keys()))
        v6 = sorted(map(_network_of_key, self._vips_v6.keys()))
        return [*v4, *v6]

    @property
    def fib(self) -> bool:
        """Whether the kernel's FIB chooses the LB (FIB mode) rather than the set."""
        return self.source6 is not None

    def count_lbs(self, addresses: Sequence[str]) -> None:
        """FIB mode: count what is sent to each of ``addresses`` (any family) in lb_counters."""
        keys = [LbTarget(_lb_address(a), NextHop(0, bytes(6), bytes(6))) for a in addresses]
        self._prepare_lb_counters(keys)

    @property
    def lbs(self) -> tuple[LbTarget, ...]:
        """The live LB set, as last given."""
        return self._lbs

    def set_lbs(self, addresses: Sequence[str], *, timeout: float = 3.0) -> tuple[LbTarget, ...]:
        """Make ``addresses`` the live LB set: each LB's next hop is resolved through the
        kernel's FIB and neighbour table of ``netns`` (ARP or neighbour discovery waited for up
        to ``timeout`` seconds) and its egress MTU read, then the set is swapped in at once.
        An empty list means every LB is gone. The LBs have the family of ``source``."""
        if self.fib and addresses:
            raise ValueError("the router is in FIB mode: the kernel's routes choose the LBs")
        lbs = [_lb_address(address) for address in addresses]
        for lb in lbs:
            self._check_family(lb)
        targets = []
        for lb in lbs:
            next_hop = wait_next_hop(lb, timeout, netns=self.netns)
            targets.append(LbTarget(lb, next_hop, _interface_mtu(next_hop.ifindex, self.netns)))
        self.set_lb_targets(targets)
        return self._lbs

    def set_lb_targets(self, targets: Sequence[LbTarget]) -> None:
        """Make ``targets`` the live LB set as given (no resolution): the idle bank is written
        whole, then made the active one, so a packet sees the old set or the new one."""
        if self.fib and targets:
            raise ValueError("the router is in FIB mode: the kernel's routes choose the LBs")
        addresses = [target.address for target in targets]
        for address in addresses:
            self._check_family(_lb_address(address))
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"LB addresses repeat: {', '.join(map(str, addresses))}")
        if len(targets) > MAX_LBS:
            raise ValueError(f"{len(targets)} LBs, the router takes at most {MAX_LBS}")
        self._prepare_lb_counters(targets)
        value = _SET_HEADER.pack(
            len(targets),
            self.source.version,
            self.outer_ttl,
            self.fib,
            _packed16(self.source),
            self.seed,
            bytes(16) if self.source6 is None else self.source6.packed,
        )
        value += b"".join(target.encode() for target in targets)
        value += bytes(_SET_SIZE - len(value))
        idle = 1 - _active_bank(self._active)
        self._sets.update(_U32.pack(idle), value)
        self._active.update(_U32.pack(0), _U32.pack(idle))
        self._lbs = tuple(targets)

    def _check_family(self, lb: Address) -> None:
        if lb.version != self.source.version:
            raise ValueError(
                f"LB {lb}: the router's outer source {self.source} is IPv{self.source.version}, "
                f"its LBs must be IPv{self.source.version} too"
            )

    def _prepare_lb_counters(self, targets: Sequence[LbTarget]) -> None:
        keys = {_packed16(target.address) for target in targets}
        present = set(self._lb_stats.keys())
        if len(present | keys) > self._lb_stats.max_entries:
            for key in present - keys:  # forget LBs that are long gone
                self._lb_stats.delete(key)
        zero = [_COUNTER.pack(0, 0)] * num_possible_cpus()
        for key in keys - present:
            try:
                self._lb_stats.update_percpu(key, zero, BPF_NOEXIST)
            except LibbpfError:
                if self._lb_stats.lookup_percpu(key) is None:
                    raise

    # counters

    @staticmethod
    def _sum(values: Sequence[bytes] | None) -> dict[str, int]:
        packets = bytes_ = 0
        for value in values or ():
            cpu_packets, cpu_bytes = _COUNTER.unpack(value)
            packets += cpu_packets
            bytes_ += cpu_bytes
        return {"packets": packets, "bytes": bytes_}

    def counters(self) -> dict[str, dict[str, int]]:
        """Per reason (lower-case RouterStat names): packets and bytes as received."""
        return {
            stat.name.lower(): self._sum(self._stats.lookup_percpu(_U32.pack(stat)))
            for stat in RouterStat
        }

    def lb_counters(self) -> dict[str, dict[str, int]]:
        """Per LB address: the packets and bytes (as received) sent to it."""
        return {
            str(_unpacked16(key)): self._sum(values)
            for key, values in self._lb_stats.items_percpu()
        }


def _active_bank(active: Map) -> int:
    value = active.lookup(_U32.pack(0))
    return _U32.unpack(value)[0] & 1 if value is not None else 0


def _read_active_set(sets: Map, active: Map) -> tuple[dict[str, Any], list[LbTarget]]:
    value = sets.lookup(_U32.pack(_active_bank(active)))
    if value is None:
        raise RuntimeError("the pinned router has no LB set")
    count, _family, outer_ttl, fib, source, seed, source6 = _SET_HEADER.unpack_from(value)
    lbs = []
    for index in range(min(count, MAX_LBS)):
        address, ifindex, dst_mac, src_mac, mtu = _LB.unpack_from(
            value, _SET_HEADER.size + index * _LB.size
        )
        lbs.append(LbTarget(_unpacked16(address), NextHop(ifindex, src_mac, dst_mac), mtu))
    settings = {"source": _unpacked16(source), "seed": seed, "outer_ttl": outer_ttl}
    if fib:
        settings["source6"] = IPv6Address(source6)
    return settings, lbs
