"""The balancer's packet path in plain Python: the executable form of docs/packet-path.md.

The XDP program is tested against ``process`` byte for byte, verdict for verdict, counter for
counter and ICMP report for report; ``lookup`` explains a flow's backend for the API. Clarity
over speed. Sections 1-4 (parsing) are in ``model.parse``; here are sections 5-9 and the whole.
"""

from __future__ import annotations

import struct
from dataclasses import replace

from rusty_rail.model.affinity import affinity_hash
from rusty_rail.model.egress import encapsulate
from rusty_rail.model.flowhash import Flow, flow_hash
from rusty_rail.model.icmp import IcmpReport, IcmpStat, IcmpWatch
from rusty_rail.model.outcome import (  # re-exported: the pipeline's results
    FORWARD_STATS as FORWARD_STATS,
)
from rusty_rail.model.outcome import Counters as Counters
from rusty_rail.model.outcome import Decision as Decision
from rusty_rail.model.outcome import Match as Match
from rusty_rail.model.outcome import Result as Result
from rusty_rail.model.parse import (
    IPV4_FRAGMENT_MASK,
    Parsed,
    Stop,
    parse,
    parse_ethernet,
    parse_routed,
    u16,
)
from rusty_rail.model.pmtu import TOO_BIG_STATS, TOO_BIG_VERDICTS, TooBigLimiter, too_big
from rusty_rail.model.state import (
    FORWARDING_STATES,
    NONE_INDEX,
    Action,
    Affinity,
    BackendEntry,
    CtEntry,
    DataplaneState,
    Egress,
    NextHop,
    Settings,
    Stat,
    Verdict,
    VipFlow,
    VipKey,
)
from rusty_rail.wire.checksum import checksum_update_bytes, internet_checksum
from rusty_rail.wire.constants import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    ICMP_CODE_FRAGMENTATION_NEEDED,
    ICMP_DEST_UNREACHABLE,
    ICMPV6_DEST_UNREACHABLE,
    ICMPV6_PACKET_TOO_BIG,
    IPV4_FLAG_DF,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
)

ICMP_HEADER_LEN = 8
QUOTED_PAYLOAD_MIN = 8  # RFC 792: the quoted header and at least 8 bytes after it (here: GRE)

MALFORMED_STATS = frozenset(
    {
        Stat.GRE_MALFORMED,
        Stat.INNER_MALFORMED,
        Stat.INNER_L4_TRUNCATED,
        Stat.INNER_EXT_TOO_DEEP,
    }
)
PASS_STATS = frozenset(
    {
        Stat.PASS_NOT_IP,
        Stat.PASS_NOT_GRE,
        Stat.PASS_NOT_LOCAL,
        Stat.PASS_OUTER_FRAGMENT,
        Stat.PASS_OUTER_MALFORMED,
        Stat.PASS_UNSUPPORTED,
    }
)
DROP_STATS = frozenset({Stat.DROP_NO_BACKEND, Stat.DROP_NO_NEXTHOP})
#: The drops counted for their VIP too (vip_flows): the ones after the VIP is known.
VIP_DROPS = {
    Stat.DROP_NO_BACKEND: VipFlow.DROP_NO_BACKEND,
    Stat.DROP_NO_NEXTHOP: VipFlow.DROP_NO_NEXTHOP,
}

# --- Verdicts for packets that are not forwarded ---------------------------------------------


def _action_verdict(action: Action) -> Verdict:
    return Verdict.PASS if action == Action.PASS else Verdict.DROP


def verdict_for(stat: Stat, settings: Settings) -> Verdict:
    """The verdict of a packet that is not forwarded (the table at the end of the spec)."""
    if stat in PASS_STATS:
        return Verdict.PASS
    if stat in MALFORMED_STATS:
        return _action_verdict(settings.malformed_action)
    if stat == Stat.NO_VIP:
        return _action_verdict(settings.no_vip_action)
    if stat in DROP_STATS:
        return Verdict.DROP
    if stat in TOO_BIG_VERDICTS:
        return TOO_BIG_VERDICTS[stat]
    raise ValueError(f"{stat.name} is a forwarding outcome, its verdict is TX or REDIRECT")


# --- Deciding (sections 5-7, and the next-hop check of 8) ------------------------------------


def _is_valid_hit(entry: CtEntry, backend: BackendEntry) -> bool:
    """Section 5: the slot still forwards and still belongs to the backend the flow went to."""
    return backend.state in FORWARDING_STATES and backend.generation == entry.generation


