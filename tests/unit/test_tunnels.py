"""wire/tunnels.py: IPIP, VXLAN and GENEVE bytes, cross-checked against scapy's dissectors."""

from __future__ import annotations

import struct

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from rusty_rail.wire.build import ipv4, ipv6, tcp
from rusty_rail.wire.checksum import internet_checksum
from rusty_rail.wire.constants import (
    GENEVE_PORT,
    PROTO_TCP,
    TUNNEL_INNER_DST_MAC,
    TUNNEL_INNER_SRC_MAC,
    VXLAN_PORT,
)
from rusty_rail.wire.fields import format_mac
from rusty_rail.wire.tunnels import geneve, geneve_header, ipip, tunnel_sport, vxlan

INNER4 = ipv4("198.18.1.1", "198.18.2.1", PROTO_TCP, tcp(1000, 80), tos=0xB8)
INNER6 = ipv6("2001:2::1:1", "2001:2::2:1", PROTO_TCP, tcp(1000, 80), traffic_class=0x28)
OUTERS = [("198.18.0.2", "198.18.3.1"), ("2001:2::2", "2001:2::3:1")]


def outer_layer(packet: bytes) -> IP | IPv6:
    return IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)


@pytest.mark.parametrize("inner", [INNER4, INNER6], ids=["inner4", "inner6"])
@pytest.mark.parametrize(("src", "dst"), OUTERS, ids=["outer4", "outer6"])
def test_ipip_wraps_the_inner_packet_byte_for_byte(inner: bytes, src: str, dst: str) -> None:
    packet = ipip(inner, src=src, dst=dst, ttl=17)
    outer = outer_layer(packet)
    inner_proto = 4 if inner[0] >> 4 == 4 else 41
    if isinstance(outer, IP):
        assert (outer.proto, outer.ttl, outer.flags, outer.id) == (inner_proto, 17, "DF", 0)
        assert outer.tos == (0xB8 if inner is INNER4 else 0x28)
        assert internet_checksum(packet[:20]) == 0
        assert packet[20:] == inner
    else:
        assert (outer.nh, outer.hlim, outer.fl, outer.plen) == (inner_proto, 17, 0, len(inner))
        assert outer.tc == (0xB8 if inner is INNER4 else 0x28)
        assert packet[40:] == inner
    assert (outer.src, outer.dst) == (src, dst)


def test_ipip_refuses_mixed_outer_families_and_non_ip() -> None:
    with pytest.raises(ValueError, match="different families"):
        ipip(INNER4, src="198.18.0.2", dst="2001:2::1")
    with pytest.raises(ValueError, match="version 0"):
        ipip(b"\x00" * 20, src="198.18.0.2", dst="198.18.0.3")


@pytest.mark.parametrize("inner", [INNER4, INNER6], ids=["inner4", "inner6"])
@pytest.mark.parametrize(("src", "dst"), OUTERS, ids=["outer4", "outer6"])
def test_vxlan_as_scapy_reads_it(inner: bytes, src: str, dst: str) -> None:
    packet = vxlan(inner, vni=0xABCDEF, src=src, dst=dst, sport=tunnel_sport(0x12345678))
    outer = outer_layer(packet)
    udp = outer[UDP]
    assert (udp.sport, udp.dport, udp.chksum) == (49152 + 0x12345678 % 16384, VXLAN_PORT, 0)
    header = udp[VXLAN]
    assert (header.flags, header.vni) == (0x08, 0xABCDEF)
    ether = header[Ether]
    assert ether.dst == format_mac(TUNNEL_INNER_DST_MAC)
    assert ether.src == format_mac(TUNNEL_INNER_SRC_MAC)
    assert bytes(ether.payload) == inner
    assert ether[TCP].dport == 80


@pytest.mark.parametrize("inner", [INNER4, INNER6], ids=["inner4", "inner6"])
@pytest.mark.parametrize(("src", "dst"), OUTERS, ids=["outer4", "outer6"])
def test_geneve_as_scapy_reads_it(inner: bytes, src: str, dst: str) -> None:
    packet = geneve(inner, vni=7, src=src, dst=dst, sport=50000)
    udp = outer_layer(packet)[UDP]
    assert (udp.sport, udp.dport) == (50000, GENEVE_PORT)
    header = udp[GENEVE]
    assert (header.version, header.optionlen, header.oam, header.critical) == (0, 0, 0, 0)
    assert (header.proto, header.vni) == (0x6558, 7)
    assert bytes(header[Ether].payload) == inner


@pytest.mark.parametrize(("src", "dst"), OUTERS, ids=["outer4", "outer6"])
def test_udp_checksum_on_request_verifies(src: str, dst: str) -> None:
    packet = vxlan(INNER4, vni=1, src=src, dst=dst, sport=50000, udp_checksum=True)
    outer = outer_layer(packet)
    sent = outer[UDP].chksum
    del outer[UDP].chksum
    assert sent != 0 and sent == outer_layer(bytes(outer))[UDP].chksum


def test_vni_out_of_range_is_refused() -> None:
    assert geneve_header(0xFFFFFF)[4:7] == b"\xff\xff\xff"
    with pytest.raises(ValueError, match="24 bits"):
        vxlan(INNER4, vni=1 << 24, src="198.18.0.2", dst="198.18.0.3", sport=50000)
    assert struct.unpack("!H", geneve_header(0)[2:4])[0] == 0x6558
