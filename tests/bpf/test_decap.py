"""bpf/decap.bpf.c in the kernel (BPF_PROG_TEST_RUN): GRE from an allowed LB to a local address
comes out as the inner packet under the same Ethernet header; everything else passes untouched,
counted by reason; truncated and garbage frames never crash it or come out decapsulated.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Network

import pytest

from rusty_rail.dataplane.libbpf import BpfObject, Program
from rusty_rail.decap.agent import DecapMaps, DecapStat, load_decap_object, parse_prefixes
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import Verdict
from rusty_rail.wire.build import ethernet, gre, ipv4, ipv6, udp
from rusty_rail.wire.constants import (
    ETH_P_ARP,
    ETH_P_IPV4,
    ETH_P_IPV6,
    ETH_P_TEB,
    GRE_FLAG_R,
    GRE_FLAG_STRICT,
    PROTO_GRE,
    PROTO_TCP,
    PROTO_UDP,
)
from rusty_rail.wire.fields import VlanTag
from rusty_rail.wire.frames import Outer, encapsulate, inner_ipv4

pytestmark = pytest.mark.bpf

LB_MAC = "02:00:00:00:01:02"
SERVER_MAC = "02:00:00:00:01:0a"
LB = "198.18.0.2"
SERVER = "198.18.0.10"
OTHER_SERVER = "198.18.0.11"
VIP = "198.19.0.1"
CLIENT = "198.18.100.7"
ALLOWED = ["198.18.0.0/28", "198.18.200.9"]
FLOW = Flow.of(CLIENT, VIP, PROTO_TCP, 40000, 80)
OUTER = Outer(eth_dst=SERVER_MAC, eth_src=LB_MAC, src=LB, dst=SERVER)


@pytest.fixture(scope="module")
def decap_object() -> Iterator[BpfObject]:
    with load_decap_object() as bpf_object:
        yield bpf_object


@pytest.fixture
def maps(decap_object: BpfObject) -> DecapMaps:
    """The maps, set to the allowed LB prefixes and the server's address before each test."""
    decap_maps = DecapMaps.of_object(decap_object)
    decap_maps.set_allowed(parse_prefixes(ALLOWED, "allowed"))
    decap_maps.set_local(parse_prefixes([SERVER], "local"))
    return decap_maps


@pytest.fixture
def program(decap_object: BpfObject, maps: DecapMaps) -> Program:
    return decap_object.program("xdp_decap")


def run(program: Program, maps: DecapMaps, frame: bytes) -> tuple[int, bytes, dict[str, int]]:
    """The verdict, the frame that comes out, and the packets counted per reason meanwhile."""
    before = maps.counters()
    result = program.test_run(frame)
    after = maps.counters()
    deltas = {
        name: after[name]["packets"] - before[name]["packets"]
        for name in after
        if after[name]["packets"] != before[name]["packets"]
    }
    byte_deltas = {name: after[name]["bytes"] - before[name]["bytes"] for name in deltas}
    assert byte_deltas == {name: len(frame) * count for name, count in deltas.items()}
    return result.retval, result.data, deltas


def decapsulated(program: Program, maps: DecapMaps, frame: bytes, expected: bytes) -> None:
    verdict, out, counted = run(program, maps, frame)
    assert verdict == Verdict.PASS
    assert counted == {"decapsulated": 1}
    assert out == expected


def passed_untouched(program: Program, maps: DecapMaps, frame: bytes, reason: DecapStat) -> None:
    verdict, out, counted = run(program, maps, frame)
    assert verdict == Verdict.PASS
    assert counted == {reason.name.lower(): 1}
    assert out == frame


# -- decapsulation ---------------------------------------------------------------------------


def test_gre_from_an_lb_becomes_the_inner_packet(program: Program, maps: DecapMaps) -> None:
    inner = inner_ipv4(FLOW, b"hello")
    decapsulated(
        program,
        maps,
        encapsulate(inner, OUTER),
        ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner),
    )


@pytest.mark.parametrize(
    ("checksum", "key", "sequence"),
    [(True, None, None), (False, 7, None), (False, None, 9), (True, 0xFFFFFFFF, 0)],
    ids=["C", "K", "S", "CKS"],
)
def test_gre_optional_fields_are_skipped(
    program: Program, maps: DecapMaps, checksum: bool, key: int | None, sequence: int | None
) -> None:
    inner = inner_ipv4(Flow.of(CLIENT, VIP, PROTO_UDP, 5353, 53), b"query")
    outer = replace(OUTER, gre_checksum=checksum, gre_key=key, gre_sequence=sequence)
    decapsulated(
        program, maps, encapsulate(inner, outer), ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner)
    )


