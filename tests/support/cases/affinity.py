"""Session affinity (docs/flow-hash.md, "Session affinity"; section 7 of docs/packet-path.md):
a VIP's table is indexed by the hash of the fields its mode names, for GRE and routed ingress,
inner IPv4 and IPv6; the connection table still keys on the whole flow, and a VXLAN backend's
outer UDP source port still comes from the 5-tuple hash.

Every flow here is chosen so that its mode's pick differs from the 5-tuple's: a program that
ignored the mode would send it elsewhere."""

from __future__ import annotations

from dataclasses import replace

from rusty_rail.model.affinity import AFFINITY_NAMES
from rusty_rail.model.flowhash import Flow, flow_hash
from rusty_rail.model.state import Affinity, CtEntry, Egress, Stat, Verdict
from rusty_rail.wire.build import ethernet
from rusty_rail.wire.constants import ETH_P_IPV4, ETH_P_IPV6, PROTO_TCP, PROTO_UDP
from rusty_rail.wire.frames import LB_IPV4, LB_MAC, OUTER_INNER_IPV6, ROUTER_MAC, inner_ipv4
from rusty_rail.wire.frames import inner_ipv6 as inner_ipv6_packet
from rusty_rail.wire.tunnels import tunnel_sport, vxlan
from tests.support.cases._base import (
    _STANDARD,
    CLIENT,
    CLIENT6,
    VIP6_WEB,
    VIP_WEB,
    WEB_ADDRESS_VIP,
    WEB_PORT_VIP,
    PacketCase,
    Section,
    standard_state,
    table_pick,
    variant,
)

SECTION = Section()
forwarded = SECTION.forwarded

MODES = (Affinity.SOURCE_IP, Affinity.SOURCE_IP_PROTO, Affinity.NO_SOURCE_PORT)


def _telling_flow(client: str, vip: str, vip_index: int, mode: Affinity, proto: int) -> Flow:
    """The first flow from ``client`` (source ports from 40000 up) whose pick under ``mode``
    differs from its 5-tuple pick."""
    with_mode = standard_state(affinity={vip_index: mode})
    for sport in range(40000, 41000):
        flow = Flow.of(client, vip, proto, sport, 80)
        if table_pick(with_mode, vip_index, flow) != table_pick(_STANDARD, vip_index, flow):
            return flow
    raise AssertionError(f"no flow tells {mode.name} from the 5-tuple")


for _mode in MODES:
    _name = AFFINITY_NAMES[_mode]
    _flow = _telling_flow(CLIENT, VIP_WEB, WEB_PORT_VIP, _mode, PROTO_TCP)
    forwarded(
        f"affinity-{_name}-ipv4",
        f"a port VIP with affinity {_name}: the table indexed by the hash of those fields",
        _flow,
        WEB_PORT_VIP,
        state=variant(affinity={WEB_PORT_VIP: _mode}),
    )
    _flow6 = _telling_flow(CLIENT6, VIP6_WEB, WEB_PORT_VIP, _mode, PROTO_TCP)
    forwarded(
        f"affinity-{_name}-ipv6",
        f"inner IPv6, affinity {_name}: the same rule over the IPv6 flow's fields",
        _flow6,
        WEB_PORT_VIP,
        outer=OUTER_INNER_IPV6,
        inner=inner_ipv6_packet(_flow6),
        state=variant(affinity={WEB_PORT_VIP: _mode}),
    )

_UDP_FLOW = _telling_flow(CLIENT, VIP_WEB, WEB_ADDRESS_VIP, Affinity.SOURCE_IP, PROTO_UDP)
forwarded(
    "affinity-source-ip-address-vip",
    "an address VIP with affinity source-ip: UDP to it picks by the client's address alone",
    _UDP_FLOW,
    WEB_ADDRESS_VIP,
    state=variant(affinity={WEB_ADDRESS_VIP: Affinity.SOURCE_IP}),
)
_STALE = _telling_flow(CLIENT, VIP_WEB, WEB_PORT_VIP, Affinity.SOURCE_IP, PROTO_TCP)
_STALE_PICK = table_pick(
    standard_state(affinity={WEB_PORT_VIP: Affinity.SOURCE_IP}), WEB_PORT_VIP, _STALE
)
forwarded(
    "affinity-stale-entry-decided-again",
    "a stale connection-table entry under affinity source-ip: decided by the client's hash",
    _STALE,
    WEB_PORT_VIP,
    state=variant(
        affinity={WEB_PORT_VIP: Affinity.SOURCE_IP},
        conntrack={_STALE: CtEntry(next(i for i in (0, 1, 2) if i != _STALE_PICK), 7)},
    ),
    stat=Stat.CT_STALE,
)


def _routed_vxlan(name: str, flow: Flow, inner: bytes, ethertype: int) -> PacketCase:
    """Routed ingress to a VXLAN backend under affinity source-ip: the backend by the client's
    hash, the outer UDP source port by the 5-tuple's."""
    with_mode = standard_state(affinity={WEB_PORT_VIP: Affinity.SOURCE_IP})
    index = table_pick(with_mode, WEB_PORT_VIP, flow)
    entry = replace(_STANDARD.backends[index], egress=Egress.VXLAN, vni=9)
    assert entry.next_hop is not None
    sport = tunnel_sport(flow_hash(flow, _STANDARD.settings.hash_seed))
    packet = vxlan(inner, vni=9, src=LB_IPV4, dst=entry.addr, sport=sport)
    case = PacketCase(
        name,
        "routed ingress, VXLAN egress, affinity source-ip: the backend by the client's hash, "
        "the outer UDP source port by the 5-tuple hash (per connection)",
        ethernet(LB_MAC, ROUTER_MAC, ethertype, inner),
        Stat.CT_MISS,
        Verdict.TX,
        variant(
            settings={"routed_ingress": True},
            backends={index: entry},
            affinity={WEB_PORT_VIP: Affinity.SOURCE_IP},
        ),
        expected_frame=ethernet(entry.next_hop.dst_mac, entry.next_hop.src_mac, ETH_P_IPV4, packet),
        vip_index=WEB_PORT_VIP,
        backend_index=index,
        flow=flow,
        conntrack_after=CtEntry(index, entry.generation),
    )
    SECTION.cases.append(case)
    return case


_ROUTED = _telling_flow(CLIENT, VIP_WEB, WEB_PORT_VIP, Affinity.SOURCE_IP, PROTO_TCP)
_routed_vxlan("affinity-routed-vxlan-ipv4", _ROUTED, inner_ipv4(_ROUTED), ETH_P_IPV4)
_ROUTED6 = _telling_flow(CLIENT6, VIP6_WEB, WEB_PORT_VIP, Affinity.SOURCE_IP, PROTO_TCP)
_routed_vxlan("affinity-routed-vxlan-ipv6", _ROUTED6, inner_ipv6_packet(_ROUTED6), ETH_P_IPV6)

CASES = SECTION.cases
