"""Section 8b of docs/packet-path.md, the egress methods other than GRE passthrough: the
headers before the inner packet are replaced by the method's (outer IP and GRE, IPIP, VXLAN or
GENEVE; none for ``route``), the Ethernet header readdressed to the next hop. Built with the
same ``wire.tunnels`` builders the tests use."""

from __future__ import annotations

import struct

from rusty_rail.model.parse import Parsed
from rusty_rail.model.state import BackendEntry, Egress, Settings
from rusty_rail.wire.constants import ETH_P_IPV4, ETH_P_IPV6, PROTO_GRE
from rusty_rail.wire.tunnels import geneve, inner_tos, ipip, outer_ip, tunnel_sport, vxlan


def encapsulate(
    settings: Settings, frame: bytes, parsed: Parsed, backend: BackendEntry, flow_hash: int
) -> bytes:
    """The frame that leaves for ``backend`` by its egress method (not GRE passthrough, which
    ``pipeline.rewrite`` does): link layer, the method's headers, the inner packet, the tail."""
    next_hop = backend.next_hop
    if next_hop is None:
        raise ValueError(f"backend {backend} has no next hop")
    l3 = parsed.l3
    link = bytearray(frame[:l3])
    link[0:6] = next_hop.dst_mac
    link[6:12] = next_hop.src_mac
    inner = frame[parsed.inner : parsed.inner_end]
    tail = frame[parsed.inner_end :]
    if backend.egress == Egress.ROUTE:
        link[l3 - 2 : l3] = struct.pack(
            "!H", ETH_P_IPV4 if parsed.inner_family == 4 else ETH_P_IPV6
        )
        return bytes(link) + inner + tail

    outer_v6 = len(backend.addr) == 16
    src = settings.lb_ipv6 if outer_v6 else settings.lb_ipv4
    ttl = settings.outer_ttl
    if backend.egress == Egress.IPIP:
        packet = ipip(inner, src=src, dst=backend.addr, ttl=ttl)
    elif backend.egress in (Egress.VXLAN, Egress.GENEVE):
        build = vxlan if backend.egress == Egress.VXLAN else geneve
        sport = tunnel_sport(flow_hash)
        packet = build(inner, vni=backend.vni, src=src, dst=backend.addr, sport=sport, ttl=ttl)
    else:  # GRE for a routed packet: a fresh 4-byte header
        protocol = ETH_P_IPV4 if parsed.inner_family == 4 else ETH_P_IPV6
        gre = struct.pack("!HH", 0, protocol)
        packet = outer_ip(
            PROTO_GRE, gre + inner, src=src, dst=backend.addr, ttl=ttl, tos=inner_tos(inner)
        )
    link[l3 - 2 : l3] = struct.pack("!H", ETH_P_IPV6 if outer_v6 else ETH_P_IPV4)
    return bytes(link) + packet + tail
