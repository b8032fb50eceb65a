"""The configuration's choices: each a StrEnum whose values are what a file or body says."""

from __future__ import annotations

from enum import StrEnum

from rusty_rail.wire.constants import PROTO_TCP, PROTO_UDP


class XdpMode(StrEnum):
    """How the XDP program is attached: in the driver, or in the kernel's generic hook."""

    NATIVE = "native"
    GENERIC = "generic"


class Action(StrEnum):
    """What to do with a packet the balancer does not forward."""

    PASS = "pass"
    DROP = "drop"


class AdminState(StrEnum):
    """A backend's administrative state. ``drain`` keeps existing flows but takes no new ones."""

    UP = "up"
    DRAIN = "drain"
    DOWN = "down"


class Protocol(StrEnum):
    """The transport protocol a port-specific VIP matches."""

    TCP = "tcp"
    UDP = "udp"

    @property
    def number(self) -> int:
        """The IP protocol number."""
        return PROTO_TCP if self is Protocol.TCP else PROTO_UDP


class Encap(StrEnum):
    """How packets are carried from the balancer to a VIP's backends (the egress method,
    docs/packet-path.md section 8b)."""

    GRE = "gre"
    IPIP = "ipip"
    VXLAN = "vxlan"
    GENEVE = "geneve"
    ROUTE = "route"

    @property
    def has_vni(self) -> bool:
        """Whether the method carries a VNI (VXLAN and GENEVE)."""
        return self in (Encap.VXLAN, Encap.GENEVE)


class Affinity(StrEnum):
    """Which flow fields a VIP's Maglev choice hashes (docs/flow-hash.md, "Session
    affinity"): all five, the client's address only (every connection of a client to one
    backend), the client's address and the protocol, or all but the source port."""

    FIVE_TUPLE = "5-tuple"
    SOURCE_IP = "source-ip"
    SOURCE_IP_PROTO = "source-ip+proto"
    NO_SOURCE_PORT = "no-source-port"


class Ingress(StrEnum):
    """How packets reach the node (docs/packet-path.md section 2c): GRE addressed to it, or
    plain IP packets routed to a VIP."""

    GRE = "gre"
    ROUTED = "routed"


class CheckType(StrEnum):
    """An active health check: none, a TCP connect, an HTTP GET, or a tunnel probe (an ICMP
    echo inside GRE from the balancer's address: the path the traffic takes)."""

    NONE = "none"
    TCP = "tcp"
    HTTP = "http"
    TUNNEL = "tunnel"


class IcmpPolicy(StrEnum):
    """What an ICMP destination unreachable about a backend does: make it suspect until a
    tunnel probe confirms, take it out at once, or nothing."""

    SUSPECT = "suspect"
    TRUST = "trust"
    OFF = "off"


class AllUnhealthy(StrEnum):
    """What a VIP whose every backend is unhealthy does: keep sending to all of them
    (fail open) or drop its traffic."""

    FAIL_OPEN = "fail-open"
    DROP = "drop"
