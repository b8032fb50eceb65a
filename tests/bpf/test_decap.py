"""bpf/decap.bpf.c in the kernel (BPF_PROG_TEST_RUN): GRE from an allowed LB to a local address
comes out as the inner packet under the same Ethernet header; everything else passes untouched,
counted by reason; truncated and garbage frames never crash it or come out decapsulated.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network

import pytest

from rusty_rail.dataplane.libbpf import BpfObject, Program
from rusty_rail.decap.agent import DecapMaps, DecapStat, load_decap_object, parse_prefixes
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import Verdict
from rusty_rail.wire.build import ethernet, gre, gre_in_ipv6, ipv4, ipv6, udp, udp6
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
from tests.support.decap_run import run

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
LB6 = "2001:2::2"
SERVER6 = "2001:2::10"
OTHER_SERVER6 = "2001:2::11"
CLIENT6 = "2001:2:100::7"
VIP6 = "2001:2:1::1"
ALLOWED6 = ["2001:2::/120", "2001:2:200::9"]


@pytest.fixture(scope="module")
def decap_object() -> Iterator[BpfObject]:
    with load_decap_object() as bpf_object:
        yield bpf_object


@pytest.fixture
def maps(decap_object: BpfObject) -> DecapMaps:
    """The maps, set to the allowed LB prefixes and the server's address before each test."""
    decap_maps = DecapMaps.of_object(decap_object)
    decap_maps.set_allowed(parse_prefixes([*ALLOWED, *ALLOWED6], "allowed"))
    decap_maps.set_local(parse_prefixes([SERVER, SERVER6], "local"))
    return decap_maps


@pytest.fixture
def program(decap_object: BpfObject, maps: DecapMaps) -> Program:
    return decap_object.program("xdp_decap")


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
            "transparent Ethernet bridging",
            encapsulate(
                ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner),
                replace(OUTER, gre_protocol=ETH_P_TEB),
            ),
        ),
        (
            "outer IPv6, GRE version 1",
            ethernet(
                SERVER_MAC,
                LB_MAC,
                ETH_P_IPV6,
                ipv6(LB6, SERVER6, PROTO_GRE, gre(ETH_P_IPV4, inner, version=1)),
            ),
        ),
        (
            "outer IPv6, transparent Ethernet bridging",
            gre_in_ipv6(
                SERVER_MAC,
                LB_MAC,
                LB6,
                SERVER6,
                ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner),
                protocol=ETH_P_TEB,
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
    assert maps.allowed6 is not None and maps.local6 is not None
    assert maps.allowed6.key_size == struct.calcsize("=I16s") == maps.local6.key_size
    assert maps.stats.value_size == struct.calcsize("=QQ")
    assert maps.stats.max_entries == len(DecapStat)


# -- IPv6: outer IPv6, inner IPv6, and the two mixed -----------------------------------------


def inner_v6(payload: bytes = b"hello", traffic_class: int = 0) -> bytes:
    return ipv6(
        CLIENT6,
        VIP6,
        PROTO_UDP,
        udp6(5000, 53, payload, src=CLIENT6, dst=VIP6),
        traffic_class=traffic_class,
    )


def over_ipv6(inner: bytes, **fields: object) -> bytes:
    """``inner`` in GRE in outer IPv6 from LB6 to SERVER6; GRE protocol after inner's version."""
    protocol = ETH_P_IPV6 if inner[0] >> 4 == 6 else ETH_P_IPV4
    arguments: dict[str, object] = {"protocol": protocol, **fields}
    src = str(arguments.pop("src", LB6))
    dst = str(arguments.pop("dst", SERVER6))
    return gre_in_ipv6(SERVER_MAC, LB_MAC, src, dst, inner, **arguments)  # type: ignore[arg-type]


def test_gre_over_ipv6_with_inner_ipv4_becomes_the_inner_packet(
    program: Program, maps: DecapMaps
) -> None:
    inner = inner_ipv4(FLOW, b"hello")
    decapsulated(program, maps, over_ipv6(inner), ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner))