def match_vip(
    state: DataplaneState, flow: Flow, *, fragment: bool = False, default_set: bool = True
) -> tuple[Match, int]:
    """Section 6: the VIP a flow belongs to, as (how it matched, VIP index); NONE_INDEX if none.

    The port match is only tried for TCP and UDP that is not a fragment, the only flows that
    carry real ports. ``default_set=False``: steps 1 and 2 only (a routed packet, section 2c).
    """
    if flow.proto in (PROTO_TCP, PROTO_UDP) and not fragment:
        vip_index = state.vips.get(VipKey(flow.dst, flow.proto, flow.dport))
        if vip_index is not None:
            return Match.PORT_VIP, vip_index
    vip_index = state.vips.get(VipKey(flow.dst, 0, 0))
    if vip_index is not None:
        return Match.ADDRESS_VIP, vip_index
    if default_set and state.settings.default_vip != NONE_INDEX:
        return Match.DEFAULT_VIP, state.settings.default_vip
    return Match.NONE, NONE_INDEX


def lookup(state: DataplaneState, flow: Flow, *, fragment: bool = False) -> Decision:
    """Which backend ``flow`` gets and why, without changing anything.

    ``fragment`` says the flow came from an IP fragment (ports 0, no port VIP match).
    """
    hashed = flow_hash(flow, state.settings.hash_seed)
    entry = state.conntrack.get(flow)
    stale_entry = None
    if entry is not None:
        backend = state.backends.get(entry.backend_index)
        if backend is not None and _is_valid_hit(entry, backend):
            hit = Decision(
                flow,
                hashed,
                Stat.CT_HIT,
                Match.CONNTRACK,
                vip_index=backend.vip_index,
                backend_index=entry.backend_index,
            )
            return _check_next_hop(hit, backend)
        stale_entry = entry

    match, vip_index = match_vip(state, flow, fragment=fragment)
    if match == Match.NONE:
        return Decision(flow, hashed, Stat.NO_VIP, match, stale_entry=stale_entry)

    undecided = Decision(
        flow, hashed, Stat.DROP_NO_BACKEND, match, vip_index=vip_index, stale_entry=stale_entry
    )
    table = state.tables.get(vip_index)
    if table is None or len(table) == 0:  # no table, or one with no slot to pick
        return undecided
    affinity = state.affinity.get(vip_index, Affinity.FIVE_TUPLE)
    pick_hash = affinity_hash(flow, affinity, state.settings.hash_seed)
    slot = pick_hash % len(table)
    backend_index = int(table[slot])  # a plain int also when the table is a numpy array
    picked = Decision(
        flow,
        hashed,
        Stat.CT_STALE if stale_entry is not None else Stat.CT_MISS,
        match,
        vip_index=vip_index,
        table_size=len(table),
        table_slot=slot,
        backend_index=None if backend_index == NONE_INDEX else backend_index,
        stale_entry=stale_entry,
        affinity=affinity,
        pick_hash=pick_hash,
    )
    backend = None if backend_index == NONE_INDEX else state.backends.get(backend_index)
    if backend is None or backend.state not in FORWARDING_STATES:  # empty, unused or DOWN
        return replace(picked, stat=Stat.DROP_NO_BACKEND)
    return _check_next_hop(picked, backend)


def _check_next_hop(decision: Decision, backend: BackendEntry) -> Decision:
    if backend.next_hop is None:
        return replace(decision, stat=Stat.DROP_NO_NEXTHOP)
    return decision


# --- Rewriting and sending (section 8) -------------------------------------------------------