def test_outer_ip_options_are_stripped_and_inner_options_kept(
    program: Program, maps: DecapMaps
) -> None:
    inner = inner_ipv4(FLOW, b"x", options=b"\x01\x01\x01\x00")
    outer = replace(OUTER, options=bytes([7, 11, 4]) + bytes(8))  # record route, 12 bytes
    decapsulated(
        program, maps, encapsulate(inner, outer), ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner)
    )


@pytest.mark.parametrize(
    "vlans", [(100,), (VlanTag(200, tpid=0x88A8), 300)], ids=["802.1Q", "QinQ"]
)
def test_vlan_tags_stay_with_the_ethernet_header(
    program: Program, maps: DecapMaps, vlans: tuple[VlanTag | int, ...]
) -> None:
    inner = inner_ipv4(FLOW, b"tagged")
    decapsulated(
        program,
        maps,
        encapsulate(inner, replace(OUTER, vlans=vlans)),
        ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner, vlans=vlans),
    )


def test_link_padding_after_the_outer_packet_is_carried(program: Program, maps: DecapMaps) -> None:
    inner = ipv4(CLIENT, VIP, 253, b"")  # a 20-byte packet: the frame needs padding
    frame = encapsulate(inner, OUTER) + b"\xee" * 20
    decapsulated(
        program, maps, frame, ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner) + b"\xee" * 20
    )


def test_the_largest_frame_decapsulates(program: Program, maps: DecapMaps) -> None:
    inner = inner_ipv4(FLOW, bytes(range(256)) * 5 + bytes(1500 - 40 - 1280))
    assert len(inner) == 1500
    decapsulated(
        program, maps, encapsulate(inner, OUTER), ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner)
    )


# -- congestion marks (RFC 6040) -------------------------------------------------------------


def outer_with_tos(inner: bytes, tos: int) -> bytes:
    return ethernet(
        SERVER_MAC,
        LB_MAC,
        ETH_P_IPV4,
        ipv4(LB, SERVER, PROTO_GRE, gre(ETH_P_IPV4, inner), tos=tos, dont_fragment=True),
    )


def test_outer_congestion_mark_reaches_an_ecn_capable_inner_packet(
    program: Program, maps: DecapMaps
) -> None:
    payload = udp(5000, 53, b"q", src=CLIENT, dst=VIP)
    for inner_ecn in (1, 2):  # ECT(1), ECT(0)
        inner = ipv4(CLIENT, VIP, PROTO_UDP, payload, tos=0xB8 | inner_ecn)
        marked = ipv4(CLIENT, VIP, PROTO_UDP, payload, tos=0xB8 | 3)
        decapsulated(
            program,
            maps,
            outer_with_tos(inner, 0x03),
            ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, marked),
        )


@pytest.mark.parametrize(("outer_tos", "inner_tos"), [(0x03, 0x00), (0x02, 0x01), (0x00, 0x03)])
def test_inner_ecn_is_left_alone_otherwise(
    program: Program, maps: DecapMaps, outer_tos: int, inner_tos: int
) -> None:
    inner = ipv4(CLIENT, VIP, PROTO_UDP, udp(5000, 53, b"q", src=CLIENT, dst=VIP), tos=inner_tos)
    decapsulated(
        program,
        maps,
        outer_with_tos(inner, outer_tos),
        ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner),
    )


# -- who may send, to whom -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("198.18.0.1", True),
        ("198.18.0.15", True),
        ("198.18.0.16", False),
        ("198.18.200.9", True),
        ("198.18.200.8", False),
        ("198.19.0.2", False),
    ],
)
def test_only_allowed_sources_are_decapsulated(
    program: Program, maps: DecapMaps, source: str, allowed: bool
) -> None:
    inner = inner_ipv4(FLOW)
    frame = encapsulate(inner, replace(OUTER, src=source))
    if allowed:
        decapsulated(program, maps, frame, ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner))
    else:
        passed_untouched(program, maps, frame, DecapStat.PASS_SOURCE_DENIED)


def test_allowed_prefixes_change_at_run_time(program: Program, maps: DecapMaps) -> None:
    inner = inner_ipv4(FLOW)
    frame = encapsulate(inner, replace(OUTER, src="198.18.7.7"))
    passed_untouched(program, maps, frame, DecapStat.PASS_SOURCE_DENIED)
    maps.set_allowed(parse_prefixes([*ALLOWED, "198.18.7.0/24"], "allowed"))
    assert IPv4Network("198.18.7.0/24") in maps.allowed_prefixes()
    decapsulated(program, maps, frame, ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner))
    maps.set_allowed(parse_prefixes(["198.18.0.0/28"], "allowed"))
    assert maps.allowed_prefixes() == [IPv4Network("198.18.0.0/28")]
    passed_untouched(program, maps, frame, DecapStat.PASS_SOURCE_DENIED)
    maps.set_allowed([])
    passed_untouched(program, maps, encapsulate(inner, OUTER), DecapStat.PASS_SOURCE_DENIED)


