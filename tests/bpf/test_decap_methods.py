"""bpf/decap.bpf.c in the kernel (BPF_PROG_TEST_RUN) for the methods besides GRE: IPIP, VXLAN
and GENEVE from an allowed LB to a local address, over IPv4 and IPv6, with inner IPv4 and IPv6,
come out as the inner packet under the outer Ethernet header; the methods that are off, other
ports, other sources, other VNIs and every malformed variant pass untouched, counted by reason
(docs/decap.md). Frames are built with rusty_rail.wire.tunnels, as the balancer's egress is.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import pytest

from rusty_rail.dataplane.libbpf import BpfObject, Program
from rusty_rail.decap.agent import (
    DecapMaps,
    DecapStat,
    load_decap_object,
    parse_methods,
    parse_prefixes,
)
from rusty_rail.model.state import Verdict
from rusty_rail.wire import tunnels
from rusty_rail.wire.build import ethernet, ipv4, ipv6, udp, udp6
from rusty_rail.wire.constants import (
    ETH_P_ARP,
    ETH_P_IPV4,
    ETH_P_IPV6,
    ETH_P_TEB,
    GENEVE_PORT,
    PROTO_IPIP,
    PROTO_IPV6,
    PROTO_UDP,
    VXLAN_PORT,
)
from tests.support.decap_run import run

pytestmark = pytest.mark.bpf

LB_MAC = "02:00:00:00:01:02"
SERVER_MAC = "02:00:00:00:01:0a"
LB, SERVER, OTHER_SERVER = "198.18.0.2", "198.18.0.10", "198.18.0.11"
LB6, SERVER6, OTHER_SERVER6 = "2001:2::2", "2001:2::10", "2001:2::11"
CLIENT, VIP = "198.18.100.7", "198.19.0.1"
CLIENT6, VIP6 = "2001:2:100::7", "2001:2:1::1"
VNI = 4242
SPORT = tunnels.tunnel_sport(0xC0FFEE)
METHODS = ("ipip", "vxlan", "geneve")
ALL = ("gre", "ipip", "vxlan", "geneve")


@pytest.fixture(scope="module")
def decap_object() -> Iterator[BpfObject]:
    with load_decap_object() as bpf_object:
        yield bpf_object


@pytest.fixture
def maps(decap_object: BpfObject) -> DecapMaps:
    """Every method on, any VNI, the LBs allowed and the server local, before each test."""
    decap_maps = DecapMaps.of_object(decap_object)
    decap_maps.set_allowed(parse_prefixes(["198.18.0.0/28", "2001:2::/120"], "allowed"))
    decap_maps.set_local(parse_prefixes([SERVER, SERVER6], "local"))
    decap_maps.set_methods(parse_methods(ALL))
    return decap_maps


@pytest.fixture
def program(decap_object: BpfObject, maps: DecapMaps) -> Program:
    return decap_object.program("xdp_decap")


def decapsulated(program: Program, maps: DecapMaps, frame: bytes, expected: bytes) -> None:
    verdict, out, counted = run(program, maps, frame)
    assert (verdict, counted) == (Verdict.PASS, {"decapsulated": 1})
    assert out == expected


def passed_untouched(program: Program, maps: DecapMaps, frame: bytes, reason: DecapStat) -> None:
    verdict, out, counted = run(program, maps, frame)
    assert (verdict, counted) == (Verdict.PASS, {reason.name.lower(): 1})
    assert out == frame


# -- frames ----------------------------------------------------------------------------------


def inner_packet(family: int, payload: bytes = b"hello", tos: int = 0) -> bytes:
    if family == 4:
        datagram = udp(5000, 53, payload, src=CLIENT, dst=VIP)
        return ipv4(CLIENT, VIP, PROTO_UDP, datagram, tos=tos)
    datagram6 = udp6(5000, 53, payload, src=CLIENT6, dst=VIP6)
    return ipv6(CLIENT6, VIP6, PROTO_UDP, datagram6, traffic_class=tos)


def outer_packet(method: str, inner: bytes, outer: int, **fields: object) -> bytes:
    """``inner`` wrapped by ``method`` from the LB to the server of family ``outer``; ``fields``
    go to the builder (src, dst, vni, tos, udp_checksum, inner MACs)."""
    src = str(fields.pop("src", LB if outer == 4 else LB6))
    dst = str(fields.pop("dst", SERVER if outer == 4 else SERVER6))
    if method == "ipip":
        return tunnels.ipip(inner, src=src, dst=dst, **fields)  # type: ignore[arg-type]
    builder = tunnels.vxlan if method == "vxlan" else tunnels.geneve
    vni = int(fields.pop("vni", VNI))  # type: ignore[call-overload]
    return builder(inner, vni=vni, src=src, dst=dst, sport=SPORT, **fields)  # type: ignore[arg-type]


def on_wire(packet: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    ethertype = ETH_P_IPV4 if packet[0] >> 4 == 4 else ETH_P_IPV6
    return ethernet(SERVER_MAC, LB_MAC, ethertype, packet, vlans=vlans)


def tunnel_frame(method: str, inner: bytes, outer: int = 4, **fields: object) -> bytes:
    return on_wire(outer_packet(method, inner, outer, **fields))


def delivered(inner: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    """What the stack must get: the inner packet under the outer Ethernet header."""
    return on_wire(inner, vlans)


def udp_offset(outer: int) -> int:
    return 14 + (20 if outer == 4 else 40)


def with_bytes(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value) :]


def geneve_frame(
    inner: bytes,
    outer: int = 4,
    *,
    options: bytes = b"",
    protocol: int = ETH_P_TEB,
    first_bytes: bytes | None = None,
    vni: int = VNI,
) -> bytes:
    """GENEVE with ``options`` (a multiple of 4 bytes) and ``protocol``: 0x6558 puts an inner
    Ethernet header in front of ``inner``, anything else carries ``inner`` as it is."""
    assert len(options) % 4 == 0
    head = bytes([len(options) // 4, 0]) if first_bytes is None else first_bytes
    header = head + struct.pack("!HI", protocol, vni << 8) + options
    body = tunnels.inner_ethernet(inner) if protocol == ETH_P_TEB else inner
    length = 8 + len(header) + len(body)
    datagram = struct.pack("!HHHH", SPORT, GENEVE_PORT, length, 0) + header + body
    src, dst = (LB, SERVER) if outer == 4 else (LB6, SERVER6)
    return on_wire(tunnels.outer_ip(PROTO_UDP, datagram, src=src, dst=dst, ttl=64, tos=0))


# -- every method, every family --------------------------------------------------------------


@pytest.mark.parametrize("inner_family", [4, 6])
@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_family_becomes_the_inner_packet(
    program: Program, maps: DecapMaps, method: str, outer: int, inner_family: int
) -> None:
    inner = inner_packet(inner_family)
    decapsulated(program, maps, tunnel_frame(method, inner, outer), delivered(inner))


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("method", METHODS)
def test_vlan_tags_and_padding_stay_with_the_outer_ethernet_header(
    program: Program, maps: DecapMaps, method: str, outer: int
) -> None:
    inner = inner_packet(4, b"")
    frame = on_wire(outer_packet(method, inner, outer), vlans=(7, 8)) + b"\xee" * 11
    decapsulated(program, maps, frame, delivered(inner, vlans=(7, 8)) + b"\xee" * 11)


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("method", ["vxlan", "geneve"])
def test_the_udp_checksum_is_not_required_nor_verified(
    program: Program, maps: DecapMaps, method: str, outer: int
) -> None:
    inner = inner_packet(6)
    with_checksum = tunnel_frame(method, inner, outer, udp_checksum=True)
    zero = tunnel_frame(method, inner, outer)
    assert with_checksum != zero
    for frame in (
        zero,
        with_checksum,
        with_bytes(with_checksum, udp_offset(outer) + 6, b"\x12\x34"),
    ):
        decapsulated(program, maps, frame, delivered(inner))


@pytest.mark.parametrize("inner_family", [4, 6])
@pytest.mark.parametrize("outer", [4, 6])
def test_geneve_options_are_skipped_and_ip_may_follow_directly(
    program: Program, maps: DecapMaps, outer: int, inner_family: int
) -> None:
    inner = inner_packet(inner_family)
    for options in (b"", bytes(range(4)), bytes(range(252))):  # 252: the largest (63 x 4)
        decapsulated(program, maps, geneve_frame(inner, outer, options=options), delivered(inner))
    family_type = ETH_P_IPV4 if inner_family == 4 else ETH_P_IPV6
    direct = geneve_frame(inner, outer, options=b"\x01" * 8, protocol=family_type)
    decapsulated(program, maps, direct, delivered(inner))


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("method", METHODS)
def test_congestion_marks_reach_an_ecn_capable_inner_packet(
    program: Program, maps: DecapMaps, method: str, outer: int
) -> None:
    for inner_family in (4, 6):
        inner = inner_packet(inner_family, tos=0xB8 | 2)  # ECT(0)
        marked = inner_packet(inner_family, tos=0xB8 | 3)
        frame = tunnel_frame(method, inner, outer, tos=0x03)
        decapsulated(program, maps, frame, delivered(marked))


# -- what is not taken -----------------------------------------------------------------------


@pytest.mark.parametrize("outer", [4, 6])
def test_methods_that_are_off_pass_untouched(program: Program, maps: DecapMaps, outer: int) -> None:
    inner = inner_packet(4)
    frames = {method: tunnel_frame(method, inner, outer) for method in METHODS}
    maps.set_methods(parse_methods())  # the default: gre and ipip
    decapsulated(program, maps, frames["ipip"], delivered(inner))
    for method in ("vxlan", "geneve"):
        passed_untouched(program, maps, frames[method], DecapStat.PASS_NOT_GRE)
    maps.set_methods(parse_methods(["vxlan"]))
    decapsulated(program, maps, frames["vxlan"], delivered(inner))
    for method in ("ipip", "geneve"):
        passed_untouched(program, maps, frames[method], DecapStat.PASS_NOT_GRE)
    maps.set_methods(parse_methods(["geneve"]))
    decapsulated(program, maps, frames["geneve"], delivered(inner))
    passed_untouched(program, maps, frames["vxlan"], DecapStat.PASS_NOT_GRE)


def test_gre_can_be_off_and_a_config_never_written_is_gre_alone(
    decap_object: BpfObject, program: Program, maps: DecapMaps
) -> None:
    inner = inner_packet(4)
    gre_frame = ethernet(
        SERVER_MAC, LB_MAC, ETH_P_IPV4, ipv4(LB, SERVER, 47, struct.pack("!HH", 0, 0x0800) + inner)
    )
    decapsulated(program, maps, gre_frame, delivered(inner))
    maps.set_methods(parse_methods(["ipip"]))
    passed_untouched(program, maps, gre_frame, DecapStat.PASS_NOT_GRE)
    assert maps.config is not None
    maps.config.update(struct.pack("=I", 0), bytes(8))  # what a fresh map holds
    assert maps.methods() == parse_methods(["gre"])
    decapsulated(program, maps, gre_frame, delivered(inner))
    passed_untouched(program, maps, tunnel_frame("ipip", inner), DecapStat.PASS_NOT_GRE)


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("port", [4790, 8472, 6080, 53])
def test_other_udp_ports_are_not_tunnels(
    program: Program, maps: DecapMaps, outer: int, port: int
) -> None:
    frame = tunnel_frame("vxlan", inner_packet(4), outer)
    passed_untouched(
        program,
        maps,
        with_bytes(frame, udp_offset(outer) + 2, struct.pack("!H", port)),
        DecapStat.PASS_NOT_GRE,
    )


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("method", METHODS)
def test_only_allowed_sources_to_local_addresses_are_taken(
    program: Program, maps: DecapMaps, method: str, outer: int
) -> None:
    inner = inner_packet(6)
    stranger, elsewhere = (
        ("198.18.0.16", OTHER_SERVER) if outer == 4 else ("2001:2::100", OTHER_SERVER6)
    )
    passed_untouched(
        program,
        maps,
        tunnel_frame(method, inner, outer, src=stranger),
        DecapStat.PASS_SOURCE_DENIED,
    )
    passed_untouched(
        program, maps, tunnel_frame(method, inner, outer, dst=elsewhere), DecapStat.PASS_NOT_LOCAL
    )


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("method", ["vxlan", "geneve"])
def test_vnis_taken_and_refused_change_at_run_time(
    program: Program, maps: DecapMaps, method: str, outer: int
) -> None:
    inner = inner_packet(4)
    frames = {vni: tunnel_frame(method, inner, outer, vni=vni) for vni in (0, 100, 101, 16777215)}
    maps.set_methods(parse_methods([method], [100, 16777215]))
    assert maps.methods().vnis == (100, 16777215)
    decapsulated(program, maps, frames[100], delivered(inner))
    decapsulated(program, maps, frames[16777215], delivered(inner))
    passed_untouched(program, maps, frames[101], DecapStat.PASS_VNI_DENIED)
    passed_untouched(program, maps, frames[0], DecapStat.PASS_VNI_DENIED)
    maps.set_methods(parse_methods([method], [101]))
    assert maps.methods().vnis == (101,)
    decapsulated(program, maps, frames[101], delivered(inner))
    passed_untouched(program, maps, frames[100], DecapStat.PASS_VNI_DENIED)
    maps.set_methods(parse_methods([method]))
    assert maps.methods().vnis is None
    for frame in frames.values():
        decapsulated(program, maps, frame, delivered(inner))


@pytest.mark.parametrize("method", ["vxlan", "geneve", "ipip"])
def test_outer_ipv4_fragments_are_left_to_the_stack(
    program: Program, maps: DecapMaps, method: str
) -> None:
    frame = tunnel_frame(method, inner_packet(4))
    flags = 14 + 6
    first = with_bytes(frame, flags, struct.pack("!H", 0x2000))  # MF, offset 0
    passed_untouched(program, maps, _fix_ipv4_checksum(first), DecapStat.PASS_OUTER_FRAGMENT)
    later = _fix_ipv4_checksum(with_bytes(frame, flags, struct.pack("!H", 0x0003)))
    expected = DecapStat.PASS_OUTER_FRAGMENT if method == "ipip" else DecapStat.PASS_NOT_GRE
    passed_untouched(program, maps, later, expected)  # a later UDP fragment has no port


def _fix_ipv4_checksum(frame: bytes) -> bytes:
    # the program does not verify it; kept right so that only the field under test differs
    header = bytearray(frame[14:34])
    header[10:12] = b"\x00\x00"
    total = sum(struct.unpack("!10H", bytes(header)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return frame[:14] + bytes(header) + frame[34:]


@pytest.mark.parametrize("method", METHODS)
def test_an_ipv6_extension_header_before_the_tunnel_is_not_walked(
    program: Program, maps: DecapMaps, method: str
) -> None:
    packet = outer_packet(method, inner_packet(4), 6)
    next_header = packet[6]
    extension = bytes([next_header, 0]) + bytes(6)
    payload = extension + packet[40:]
    frame = on_wire(ipv6(LB6, SERVER6, 60, payload))
    passed_untouched(program, maps, frame, DecapStat.PASS_EXTENSION_HEADERS)


# -- malformed and unsupported ---------------------------------------------------------------


def bad_header_cases(outer: int) -> list[tuple[str, bytes, DecapStat]]:
    inner4, inner6 = inner_packet(4), inner_packet(6)
    vxlan = tunnel_frame("vxlan", inner4, outer)
    tunnel_at = udp_offset(outer) + 8
    malformed, unsupported = DecapStat.PASS_MALFORMED, DecapStat.PASS_UNSUPPORTED
    inner_eth_type = tunnel_at + 8 + 12
    return [
        ("vxlan I flag clear", with_bytes(vxlan, tunnel_at, b"\x00"), malformed),
        ("vxlan group policy flag", with_bytes(vxlan, tunnel_at, b"\x88"), unsupported),
        ("vxlan GPE P flag", with_bytes(vxlan, tunnel_at, b"\x0c"), unsupported),
        (
            "vxlan inner ARP",
            with_bytes(vxlan, inner_eth_type, struct.pack("!H", ETH_P_ARP)),
            unsupported,
        ),
        ("vxlan inner VLAN tag", with_bytes(vxlan, inner_eth_type, b"\x81\x00"), unsupported),
        (
            "vxlan inner IPv6 under 0x0800",
            with_bytes(tunnel_frame("vxlan", inner6, outer), inner_eth_type, b"\x08\x00"),
            malformed,
        ),
        ("geneve version 1", geneve_frame(inner4, outer, first_bytes=b"\x40\x00"), unsupported),
        ("geneve O bit", geneve_frame(inner4, outer, first_bytes=b"\x00\x80"), unsupported),
        ("geneve C bit", geneve_frame(inner4, outer, first_bytes=b"\x00\x40"), unsupported),
        ("geneve protocol 0x1234", geneve_frame(inner4, outer, protocol=0x1234), unsupported),
        (
            "geneve 0x86DD carrying IPv4",
            geneve_frame(inner4 + bytes(20), outer, protocol=ETH_P_IPV6),
            malformed,
        ),
        (
            "geneve options past the UDP payload",
            geneve_frame(b"", outer, options=bytes(4), first_bytes=b"\x02\x00", protocol=0x0800),
            malformed,
        ),
        (
            "ipip 4 carrying IPv6",
            on_wire(
                tunnels.outer_ip(
                    PROTO_IPIP, inner6, src=_lb(outer), dst=_server(outer), ttl=64, tos=0
                )
            ),
            malformed,
        ),
        (
            "ipip 41 carrying IPv4",
            on_wire(
                tunnels.outer_ip(
                    PROTO_IPV6,
                    inner4 + bytes(20),
                    src=_lb(outer),
                    dst=_server(outer),
                    ttl=64,
                    tos=0,
                )
            ),
            malformed,
        ),
        (
            "ipip inner shorter than a header",
            on_wire(
                tunnels.outer_ip(
                    PROTO_IPIP, inner4[:19], src=_lb(outer), dst=_server(outer), ttl=64, tos=0
                )
            ),
            malformed,
        ),
        (
            "udp length under its header",
            with_bytes(vxlan, udp_offset(outer) + 4, struct.pack("!H", 7)),
            malformed,
        ),
        (
            "udp length past the outer packet",
            with_bytes(
                vxlan, udp_offset(outer) + 4, struct.pack("!H", len(vxlan) - udp_offset(outer) + 1)
            ),
            malformed,
        ),
    ]


def _lb(outer: int) -> str:
    return LB if outer == 4 else LB6


def _server(outer: int) -> str:
    return SERVER if outer == 4 else SERVER6


BAD_HEADER_CASES = [(outer, *case) for outer in (4, 6) for case in bad_header_cases(outer)]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [case[2:] for case in BAD_HEADER_CASES],
    ids=[f"{case[1]}, outer IPv{case[0]}" for case in BAD_HEADER_CASES],
)
def test_bad_tunnel_headers_pass_untouched_by_reason(
    program: Program, maps: DecapMaps, frame: bytes, reason: DecapStat
) -> None:
    passed_untouched(program, maps, frame, reason)


def test_a_udp_header_cut_by_the_outer_length_is_malformed(
    program: Program, maps: DecapMaps
) -> None:
    packet = ipv4(LB, SERVER, PROTO_UDP, struct.pack("!HH", SPORT, VXLAN_PORT))  # 4 bytes of UDP
    passed_untouched(program, maps, on_wire(packet), DecapStat.PASS_MALFORMED)


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("method", METHODS)
def test_every_truncation_passes_untouched(
    program: Program, maps: DecapMaps, method: str, outer: int
) -> None:
    inner = inner_packet(4, b"payload")
    frame = on_wire(outer_packet(method, inner, outer), vlans=(5,))
    decapsulated(program, maps, frame, delivered(inner, vlans=(5,)))
    for length in range(14, len(frame)):
        verdict, out, counted = run(program, maps, frame[:length])
        assert verdict == Verdict.PASS, length
        assert out == frame[:length], length
        assert set(counted) in ({"pass_malformed"}, {"pass_not_ip"}), (length, counted)


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("method", ["vxlan", "geneve"])
def test_every_udp_length_short_of_the_inner_packet_is_malformed(
    program: Program, maps: DecapMaps, method: str, outer: int
) -> None:
    frame = tunnel_frame(method, inner_packet(6, b"payload"), outer)
    full = len(frame) - udp_offset(outer)
    for length in range(full):
        short = with_bytes(frame, udp_offset(outer) + 4, struct.pack("!H", length))
        passed_untouched(program, maps, short, DecapStat.PASS_MALFORMED)


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("method", METHODS)
def test_every_outer_length_short_of_the_inner_packet_is_malformed(
    program: Program, maps: DecapMaps, method: str, outer: int
) -> None:
    inner = inner_packet(4, b"payload")
    frame = tunnel_frame(method, inner, outer)
    if outer == 4:
        offset, header, full = 14 + 2, 0, len(frame) - 14
    else:
        offset, header, full = 14 + 4, 40, len(frame) - 14
    for length in range(full - header):
        short = with_bytes(frame, offset, struct.pack("!H", length))
        passed_untouched(program, maps, short, DecapStat.PASS_MALFORMED)


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("method", ["vxlan", "geneve"])
def test_garbage_never_comes_out_changed_unless_decapsulated(
    program: Program, maps: DecapMaps, method: str, outer: int
) -> None:
    rng = random.Random(f"{method} over IPv{outer}")
    template = tunnel_frame(method, inner_packet(4, b"abcdefgh"), outer)
    start = udp_offset(outer)
    outcomes: set[str] = set()
    for _ in range(300):
        frame = bytearray(template)
        for _ in range(rng.randint(1, 3)):
            frame[rng.randrange(start, len(frame))] = rng.randrange(256)
        if rng.random() < 0.5:
            frame = frame[: rng.randint(start, len(frame))]
        verdict, out, counted = run(program, maps, bytes(frame))
        assert verdict == Verdict.PASS
        (reason,) = counted
        outcomes.add(reason)
        if reason != "decapsulated":
            assert out == frame
        else:
            assert out[:12] == frame[:12] and len(out) < len(frame)
    assert {"decapsulated", "pass_malformed"} <= outcomes


def test_the_maps_of_the_methods_have_the_shapes_the_python_side_writes(maps: DecapMaps) -> None:
    assert maps.config is not None and maps.vnis is not None
    assert (maps.config.key_size, maps.config.value_size, maps.config.max_entries) == (4, 8, 1)
    assert (maps.vnis.key_size, maps.vnis.max_entries) == (4, 4096)
    assert maps.stats.max_entries == len(DecapStat) == 11
    with pytest.raises(ValueError, match="vni: 4097 VNIs, at most 4096"):
        maps.set_methods(parse_methods(["vxlan"], range(4097)))
