"""Hand-built packet cases, one or more for every rule of docs/packet-path.md.

Each case is a frame, a fresh data-plane state and the outcome the spec asks for (stat,
verdict, output bytes, VIP and backend counted). The reference pipeline's unit tests and the
BPF differential tests both run them. Expected output frames are built independently of the
reference pipeline: the same builders with the rewritten fields and a fully recomputed checksum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rusty_rail.model.flowhash import Flow, flow_hash
from rusty_rail.model.icmp import IcmpReport, IcmpStat, IcmpWatch
from rusty_rail.model.state import (
    NONE_INDEX,
    Action,
    BackendEntry,
    BackendState,
    CtEntry,
    DataplaneState,
    NextHop,
    Settings,
    Stat,
    Verdict,
    VipKey,
)
from rusty_rail.wire.build import ethernet, gre, icmp, ipv4, ipv4_fragments, ipv6, tcp, udp
from rusty_rail.wire.constants import (
    ETH_P_8021AD,
    ETH_P_ARP,
    ETH_P_IPV4,
    ETH_P_IPV6,
    ETH_P_TEB,
    GRE_FLAG_R,
    GRE_FLAG_STRICT,
    GRE_RESERVED0_MASK,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
)
from rusty_rail.wire.fields import VlanTag, ipv4_address, mac
from rusty_rail.wire.frames import (
    LB_IPV4,
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
) -> DataplaneState:
    """The state every case starts from, with changes: a None in ``backends`` or ``tables``
    removes that entry."""
    state = DataplaneState(
        settings=replace(Settings(lb_ipv4=ipv4_address(LB_IPV4)), **dict(settings or {})),
        vips={
            VipKey(ipv4_address(VIP_WEB), PROTO_TCP, 80): WEB_PORT_VIP,
            VipKey(ipv4_address(VIP_WEB)): WEB_ADDRESS_VIP,
            VipKey(ipv4_address(VIP_DNS), PROTO_UDP, 53): DNS_PORT_VIP,
        },
        tables={
            WEB_PORT_VIP: [0, 1, 2, 0, 1, 2, 0],
            WEB_ADDRESS_VIP: [3, 6, 3, 6, 3, 6, 3],
            DNS_PORT_VIP: [4] * TABLE_SIZE,
            DEFAULT_VIP_INDEX: [5] * TABLE_SIZE,
        },
        backends=standard_backends(),
        conntrack=dict(conntrack or {}),
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
) -> StateBuilder:
    """A builder of fresh standard states with these changes (cases must not share state)."""
    return lambda: standard_state(
        settings=settings, backends=backends, tables=tables, conntrack=conntrack
    )


def table_pick(state: DataplaneState, vip_index: int, flow: Flow) -> int:
    """The backend slot the spec's section 7 names: table[flow_hash % M]."""
    table = state.tables[vip_index]
    return table[flow_hash(flow, state.settings.hash_seed) % len(table)]


def with_state(
    backend: BackendEntry, state: BackendState, generation: int | None = None
) -> BackendEntry:
    return replace(
        backend,
        state=state,
        generation=backend.generation if generation is None else generation,
    )


