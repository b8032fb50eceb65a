"""ctypes mirrors of the structs in bpf/balancer_types.h, and their encoding from model/state.py
values.

One mirror per C struct, same field names; a field ending in _be holds bytes in network
order. tests/bpf/test_structs.py checks every size and offset against the object's BTF.
"""

from __future__ import annotations

import ctypes
import struct

from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import (
    NONE_INDEX,
    Action,
    Affinity,
    BackendEntry,
    BackendState,
    CtEntry,
    Egress,
    NextHop,
    Settings,
    VipKey,
)

#: Capacities compiled into the maps (balancer_types.h); indices the control plane uses stay below.
MAX_VIPS = 1024
MAX_BACKENDS = 16384
DEFAULT_CONNTRACK_ENTRIES = 1 << 20
CONNTRACK_WAYS = 4
MAX_TX_PORTS = 64
ICMP_REPORT_RING_BYTES = 1 << 20

#: Bits of ``struct settings.ingress_flags`` (zero: GRE ingress only, as before the field).
INGRESS_ROUTED = 0x1
INGRESS_NO_GRE = 0x2
#: The largest VNI (24 bits).
MAX_VNI = 0xFFFFFF

#: Values of ``struct backend.family``.
FAMILY_IPV4 = 4
FAMILY_IPV6 = 6

ETH_ALEN = 6

U8 = ctypes.c_uint8
U32 = ctypes.c_uint32
U64 = ctypes.c_uint64


def _bytes_be(length: int) -> type[ctypes.Array[ctypes.c_uint8]]:
    """A network-order field: kept as its wire bytes, never as a host integer."""
    return U8 * length


class CSettings(ctypes.Structure):
    _fields_ = [
        ("lb_ipv4_be", _bytes_be(4)),
        ("lb_ipv6", U8 * 16),
        ("default_vip", U32),
        ("hash_seed", U64),
        ("conntrack_mask", U32),
        ("outer_ttl", U8),
        ("no_vip_action", U8),
        ("malformed_action", U8),
        ("ingress_flags", U8),
    ]


class CVipKey(ctypes.Structure):
    _fields_ = [
        ("addr_be", _bytes_be(4)),
        ("port_be", _bytes_be(2)),
        ("proto", U8),
        ("pad", U8),
    ]


class CVip6Key(ctypes.Structure):
    _fields_ = [
        ("addr_be", _bytes_be(16)),
        ("port_be", _bytes_be(2)),
        ("proto", U8),
        ("pad", U8),
    ]


class CVipValue(ctypes.Structure):
    _fields_ = [("vip_index", U32)]


class CBackend(ctypes.Structure):
    _fields_ = [
        ("addr_be", _bytes_be(16)),
        ("generation", U32),
        ("vip_index", U32),
        ("state", U8),
        ("family", U8),
        ("nexthop_resolved", U8),
        ("egress", U8),
        ("nexthop_ifindex", U32),
        ("nexthop_dst_mac", U8 * ETH_ALEN),
        ("nexthop_src_mac", U8 * ETH_ALEN),
    ]


class CBackendTunnel(ctypes.Structure):
    _fields_ = [("vni_be", _bytes_be(4))]


class CBackendMtu(ctypes.Structure):
    _fields_ = [("mtu", U32)]


class CVipAffinity(ctypes.Structure):
    _fields_ = [("mode", U32)]


class CTooBigBucket(ctypes.Structure):
    _fields_ = [("stamp_ns", ctypes.c_uint64), ("tokens", U32), ("pad", U32)]


class CFlowKey(ctypes.Structure):
    _fields_ = [
        ("src_be", _bytes_be(4)),
        ("dst_be", _bytes_be(4)),
        ("sport_be", _bytes_be(2)),
        ("dport_be", _bytes_be(2)),
        ("proto", U8),
        ("pad", U8 * 3),
    ]


class CConntrackEntry(ctypes.Structure):
    _fields_ = [("backend_index", U32), ("generation", U32)]


