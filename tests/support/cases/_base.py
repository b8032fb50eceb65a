"""What every packet case is built from: the standard state, the ``PacketCase`` type, and the
builders a section of docs/packet-path.md makes its cases with (``Section``).

Expected output frames are built independently of the reference pipeline: the same builders with
the rewritten fields and a fully recomputed checksum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rusty_rail.model.affinity import affinity_hash
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.icmp import IcmpReport, IcmpStat, IcmpWatch
from rusty_rail.model.pmtu import Bucket, TooBig, TooBigLimiter
from rusty_rail.model.state import (
    Action,
    Affinity,
    BackendEntry,
    BackendState,
    CtEntry,
    DataplaneState,
    NextHop,
    Settings,
    Stat,
    Verdict,
    VipFlow,
    VipKey,
)
from rusty_rail.wire.build import ethernet, gre, ipv4
from rusty_rail.wire.constants import ETH_P_IPV4, PROTO_GRE, PROTO_ICMP, PROTO_TCP, PROTO_UDP
from rusty_rail.wire.fields import VlanTag, ipv4_address, ipv6_address, mac
from rusty_rail.wire.frames import (
    LB_IPV4,
    LB_IPV6,
    LB_MAC,
    ROUTER_IPV4,
    ROUTER_MAC,
    Outer,
    encapsulate,
    inner_ipv4,
)

# --- The standard state ----------------------------------------------------------------------

CLIENT = "198.18.100.1"
VIP_WEB = "198.19.0.10"  # TCP/80 port VIP (index 0) and an address VIP (index 1)
VIP_DNS = "198.19.0.20"  # UDP/53 port VIP only (index 2), its backend behind another port
NOT_A_VIP = "198.19.0.99"
DEFAULT_VIP_INDEX = 3  # the default set, configured only in the states that say so

WEB_PORT_VIP, WEB_ADDRESS_VIP, DNS_PORT_VIP = 0, 1, 2
TABLE_SIZE = 7  # prime, small enough to read

INGRESS_IFINDEX = 1
OTHER_IFINDEX = 2
LB_MAC_OTHER_PORT = "02:00:00:00:00:22"

WEB_FLOW = Flow.of(CLIENT, VIP_WEB, PROTO_TCP, 40000, 80)
WEB_OTHER_PORT_FLOW = Flow.of(CLIENT, VIP_WEB, PROTO_TCP, 40000, 443)
WEB_UDP_FLOW = Flow.of(CLIENT, VIP_WEB, PROTO_UDP, 40000, 80)
WEB_ICMP_FLOW = Flow.of(CLIENT, VIP_WEB, PROTO_ICMP)
DNS_FLOW = Flow.of(CLIENT, VIP_DNS, PROTO_UDP, 5353, 53)
DNS_TCP_FLOW = Flow.of(CLIENT, VIP_DNS, PROTO_TCP, 5353, 53)
NO_VIP_FLOW = Flow.of(CLIENT, NOT_A_VIP, PROTO_TCP, 40000, 80)

# Inner IPv6 (section 4b): the web service's IPv6 VIPs, with the same VIP indices and so the
# same IPv4 backends as its IPv4 ones.
CLIENT6 = "2001:2:0:100::1"
VIP6_WEB = "2001:2:0:19::10"  # TCP/80 port VIP (index 0) and an address VIP (index 1)
NOT_A_VIP6 = "2001:2:0:19::99"
WEB6_FLOW = Flow.of(CLIENT6, VIP6_WEB, PROTO_TCP, 40000, 80)
WEB6_OTHER_PORT_FLOW = Flow.of(CLIENT6, VIP6_WEB, PROTO_TCP, 40000, 443)
WEB6_UDP_FLOW = Flow.of(CLIENT6, VIP6_WEB, PROTO_UDP, 40000, 80)
NO_VIP6_FLOW = Flow.of(CLIENT6, NOT_A_VIP6, PROTO_TCP, 40000, 80)


def _next_hop(ifindex: int, backend_mac: str) -> NextHop:
    lb_mac = LB_MAC_OTHER_PORT if ifindex == OTHER_IFINDEX else LB_MAC
    return NextHop(ifindex=ifindex, src_mac=mac(lb_mac), dst_mac=mac(backend_mac))


def _backend(
    addr: str, vip_index: int, next_hop: NextHop | None, generation: int = 1
) -> BackendEntry:
    return BackendEntry(ipv4_address(addr), vip_index, generation, BackendState.UP, next_hop)


def standard_backends() -> dict[int, BackendEntry]:
    return {
        # The web port VIP's three backends, reached through the ingress port: TX.
        0: _backend("198.18.10.1", WEB_PORT_VIP, _next_hop(INGRESS_IFINDEX, "02:00:00:00:10:01")),
        1: _backend("198.18.10.2", WEB_PORT_VIP, _next_hop(INGRESS_IFINDEX, "02:00:00:00:10:02")),
        2: _backend("198.18.10.3", WEB_PORT_VIP, _next_hop(INGRESS_IFINDEX, "02:00:00:00:10:03")),
        # The web address VIP's two backends, next hop ifindex 0 ("this interface"): TX.
        3: _backend("198.18.11.1", WEB_ADDRESS_VIP, _next_hop(0, "02:00:00:00:11:01")),
        6: _backend("198.18.11.2", WEB_ADDRESS_VIP, _next_hop(0, "02:00:00:00:11:02")),
        # The DNS VIP's backend behind another port: REDIRECT.
        4: _backend("198.18.12.1", DNS_PORT_VIP, _next_hop(OTHER_IFINDEX, "02:00:00:00:12:01")),
        # The default set's backend (in the table only when the default set is configured).
        5: _backend(
            "198.18.13.1", DEFAULT_VIP_INDEX, _next_hop(INGRESS_IFINDEX, "02:00:00:00:13:01")
        ),
    }


def standard_state(
    *,
    settings: Mapping[str, object] | None = None,
    backends: Mapping[int, BackendEntry | None] | None = None,
    tables: Mapping[int, Sequence[int] | None] | None = None,
    conntrack: Mapping[Flow, CtEntry] | None = None,
    affinity: Mapping[int, Affinity] | None = None,
) -> DataplaneState:
    """The state every case starts from (every VIP hashing the 5-tuple), with changes: a None in
    ``backends`` or ``tables`` removes that entry."""
    state = DataplaneState(
        settings=replace(
            Settings(lb_ipv4=ipv4_address(LB_IPV4), lb_ipv6=ipv6_address(LB_IPV6)),
            **dict(settings or {}),
        ),
        vips={
            VipKey(ipv4_address(VIP_WEB), PROTO_TCP, 80): WEB_PORT_VIP,
            VipKey(ipv4_address(VIP_WEB)): WEB_ADDRESS_VIP,
            VipKey(ipv4_address(VIP_DNS), PROTO_UDP, 53): DNS_PORT_VIP,
            VipKey(ipv6_address(VIP6_WEB), PROTO_TCP, 80): WEB_PORT_VIP,
            VipKey(ipv6_address(VIP6_WEB)): WEB_ADDRESS_VIP,
        },
        tables={
            WEB_PORT_VIP: [0, 1, 2, 0, 1, 2, 0],
            WEB_ADDRESS_VIP: [3, 6, 3, 6, 3, 6, 3],
            DNS_PORT_VIP: [4] * TABLE_SIZE,
            DEFAULT_VIP_INDEX: [5] * TABLE_SIZE,
        },
        backends=standard_backends(),
        conntrack=dict(conntrack or {}),
        affinity=dict(affinity or {}),
    )
    for index, backend in (backends or {}).items():
        if backend is None:
            state.backends.pop(index, None)
        else:
            state.backends[index] = backend
    for vip_index, table in (tables or {}).items():
        if table is None:
            state.tables.pop(vip_index, None)
        else:
            state.tables[vip_index] = table
    return state


StateBuilder = Callable[[], DataplaneState]
WatchBuilder = Callable[[], IcmpWatch]


def standard_watch() -> IcmpWatch:
    """Every backend address of the standard state watched for ICMP, every one armed."""
    return IcmpWatch.of({backend.addr for backend in standard_backends().values()})


def variant(
    *,
    settings: Mapping[str, object] | None = None,
    backends: Mapping[int, BackendEntry | None] | None = None,
    tables: Mapping[int, Sequence[int] | None] | None = None,
    conntrack: Mapping[Flow, CtEntry] | None = None,
    affinity: Mapping[int, Affinity] | None = None,
) -> StateBuilder:
    """A builder of fresh standard states with these changes (cases must not share state)."""
    return lambda: standard_state(
        settings=settings, backends=backends, tables=tables, conntrack=conntrack, affinity=affinity
    )


def table_pick(state: DataplaneState, vip_index: int, flow: Flow) -> int:
    """The backend slot the spec's section 7 names: table[hash % M], the hash of the fields the
    VIP's affinity names (docs/flow-hash.md)."""
    table = state.tables[vip_index]
    mode = state.affinity.get(vip_index, Affinity.FIVE_TUPLE)
    return table[affinity_hash(flow, mode, state.settings.hash_seed) % len(table)]