def test_gre_over_ipv6_with_inner_ipv6_becomes_the_inner_packet(
    program: Program, maps: DecapMaps
) -> None:
    inner = inner_v6()
    decapsulated(program, maps, over_ipv6(inner), ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, inner))


def test_gre_over_ipv4_with_inner_ipv6_gets_the_ipv6_ethertype(
    program: Program, maps: DecapMaps
) -> None:
    inner = inner_v6()
    frame = encapsulate(inner, replace(OUTER, gre_protocol=ETH_P_IPV6))
    decapsulated(program, maps, frame, ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, inner))


@pytest.mark.parametrize(
    "vlans", [(), (100,), (VlanTag(200, tpid=0x88A8), 300)], ids=["untagged", "802.1Q", "QinQ"]
)
@pytest.mark.parametrize("inner_family", [4, 6])
def test_ipv6_gre_options_and_vlan_tags(
    program: Program, maps: DecapMaps, vlans: tuple[VlanTag | int, ...], inner_family: int
) -> None:
    inner = inner_v6(b"tagged") if inner_family == 6 else inner_ipv4(FLOW, b"tagged")
    ethertype = ETH_P_IPV6 if inner_family == 6 else ETH_P_IPV4
    frame = over_ipv6(inner, vlans=vlans, gre_checksum=True, gre_key=5, gre_sequence=6)
    expected = ethernet(SERVER_MAC, LB_MAC, ethertype, inner, vlans=vlans)
    decapsulated(program, maps, frame, expected)
    # link padding after the outer packet stays behind the inner one
    decapsulated(program, maps, frame + b"\xee" * 9, expected + b"\xee" * 9)


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("2001:2::1", True),
        ("2001:2::ff", True),
        ("2001:2::100", False),
        ("2001:2:200::9", True),
        ("2001:2:200::8", False),
        ("::ffff:198.18.0.2", False),  # an allowed IPv4 LB, mapped: not the same thing
    ],
)
def test_only_allowed_ipv6_sources_are_decapsulated(
    program: Program, maps: DecapMaps, source: str, allowed: bool
) -> None:
    inner = inner_v6()
    frame = over_ipv6(inner, src=source)
    if allowed:
        decapsulated(program, maps, frame, ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, inner))
    else:
        passed_untouched(program, maps, frame, DecapStat.PASS_SOURCE_DENIED)


def test_ipv6_prefixes_change_at_run_time_apart_from_ipv4_ones(
    program: Program, maps: DecapMaps
) -> None:
    inner = inner_v6()
    frame = over_ipv6(inner, src="2001:7::7")
    passed_untouched(program, maps, frame, DecapStat.PASS_SOURCE_DENIED)
    maps.set_allowed(parse_prefixes([*ALLOWED, "2001:7::/64"], "allowed"))
    assert maps.allowed_prefixes()[-1] == IPv6Network("2001:7::/64")
    decapsulated(program, maps, frame, ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, inner))
    # an IPv4 prefix that covers nothing of IPv6, and IPv6 no longer allowed at all
    maps.set_allowed(parse_prefixes(["0.0.0.0/0"], "allowed"))
    passed_untouched(program, maps, frame, DecapStat.PASS_SOURCE_DENIED)
    decapsulated(
        program,
        maps,
        encapsulate(inner_ipv4(FLOW), OUTER),
        ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner_ipv4(FLOW)),
    )


def test_ipv6_gre_to_another_address_is_not_ours(program: Program, maps: DecapMaps) -> None:
    passed_untouched(
        program, maps, over_ipv6(inner_v6(), dst=OTHER_SERVER6), DecapStat.PASS_NOT_LOCAL
    )
    # the IPv4 local set says nothing about IPv6 destinations
    maps.set_local(parse_prefixes(["0.0.0.0/0"], "local"))
    passed_untouched(program, maps, over_ipv6(inner_v6()), DecapStat.PASS_NOT_LOCAL)
    maps.set_local(parse_prefixes(["::/0"], "local"))
    inner = inner_v6()
    for destination in (SERVER6, OTHER_SERVER6, "fd00::1"):
        decapsulated(
            program,
            maps,
            over_ipv6(inner, dst=destination),
            ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, inner),
        )