def rewrite(
    settings: Settings, frame: bytes, l3: int, backend: BackendEntry, outer_family: int = 4
) -> bytes:
    """GRE passthrough (section 8): new Ethernet addresses and an outer header of the backend's
    family addressed to it; the GRE header and everything after it unchanged."""
    next_hop = backend.next_hop
    if next_hop is None or len(next_hop.dst_mac) != 6 or len(next_hop.src_mac) != 6:
        raise ValueError(f"backend {backend} has no usable next hop")
    if len(backend.addr) not in (4, 16):
        raise ValueError(f"backend address of {len(backend.addr)} bytes")
    out = bytearray(frame)
    out[0:6] = next_hop.dst_mac
    out[6:12] = next_hop.src_mac
    backend_family = 4 if len(backend.addr) == 4 else 6
    if outer_family == 4 and backend_family == 4:
        return _rewrite_ipv4(settings, bytes(out), l3, backend.addr)
    if outer_family == 6 and backend_family == 6:
        out[l3 + 7] = settings.outer_ttl
        out[l3 + 8 : l3 + 24] = settings.lb_ipv6
        out[l3 + 24 : l3 + 40] = backend.addr
        return bytes(out)
    if outer_family == 4:  # to an IPv6 backend: a new IPv6 header instead of the IPv4 one
        header_len = (frame[l3] & 0x0F) * 4
        payload_length = u16(frame, l3 + 2) - header_len
        header = struct.pack(
            "!IHBB16s16s",
            6 << 28 | frame[l3 + 1] << 20,  # version, traffic class = TOS, flow label 0
            payload_length,
            PROTO_GRE,
            settings.outer_ttl,
            settings.lb_ipv6,
            backend.addr,
        )
        out[l3 - 2 : l3] = struct.pack("!H", ETH_P_IPV6)
        return bytes(out[:l3] + header + out[l3 + header_len :])
    # Outer IPv6 to an IPv4 backend: a new IPv4 header instead of the IPv6 one.
    traffic_class = (frame[l3] & 0x0F) << 4 | frame[l3 + 1] >> 4
    header4 = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            traffic_class,
            IPV4_HEADER_LEN + u16(frame, l3 + 4),
            0,  # ID 0 ...
            IPV4_FLAG_DF,  # ... in an atomic datagram (RFC 6864)
            settings.outer_ttl,
            PROTO_GRE,
            0,
            settings.lb_ipv4,
            backend.addr,
        )
    )
    header4[10:12] = struct.pack("!H", internet_checksum(bytes(header4)))
    out[l3 - 2 : l3] = struct.pack("!H", ETH_P_IPV4)
    return bytes(out[:l3] + header4 + out[l3 + IPV6_HEADER_LEN :])


def _rewrite_ipv4(settings: Settings, frame: bytes, l3: int, addr: bytes) -> bytes:
    """Outer IPv4 to an IPv4 backend: outer source, destination and TTL, and the outer header
    checksum updated incrementally over those 16-bit words."""
    if len(settings.lb_ipv4) != 4:
        raise ValueError("GRE passthrough over outer IPv4 needs the LB's IPv4 address")
    out = bytearray(frame)
    # The changed words: source (2), destination (2), and TTL with the protocol beside it.
    old_words = bytes(out[l3 + 12 : l3 + 20] + out[l3 + 8 : l3 + 10])
    out[l3 + 12 : l3 + 16] = settings.lb_ipv4
    out[l3 + 16 : l3 + 20] = addr
    out[l3 + 8] = settings.outer_ttl
    new_words = bytes(out[l3 + 12 : l3 + 20] + out[l3 + 8 : l3 + 10])

    checksum = checksum_update_bytes(u16(frame, l3 + 10), old_words, new_words)
    out[l3 + 10 : l3 + 12] = struct.pack("!H", checksum)
    return bytes(out)


def _send_verdict(next_hop: NextHop, ingress_ifindex: int) -> tuple[Verdict, int | None]:
    if next_hop.ifindex in (0, ingress_ifindex):
        return Verdict.TX, None
    return Verdict.REDIRECT, next_hop.ifindex


# --- Learning from ICMP (section 9) ----------------------------------------------------------


def _icmp_ipv4(
    settings: Settings, frame: bytes, l3: int, watch: IcmpWatch
) -> tuple[IcmpStat | None, IcmpReport | None]:
    """Section 9a, for a sane outer IPv4 header that is not GRE. (None, None): not an ICMP
    destination unreachable to this node, nothing counted."""
    header_len = (frame[l3] & 0x0F) * 4
    total_length = u16(frame, l3 + 2)
    if frame[l3 + 9] != PROTO_ICMP or frame[l3 + 16 : l3 + 20] != settings.lb_ipv4:
        return None, None
    if u16(frame, l3 + 6) & IPV4_FRAGMENT_MASK:
        return None, None
    if header_len + ICMP_HEADER_LEN > total_length:
        return None, None
    icmp = l3 + header_len
    if frame[icmp] != ICMP_DEST_UNREACHABLE:
        return None, None

    quoted = icmp + ICMP_HEADER_LEN
    quote_len = total_length - header_len - ICMP_HEADER_LEN
    if quote_len < IPV4_HEADER_LEN:
        return IcmpStat.MALFORMED, None
    version, ihl = frame[quoted] >> 4, frame[quoted] & 0x0F
    if version != 4 or ihl < 5 or ihl * 4 + QUOTED_PAYLOAD_MIN > quote_len:
        return IcmpStat.MALFORMED, None
    if frame[quoted + 9] != PROTO_GRE or frame[quoted + 12 : quoted + 16] != settings.lb_ipv4:
        return IcmpStat.NOT_OUR_GRE, None
    backend = frame[quoted + 16 : quoted + 20]
    if backend not in watch.armed:
        return IcmpStat.UNKNOWN_BACKEND, None
    code = frame[icmp + 1]
    if code == ICMP_CODE_FRAGMENTATION_NEEDED:
        return IcmpStat.FRAG_NEEDED, None
    return _icmp_report(watch, backend, frame[l3 + 12 : l3 + 16], ICMP_DEST_UNREACHABLE, code)