def test_gre_to_another_address_is_not_ours(program: Program, maps: DecapMaps) -> None:
    frame = encapsulate(inner_ipv4(FLOW), replace(OUTER, dst=OTHER_SERVER))
    passed_untouched(program, maps, frame, DecapStat.PASS_NOT_LOCAL)


def test_local_any_accepts_every_destination(program: Program, maps: DecapMaps) -> None:
    inner = inner_ipv4(FLOW)
    maps.set_local(parse_prefixes(["0.0.0.0/0"], "local"))
    for destination in (SERVER, OTHER_SERVER, "198.19.255.255"):
        decapsulated(
            program,
            maps,
            encapsulate(inner, replace(OUTER, dst=destination)),
            ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner),
        )


def test_prefixes_are_validated_whole() -> None:
    assert parse_prefixes(["198.18.0.1", "198.18.0.0/24", "198.18.0.1/32"], "allowed") == [
        IPv4Network("198.18.0.0/24"),
        IPv4Network("198.18.0.1/32"),
    ]
    with pytest.raises(ValueError, match=r"allowed: '198.18.0.1/24' is not an IP prefix"):
        parse_prefixes(["198.18.0.1/24"], "allowed")
    with pytest.raises(ValueError, match=r"local: '2001:2::/48' is IPv6"):
        parse_prefixes(["2001:2::/48"], "local")
    with pytest.raises(ValueError, match=r"allowed: 'lb1'"):
        parse_prefixes(["lb1"], "allowed")


# -- everything else passes untouched --------------------------------------------------------


def malformed_gre_cases() -> list[tuple[str, bytes]]:
    inner = inner_ipv4(FLOW, b"data")
    cases = [
        ("R bit", encapsulate(inner, replace(OUTER, gre_extra_flags=GRE_FLAG_R))),
        (
            "strict source route",
            encapsulate(inner, replace(OUTER, gre_extra_flags=GRE_FLAG_STRICT)),
        ),
        ("recursion", encapsulate(inner, replace(OUTER, gre_extra_flags=0x0100))),
        ("outer version 5", _with_byte(encapsulate(inner, OUTER), 14, 0x55)),
        ("outer IHL 4", _with_byte(encapsulate(inner, OUTER), 14, 0x44)),
        ("outer total length past the frame", encapsulate(inner, replace(OUTER, total_length=200))),
        (
            "outer total length under the header",
            encapsulate(inner, replace(OUTER, total_length=19)),
        ),
        ("GRE cut by the outer length", encapsulate(inner, replace(OUTER, total_length=22))),
        (
            "GRE key cut by the outer length",
            encapsulate(inner, replace(OUTER, gre_key=1, total_length=26)),
        ),
        (
            "inner cut by the outer length",
            encapsulate(inner, replace(OUTER, total_length=24 + len(inner) - 1)),
        ),
        ("inner shorter than an IPv4 header", encapsulate(inner[:19], OUTER)),
        (
            "inner version 6 under protocol 0x0800",
            encapsulate(ipv6("2001:2::1", "2001:2::2", PROTO_UDP, b"12345678"), OUTER),
        ),
        ("inner IHL 4", encapsulate(_with_byte(inner, 0, 0x44), OUTER)),
        (
            "inner total length under its header",
            encapsulate(ipv4(CLIENT, VIP, 6, b"", total_length=16), OUTER),
        ),
        (
            "inner total length past the GRE payload",
            encapsulate(ipv4(CLIENT, VIP, 6, b"abcd", total_length=40), OUTER),
        ),
        ("IPv4 header cut short", ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, bytes(19))),
    ]
    return cases


def _with_byte(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


@pytest.mark.parametrize(
    "frame", [case[1] for case in malformed_gre_cases()], ids=[c[0] for c in malformed_gre_cases()]
)
def test_malformed_frames_pass_untouched(program: Program, maps: DecapMaps, frame: bytes) -> None:
    passed_untouched(program, maps, frame, DecapStat.PASS_MALFORMED)


def unsupported_cases() -> list[tuple[str, bytes]]:
    inner = inner_ipv4(FLOW)
    return [
        ("GRE version 1", encapsulate(inner, replace(OUTER, gre_version=1))),
        (
            "inner IPv6",
            encapsulate(
                ipv6("2001:2::1", "2001:2::2", PROTO_UDP, b"12345678"),
                replace(OUTER, gre_protocol=ETH_P_IPV6),
            ),
        ),
        (
            "transparent Ethernet bridging",
            encapsulate(
                ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner),
                replace(OUTER, gre_protocol=ETH_P_TEB),
            ),
        ),
        (
            "outer IPv6",
            ethernet(
                SERVER_MAC,
                LB_MAC,
                ETH_P_IPV6,
                ipv6("2001:2::1", "2001:2::2", PROTO_GRE, gre(ETH_P_IPV4, inner)),
            ),
        ),
    ]


