"""The numbers of the wire formats the balancer reads and writes: ethertypes, IP protocol
numbers, header sizes, flag bits and ICMP types. The one place they are defined in Python.
"""

from __future__ import annotations

import socket

ETH_HEADER_LEN = 14
VLAN_TAG_LEN = 4
ETH_MIN_FRAME = 60  # without the FCS: shorter frames are padded on the wire

ETH_P_IPV4 = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_TEB = 0x6558  # transparent Ethernet bridging, the GRE protocol of an encapsulated frame
VLAN_TPIDS = frozenset({ETH_P_8021Q, ETH_P_8021AD})

#: IP protocol numbers (IANA), the stdlib's names for them.
PROTO_ICMP = socket.IPPROTO_ICMP
PROTO_TCP = socket.IPPROTO_TCP
PROTO_UDP = socket.IPPROTO_UDP
PROTO_GRE = socket.IPPROTO_GRE
PROTO_ICMPV6 = socket.IPPROTO_ICMPV6
PROTO_IPIP = socket.IPPROTO_IPIP  # 4: IPv4 in IP (RFC 2003)
PROTO_IPV6 = socket.IPPROTO_IPV6  # 41: IPv6 in IP (RFC 2473, RFC 4213)

IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
IPV4_FLAG_RESERVED = 0x8000
IPV4_FLAG_DF = 0x4000
IPV4_FLAG_MF = 0x2000
IPV4_OFFSET_MASK = 0x1FFF

GRE_FLAG_C = 0x8000  # checksum present
GRE_FLAG_R = 0x4000  # routing present (RFC 1701; must be 0 since RFC 2784)
GRE_FLAG_K = 0x2000  # key present (RFC 2890)
GRE_FLAG_S = 0x1000  # sequence number present (RFC 2890)
GRE_FLAG_STRICT = 0x0800  # strict source route (RFC 1701)
GRE_RECURSION_MASK = 0x0700  # recursion control (RFC 1701)
GRE_RESERVED0_MASK = 0x00F8
GRE_VERSION_MASK = 0x0007

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8
#: ICMP destination unreachable, code 4: "fragmentation needed and DF set" (path-MTU information).
ICMP_CODE_FRAGMENTATION_NEEDED = 4
ICMPV6_DEST_UNREACHABLE = 1
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

#: IPv6 extension headers the balancer walks (RFC 8200, section 4), and the fragment header's
#: offset and more-fragments bits (the 16-bit word at its byte 2; 0x0006 is reserved).
IPV6_EXT_HOP_BY_HOP = 0
IPV6_EXT_ROUTING = 43
IPV6_EXT_FRAGMENT = 44
IPV6_EXT_DEST_OPTIONS = 60
IPV6_FRAGMENT_OFFSET_MASK = 0xFFF8
IPV6_FRAGMENT_MF = 0x0001
IPV6_EXT_HEADER_MIN = 8  # every walked header is a multiple of 8 bytes, at least 8

#: The UDP tunnels the balancer sends (docs/packet-path.md section 8c): their IANA ports, the
#: VXLAN flags word (I: a valid VNI, RFC 7348) and the GENEVE header (RFC 8926) without options.
VXLAN_PORT = 4789
GENEVE_PORT = 6081
VXLAN_FLAG_I = 0x08000000
VXLAN_HEADER_LEN = 8
GENEVE_HEADER_LEN = 8
UDP_HEADER_LEN = 8
VNI_MAX = 0xFFFFFF  # 24 bits
#: The outer UDP source port of a tunnel: 49152 + (flow hash mod 16384), the dynamic range.
TUNNEL_SPORT_BASE = 49152
TUNNEL_SPORT_SPAN = 16384
#: The inner Ethernet addresses of a VXLAN or GENEVE frame the balancer sends (locally
#: administered, "rr"): a server's tunnel device takes the destination as its own address, or
#: its stack drops the frames as addressed to another host.
TUNNEL_INNER_DST_MAC = bytes.fromhex("027272000001")
TUNNEL_INNER_SRC_MAC = bytes.fromhex("027272000002")