# --- Cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PacketCase:
    """One frame and what the spec says it must do.

    ``expected_frame`` is None when the frame must leave unchanged (every PASS and DROP).
    ``flow``/``conntrack_after``: after the packet, ``state.conntrack.get(flow)`` must equal
    ``conntrack_after`` (None: no entry). ``watch`` is the ICMP watch the packet meets,
    ``icmp_stat`` the ICMP counter it counts (section 9), ``report`` the report it sends.
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


CASES: list[PacketCase] = []
DEFAULT_OUTER = Outer()


def kept(
    name: str,
    description: str,
    frame: bytes,
    stat: Stat,
    verdict: Verdict,
    *,
    state: StateBuilder = standard_state,
    flow: Flow | None = None,
    conntrack_after: CtEntry | None = None,
) -> PacketCase:
    """A case whose frame is passed or dropped unchanged."""
    case = PacketCase(
        name, description, frame, stat, verdict, state, flow=flow, conntrack_after=conntrack_after
    )
    CASES.append(case)
    return case


def forwarded(
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
    rewritten = replace(
        outer,
        eth_dst=entry.next_hop.dst_mac,
        eth_src=entry.next_hop.src_mac,
        src=sample.settings.lb_ipv4,
        dst=entry.addr,
        ttl=sample.settings.outer_ttl,
    )
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
    CASES.append(case)
    return case


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


def _malformed_both_ways(name: str, description: str, frame: bytes, stat: Stat) -> None:
    """A malformed-inner case under the default action (DROP) and under PASS."""
    kept(name, description, frame, stat, Verdict.DROP)
    kept(
        f"{name}-action-pass",
        f"{description} (malformed action PASS)",
        frame,
        stat,
        Verdict.PASS,
        state=variant(settings={"malformed_action": Action.PASS}),
    )


# 1. Ethernet

kept("eth-empty", "an empty frame", b"", Stat.PASS_NOT_IP, Verdict.PASS)
kept(
    "eth-13-bytes",
    "one byte short of an Ethernet header",
    WEB_FRAME[:13],
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "eth-arp",
    "ARP is for the host",
    _frame(bytes(28), ethertype=ETH_P_ARP),
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "eth-ipv4-no-payload",
    "EtherType IPv4 and nothing after it",
    _frame(b""),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
forwarded("vlan-0-tags", "plain Ethernet", WEB_FLOW, WEB_PORT_VIP)
forwarded("vlan-1-tag", "one 802.1Q tag, kept", WEB_FLOW, WEB_PORT_VIP, outer=Outer(vlans=(100,)))
forwarded(
    "vlan-2-tags-qinq",
    "802.1ad outer tag and 802.1Q inner tag, both kept",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(vlans=(VlanTag(10, ETH_P_8021AD, pcp=5), VlanTag(20))),
)
forwarded(
    "vlan-2-tags-dot1q",
    "two 802.1Q tags",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(vlans=(VlanTag(10, pcp=7, dei=True), 4095)),
)
kept(
    "vlan-3-tags",
    "a third tag is not parsed",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(vlans=(1, 2, 3))),
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "vlan-tag-cut-short",
    "a tag with no room for the EtherType after it",
    _frame(b"", vlans=(5,))[:16],
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "vlan-tag-at-frame-end",
    "a VLAN TPID as the last two bytes",
    _frame(b"", ethertype=0x8100),
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "vlan-second-tag-cut-short",
    "the second tag is cut short",
    _frame(b"", vlans=(5,), ethertype=0x8100)[:20],
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "vlan-arp",
    "ARP inside a tag",
    _frame(bytes(28), ethertype=ETH_P_ARP, vlans=(5,)),
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)

# 2b. Outer IPv6

_V6_GRE = ipv6("2001:2::1", "2001:2::2", PROTO_GRE, GRE_WEB)
kept(
    "ipv6-gre",
    "GRE over IPv6 is not balanced yet",
    _frame(_V6_GRE, ethertype=ETH_P_IPV6),
    Stat.PASS_UNSUPPORTED,
    Verdict.PASS,
)
kept(
    "ipv6-gre-vlan",
    "GRE over IPv6 in a VLAN",
    _frame(_V6_GRE, ethertype=ETH_P_IPV6, vlans=(7,)),
    Stat.PASS_UNSUPPORTED,
    Verdict.PASS,
)
kept(
    "ipv6-udp",
    "IPv6 UDP is for the host",
    _frame(ipv6("2001:2::1", "2001:2::2", PROTO_UDP, udp(1, 2)), ethertype=ETH_P_IPV6),
    Stat.PASS_NOT_GRE,
    Verdict.PASS,
)
kept(
    "ipv6-39-bytes",
    "an IPv6 header one byte short",
    _frame(_V6_GRE[:39], ethertype=ETH_P_IPV6),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)

# 2a. Outer IPv4

kept(
    "outer-19-bytes",
    "an IPv4 header one byte short",
    WEB_FRAME[: 14 + 19],
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-version-6",
    "version 6 behind EtherType IPv4",
    _frame(_outer_ipv4(GRE_WEB, version=6)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-ihl-4",
    "IHL below 5",
    _frame(_outer_ipv4(GRE_WEB, ihl=4)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-ihl-beyond-frame",
    "IHL 15 (60 bytes) in a 44-byte packet",
    _frame(_outer_ipv4(gre(ETH_P_IPV4, bytes(20)), ihl=15)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-total-length-below-header",
    "total length 19",
    _frame(_outer_ipv4(GRE_WEB, total_length=19)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-total-length-below-ihl",
    "total length 20 with a 24-byte header",
    _frame(_outer_ipv4(GRE_WEB, options=b"\x01" * 4, total_length=20)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-total-length-beyond-frame",
    "total length one byte more than the frame holds",
    _frame(_outer_ipv4(GRE_WEB, total_length=20 + len(GRE_WEB) + 1)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-malformed-before-not-gre",
    "malformed wins over not-GRE",
    _frame(_outer_ipv4(udp(1, 2), proto=PROTO_UDP, ihl=4)),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
kept(
    "outer-udp",
    "UDP to the LB is for the host",
    _frame(_outer_ipv4(udp(5000, 53), proto=PROTO_UDP)),
    Stat.PASS_NOT_GRE,
    Verdict.PASS,
)
kept(
    "outer-tcp-ssh",
    "the LB's own SSH",
    _frame(_outer_ipv4(tcp(50000, 22, src=ROUTER_IPV4, dst=LB_IPV4), proto=PROTO_TCP)),
    Stat.PASS_NOT_GRE,
    Verdict.PASS,
)
kept(
    "outer-not-gre-before-not-local",
    "not-GRE wins over not-local",
    _frame(_outer_ipv4(udp(1, 2), proto=PROTO_UDP, dst="198.18.0.3")),
    Stat.PASS_NOT_GRE,
    Verdict.PASS,
)
kept(
    "outer-not-local",
    "GRE to another address",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(dst="198.18.0.3")),
    Stat.PASS_NOT_LOCAL,
    Verdict.PASS,
)
kept(
    "outer-not-local-before-fragment",
    "not-local wins over fragment",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(dst="198.18.0.3", more_fragments=True)),
    Stat.PASS_NOT_LOCAL,
    Verdict.PASS,
)
kept(
    "outer-more-fragments",
    "first fragment of an outer datagram",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(more_fragments=True, dont_fragment=False)),
    Stat.PASS_OUTER_FRAGMENT,
    Verdict.PASS,
)
kept(
    "outer-fragment-offset",
    "last fragment of an outer datagram",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(frag_offset=185, dont_fragment=False)),
    Stat.PASS_OUTER_FRAGMENT,
    Verdict.PASS,
)
kept(
    "outer-fragment-offset-max",
    "offset 8191, no flags",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(frag_offset=0x1FFF, dont_fragment=False)),
    Stat.PASS_OUTER_FRAGMENT,
    Verdict.PASS,
)
forwarded(
    "outer-dont-fragment-clear",
    "DF clear is not a fragment",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(dont_fragment=False),
)
forwarded(
    "outer-reserved-flag",
    "the reserved flag is not a fragment flag",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(reserved_flag=True),
)
forwarded(
    "outer-options-4",
    "4 bytes of outer options, carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(options=b"\x94\x04\x00\x00"),  # router alert
)
forwarded(
    "outer-options-40",
    "40 bytes of outer options (IHL 15), carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(options=b"\x01" * 39 + b"\x00"),
)
forwarded(
    "outer-ttl-set",
    "the outer TTL is set to the configured value, not decremented",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(ttl=1),
    state=variant(settings={"outer_ttl": 17}),
)
forwarded(
    "eth-padding-zeros",
    "Ethernet padding after the IP packet is carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(pad_to=200),
)
forwarded(
    "eth-padding-garbage",
    "non-zero bytes after the IP packet are carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    trailer=b"\xde\xad\xbe\xef\x01",
)
forwarded(
    "eth-padding-short-frame",
    "a frame padded to the 60-byte minimum",
    WEB_ICMP_FLOW,
    WEB_ADDRESS_VIP,
    inner=ipv4(CLIENT, VIP_WEB, PROTO_ICMP, b""),
    outer=Outer(pad_to=60),
)

# 3. GRE

kept(
    "gre-0-bytes",
    "the outer packet ends where GRE would start",
    _frame(_outer_ipv4(b"")),
    Stat.GRE_MALFORMED,
    Verdict.DROP,
)
_malformed_both_ways(
    "gre-3-bytes",
    "3 bytes of GRE before the GRE end (the frame goes on)",
    _frame(_outer_ipv4(GRE_WEB, total_length=23)),
    Stat.GRE_MALFORMED,
)
for _version in (1, 7):
    kept(
        f"gre-version-{_version}",
        f"GRE version {_version} belongs to the host",
        encapsulate(inner_ipv4(WEB_FLOW), Outer(gre_version=_version)),
        Stat.PASS_UNSUPPORTED,
        Verdict.PASS,
    )
kept(
    "gre-version-before-reserved",
    "version 1 with R set: the version is checked first",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(gre_version=1, gre_extra_flags=GRE_FLAG_R)),
    Stat.PASS_UNSUPPORTED,
    Verdict.PASS,
)
for _bit_name, _bit in (
    ("routing", GRE_FLAG_R),
    ("strict-route", GRE_FLAG_STRICT),
    ("recursion-1", 0x0100),
    ("recursion-7", 0x0700),
):
    _malformed_both_ways(
        f"gre-{_bit_name}",
        f"GRE bit 0x{_bit:04x} set",
        encapsulate(inner_ipv4(WEB_FLOW), Outer(gre_extra_flags=_bit)),
        Stat.GRE_MALFORMED,
    )
forwarded(
    "gre-reserved0-ignored",
    "the reserved bits 0x00F8 are ignored and carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(gre_extra_flags=GRE_RESERVED0_MASK),
)
for _c in (False, True):
    for _k in (None, 0xA5A5A5A5):
        for _s in (None, 7):
            _label = "".join(
                name for name, on in (("C", _c), ("K", _k is not None), ("S", _s is not None)) if on
            )
            forwarded(
                f"gre-fields-{_label or 'none'}",
                f"GRE optional fields {_label or 'none'}, carried through unchanged",
                WEB_FLOW,
                WEB_PORT_VIP,
                outer=Outer(gre_checksum=_c, gre_key=_k, gre_sequence=_s),
            )
forwarded(
    "gre-checksum-wrong-value",
    "a wrong GRE checksum is not checked, only carried",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(gre_checksum=0x1234),
)
_GRE_KEYED = gre(ETH_P_IPV4, inner_ipv4(WEB_FLOW), key=1)
_malformed_both_ways(
    "gre-key-cut-short",
    "K set, the GRE end 2 bytes into the key",
    _frame(_outer_ipv4(_GRE_KEYED, total_length=20 + 6)),
    Stat.GRE_MALFORMED,
)
kept(
    "gre-cks-cut-short",
    "C, K and S set, the GRE end 15 bytes in",
    _frame(
        _outer_ipv4(
            gre(ETH_P_IPV4, inner_ipv4(WEB_FLOW), checksum=True, key=1, sequence=2),
            total_length=20 + 15,
        )
    ),
    Stat.GRE_MALFORMED,
    Verdict.DROP,
)
for _proto_name, _proto in (("ipv6", ETH_P_IPV6), ("teb", ETH_P_TEB), ("zero", 0)):
    kept(
        f"gre-protocol-{_proto_name}",
        f"GRE protocol 0x{_proto:04x} is not balanced",
        encapsulate(inner_ipv4(WEB_FLOW), Outer(gre_protocol=_proto)),
        Stat.PASS_UNSUPPORTED,
        Verdict.PASS,
    )
kept(
    "gre-protocol-after-length",
    "K set and cut short, protocol IPv6: the header length is checked first",
    _frame(_outer_ipv4(gre(ETH_P_IPV6, b"", key=1), total_length=20 + 4)),
    Stat.GRE_MALFORMED,
    Verdict.DROP,
)

# 4. Inner IPv4

_INNER_WEB = inner_ipv4(WEB_FLOW)
_malformed_both_ways(
    "inner-19-bytes",
    "19 bytes after the GRE header",
    encapsulate(_INNER_WEB[:19]),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner-0-bytes", "nothing after the GRE header", encapsulate(b""), Stat.INNER_MALFORMED
)
_malformed_both_ways(
    "inner-version-6",
    "an IPv6 packet labelled 0x0800",
    encapsulate(ipv6("2001:2::1", "2001:2::2", PROTO_TCP, tcp(1, 80))),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner-ihl-4",
    "inner IHL below 5",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(1, 80), ihl=4)),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner-total-length-below-header",
    "inner total length 24 with a 28-byte header",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(1, 80), options=bytes(8), total_length=24)),
    Stat.INNER_MALFORMED,
)
_malformed_both_ways(
    "inner-total-length-beyond-gre-end",
    "inner total length one more than the GRE packet holds",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(1, 80), total_length=41)),
    Stat.INNER_MALFORMED,
)
kept(
    "inner-checked-against-gre-end",
    "the inner packet runs into Ethernet padding: bounds are the GRE end, not the frame end",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(1, 80), total_length=44), Outer(pad_to=200)),
    Stat.INNER_MALFORMED,
    Verdict.DROP,
)
forwarded(
    "inner-options-4",
    "inner options: the ports are read after them",
    WEB_FLOW,
    WEB_PORT_VIP,
    inner=inner_ipv4(WEB_FLOW, options=b"\x94\x04\x00\x00"),
)
forwarded(
    "inner-options-40",
    "40 bytes of inner options",
    WEB_FLOW,
    WEB_PORT_VIP,
    inner=inner_ipv4(WEB_FLOW, options=b"\x01" * 40),
)
forwarded(
    "inner-padding",
    "bytes after the inner packet inside the GRE packet are carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    inner=inner_ipv4(WEB_FLOW) + b"\xff" * 6,
)
forwarded(
    "inner-ports-only",
    "TCP with exactly the 4 port bytes after the header",
    WEB_FLOW,
    WEB_PORT_VIP,
    inner=ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(40000, 80)[:4]),
)
_malformed_both_ways(
    "inner-tcp-3-bytes",
    "TCP with 3 bytes after the IP header",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(40000, 80)[:3])),
    Stat.INNER_L4_TRUNCATED,
)
kept(
    "inner-udp-0-bytes",
    "UDP with nothing after the IP header (the frame goes on: padding)",
    encapsulate(ipv4(CLIENT, VIP_WEB, PROTO_UDP, b""), Outer(pad_to=120)),
    Stat.INNER_L4_TRUNCATED,
    Verdict.DROP,
)
kept(
    "inner-truncation-before-vip",
    "a truncated TCP header to no VIP is truncated, not NO_VIP",
    encapsulate(ipv4(CLIENT, NOT_A_VIP, PROTO_TCP, b"\x00")),
    Stat.INNER_L4_TRUNCATED,
    Verdict.DROP,
)
forwarded(
    "inner-icmp",
    "ICMP is a 3-tuple flow: the address VIP",
    WEB_ICMP_FLOW,
    WEB_ADDRESS_VIP,
)
forwarded(
    "inner-icmp-empty",
    "ICMP with no ICMP header is not checked",
    WEB_ICMP_FLOW,
    WEB_ADDRESS_VIP,
    inner=ipv4(CLIENT, VIP_WEB, PROTO_ICMP, b""),
)
for _proto in (PROTO_GRE, 132, 0, 255):
    _flow = Flow.of(CLIENT, VIP_WEB, _proto)
    forwarded(
        f"inner-proto-{_proto}",
        f"IP protocol {_proto} is a 3-tuple flow",
        _flow,
        WEB_ADDRESS_VIP,
        inner=ipv4(CLIENT, VIP_WEB, _proto, b"\x12\x34\x56\x78"),
    )
forwarded(
    "inner-udp-to-tcp-port",
    "UDP to the TCP port VIP's port: the address VIP",
    WEB_UDP_FLOW,
    WEB_ADDRESS_VIP,
)

# Inner fragments: every fragment is the 3-tuple, so the port VIP never matches them.
_DATAGRAM = ipv4(CLIENT, VIP_WEB, PROTO_UDP, udp(40000, 80, bytes(100)), ident=77)
_FRAGMENTS = ipv4_fragments(_DATAGRAM, 48)
WEB_UDP_FRAGMENT_FLOW = Flow.of(CLIENT, VIP_WEB, PROTO_UDP)
for _index, _fragment in enumerate(_FRAGMENTS):
    forwarded(
        f"inner-fragment-{_index}",
        f"fragment {_index} of {len(_FRAGMENTS)} of a UDP datagram: 3-tuple, address VIP",
        WEB_UDP_FRAGMENT_FLOW,
        WEB_ADDRESS_VIP,
        inner=_fragment,
    )
WEB_TCP_FRAGMENT_FLOW = Flow.of(CLIENT, VIP_WEB, PROTO_TCP)
forwarded(
    "inner-fragment-tcp-first",
    "the first fragment of a TCP segment to port 80 is a 3-tuple: address VIP, not port VIP",
    WEB_TCP_FRAGMENT_FLOW,
    WEB_ADDRESS_VIP,
    inner=ipv4(CLIENT, VIP_WEB, PROTO_TCP, tcp(40000, 80), more_fragments=True),
)
forwarded(
    "inner-fragment-no-l4",
    "a later TCP fragment of 0 bytes is not L4-truncated",
    WEB_TCP_FRAGMENT_FLOW,
    WEB_ADDRESS_VIP,
    inner=ipv4(CLIENT, VIP_WEB, PROTO_TCP, b"", frag_offset=3),
)
kept(
    "inner-fragment-port-only-vip",
    "fragments to a port-only VIP match no VIP",
    encapsulate(ipv4_fragments(ipv4(CLIENT, VIP_DNS, PROTO_UDP, udp(5353, 53, bytes(64))), 32)[0]),
    Stat.NO_VIP,
    Verdict.PASS,
)

# 6. VIP match

forwarded(
    "vip-port-over-address",
    "TCP/80 takes the port VIP over the address VIP",
    WEB_FLOW,
    WEB_PORT_VIP,
)
forwarded("vip-address", "TCP/443 takes the address VIP", WEB_OTHER_PORT_FLOW, WEB_ADDRESS_VIP)
_WITH_DEFAULT = variant(settings={"default_vip": DEFAULT_VIP_INDEX})
forwarded(
    "vip-default", "no VIP, the default set", NO_VIP_FLOW, DEFAULT_VIP_INDEX, state=_WITH_DEFAULT
)
forwarded(
    "vip-address-over-default",
    "the address VIP wins over the default set",
    WEB_OTHER_PORT_FLOW,
    WEB_ADDRESS_VIP,
    state=_WITH_DEFAULT,
)
forwarded(
    "vip-default-for-wrong-proto",
    "TCP to the UDP-only VIP: the default set",
    DNS_TCP_FLOW,
    DEFAULT_VIP_INDEX,
    state=_WITH_DEFAULT,
)
NO_VIP_FRAME = encapsulate(inner_ipv4(NO_VIP_FLOW))
kept(
    "vip-none-pass",
    "no VIP: passed to the host (default)",
    NO_VIP_FRAME,
    Stat.NO_VIP,
    Verdict.PASS,
    flow=NO_VIP_FLOW,
)
kept(
    "vip-none-drop",
    "no VIP with no_vip_action DROP",
    NO_VIP_FRAME,
    Stat.NO_VIP,
    Verdict.DROP,
    state=variant(settings={"no_vip_action": Action.DROP}),
    flow=NO_VIP_FLOW,
)
kept(
    "vip-none-wrong-proto",
    "TCP to the UDP-only VIP without a default set",
    encapsulate(inner_ipv4(DNS_TCP_FLOW)),
    Stat.NO_VIP,
    Verdict.PASS,
)

# 5. Connection table

_STANDARD = standard_state()
_WEB_PICK = table_pick(_STANDARD, WEB_PORT_VIP, WEB_FLOW)
_WEB_OTHER = next(index for index in (0, 1, 2) if index != _WEB_PICK)  # not the table's pick
_WEB_OTHER_BACKEND = _STANDARD.backends[_WEB_OTHER]

forwarded(
    "ct-miss",
    "a new flow is recorded",
    WEB_FLOW,
    WEB_PORT_VIP,
)
forwarded(
    "ct-hit",
    "a valid entry wins over the table",
    WEB_FLOW,
    WEB_PORT_VIP,
    state=variant(conntrack={WEB_FLOW: CtEntry(_WEB_OTHER, 1)}),
    stat=Stat.CT_HIT,
    backend_index=_WEB_OTHER,
)
forwarded(
    "ct-hit-drain",
    "a draining backend keeps its flows (it is out of the table)",
    WEB_FLOW,
    WEB_PORT_VIP,
    state=variant(
        conntrack={WEB_FLOW: CtEntry(_WEB_OTHER, 1)},
        backends={_WEB_OTHER: with_state(_WEB_OTHER_BACKEND, BackendState.DRAIN)},
        tables={WEB_PORT_VIP: [_WEB_PICK] * TABLE_SIZE},
    ),
    stat=Stat.CT_HIT,
    backend_index=_WEB_OTHER,
)
forwarded(
    "ct-hit-vip-gone",
    "a valid entry wins even when the flow's VIP is gone",
    NO_VIP_FLOW,
    WEB_ADDRESS_VIP,
    state=variant(conntrack={NO_VIP_FLOW: CtEntry(3, 1)}),
    stat=Stat.CT_HIT,
    backend_index=3,
)
forwarded(
    "ct-hit-counts-slot-vip",
    "a hit counts the slot's VIP, not the VIP the flow would match now",
    WEB_FLOW,
    DNS_PORT_VIP,
    state=variant(conntrack={WEB_FLOW: CtEntry(4, 1)}),
    stat=Stat.CT_HIT,
    backend_index=4,
)
for _why, _backends in (
    ("removed", {_WEB_OTHER: None}),
    ("unused", {_WEB_OTHER: with_state(_WEB_OTHER_BACKEND, BackendState.UNUSED)}),
    ("down", {_WEB_OTHER: with_state(_WEB_OTHER_BACKEND, BackendState.DOWN)}),
    ("generation", {_WEB_OTHER: with_state(_WEB_OTHER_BACKEND, BackendState.UP, generation=2)}),
):
    # The table must not hand the flow back to the stale slot.
    _tables = {WEB_PORT_VIP: [_WEB_PICK] * TABLE_SIZE}
    forwarded(
        f"ct-stale-{_why}",
        f"an entry whose backend slot is {_why} is decided again",
        WEB_FLOW,
        WEB_PORT_VIP,
        state=variant(
            conntrack={WEB_FLOW: CtEntry(_WEB_OTHER, 1)}, backends=_backends, tables=_tables
        ),
        stat=Stat.CT_STALE,
        backend_index=_WEB_PICK,
    )
kept(
    "ct-stale-no-vip",
    "a stale entry and no VIP: NO_VIP, the entry is left for the LRU",
    encapsulate(inner_ipv4(NO_VIP_FLOW)),
    Stat.NO_VIP,
    Verdict.PASS,
    state=variant(conntrack={NO_VIP_FLOW: CtEntry(3, 9)}),
    flow=NO_VIP_FLOW,
    conntrack_after=CtEntry(3, 9),
)
kept(
    "ct-stale-no-backend",
    "a stale entry and an empty slot: dropped, the entry is left",
    WEB_FRAME,
    Stat.DROP_NO_BACKEND,
    Verdict.DROP,
    state=variant(
        conntrack={WEB_FLOW: CtEntry(_WEB_OTHER, 5)},
        tables={WEB_PORT_VIP: [NONE_INDEX] * TABLE_SIZE},
    ),
    flow=WEB_FLOW,
    conntrack_after=CtEntry(_WEB_OTHER, 5),
)
kept(
    "ct-hit-no-nexthop",
    "a valid hit whose next hop is unresolved is dropped, the entry is left",
    WEB_FRAME,
    Stat.DROP_NO_NEXTHOP,
    Verdict.DROP,
    state=variant(
        conntrack={WEB_FLOW: CtEntry(_WEB_OTHER, 1)},
        backends={_WEB_OTHER: replace(_WEB_OTHER_BACKEND, next_hop=None)},
    ),
    flow=WEB_FLOW,
    conntrack_after=CtEntry(_WEB_OTHER, 1),
)

# 7. Maglev table

kept(
    "table-empty-slot",
    "the flow's slot is empty",
    WEB_FRAME,
    Stat.DROP_NO_BACKEND,
    Verdict.DROP,
    state=variant(tables={WEB_PORT_VIP: [NONE_INDEX] * TABLE_SIZE}),
    flow=WEB_FLOW,
)
kept(
    "table-missing",
    "the VIP has no table",
    WEB_FRAME,
    Stat.DROP_NO_BACKEND,
    Verdict.DROP,
    state=variant(tables={WEB_PORT_VIP: None}),
    flow=WEB_FLOW,
)
kept(
    "table-size-0",
    "the VIP's table has no slots",
    WEB_FRAME,
    Stat.DROP_NO_BACKEND,
    Verdict.DROP,
    state=variant(tables={WEB_PORT_VIP: []}),
    flow=WEB_FLOW,
)
for _why, _entry in (
    ("down", with_state(_STANDARD.backends[_WEB_PICK], BackendState.DOWN)),
    ("unused", with_state(_STANDARD.backends[_WEB_PICK], BackendState.UNUSED)),
    ("missing", None),
):
    kept(
        f"table-slot-{_why}",
        f"the flow's slot names a backend that is {_why}",
        WEB_FRAME,
        Stat.DROP_NO_BACKEND,
        Verdict.DROP,
        state=variant(backends={_WEB_PICK: _entry}),
        flow=WEB_FLOW,
    )
forwarded(
    "table-slot-drain",
    "a DRAIN backend still in a table forwards",
    WEB_FLOW,
    WEB_PORT_VIP,
    state=variant(
        backends={_WEB_PICK: with_state(_STANDARD.backends[_WEB_PICK], BackendState.DRAIN)}
    ),
)
forwarded(
    "table-size-1",
    "a table of one slot",
    WEB_FLOW,
    WEB_PORT_VIP,
    state=variant(tables={WEB_PORT_VIP: [2]}),
    backend_index=2,
)

# 8. Next hop and sending

kept(
    "nexthop-unresolved",
    "the picked backend has no next hop: dropped, nothing recorded",
    WEB_FRAME,
    Stat.DROP_NO_NEXTHOP,
    Verdict.DROP,
    state=variant(backends={_WEB_PICK: replace(_STANDARD.backends[_WEB_PICK], next_hop=None)}),
    flow=WEB_FLOW,
)
forwarded("send-tx-same-ifindex", "next hop on the ingress interface: TX", WEB_FLOW, WEB_PORT_VIP)
forwarded("send-tx-ifindex-0", "next hop ifindex 0: TX", WEB_OTHER_PORT_FLOW, WEB_ADDRESS_VIP)
forwarded("send-redirect", "next hop on another interface: REDIRECT", DNS_FLOW, DNS_PORT_VIP)
forwarded(
    "send-tx-other-ingress",
    "the same next hop seen from its own interface: TX",
    DNS_FLOW,
    DNS_PORT_VIP,
    ingress_ifindex=OTHER_IFINDEX,
)
forwarded(
    "send-redirect-from-other-ingress",
    "next hop on interface 1, packet in on interface 2: REDIRECT",
    WEB_FLOW,
    WEB_PORT_VIP,
    ingress_ifindex=OTHER_IFINDEX,
)
forwarded(
    "send-everything-carried",
    "VLANs, outer options, GRE C/K/S, inner options and padding all carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(
        vlans=(VlanTag(3, ETH_P_8021AD), 4),
        options=b"\x01\x01\x01\x00",
        gre_checksum=True,
        gre_key=42,
        gre_sequence=1,
        pad_to=300,
    ),
    inner=inner_ipv4(WEB_FLOW, b"payload", options=b"\x01\x01\x01\x01"),
)


# 9. Learning from ICMP: destination unreachable about GRE this node sent. Every such frame
# passes to the host unchanged (PASS_NOT_GRE); the ICMP counters and the report tell the rest.

BACKEND = "198.18.10.1"  # a watched backend of the standard state
UNKNOWN_BACKEND = "198.18.99.1"
SENT_GRE = ipv4(LB_IPV4, BACKEND, PROTO_GRE, GRE_WEB, ident=7)  # what the LB sent the backend


def icmp_frame(
    code: int,
    quoted: bytes,
    *,
    reporter: str = BACKEND,
    dst: str = LB_IPV4,
    type_: int = 3,
    rest: int = 0,
    vlans: Sequence[VlanTag | int] = (),
    **ip_fields: Any,
) -> bytes:
    """An ICMP message from ``reporter`` to ``dst`` quoting ``quoted``."""
    message = icmp(type_, code, quoted, rest=rest)
    return _frame(ipv4(reporter, dst, PROTO_ICMP, message, **ip_fields), vlans=vlans)


def _sent(
    dst: str = BACKEND, *, src: str = LB_IPV4, proto: int = PROTO_GRE, **fields: Any
) -> bytes:
    return ipv4(src, dst, proto, GRE_WEB, ident=7, **fields)


def learnt(
    name: str,
    description: str,
    frame: bytes,
    icmp_stat: IcmpStat | None,
    *,
    report: IcmpReport | None = None,
    watch: WatchBuilder = standard_watch,
    stat: Stat = Stat.PASS_NOT_GRE,
) -> PacketCase:
    """A case of section 9: passed unchanged, counted ``icmp_stat`` (None: no ICMP counter)."""
    case = PacketCase(
        name, description, frame, stat, Verdict.PASS, watch=watch, icmp_stat=icmp_stat,
        report=report,
    )  # fmt: skip
    CASES.append(case)
    return case


def _report(code: int, backend: str = BACKEND, reporter: str = BACKEND) -> IcmpReport:
    return IcmpReport(ipv4_address(backend), ipv4_address(reporter), 3, code)


for _code in [code for code in range(16) if code != 4]:
    learnt(
        f"icmp-code-{_code}-reported",
        f"destination unreachable code {_code} about a watched backend is reported",
        icmp_frame(_code, SENT_GRE),
        IcmpStat.REPORTED,
        report=_report(_code),
    )
learnt(
    "icmp-unknown-code-reported",
    "a code RFC 792 does not name is reported too: the control plane judges it",
    icmp_frame(200, SENT_GRE),
    IcmpStat.REPORTED,
    report=_report(200),
)
learnt(
    "icmp-frag-needed",
    "fragmentation needed is path-MTU information: counted, never reported",
    icmp_frame(4, SENT_GRE, rest=1400),
    IcmpStat.FRAG_NEEDED,
)
learnt(
    "icmp-from-router",
    "a router on the way reports the backend unreachable",
    icmp_frame(1, SENT_GRE, reporter=ROUTER_IPV4),
    IcmpStat.REPORTED,
    report=_report(1, reporter=ROUTER_IPV4),
)
learnt(
    "icmp-minimal-quote",
    "the quoted IPv4 header and 8 bytes of GRE are enough",
    icmp_frame(2, SENT_GRE[:28]),
    IcmpStat.REPORTED,
    report=_report(2),
)
learnt(
    "icmp-quote-with-options",
    "a quoted header with options, then 8 bytes",
    icmp_frame(2, _sent(options=b"\x01\x01\x01\x00")[:32]),
    IcmpStat.REPORTED,
    report=_report(2),
)
learnt(
    "icmp-vlan",
    "an unreachable behind VLAN tags",
    icmp_frame(3, SENT_GRE, vlans=(VlanTag(5), 6)),
    IcmpStat.REPORTED,
    report=_report(3),
)
learnt(
    "icmp-outer-options",
    "an unreachable whose own header has options",
    icmp_frame(2, SENT_GRE, options=b"\x01\x01\x01\x01"),
    IcmpStat.REPORTED,
    report=_report(2),
)
for _cut in (27, 20, 19, 1, 0):
    learnt(
        f"icmp-quote-cut-{_cut}",
        f"a quote of {_cut} bytes holds no IPv4 header and 8 bytes after it",
        icmp_frame(2, SENT_GRE[:_cut]),
        IcmpStat.MALFORMED,
    )
learnt(
    "icmp-quote-options-cut",
    "a quoted header with options and only 4 bytes after it",
    icmp_frame(2, _sent(options=b"\x01\x01\x01\x00")[:28]),
    IcmpStat.MALFORMED,
)
learnt(
    "icmp-quote-cut-by-total-length",
    "the quote ends where the ICMP's total length says, not where the padded frame does",
    ethernet(
        LB_MAC, ROUTER_MAC, ETH_P_IPV4,
        ipv4(BACKEND, LB_IPV4, PROTO_ICMP, icmp(3, 2, SENT_GRE[:24])) + SENT_GRE[24:], pad_to=120,
    ),
    IcmpStat.MALFORMED,
)  # fmt: skip
for _why, _quoted in (
    ("version", bytes([0x65]) + SENT_GRE[1:]),
    ("ihl", bytes([0x44]) + SENT_GRE[1:]),
):
    learnt(
        f"icmp-quote-bad-{_why}",
        f"the quoted IPv4 header has a bad {_why}",
        icmp_frame(2, _quoted),
        IcmpStat.MALFORMED,
    )
learnt(
    "icmp-quotes-udp",
    "an unreachable quoting UDP: the host's own business",
    icmp_frame(3, ipv4(LB_IPV4, BACKEND, 17, udp(5353, 53, b"query"))),
    IcmpStat.NOT_OUR_GRE,
)
learnt(
    "icmp-quotes-tcp",
    "an unreachable quoting TCP from this node",
    icmp_frame(1, ipv4(LB_IPV4, BACKEND, 6, tcp(40000, 22))),
    IcmpStat.NOT_OUR_GRE,
)
learnt(
    "icmp-quotes-gre-from-elsewhere",
    "GRE from another source (the router's own tunnel, say) is not this node's",
    icmp_frame(2, _sent(src=ROUTER_IPV4)),
    IcmpStat.NOT_OUR_GRE,
)
learnt(
    "icmp-unknown-backend",
    "GRE from this node to an address it does not watch",
    icmp_frame(2, _sent(UNKNOWN_BACKEND), reporter=UNKNOWN_BACKEND),
    IcmpStat.UNKNOWN_BACKEND,
)
learnt(
    "icmp-frag-needed-unknown-backend",
    "fragmentation needed about an address not watched",
    icmp_frame(4, _sent(UNKNOWN_BACKEND), rest=1400),
    IcmpStat.UNKNOWN_BACKEND,
)
learnt(
    "icmp-nothing-watched",
    "nothing watched: every address is unknown",
    icmp_frame(2, SENT_GRE),
    IcmpStat.UNKNOWN_BACKEND,
    watch=IcmpWatch,
)
learnt(
    "icmp-held",
    "the backend's report is out and not re-armed: counted, held back",
    icmp_frame(2, SENT_GRE),
    IcmpStat.HELD,
    watch=lambda: IcmpWatch({ipv4_address(BACKEND): False}),
)
learnt(
    "icmp-ring-full",
    "no room in the ring: lost, and the backend stays armed",
    icmp_frame(2, SENT_GRE),
    IcmpStat.LOST,
    watch=lambda: IcmpWatch({ipv4_address(BACKEND): True}, ring_free=0),
)
for _name, _description, _frame_bytes in (
    (
        "icmp-not-to-us",
        "an unreachable to another address",
        icmp_frame(2, SENT_GRE, dst=ROUTER_IPV4),
    ),
    ("icmp-echo", "an echo request to this node", icmp_frame(0, SENT_GRE, type_=8)),
    (
        "icmp-time-exceeded",
        "time exceeded is no liveness signal",
        icmp_frame(0, SENT_GRE, type_=11),
    ),
    (
        "icmp-fragment",
        "a fragment of an ICMP message",
        icmp_frame(2, SENT_GRE, more_fragments=True),
    ),
    (
        "icmp-header-cut",
        "fewer than 8 bytes of ICMP header",
        _frame(ipv4(BACKEND, LB_IPV4, PROTO_ICMP, bytes([3, 2, 0, 0, 0, 0, 0]))),
    ),
):
    learnt(_name, _description, _frame_bytes, None)  # fmt: skip

LB_IPV6 = "2001:2::2"
BACKEND_IPV6 = "2001:2::10:1"
SENT_GRE6 = ipv6(LB_IPV6, BACKEND_IPV6, PROTO_GRE, GRE_WEB)


def _icmp6_frame(type_: int, quoted: bytes, **fields: Any) -> bytes:
    # The ICMPv6 checksum is not verified by the balancer; zero is as good as any.
    message = bytes([type_, 0, 0, 0, 0, 0, 0, 0]) + quoted
    return _frame(ipv6(BACKEND_IPV6, LB_IPV6, PROTO_ICMPV6, message, **fields),
                  ethertype=ETH_P_IPV6)  # fmt: skip


learnt(
    "icmp6-unreachable-gre",
    "ICMPv6 unreachable quoting IPv6 GRE: counted, not acted on (no IPv6 GRE is sent yet)",
    _icmp6_frame(1, SENT_GRE6),
    IcmpStat.V6_GRE,
)
learnt(
    "icmp6-too-big-gre",
    "ICMPv6 packet too big quoting IPv6 GRE: counted",
    _icmp6_frame(2, SENT_GRE6[:48]),
    IcmpStat.V6_GRE,
)
for _name, _description, _frame_bytes in (
    (
        "icmp6-quotes-udp",
        "ICMPv6 unreachable quoting UDP",
        _icmp6_frame(1, ipv6(LB_IPV6, BACKEND_IPV6, 17, udp(1, 2, bytes(8)))),
    ),
    ("icmp6-quote-cut", "a quote shorter than an IPv6 header", _icmp6_frame(1, SENT_GRE6[:39])),
    ("icmp6-echo", "an ICMPv6 echo request", _icmp6_frame(128, SENT_GRE6)),
    (
        "icmp6-length-lies",
        "a payload length beyond the frame",
        _icmp6_frame(1, SENT_GRE6, payload_length=len(SENT_GRE6) + 9),
    ),
):
    learnt(_name, _description, _frame_bytes, None)  # fmt: skip


def case_by_name(name: str) -> PacketCase:
    return next(case for case in CASES if case.name == name)


def _check_unique_names() -> None:
    names = [case.name for case in CASES]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise AssertionError(f"duplicate case names: {sorted(duplicates)}")


_check_unique_names()