def with_state(
    backend: BackendEntry, state: BackendState, generation: int | None = None
) -> BackendEntry:
    return replace(
        backend,
        state=state,
        generation=backend.generation if generation is None else generation,
    )


# --- Cases -----------------------------------------------------------------------------------

#: A too-big bucket's stamp that no clock reaches: the bucket is never refilled (section 8c).
BUCKET_STAMP_FUTURE = 1 << 63


@dataclass(frozen=True)
class PacketCase:
    """One frame and what the spec says it must do.

    ``expected_frame`` is None when the frame must leave unchanged (every PASS and DROP).
    ``flow``/``conntrack_after``: after the packet, ``state.conntrack.get(flow)`` must equal
    ``conntrack_after`` (None: no entry). ``watch`` is the ICMP watch the packet meets,
    ``icmp_stat`` the ICMP counter it counts (section 9), ``report`` the report it sends.
    ``too_big`` is the (VIP index, reason) of ``vip_too_big`` it counts (section 8c), and
    ``buckets`` the (VIP index, tokens) of the too-big buckets it meets (stamped in the future,
    so never refilled; every other bucket full).
    """

    name: str
    description: str
    frame: bytes
    stat: Stat
    verdict: Verdict
    state: StateBuilder = standard_state
    expected_frame: bytes | None = None
    vip_index: int | None = None
    backend_index: int | None = None
    redirect_ifindex: int | None = None
    ingress_ifindex: int = INGRESS_IFINDEX
    flow: Flow | None = None
    conntrack_after: CtEntry | None = None
    tags: frozenset[str] = field(default_factory=frozenset)
    watch: WatchBuilder = standard_watch
    icmp_stat: IcmpStat | None = None
    report: IcmpReport | None = None
    too_big: tuple[int, TooBig] | None = None
    buckets: tuple[tuple[int, int], ...] = ()
    #: The (VIP index, VipFlow) of ``vip_flows`` it counts; None: a forwarded CT_MISS or
    #: CT_STALE counts (vip_index, NEW), a too-big one (its VIP, NEW), anything else nothing.
    vip_flow: tuple[int, VipFlow] | None = None

    def limiter(self) -> TooBigLimiter:
        """The reference's view of ``buckets``, at a time before their stamp."""
        buckets = {vip: Bucket(BUCKET_STAMP_FUTURE, tokens) for vip, tokens in self.buckets}
        return TooBigLimiter(buckets, now_ns=0)

    @property
    def output(self) -> bytes:
        return self.frame if self.expected_frame is None else self.expected_frame

    def expected_counters(self) -> dict[str, dict[int, tuple[int, int]]]:
        """The counter deltas as plain dicts: stats by Stat value, VIPs, backends, and ICMP
        outcomes by IcmpStat value."""
        one = (1, len(self.frame))
        return {
            "stats": {int(self.stat): one},
            "vips": {} if self.vip_index is None else {self.vip_index: one},
            "backends": {} if self.backend_index is None else {self.backend_index: one},
            "icmp": {} if self.icmp_stat is None else {int(self.icmp_stat): one},
        }

    def expected_vip_flows(self) -> dict[tuple[int, VipFlow], tuple[int, int]]:
        one = (1, len(self.frame))
        if self.vip_flow is not None:
            return {self.vip_flow: one}
        if self.stat in (Stat.CT_MISS, Stat.CT_STALE) and self.vip_index is not None:
            return {(self.vip_index, VipFlow.NEW): one}
        if self.too_big is not None:  # a new flow's first packet, recorded, then too big
            return {(self.too_big[0], VipFlow.NEW): one}
        return {}

    def expected_too_big(self) -> dict[tuple[int, TooBig], tuple[int, int]]:
        return {} if self.too_big is None else {self.too_big: (1, len(self.frame))}