@pytest.mark.parametrize("next_header", [0, 43, 44, 51, 60, 135, 139, 140, 253, 254])
def test_outer_ipv6_extension_headers_are_passed_and_counted(
    program: Program, maps: DecapMaps, next_header: int
) -> None:
    # an 8-byte extension header whose next header is GRE: not walked, whatever follows
    extension = bytes([PROTO_GRE, 0]) + bytes(6)
    packet = ipv6(LB6, SERVER6, next_header, extension + gre(ETH_P_IPV6, inner_v6()))
    frame = ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, packet)
    passed_untouched(program, maps, frame, DecapStat.PASS_EXTENSION_HEADERS)


@pytest.mark.parametrize("next_header", [PROTO_UDP, PROTO_TCP, 50, 58, 59])
def test_other_ipv6_next_headers_are_not_gre(
    program: Program, maps: DecapMaps, next_header: int
) -> None:
    frame = ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, ipv6(LB6, SERVER6, next_header, bytes(16)))
    passed_untouched(program, maps, frame, DecapStat.PASS_NOT_GRE)


def malformed_ipv6_cases() -> list[tuple[str, bytes]]:
    inner6 = inner_v6(b"data")
    inner4 = inner_ipv4(FLOW, b"data")
    gre_len = 4
    return [
        ("IPv6 header cut short", ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, bytes(39))),
        ("outer version 4 under 0x86DD", _with_byte(over_ipv6(inner6), 14, 0x40)),
        ("outer payload length past the frame", over_ipv6(inner6, payload_length=200)),
        ("GRE cut by the outer payload length", over_ipv6(inner6, payload_length=3)),
        ("GRE key cut by the outer payload length", over_ipv6(inner6, gre_key=1, payload_length=6)),
        (
            "inner IPv6 cut by the outer payload length",
            over_ipv6(inner6, payload_length=gre_len + len(inner6) - 1),
        ),
        (
            "inner IPv4 cut by the outer payload length",
            over_ipv6(inner4, payload_length=gre_len + len(inner4) - 1),
        ),
        ("inner shorter than an IPv6 header", over_ipv6(inner6[:39], protocol=ETH_P_IPV6)),
        (
            "inner payload length past the GRE payload",
            over_ipv6(ipv6(CLIENT6, VIP6, PROTO_UDP, b"abcd", payload_length=5)),
        ),
        (
            "inner version 4 under protocol 0x86DD",
            over_ipv6(inner4 + bytes(20), protocol=ETH_P_IPV6),
        ),
        (
            "inner version 4 under 0x86DD, outer IPv4",
            encapsulate(inner4 + bytes(20), replace(OUTER, gre_protocol=ETH_P_IPV6)),
        ),
        (
            "inner version 6 under 0x0800, outer IPv6",
            over_ipv6(inner6, protocol=ETH_P_IPV4),
        ),
        ("R bit, outer IPv6", _with_byte(over_ipv6(inner6), 14 + 40, 0x40)),
    ]


@pytest.mark.parametrize(
    "frame",
    [case[1] for case in malformed_ipv6_cases()],
    ids=[c[0] for c in malformed_ipv6_cases()],
)
def test_malformed_ipv6_frames_pass_untouched(
    program: Program, maps: DecapMaps, frame: bytes
) -> None:
    passed_untouched(program, maps, frame, DecapStat.PASS_MALFORMED)