class CFlowEntry(ctypes.Structure):
    _fields_ = [
        ("flow", CFlowKey),
        ("target", CConntrackEntry),
        ("check", U32),
        ("recent", U32),
    ]


class CFlowSet(ctypes.Structure):
    _fields_ = [("way", CFlowEntry * CONNTRACK_WAYS)]


class CFlow6Key(ctypes.Structure):
    _fields_ = [
        ("src_be", _bytes_be(16)),
        ("dst_be", _bytes_be(16)),
        ("sport_be", _bytes_be(2)),
        ("dport_be", _bytes_be(2)),
        ("proto", U8),
        ("pad", U8 * 3),
    ]


class CFlow6Entry(ctypes.Structure):
    _fields_ = [
        ("flow", CFlow6Key),
        ("target", CConntrackEntry),
        ("check", U32),
        ("recent", U32),
    ]


class CFlow6Set(ctypes.Structure):
    _fields_ = [("way", CFlow6Entry * CONNTRACK_WAYS)]


class CCounter(ctypes.Structure):
    _fields_ = [("packets", U64), ("bytes", U64)]


class CIcmpWatch(ctypes.Structure):
    _fields_ = [("armed", U32)]


class CIcmpReport(ctypes.Structure):
    _fields_ = [
        ("backend_be", _bytes_be(16)),
        ("reporter_be", _bytes_be(16)),
        ("family", U8),
        ("type", U8),
        ("code", U8),
        ("pad", U8),
    ]


#: Every mirror under the name of the C struct it mirrors (test_structs walks this).
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "settings": CSettings,
    "vip_key": CVipKey,
    "vip6_key": CVip6Key,
    "vip_value": CVipValue,
    "backend": CBackend,
    "backend_tunnel": CBackendTunnel,
    "backend_mtu": CBackendMtu,
    "vip_affinity": CVipAffinity,
    "too_big_bucket": CTooBigBucket,
    "flow_key": CFlowKey,
    "conntrack_entry": CConntrackEntry,
    "flow_entry": CFlowEntry,
    "flow_set": CFlowSet,
    "flow6_key": CFlow6Key,
    "flow6_entry": CFlow6Entry,
    "flow6_set": CFlow6Set,
    "counter": CCounter,
    "icmp_watch": CIcmpWatch,
    "icmp_report": CIcmpReport,
}


def _require_ipv4(value: bytes, what: str) -> bytes:
    if len(value) != 4:
        raise ValueError(f"{what} must be a 4-byte IPv4 address, got {len(value)} bytes")
    return value


def require_index(value: int, limit: int, what: str) -> int:
    if not 0 <= value < limit:
        raise ValueError(f"{what} {value} is out of range 0..{limit - 1}")
    return value


def _require_mac(value: bytes, what: str) -> bytes:
    if len(value) != ETH_ALEN:
        raise ValueError(f"{what} must be 6 bytes, got {len(value)}")
    return value


def encode_settings(settings: Settings, conntrack_mask: int = 0) -> bytes:
    """The settings entry. ``conntrack_mask`` is not part of the state: it describes the loaded
    connection table (its number of sets - 1), so the map owner supplies it."""
    if settings.default_vip != NONE_INDEX:
        require_index(settings.default_vip, MAX_VIPS, "default VIP index")
    if not 0 <= settings.outer_ttl <= 255:
        raise ValueError(f"outer TTL must be 0..255, got {settings.outer_ttl}")
    value = CSettings(
        default_vip=settings.default_vip,
        hash_seed=settings.hash_seed & 0xFFFFFFFFFFFFFFFF,
        conntrack_mask=conntrack_mask,
        outer_ttl=settings.outer_ttl,
        no_vip_action=int(settings.no_vip_action),
        malformed_action=int(settings.malformed_action),
        ingress_flags=(INGRESS_ROUTED if settings.routed_ingress else 0)
        | (0 if settings.gre_ingress else INGRESS_NO_GRE),
    )
    value.lb_ipv4_be[:] = _require_ipv4(settings.lb_ipv4, "the LB's IPv4 address")
    if len(settings.lb_ipv6) != 16:
        raise ValueError(f"the LB's IPv6 address must be 16 bytes, got {len(settings.lb_ipv6)}")
    value.lb_ipv6[:] = settings.lb_ipv6
    return bytes(value)