DEFAULT_OUTER = Outer()


def _rewritten_outer(outer: Outer, settings: Settings, backend: BackendEntry) -> Outer:
    """The outer header section 8 sends to ``backend``: of the backend's family, the arriving
    one readdressed, or a new one when the family changes (traffic class and TOS carried over,
    IPv4 options dropped, flow label 0, ID 0 with DF)."""
    assert backend.next_hop is not None
    to_ipv6 = len(backend.addr) == 16
    readdressed = replace(
        outer,
        eth_dst=backend.next_hop.dst_mac,
        eth_src=backend.next_hop.src_mac,
        ipv6=to_ipv6,
        src=settings.lb_ipv6 if to_ipv6 else settings.lb_ipv4,
        dst=backend.addr,
        ttl=settings.outer_ttl,
    )
    if to_ipv6 == outer.ipv6:
        return readdressed
    old_len = 40 if outer.ipv6 else 20 + len(outer.options)
    new_len = 40 if to_ipv6 else 20
    return replace(
        readdressed,
        options=b"",
        flow_label=0,
        ident=0,
        dont_fragment=True,
        more_fragments=False,
        frag_offset=0,
        reserved_flag=False,
        pad_to=outer.pad_to + new_len - old_len if outer.pad_to else 0,
    )


class Section:
    """The cases of one section of docs/packet-path.md, in the order its builders are called."""

    def __init__(self) -> None:
        self.cases: list[PacketCase] = []

    def kept(
        self,
        name: str,
        description: str,
        frame: bytes,
        stat: Stat,
        verdict: Verdict,
        *,
        state: StateBuilder = standard_state,
        flow: Flow | None = None,
        conntrack_after: CtEntry | None = None,
        vip_flow: tuple[int, VipFlow] | None = None,
    ) -> PacketCase:
        """A case whose frame is passed or dropped unchanged (``vip_flow``: the drop it counts
        for its VIP)."""
        case = PacketCase(
            name,
            description,
            frame,
            stat,
            verdict,
            state,
            flow=flow,
            conntrack_after=conntrack_after,
            vip_flow=vip_flow,
        )
        self.cases.append(case)
        return case

    def forwarded(
        self,
        name: str,
        description: str,
        flow: Flow,
        vip_index: int,
        *,
        outer: Outer = DEFAULT_OUTER,
        inner: bytes | None = None,
        trailer: bytes = b"",
        state: StateBuilder = standard_state,
        stat: Stat = Stat.CT_MISS,
        backend_index: int | None = None,
        ingress_ifindex: int = INGRESS_IFINDEX,
        ct_flow: Flow | None = None,
    ) -> PacketCase:
        """A case the balancer forwards: ``inner`` (default: the flow's own packet) wrapped in
        ``outer`` then ``trailer``; the output is the same build with the outer fields rewritten.

        ``backend_index`` defaults to the table's pick; ``ct_flow`` is the connection-table key
        when it differs from ``flow`` (never, except to spell out the 3-tuple of a fragment).
        """
        assert outer.ip_checksum is None, "expected frames recompute the checksum in full"
        inner_packet = inner_ipv4(flow) if inner is None else inner
        sample = state()
        backend = table_pick(sample, vip_index, flow) if backend_index is None else backend_index
        entry = sample.backends[backend]
        assert entry.next_hop is not None
        rewritten = _rewritten_outer(outer, sample.settings, entry)
        redirect = entry.next_hop.ifindex not in (0, ingress_ifindex)
        case = PacketCase(
            name,
            description,
            encapsulate(inner_packet, outer) + trailer,
            stat,
            Verdict.REDIRECT if redirect else Verdict.TX,
            state,
            expected_frame=encapsulate(inner_packet, rewritten) + trailer,
            vip_index=vip_index,
            backend_index=backend,
            redirect_ifindex=entry.next_hop.ifindex if redirect else None,
            ingress_ifindex=ingress_ifindex,
            flow=ct_flow or flow,
            conntrack_after=CtEntry(backend, entry.generation),
        )
        self.cases.append(case)
        return case

    def malformed_both_ways(self, name: str, description: str, frame: bytes, stat: Stat) -> None:
        """A malformed-inner case under the default action (DROP) and under PASS."""
        self.kept(name, description, frame, stat, Verdict.DROP)
        self.kept(
            f"{name}-action-pass",
            f"{description} (malformed action PASS)",
            frame,
            stat,
            Verdict.PASS,
            state=variant(settings={"malformed_action": Action.PASS}),
        )


def _frame(
    outer_payload: bytes, *, ethertype: int = ETH_P_IPV4, vlans: Sequence[VlanTag | int] = ()
) -> bytes:
    return ethernet(LB_MAC, ROUTER_MAC, ethertype, outer_payload, vlans=vlans)


def _outer_ipv4(
    payload: bytes, *, proto: int = PROTO_GRE, dst: str = LB_IPV4, **fields: Any
) -> bytes:
    """An outer IPv4 packet from the router to the LB, other header fields overridable."""
    return ipv4(ROUTER_IPV4, dst, proto, payload, **fields)


GRE_WEB = gre(ETH_P_IPV4, inner_ipv4(WEB_FLOW))
WEB_FRAME = encapsulate(inner_ipv4(WEB_FLOW))
_STANDARD = standard_state()
_WEB_PICK = table_pick(_STANDARD, WEB_PORT_VIP, WEB_FLOW)  # the web flow's slot in the table