def _icmp_ipv6(
    settings: Settings, frame: bytes, l3: int, watch: IcmpWatch
) -> tuple[IcmpStat | None, IcmpReport | None]:
    """Section 9b, for a whole outer IPv6 header that is not GRE. (None, None): not an ICMPv6
    destination unreachable or packet too big to this node, nothing counted."""
    lb_ipv6 = settings.lb_ipv6
    if frame[l3 + 6] != PROTO_ICMPV6 or frame[l3 + 24 : l3 + 40] != lb_ipv6 or not any(lb_ipv6):
        return None, None
    icmp = l3 + IPV6_HEADER_LEN
    payload_length = u16(frame, l3 + 4)
    if payload_length < ICMP_HEADER_LEN or icmp + payload_length > len(frame):
        return None, None
    icmp_type = frame[icmp]
    if icmp_type not in (ICMPV6_DEST_UNREACHABLE, ICMPV6_PACKET_TOO_BIG):
        return None, None

    quoted = icmp + ICMP_HEADER_LEN
    if payload_length - ICMP_HEADER_LEN < IPV6_HEADER_LEN + QUOTED_PAYLOAD_MIN:
        return IcmpStat.MALFORMED, None
    if frame[quoted] >> 4 != 6:
        return IcmpStat.MALFORMED, None
    if frame[quoted + 6] != PROTO_GRE or frame[quoted + 8 : quoted + 24] != lb_ipv6:
        return IcmpStat.NOT_OUR_GRE, None
    backend = frame[quoted + 24 : quoted + 40]
    if backend not in watch.armed:
        return IcmpStat.UNKNOWN_BACKEND, None
    if icmp_type == ICMPV6_PACKET_TOO_BIG:
        return IcmpStat.PACKET_TOO_BIG, None
    return _icmp_report(watch, backend, frame[l3 + 8 : l3 + 24], icmp_type, frame[icmp + 1])


def _icmp_report(
    watch: IcmpWatch, backend: bytes, reporter: bytes, icmp_type: int, code: int
) -> tuple[IcmpStat, IcmpReport | None]:
    """Steps 5 to 7 of 9a and 9b: a watched backend reports once while armed."""
    if not watch.armed[backend]:
        return IcmpStat.HELD, None
    if watch.ring_free == 0:
        return IcmpStat.LOST, None
    watch.armed[backend] = False
    if watch.ring_free is not None:
        watch.ring_free -= 1
    return IcmpStat.REPORTED, IcmpReport(backend, reporter, icmp_type, code)


def learn_from_icmp(
    settings: Settings, frame: bytes, watch: IcmpWatch
) -> tuple[IcmpStat | None, IcmpReport | None]:
    """What a frame counted PASS_NOT_GRE tells about the backends (section 9): the ICMP stat it
    counts (None: none) and the report it sends. Disarms a reported backend in ``watch``."""
    ethertype, l3 = parse_ethernet(frame)
    if ethertype == ETH_P_IPV6:
        return _icmp_ipv6(settings, frame, l3, watch)
    return _icmp_ipv4(settings, frame, l3, watch)


# --- The packet path -------------------------------------------------------------------------