def decode_settings(data: bytes) -> Settings:
    value = CSettings.from_buffer_copy(data)
    return Settings(
        lb_ipv4=bytes(value.lb_ipv4_be),
        outer_ttl=value.outer_ttl,
        no_vip_action=Action(value.no_vip_action),
        malformed_action=Action(value.malformed_action),
        default_vip=value.default_vip,
        hash_seed=value.hash_seed,
        lb_ipv6=bytes(value.lb_ipv6),
        gre_ingress=not value.ingress_flags & INGRESS_NO_GRE,
        routed_ingress=bool(value.ingress_flags & INGRESS_ROUTED),
    )


def encode_vip_key(key: VipKey) -> bytes:
    """The key of ``vips`` (an IPv4 VIP) or ``vips_v6`` (an IPv6 VIP): the map follows from the
    address's length (``is_vip6_key``)."""
    if not 0 <= key.proto <= 255 or not 0 <= key.port <= 0xFFFF:
        raise ValueError(f"VIP key protocol {key.proto} / port {key.port} out of range")
    value: CVipKey | CVip6Key
    if len(key.addr) == 16:
        value = CVip6Key(proto=key.proto)
    else:
        value = CVipKey(proto=key.proto)
        _require_ipv4(key.addr, "a VIP address")
    value.addr_be[:] = key.addr
    value.port_be[:] = struct.pack("!H", key.port)
    return bytes(value)


def is_vip6_key(key: VipKey) -> bool:
    """Whether ``key`` lives in ``vips_v6`` rather than ``vips``."""
    return len(key.addr) == 16


def decode_vip_key(data: bytes) -> VipKey:
    """A key of either VIP map (told apart by its size)."""
    value: CVipKey | CVip6Key
    if len(data) == ctypes.sizeof(CVip6Key):
        value = CVip6Key.from_buffer_copy(data)
    else:
        value = CVipKey.from_buffer_copy(data)
    return VipKey(bytes(value.addr_be), value.proto, struct.unpack("!H", bytes(value.port_be))[0])


def encode_vip_value(vip_index: int) -> bytes:
    return bytes(CVipValue(require_index(vip_index, MAX_VIPS, "VIP index")))


def decode_vip_value(data: bytes) -> int:
    return int(CVipValue.from_buffer_copy(data).vip_index)


def encode_affinity(mode: Affinity) -> bytes:
    return bytes(CVipAffinity(Affinity(mode)))


def decode_affinity(data: bytes) -> Affinity:
    """A value of vip_affinity; a mode this version does not know reads as the 5-tuple, as the
    program takes it."""
    mode = CVipAffinity.from_buffer_copy(data).mode
    return Affinity(mode) if mode in set(Affinity) else Affinity.FIVE_TUPLE


def encode_backend(entry: BackendEntry) -> bytes:
    value = CBackend(
        generation=entry.generation & 0xFFFFFFFF,
        vip_index=require_index(entry.vip_index, MAX_VIPS, "backend's VIP index"),
        state=int(entry.state),
        family=FAMILY_IPV6 if len(entry.addr) == 16 else FAMILY_IPV4,
        egress=int(entry.egress),
    )
    if len(entry.addr) == 16:
        value.addr_be[:] = entry.addr
    else:
        value.addr_be[:4] = _require_ipv4(entry.addr, "a backend address")
    if entry.next_hop is not None:
        value.nexthop_resolved = 1
        value.nexthop_ifindex = entry.next_hop.ifindex
        value.nexthop_dst_mac[:] = _require_mac(entry.next_hop.dst_mac, "next-hop dst_mac")
        value.nexthop_src_mac[:] = _require_mac(entry.next_hop.src_mac, "next-hop src_mac")
    return bytes(value)