def ipv6_truncation_cases() -> list[tuple[str, bytes, bytes]]:
    inner4 = inner_ipv4(FLOW, b"payload", options=b"\x01" * 4)
    inner6 = inner_v6(b"payload")
    return [
        (
            "outer 6 inner 4",
            over_ipv6(inner4, vlans=(5,), gre_checksum=True, gre_key=3),
            ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, inner4, vlans=(5,)),
        ),
        (
            "outer 6 inner 6",
            over_ipv6(inner6, vlans=(5,), gre_key=3),
            ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, inner6, vlans=(5,)),
        ),
        (
            "outer 4 inner 6",
            encapsulate(inner6, replace(OUTER, gre_protocol=ETH_P_IPV6, options=b"\x01" * 4)),
            ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, inner6),
        ),
    ]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [case[1:] for case in ipv6_truncation_cases()],
    ids=[case[0] for case in ipv6_truncation_cases()],
)
def test_every_truncation_of_ipv6_frames_passes_untouched(
    program: Program, maps: DecapMaps, frame: bytes, expected: bytes
) -> None:
    decapsulated(program, maps, frame, expected)
    for length in range(14, len(frame)):
        verdict, out, counted = run(program, maps, frame[:length])
        assert verdict == Verdict.PASS, length
        assert out == frame[:length], length
        assert set(counted) in ({"pass_malformed"}, {"pass_not_ip"}), (length, counted)


@pytest.mark.parametrize("inner_family", [4, 6])
def test_every_outer_payload_length_short_of_the_inner_packet_passes_untouched(
    program: Program, maps: DecapMaps, inner_family: int
) -> None:
    inner = inner_v6(b"payload") if inner_family == 6 else inner_ipv4(FLOW, b"payload")
    for payload_length in range(0, 4 + len(inner)):
        frame = over_ipv6(inner, payload_length=payload_length)
        passed_untouched(program, maps, frame, DecapStat.PASS_MALFORMED)


def test_congestion_marks_cross_the_families(program: Program, maps: DecapMaps) -> None:
    """RFC 6040 between every pair of families: CE on the outer header marks an ECT inner
    packet (ECT(1) and ECT(0)); a Not-ECT inner packet stays unmarked."""
    v4_payload = udp(5000, 53, b"q", src=CLIENT, dst=VIP)
    for inner_ecn in (1, 2):
        inner4 = ipv4(CLIENT, VIP, PROTO_UDP, v4_payload, tos=0xB8 | inner_ecn)
        marked4 = ipv4(CLIENT, VIP, PROTO_UDP, v4_payload, tos=0xB8 | 3)
        inner6 = inner_v6(b"q", traffic_class=0xB8 | inner_ecn)
        marked6 = inner_v6(b"q", traffic_class=0xB8 | 3)
        decapsulated(
            program,
            maps,
            over_ipv6(inner4, traffic_class=0x03),
            ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV4, marked4),
        )
        decapsulated(
            program,
            maps,
            over_ipv6(inner6, traffic_class=0x03),
            ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, marked6),
        )
        decapsulated(
            program,
            maps,
            outer_with_tos_v6_inner(inner6, 0x03),
            ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, marked6),
        )
        # no mark on the outer header: the inner one is left as it is
        decapsulated(
            program,
            maps,
            over_ipv6(inner6, traffic_class=0x02),
            ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, inner6),
        )
    not_ect = inner_v6(b"q", traffic_class=0xB8)
    decapsulated(
        program,
        maps,
        over_ipv6(not_ect, traffic_class=0xFF),
        ethernet(SERVER_MAC, LB_MAC, ETH_P_IPV6, not_ect),
    )


def outer_with_tos_v6_inner(inner: bytes, tos: int) -> bytes:
    return ethernet(
        SERVER_MAC,
        LB_MAC,
        ETH_P_IPV4,
        ipv4(LB, SERVER, PROTO_GRE, gre(ETH_P_IPV6, inner), tos=tos, dont_fragment=True),
    )


@pytest.mark.parametrize("inner_family", [4, 6])
def test_ipv6_garbage_never_comes_out_changed_unless_decapsulated(
    program: Program, maps: DecapMaps, inner_family: int
) -> None:
    rng = random.Random(0x5EED6 + inner_family)
    inner = inner_v6(b"abcdefgh") if inner_family == 6 else inner_ipv4(FLOW, b"abcdefgh")
    template = over_ipv6(inner)
    outcomes: set[str] = set()
    for _ in range(300):
        frame = bytearray(template)
        for _ in range(rng.randint(1, 4)):
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
            assert out[:12] == frame[:12]
            assert len(out) < len(frame)
    assert {"decapsulated", "pass_malformed"} <= outcomes
