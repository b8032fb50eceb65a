"""The data-plane state as plain values: what the control plane writes into the BPF maps.

The reference pipeline reads this model directly; the loader encodes the same model
into maps (bpf/balancer_types.h). docs/packet-path.md says what every field means to a packet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from rusty_rail.model.flowhash import DEFAULT_SEED, Flow

#: Marks "no backend" in a table slot and "no default set" in the settings (u32 max).
NONE_INDEX = 0xFFFFFFFF


class Stat(IntEnum):
    """Per-reason packet outcomes; every packet increments exactly one. Index in the BPF array."""

    CT_HIT = 0
    CT_MISS = 1
    CT_STALE = 2
    PASS_NOT_IP = 3
    PASS_NOT_GRE = 4
    PASS_NOT_LOCAL = 5
    PASS_OUTER_FRAGMENT = 6
    PASS_OUTER_MALFORMED = 7
    PASS_UNSUPPORTED = 8
    NO_VIP = 9
    GRE_MALFORMED = 10
    INNER_MALFORMED = 11
    INNER_L4_TRUNCATED = 12
    DROP_NO_BACKEND = 13
    DROP_NO_NEXTHOP = 14
    INNER_EXT_TOO_DEEP = 15
    #: Section 8c: too big for the next hop's MTU once encapsulated.
    TOO_BIG_ICMP = 16  # answered with an ICMP error to the client (TX)
    TOO_BIG_LIMITED = 17  # the VIP's ICMP rate was spent: dropped
    TOO_BIG_NO_DF = 18  # inner IPv4 without DF: dropped


STAT_COUNT = len(Stat)


class Verdict(IntEnum):
    """XDP actions, with the kernel's numbering."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


class Action(IntEnum):
    """What to do with a packet the balancer will not forward: give it to the host or drop it."""

    PASS = 0
    DROP = 1


class BackendState(IntEnum):
    """A backend slot's state in the data plane. UP and DRAIN forward; DRAIN takes no new flows
    because the control plane leaves it out of the tables."""

    UNUSED = 0
    UP = 1
    DRAIN = 2
    DOWN = 3


class Egress(IntEnum):
    """How a backend slot's packets leave (docs/packet-path.md section 8b): ``backend.egress``."""

    GRE = 0
    IPIP = 1
    VXLAN = 2
    GENEVE = 3
    ROUTE = 4


class VipFlow(IntEnum):
    """The per-VIP flow counters (``vip_flows``, index vip_index * VIP_FLOW_COUNT + this):
    new flows (the decisions the VIP's table made and the connection table records), and the
    drops of packets whose VIP was known, by reason."""

    NEW = 0
    DROP_NO_BACKEND = 1
    DROP_NO_NEXTHOP = 2


VIP_FLOW_COUNT = len(VipFlow)


class Affinity(IntEnum):
    """Which flow fields a VIP's Maglev pick hashes (docs/flow-hash.md, "Session affinity");
    the fields a mode leaves out are hashed as zero. ``vip_affinity`` holds it per VIP index."""

    FIVE_TUPLE = 0
    SOURCE_IP = 1
    SOURCE_IP_PROTO = 2
    NO_SOURCE_PORT = 3


#: A Maglev table in data-plane terms: one backend slot index per table slot.
Table = Sequence[int] | npt.NDArray[np.uint32]

FORWARDING_STATES = frozenset({BackendState.UP, BackendState.DRAIN})


@dataclass(frozen=True, slots=True)
class Settings:
    """Global data-plane settings (one entry in the BPF settings array)."""

    lb_ipv4: bytes
    outer_ttl: int = 64
    no_vip_action: Action = Action.PASS
    malformed_action: Action = Action.DROP
    default_vip: int = NONE_INDEX
    hash_seed: int = DEFAULT_SEED
    #: The outer IPv6 destination this node balances for and the source of the IPv6 outer
    #: headers it sends; all zero: none (outer IPv6 GRE is then never local).
    lb_ipv6: bytes = bytes(16)
    #: Ingress (section 2c): GRE to this node balanced, plain packets to a VIP balanced.
    gre_ingress: bool = True
    routed_ingress: bool = False


@dataclass(frozen=True, slots=True)
class VipKey:
    """A VIP match key: proto and port are 0 for an address-wide VIP. ``addr`` is 4 bytes
    (an IPv4 VIP) or 16 (an IPv6 VIP, matched by inner IPv6 flows only)."""

    addr: bytes
    proto: int = 0
    port: int = 0


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where frames to a backend leave: the egress interface and the Ethernet addresses."""

    ifindex: int
    src_mac: bytes
    dst_mac: bytes
    #: Whether the neighbour is the address itself (a directly connected network), not a
    #: gateway: what the `route` egress needs. The control plane's knowledge, not the map's.
    on_link: bool = field(default=True, compare=False)
    #: The egress interface's IP MTU; 0: unknown, packets are not checked (section 8c).
    mtu: int = 0


@dataclass(frozen=True, slots=True)
class BackendEntry:
    """One backend slot. Slots are per (VIP, backend address); ``generation`` changes when a
    slot is given to another backend, so stale connection-table entries are recognised.
    ``addr`` is 4 bytes (an IPv4 backend) or 16 (IPv6): the outer header sent to it is of that
    family (docs/packet-path.md section 8)."""

    addr: bytes
    vip_index: int
    generation: int
    state: BackendState
    next_hop: NextHop | None
    #: The egress method and, for VXLAN and GENEVE, the 24-bit VNI (section 8b).
    egress: Egress = Egress.GRE
    vni: int = 0


@dataclass(frozen=True, slots=True)
class CtEntry:
    """A connection-table entry: the backend slot a flow went to, and that slot's generation."""

    backend_index: int
    generation: int


@dataclass(eq=False)
class DataplaneState:
    """Everything a packet decision depends on. ``tables`` maps a VIP index to its Maglev table
    (a sequence of backend indices, NONE_INDEX for an empty slot; its length is the table size).
    ``affinity`` holds the VIP indices whose mode is not the 5-tuple (absent: FIVE_TUPLE)."""

    settings: Settings
    vips: dict[VipKey, int] = field(default_factory=dict)
    tables: dict[int, Table] = field(default_factory=dict)
    backends: dict[int, BackendEntry] = field(default_factory=dict)
    conntrack: dict[Flow, CtEntry] = field(default_factory=dict)
    affinity: dict[int, Affinity] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        # Tables may be lists or numpy arrays: equal when they hold the same slots.
        if not isinstance(other, DataplaneState):
            return NotImplemented
        return (
            self.settings == other.settings
            and self.vips == other.vips
            and self.backends == other.backends
            and self.conntrack == other.conntrack
            and self.affinity == other.affinity
            and self.tables.keys() == other.tables.keys()
            and all(
                len(table) == len(other.tables[index])
                and bool(np.array_equal(table, other.tables[index]))
                for index, table in self.tables.items()
            )
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable, like any dataclass