def encode_backend_tunnel(entry: BackendEntry) -> bytes:
    """The slot's ``backend_tunnels`` value: the VNI as the second word of a VXLAN or GENEVE
    header (VNI << 8, network order); zero for the other methods."""
    if not 0 <= entry.vni <= MAX_VNI:
        raise ValueError(f"VNI {entry.vni} is out of range 0..{MAX_VNI}")
    return struct.pack("!I", entry.vni << 8)


def encode_backend_mtu(entry: BackendEntry) -> bytes:
    """The slot's ``backend_mtu`` value: its next hop's MTU (0: unknown, or no next hop)."""
    mtu = 0 if entry.next_hop is None else entry.next_hop.mtu
    if not 0 <= mtu <= 0xFFFF:
        raise ValueError(f"next-hop mtu {mtu} is out of range 0..65535")
    return bytes(CBackendMtu(mtu=mtu))


def decode_backend(
    data: bytes, tunnel: bytes | None = None, mtu: bytes | None = None
) -> BackendEntry | None:
    """The slot's entry (with its ``backend_tunnels`` and ``backend_mtu`` values, when given),
    or None for an all-zero (never written or cleared) slot."""
    if not any(data):
        return None
    value = CBackend.from_buffer_copy(data)
    next_hop = None
    if value.nexthop_resolved:
        next_hop = NextHop(
            value.nexthop_ifindex,
            bytes(value.nexthop_src_mac),
            bytes(value.nexthop_dst_mac),
            mtu=CBackendMtu.from_buffer_copy(mtu).mtu if mtu else 0,
        )
    return BackendEntry(
        addr=bytes(value.addr_be) if value.family == FAMILY_IPV6 else bytes(value.addr_be[:4]),
        vip_index=value.vip_index,
        generation=value.generation,
        state=BackendState(value.state),
        next_hop=next_hop,
        egress=Egress(value.egress),
        vni=struct.unpack("!I", tunnel)[0] >> 8 if tunnel else 0,
    )


def encode_flow_key(flow: Flow) -> bytes:
    """The key of an IPv4 flow in ``conntrack`` (16 bytes) or of an IPv6 flow in
    ``conntrack_v6`` (40 bytes)."""
    value: CFlowKey | CFlow6Key = (
        CFlow6Key(proto=flow.proto) if flow.is_ipv6 else CFlowKey(proto=flow.proto)
    )
    value.src_be[:] = flow.src
    value.dst_be[:] = flow.dst
    value.sport_be[:] = struct.pack("!H", flow.sport)
    value.dport_be[:] = struct.pack("!H", flow.dport)
    return bytes(value)


def decode_flow_key(data: bytes) -> Flow:
    """A key of either connection table (told apart by its size)."""
    value: CFlowKey | CFlow6Key
    if len(data) == ctypes.sizeof(CFlow6Key):
        value = CFlow6Key.from_buffer_copy(data)
    else:
        value = CFlowKey.from_buffer_copy(data)
    return Flow(
        bytes(value.src_be),
        bytes(value.dst_be),
        value.proto,
        struct.unpack("!H", bytes(value.sport_be))[0],
        struct.unpack("!H", bytes(value.dport_be))[0],
    )


def encode_conntrack_entry(entry: CtEntry) -> bytes:
    return bytes(CConntrackEntry(entry.backend_index, entry.generation & 0xFFFFFFFF))


def decode_conntrack_entry(data: bytes) -> CtEntry:
    value = CConntrackEntry.from_buffer_copy(data)
    return CtEntry(value.backend_index, value.generation)


def decode_counter(data: bytes) -> tuple[int, int]:
    """(packets, bytes) of one CPU's counter."""
    value = CCounter.from_buffer_copy(data)
    return int(value.packets), int(value.bytes)