@pytest.mark.parametrize(
    "frame", [case[1] for case in unsupported_cases()], ids=[c[0] for c in unsupported_cases()]
)
def test_unsupported_gre_passes_untouched(program: Program, maps: DecapMaps, frame: bytes) -> None:
    passed_untouched(program, maps, frame, DecapStat.PASS_UNSUPPORTED)


def test_other_traffic_passes_untouched(program: Program, maps: DecapMaps) -> None:
    passed_untouched(
        program,
        maps,
        ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, ipv4(LB, SERVER, PROTO_UDP, udp(1, 2, b"x"))),
        DecapStat.PASS_NOT_GRE,
    )
    passed_untouched(
        program,
        maps,
        ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, ipv6("2001:2::1", "2001:2::2", PROTO_UDP, b"")),
        DecapStat.PASS_NOT_GRE,
    )
    passed_untouched(
        program,
        maps,
        ethernet("ff:ff:ff:ff:ff:ff", LB_MAC, ETH_P_ARP, bytes(28)),
        DecapStat.PASS_NOT_IP,
    )
    passed_untouched(
        program, maps, ethernet(SERVER_MAC, LB_MAC, ETH_P_ARP, b""), DecapStat.PASS_NOT_IP
    )
    three_tags = encapsulate(inner_ipv4(FLOW), replace(OUTER, vlans=(1, 2, 3)))
    passed_untouched(program, maps, three_tags, DecapStat.PASS_NOT_IP)
    cut_tag = ethernet(SERVER_MAC, LB_MAC, 0x8100, b"\x00")
    passed_untouched(program, maps, cut_tag, DecapStat.PASS_NOT_IP)


@pytest.mark.parametrize(
    ("more_fragments", "offset"), [(True, 0), (False, 8), (True, 8)], ids=["first", "last", "mid"]
)
def test_outer_fragments_are_left_to_the_stack(
    program: Program, maps: DecapMaps, more_fragments: bool, offset: int
) -> None:
    outer = replace(OUTER, dont_fragment=False, more_fragments=more_fragments, frag_offset=offset)
    passed_untouched(
        program, maps, encapsulate(inner_ipv4(FLOW), outer), DecapStat.PASS_OUTER_FRAGMENT
    )


# -- truncation and garbage ------------------------------------------------------------------


def test_every_truncation_passes_untouched(program: Program, maps: DecapMaps) -> None:
    inner = inner_ipv4(FLOW, b"payload", options=b"\x01" * 4)
    frame = encapsulate(
        inner, replace(OUTER, vlans=(5,), options=b"\x01" * 4, gre_checksum=True, gre_key=3)
    )
    decapsulated(program, maps, frame, ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner, vlans=(5,)))
    for length in range(14, len(frame)):
        verdict, out, counted = run(program, maps, frame[:length])
        assert verdict == Verdict.PASS, length
        assert out == frame[:length], length
        assert "decapsulated" not in counted, length


def test_every_outer_length_short_of_the_inner_packet_passes_untouched(
    program: Program, maps: DecapMaps
) -> None:
    inner = inner_ipv4(FLOW, b"payload")
    for total_length in range(0, 24 + len(inner)):
        frame = encapsulate(inner, replace(OUTER, total_length=total_length))
        passed_untouched(program, maps, frame, DecapStat.PASS_MALFORMED)


def test_garbage_never_comes_out_changed_unless_decapsulated(
    program: Program, maps: DecapMaps
) -> None:
    rng = random.Random(0x5EED)
    template = encapsulate(inner_ipv4(FLOW, b"abcdefgh"), OUTER)
    outcomes: set[str] = set()
    for _ in range(400):
        frame = bytearray(template)
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(14, len(frame))
            frame[position] = rng.randrange(256)
        frame = frame[: rng.randint(14, len(frame))]
        verdict, out, counted = run(program, maps, bytes(frame))
        assert verdict == Verdict.PASS
        (reason,) = counted
        outcomes.add(reason)
        if reason != "decapsulated":
            assert out == frame
        else:
            assert out == frame[:12] + frame[12:14] + out[14:]
            assert len(out) < len(frame)
    assert {"decapsulated", "pass_malformed"} <= outcomes


# -- the shape of the maps -------------------------------------------------------------------


def test_maps_have_the_shapes_the_python_side_writes(maps: DecapMaps) -> None:
    assert maps.allowed.key_size == struct.calcsize("=I4s") == maps.local.key_size
    assert maps.stats.value_size == struct.calcsize("=QQ")
    assert maps.stats.max_entries == len(DecapStat)