def process(
    state: DataplaneState,
    frame: bytes,
    ingress_ifindex: int = 1,
    *,
    icmp: IcmpWatch | None = None,
    too_big_limiter: TooBigLimiter | None = None,
) -> Result:
    """Run one frame through the packet path. Mutates ``state.conntrack`` when a flow is
    recorded, ``icmp`` (None: none watched) when a report disarms one, ``too_big_limiter``
    (None: all full) when section 8c takes a token. Never raises on any frame bytes."""
    frame = bytes(frame)
    size = len(frame)
    settings = state.settings

    icmp_stat: IcmpStat | None = None
    report: IcmpReport | None = None
    try:
        parsed = parse(settings, frame)
    except Stop as stop:
        if stop.stat == Stat.PASS_NOT_GRE:
            icmp_stat, report = learn_from_icmp(settings, frame, icmp or IcmpWatch())
        routed = _routed(state, frame) if stop.routable and settings.routed_ingress else None
        if routed is None:
            result = _not_forwarded(settings, frame, stop.stat)
            if icmp_stat is None:
                return result
            counters = replace(result.counters, icmp={icmp_stat: (1, size)})
            return replace(result, counters=counters, report=report)
        parsed = routed

    decision = lookup(state, parsed.flow, fragment=parsed.fragment)
    if not decision.forwards:
        result = _not_forwarded(settings, frame, decision.stat, parsed.flow, decision)
        if icmp_stat is None:
            return result
        counters = replace(result.counters, icmp={icmp_stat: (1, size)})
        return replace(result, counters=counters, report=report)

    assert decision.backend_index is not None and decision.vip_index is not None
    backend = state.backends[decision.backend_index]
    assert backend.next_hop is not None
    new_flow = {}
    if decision.stat in (Stat.CT_MISS, Stat.CT_STALE):
        state.conntrack[parsed.flow] = CtEntry(decision.backend_index, backend.generation)
        new_flow = {(decision.vip_index, VipFlow.NEW): (1, size)}

    vip = decision.vip_index
    oversize = too_big(frame, parsed, backend, vip, too_big_limiter)
    if oversize is not None:  # section 8c: not sent; an ICMP error (TX) or dropped
        reason, out = oversize
        result = _not_forwarded(settings, frame, TOO_BIG_STATS[reason], parsed.flow, decision)
        icmp_counts = {} if icmp_stat is None else {icmp_stat: (1, size)}
        counters = replace(
            result.counters,
            icmp=icmp_counts,
            too_big={(vip, reason): (1, size)},
            vip_flows=new_flow,
        )
        return replace(result, frame=out, counters=counters, report=report)

    verdict, redirect_ifindex = _send_verdict(backend.next_hop, ingress_ifindex)
    counters = Counters(
        stats={decision.stat: (1, size)},
        vips={decision.vip_index: (1, size)},
        backends={decision.backend_index: (1, size)},
        icmp={} if icmp_stat is None else {icmp_stat: (1, size)},
        vip_flows=new_flow,
    )
    if backend.egress == Egress.GRE and not parsed.routed:  # passthrough
        out = rewrite(settings, frame, parsed.l3, backend, parsed.outer_family)
    else:
        out = encapsulate(settings, frame, parsed, backend, decision.flow_hash)
    return Result(
        verdict=verdict,
        frame=out,
        stat=decision.stat,
        redirect_ifindex=redirect_ifindex,
        counters=counters,
        flow=parsed.flow,
        decision=decision,
        report=report,
    )


def _routed(state: DataplaneState, frame: bytes) -> Parsed | None:
    """Section 2c: a routable packet taken by routed ingress (its flow parsed, and a valid
    connection-table hit on a VIP's slot or a VIP of steps 1 and 2 of section 6), or None: it
    goes to the host as it would have."""
    parsed = parse_routed(frame)
    if parsed is None:
        return None
    entry = state.conntrack.get(parsed.flow)
    backend = None if entry is None else state.backends.get(entry.backend_index)
    if (
        entry is not None
        and backend is not None
        and _is_valid_hit(entry, backend)
        and backend.vip_index != state.settings.default_vip
    ):
        return parsed
    match, _ = match_vip(state, parsed.flow, fragment=parsed.fragment, default_set=False)
    return None if match == Match.NONE else parsed


def _not_forwarded(
    settings: Settings,
    frame: bytes,
    stat: Stat,
    flow: Flow | None = None,
    decision: Decision | None = None,
) -> Result:
    vip_flows = {}
    if decision is not None and decision.vip_index is not None and stat in VIP_DROPS:
        vip_flows = {(decision.vip_index, VIP_DROPS[stat]): (1, len(frame))}
    return Result(
        verdict=verdict_for(stat, settings),
        frame=frame,
        stat=stat,
        redirect_ifindex=None,
        counters=Counters(stats={stat: (1, len(frame))}, vip_flows=vip_flows),
        flow=flow,
        decision=decision,
    )
