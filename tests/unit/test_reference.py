"""The reference pipeline against docs/packet-path.md: every rule, truncation, garbage, counters."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE, IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from rusty_rail.model.flowhash import Flow, flow_hash
from rusty_rail.model.icmp import IcmpStat, IcmpWatch
from rusty_rail.model.pipeline import (
    FORWARD_STATS,
    Counters,
    Match,
    lookup,
    process,
    rewrite,
    verdict_for,
)
from rusty_rail.model.state import NONE_INDEX, BackendState, CtEntry, Stat, Verdict
from rusty_rail.wire.build import ipv4, ipv4_fragments, udp
from rusty_rail.wire.checksum import internet_checksum
from rusty_rail.wire.constants import ETH_P_8021AD, PROTO_ICMP, PROTO_TCP, PROTO_UDP
from rusty_rail.wire.describe import Ipv4Info, describe
from rusty_rail.wire.fields import VlanTag, ipv4_address
from rusty_rail.wire.frames import Outer, encapsulate, gre_frame
from tests.support.cases import (
    CASES,
    CLIENT,
    DEFAULT_VIP_INDEX,
    DNS_FLOW,
    NO_VIP_FLOW,
    VIP_WEB,
    WEB_ADDRESS_VIP,
    WEB_FLOW,
    WEB_FRAME,
    WEB_OTHER_PORT_FLOW,
    WEB_PORT_VIP,
    PacketCase,
    egress,
    pmtu,
    standard_state,
    table_pick,
    variant,
)

FORWARDING_VERDICTS = (Verdict.TX, Verdict.REDIRECT)


# --- Every hand-built case -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_reference_pipeline_meets_every_packet_case(case: PacketCase) -> None:
    state = case.state()
    watch = case.watch()
    armed_before = dict(watch.armed)
    limiter = case.limiter()
    result = process(state, case.frame, case.ingress_ifindex, icmp=watch, too_big_limiter=limiter)
    assert (result.stat, result.verdict) == (case.stat, case.verdict), case.description
    assert result.frame == case.output, describe(result.frame).summary()
    assert result.redirect_ifindex == case.redirect_ifindex
    expected = case.expected_counters()
    assert result.counters == Counters(
        stats=expected["stats"],
        vips=expected["vips"],
        backends=expected["backends"],
        icmp={IcmpStat(k): v for k, v in expected["icmp"].items()},
        too_big=case.expected_too_big(),
        vip_flows=case.expected_vip_flows(),
    )
    if case.flow is not None:
        assert state.conntrack.get(case.flow) == case.conntrack_after
    assert result.report == case.report
    # A report disarms its backend; nothing else changes the watch.
    disarmed = {case.report.backend: False} if case.report is not None else {}
    assert watch.armed == armed_before | disarmed


def test_cases_cover_every_icmp_outcome() -> None:
    assert {case.icmp_stat for case in CASES} == {*IcmpStat, None}


def test_a_report_disarms_until_armed_again() -> None:
    case = next(c for c in CASES if c.name == "icmp-code-2-reported")
    watch, state = case.watch(), case.state()
    first = process(state, case.frame, icmp=watch)
    second = process(state, case.frame, icmp=watch)
    assert first.report is not None and second.report is None
    assert second.counters.icmp == {IcmpStat.HELD: (1, len(case.frame))}
    watch.armed[first.report.backend] = True
    assert process(state, case.frame, icmp=watch).report == first.report


def test_without_a_watch_nothing_is_known() -> None:
    case = next(c for c in CASES if c.name == "icmp-code-2-reported")
    result = process(case.state(), case.frame)
    assert result.report is None
    assert result.counters.icmp == {IcmpStat.UNKNOWN_BACKEND: (1, len(case.frame))}
    assert IcmpWatch().armed == {}


def test_cases_cover_every_stat_and_verdict() -> None:
    assert {case.stat for case in CASES} == set(Stat)
    assert {case.verdict for case in CASES} == {
        Verdict.PASS,
        Verdict.DROP,
        Verdict.TX,
        Verdict.REDIRECT,
    }


@pytest.mark.parametrize(
    "case",
    # GRE passthrough; section 8b's frames are wire.tunnels', which test_tunnels holds to scapy,
    # and section 8c's ICMP errors are held to scapy in test_pmtu
    [
        case
        for case in CASES
        if case.expected_frame is not None
        and case not in egress.CASES
        and "routed" not in case.name
        and (case not in pmtu.CASES or ("passthrough" in case.name and case.too_big is None))
    ],
    ids=lambda case: case.name,
)
def test_forwarded_frames_read_right_in_scapy(case: PacketCase) -> None:
    state = case.state()
    result = process(state, case.frame, case.ingress_ifindex)
    backend = state.backends[case.backend_index]  # type: ignore[index]
    assert backend.next_hop is not None
    out, before = Ether(result.frame), Ether(case.frame)
    assert (out.dst, out.src) == (
        _mac_text(backend.next_hop.dst_mac),
        _mac_text(backend.next_hop.src_mac),
    )
    if len(backend.addr) == 16:  # section 8: the outer header of the backend's family
        outer6 = out[IPv6]
        assert outer6.dst == _ip6_text(backend.addr)
        assert outer6.src == _ip6_text(state.settings.lb_ipv6)
        assert outer6.hlim == state.settings.outer_ttl
    else:
        outer = out[IP]
        assert outer.dst == _ip_text(backend.addr)
        assert outer.src == _ip_text(state.settings.lb_ipv4)
        assert outer.ttl == state.settings.outer_ttl
        recomputed = outer.copy()
        del recomputed.chksum
        assert IP(bytes(recomputed)).chksum == outer.chksum
    assert bytes(out[GRE]) == bytes(before[GRE])  # GRE and everything inside carried through
    old_outer, new_outer = _outer_of(before), _outer_of(out)
    assert isinstance(new_outer, IPv6 if len(backend.addr) == 16 else IP)
    old_len = 40 if isinstance(old_outer, IPv6) else old_outer.ihl * 4
    new_len = 40 if isinstance(new_outer, IPv6) else new_outer.ihl * 4
    assert len(result.frame) == len(case.frame) - old_len + new_len
    assert len(bytes(new_outer)) - new_len == len(bytes(old_outer)) - old_len


def _mac_text(value: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in value)


def _outer_of(frame: Ether) -> Any:
    """The first layer after Ethernet and its VLAN tags: the outer IP header."""
    layer = frame.payload
    while isinstance(layer, Dot1Q):
        layer = layer.payload
    return layer


def _ip6_text(value: bytes) -> str:
    return str(ipaddress.IPv6Address(value))


def _ip_text(value: bytes) -> str:
    return ".".join(str(byte) for byte in value)


# --- Generated valid frames: the rewrite -----------------------------------------------------

outer_options = st.binary(max_size=40).map(lambda raw: raw[: len(raw) - len(raw) % 4])
vlan_tags = st.lists(
    st.builds(VlanTag, st.integers(0, 4095), st.sampled_from([0x8100, ETH_P_8021AD])), max_size=2
)


@st.composite
def valid_frames(draw: st.DrawFn) -> tuple[bytes, Flow]:
    """A balanced GRE frame with any legal combination of the optional parts."""
    proto = draw(st.sampled_from([PROTO_TCP, PROTO_UDP, PROTO_ICMP, 132]))
    has_ports = proto in (PROTO_TCP, PROTO_UDP)
    sport = draw(st.integers(0, 0xFFFF)) if has_ports else 0
    dport = draw(st.sampled_from([80, 443, draw(st.integers(0, 0xFFFF))])) if has_ports else 0
    src = draw(st.binary(min_size=4, max_size=4))
    flow = Flow(src, ipv4_address(VIP_WEB), proto, sport, dport)
    outer = Outer(
        vlans=tuple(draw(vlan_tags)),
        ttl=draw(st.integers(0, 255)),
        ident=draw(st.integers(0, 0xFFFF)),
        dont_fragment=draw(st.booleans()),
        reserved_flag=draw(st.booleans()),
        options=draw(outer_options),
        gre_checksum=draw(st.booleans()),
        gre_key=draw(st.none() | st.integers(0, 0xFFFFFFFF)),
        gre_sequence=draw(st.none() | st.integers(0, 0xFFFFFFFF)),
        gre_extra_flags=draw(st.sampled_from([0, 0x0008, 0x00F8])),
        src=draw(st.binary(min_size=4, max_size=4)),
        pad_to=draw(st.sampled_from([0, 60, 200])),
    )
    frame = gre_frame(
        flow, draw(st.binary(max_size=30)), outer=outer, inner_options=draw(outer_options)
    )
    return frame, flow


@settings(max_examples=200)
@given(valid_frames())
def test_rewrite_checksum_equals_full_recomputation(generated: tuple[bytes, Flow]) -> None:
    frame, flow = generated
    result = process(standard_state(), frame)
    assert result.stat == Stat.CT_MISS and result.flow == flow
    info = describe(result.frame)
    assert isinstance(info.outer, Ipv4Info) and info.outer.checksum_ok, info.summary()
    header = bytearray(result.frame[info.outer.offset : info.outer.offset + info.outer.header_len])
    header[10:12] = b"\x00\x00"
    assert info.outer.checksum == internet_checksum(bytes(header))
    _assert_only_rewritable_bytes_changed(frame, result.frame)


@settings(max_examples=100)
@given(valid_frames(), st.integers(0, 0xFFFF))
def test_rewrite_keeps_a_wrong_checksum_exactly_as_wrong(
    generated: tuple[bytes, Flow], bad_checksum: int
) -> None:
    # An incremental update carries the input's error through instead of repairing it: the
    # verification sum of the output header is the input's, so the host that receives it
    # judges it as the input would have been judged.
    frame, _ = generated
    l3 = describe(frame).outer.offset  # type: ignore[union-attr]
    ihl = (frame[l3] & 0xF) * 4
    corrupted = bytearray(frame)
    corrupted[l3 + 10 : l3 + 12] = bad_checksum.to_bytes(2, "big")
    result = process(standard_state(), bytes(corrupted))
    assert result.verdict in FORWARDING_VERDICTS  # the balancer never checks it
    before = internet_checksum(bytes(corrupted[l3 : l3 + ihl])) % 0xFFFF
    after = internet_checksum(result.frame[l3 : l3 + ihl]) % 0xFFFF
    assert before == after


def _assert_only_rewritable_bytes_changed(before: bytes, after: bytes) -> None:
    assert len(before) == len(after)
    l3 = describe(before).outer.offset  # type: ignore[union-attr]
    allowed = set(range(12)) | {l3 + 8} | set(range(l3 + 10, l3 + 20))
    changed = {
        index for index, (old, new) in enumerate(zip(before, after, strict=True)) if old != new
    }
    assert changed <= allowed, sorted(changed - allowed)


def test_rewrite_refuses_a_backend_it_cannot_write() -> None:
    state = standard_state()
    backend = replace(state.backends[0], addr=bytes(8))
    with pytest.raises(ValueError):
        rewrite(state.settings, WEB_FRAME, 14, backend)
    with pytest.raises(ValueError):
        rewrite(state.settings, WEB_FRAME, 14, replace(state.backends[0], next_hop=None))


# --- Fragments -------------------------------------------------------------------------------


def test_all_fragments_of_a_datagram_reach_the_same_backend() -> None:
    state = standard_state()
    backends_used = set()
    for ident in range(40):
        source = f"198.18.{100 + ident // 10}.{ident % 10 + 1}"
        datagram = ipv4(source, VIP_WEB, PROTO_UDP, udp(1000 + ident, 80, bytes(300)), ident=ident)
        fragments = ipv4_fragments(datagram, 96)
        assert len(fragments) == 4
        results = [process(state, encapsulate(fragment)) for fragment in fragments]
        picked = {next(iter(result.counters.backends)) for result in results}
        assert len(picked) == 1, f"datagram {ident} split over backends {picked}"
        # The first fragment records the 3-tuple; the others find it.
        assert [result.stat for result in results] == [Stat.CT_MISS] + [Stat.CT_HIT] * 3
        assert {result.flow for result in results} == {Flow.of(source, VIP_WEB, PROTO_UDP)}
        backends_used |= picked
    assert backends_used == {3, 6}  # both of the address VIP's backends get datagrams


def test_fragments_and_whole_packets_of_one_flow_may_differ() -> None:
    # The documented consequence of 3-tuple fragments: a whole TCP/80 segment takes the port
    # VIP, its fragments take the address VIP.
    whole = process(standard_state(), WEB_FRAME)
    pieces = ipv4_fragments(ipv4(CLIENT, VIP_WEB, PROTO_TCP, bytes(64)), 32)
    fragment = process(standard_state(), encapsulate(pieces[0]))
    assert whole.counters.vips.keys() == {WEB_PORT_VIP}
    assert fragment.counters.vips.keys() == {WEB_ADDRESS_VIP}


# --- The connection table over several packets -----------------------------------------------


def test_a_flow_stays_on_its_backend_while_the_table_changes() -> None:
    state = standard_state()
    first = process(state, WEB_FRAME)
    assert first.stat == Stat.CT_MISS
    backend = next(iter(first.counters.backends))
    other = next(index for index in (0, 1, 2) if index != backend)
    state.tables[WEB_PORT_VIP] = [other] * 7
    again = process(state, WEB_FRAME)
    assert again.stat == Stat.CT_HIT and again.counters.backends.keys() == {backend}
    assert again.frame == first.frame
    # A new flow follows the new table.
    newcomer = process(state, gre_frame(replace(WEB_FLOW, sport=1)))
    assert newcomer.counters.backends.keys() == {other}


def test_a_flow_moves_when_its_backend_goes_down_and_then_sticks() -> None:
    state = standard_state()
    backend = next(iter(process(state, WEB_FRAME).counters.backends))
    other = next(index for index in (0, 1, 2) if index != backend)
    state.backends[backend] = replace(state.backends[backend], state=BackendState.DOWN)
    state.tables[WEB_PORT_VIP] = [other] * 7
    moved = process(state, WEB_FRAME)
    assert moved.stat == Stat.CT_STALE and moved.counters.backends.keys() == {other}
    assert state.conntrack[WEB_FLOW] == CtEntry(other, state.backends[other].generation)
    assert process(state, WEB_FRAME).stat == Stat.CT_HIT


def test_numpy_tables_decide_like_lists() -> None:
    as_list = standard_state()
    as_array = standard_state(
        tables={
            index: np.asarray(table, dtype=np.uint32) for index, table in as_list.tables.items()
        }
    )
    for case in CASES[:60]:
        from_list, from_array = process(as_list, case.frame), process(as_array, case.frame)
        assert from_array == from_list
        assert all(type(key) is int for key in from_array.counters.backends)


def test_a_reused_slot_does_not_inherit_flows() -> None:
    state = standard_state()
    backend = next(iter(process(state, WEB_FRAME).counters.backends))
    # The slot is given to another server: new address, new generation, same index.
    state.backends[backend] = replace(
        state.backends[backend], addr=ipv4_address("198.18.10.99"), generation=2
    )
    result = process(state, WEB_FRAME)
    assert result.stat == Stat.CT_STALE  # decided again (and the table still says this slot)
    assert state.conntrack[WEB_FLOW] == CtEntry(backend, 2)


def test_drops_and_passes_record_nothing() -> None:
    state = standard_state()
    for case in CASES:
        if case.verdict not in FORWARDING_VERDICTS and case.state is standard_state:
            process(state, case.frame)
    assert state.conntrack == {}


# --- lookup ----------------------------------------------------------------------------------


def test_lookup_explains_each_way_to_a_backend() -> None:
    state = standard_state(settings={"default_vip": DEFAULT_VIP_INDEX})
    port = lookup(state, WEB_FLOW)
    assert (port.match, port.vip_index, port.stat) == (Match.PORT_VIP, WEB_PORT_VIP, Stat.CT_MISS)
    assert port.table_slot == flow_hash(WEB_FLOW, state.settings.hash_seed) % 7
    assert port.backend_index == table_pick(state, WEB_PORT_VIP, WEB_FLOW)
    assert port.table_size == 7 and port.forwards
    assert lookup(state, WEB_OTHER_PORT_FLOW).match == Match.ADDRESS_VIP
    assert lookup(state, WEB_FLOW, fragment=True).match == Match.ADDRESS_VIP
    default = lookup(state, NO_VIP_FLOW)
    assert (default.match, default.vip_index) == (Match.DEFAULT_VIP, DEFAULT_VIP_INDEX)
    state.conntrack[DNS_FLOW] = CtEntry(4, 1)
    hit = lookup(state, DNS_FLOW)
    assert (hit.match, hit.stat, hit.backend_index, hit.table_slot) == (
        Match.CONNTRACK,
        Stat.CT_HIT,
        4,
        None,
    )
    assert "CT_HIT" in hit.explain() and "connection-table" in hit.explain()
    assert "port VIP 0" in port.explain() and "slot" in port.explain()


def test_lookup_explains_failures_and_changes_nothing() -> None:
    state = standard_state(conntrack={NO_VIP_FLOW: CtEntry(5, 99)})
    none = lookup(state, NO_VIP_FLOW)
    assert (none.stat, none.match, none.stale_entry) == (Stat.NO_VIP, Match.NONE, CtEntry(5, 99))
    assert "no VIP" in none.explain() and "stale" in none.explain()
    state.tables[WEB_PORT_VIP] = [NONE_INDEX] * 7
    empty = lookup(state, WEB_FLOW)
    assert (empty.stat, empty.backend_index, empty.table_slot is not None) == (
        Stat.DROP_NO_BACKEND,
        None,
        True,
    )
    assert state.conntrack == {NO_VIP_FLOW: CtEntry(5, 99)}


def test_lookup_agrees_with_process() -> None:
    for case in CASES:
        state = case.state()
        result = process(state, case.frame, case.ingress_ifindex)
        if result.decision is None:
            continue
        assert lookup(case.state(), result.decision.flow, fragment=_is_fragment(case.frame)) == (
            result.decision
        )


def _is_fragment(frame: bytes) -> bool:
    inner = describe(frame).inner
    return isinstance(inner, Ipv4Info) and inner.is_fragment


def test_verdict_for_forwarding_outcomes_is_not_defined() -> None:
    for stat in FORWARD_STATS:
        with pytest.raises(ValueError):
            verdict_for(stat, standard_state().settings)


# --- Truncation and garbage ------------------------------------------------------------------

TRUNCATED_FRAMES = {
    "plain": WEB_FRAME,
    "everything": gre_frame(
        WEB_FLOW,
        b"x" * 10,
        outer=Outer(
            vlans=(1, 2), options=b"\x01" * 8, gre_checksum=True, gre_key=1, gre_sequence=2
        ),
        inner_options=b"\x01" * 12,
    ),
    "icmp": gre_frame(Flow.of(CLIENT, VIP_WEB, PROTO_ICMP)),
}


@pytest.mark.parametrize("name", sorted(TRUNCATED_FRAMES))
def test_truncation_at_every_offset_is_never_forwarded(name: str) -> None:
    frame = TRUNCATED_FRAMES[name]
    assert process(standard_state(), frame).verdict in FORWARDING_VERDICTS
    for length in range(len(frame)):
        state = standard_state()
        result = process(state, frame[:length])
        assert result.verdict not in FORWARDING_VERDICTS, (length, result.stat)
        assert result.frame == frame[:length]
        assert result.counters == Counters(stats={result.stat: (1, length)})
        assert state.conntrack == {}


def test_truncated_padding_still_forwards() -> None:
    frame = gre_frame(WEB_FLOW, outer=Outer(pad_to=200))
    ip_end = len(gre_frame(WEB_FLOW))
    for length in range(len(frame) + 1):
        result = process(standard_state(), frame[:length])
        assert (result.verdict in FORWARDING_VERDICTS) == (length >= ip_end), length


def _check_any_result(frame: bytes) -> None:
    state = standard_state(settings={"default_vip": DEFAULT_VIP_INDEX})
    result = process(state, frame)
    assert isinstance(result.verdict, Verdict) and isinstance(result.stat, Stat)
    assert result.counters.stats == {result.stat: (1, len(frame))}
    for counted in (result.counters.vips, result.counters.backends):
        assert all(value == (1, len(frame)) for value in counted.values())
    if result.verdict in FORWARDING_VERDICTS:
        _assert_only_rewritable_bytes_changed(frame, result.frame)
    else:
        assert result.frame == frame and not result.counters.vips and not result.counters.backends


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_garbage_never_raises(frame: bytes) -> None:
    _check_any_result(frame)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_garbage_behind_a_valid_prefix_never_raises(data: st.DataObject) -> None:
    # Random bytes after a real header stack reach the deeper parsers more often than pure noise.
    frame = TRUNCATED_FRAMES["everything"]
    cut = data.draw(st.integers(14, len(frame)))
    frame = frame[:cut] + data.draw(st.binary(max_size=80))
    _check_any_result(frame)


@settings(max_examples=300)
@given(valid_frames(), st.data())
def test_corrupted_valid_frames_never_raise(
    generated: tuple[bytes, Flow], data: st.DataObject
) -> None:
    frame = bytearray(generated[0])
    for _ in range(data.draw(st.integers(1, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    _check_any_result(bytes(frame))


def test_process_accepts_any_bytes_like_frame() -> None:
    assert (
        process(standard_state(), bytearray(WEB_FRAME)).frame
        == process(standard_state(), WEB_FRAME).frame
    )
    assert process(standard_state(), memoryview(WEB_FRAME)).stat == Stat.CT_MISS


# --- Counters --------------------------------------------------------------------------------


def test_counters_sum_over_many_packets() -> None:
    state = variant(settings={"default_vip": DEFAULT_VIP_INDEX})()
    frames = [case.frame for case in CASES[:40]] + [WEB_FRAME] * 3
    results = [process(state, frame) for frame in frames]
    total = Counters.total(result.counters for result in results)
    assert sum(packets for packets, _ in total.stats.values()) == len(frames)
    assert sum(size for _, size in total.stats.values()) == sum(map(len, frames))
    forwarded = [result for result in results if result.verdict in FORWARDING_VERDICTS]
    assert sum(packets for packets, _ in total.vips.values()) == len(forwarded)
    assert sum(packets for packets, _ in total.backends.values()) == len(forwarded)
    assert total.packets(Stat.CT_HIT) >= 2  # the repeats of WEB_FRAME
    assert all(value != (0, 0) for value in total.stats.values())


def test_counters_merge_by_summing_every_key() -> None:
    one = Counters({Stat.CT_MISS: (1, 100)}, {0: (1, 100)}, {2: (1, 100)})
    two = Counters({Stat.CT_MISS: (1, 50), Stat.NO_VIP: (1, 60)}, {}, {3: (1, 50)})
    assert one.merge(two) == Counters(
        {Stat.CT_MISS: (2, 150), Stat.NO_VIP: (1, 60)}, {0: (1, 100)}, {2: (1, 100), 3: (1, 50)}
    )
    assert Counters.total([]) == Counters()
    assert Counters.total([one, two]) == one.merge(two)
    assert one.packets(Stat.NO_VIP) == 0
