"""The test bed's addresses and its specification (size, underlay, backend families, ingress
and egress methods), and the one configuration every balancer runs: what topology.py builds,
as plain values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rusty_rail.testbed.bgp import HOLD_TIME, LB_ASN, ROUTER_ASN
from rusty_rail.testbed.lb_segment import lb_address6, server_address6

CLIENT_NET = "198.18.1"
LB_NET = "198.18.0"
ROUTER_CLIENT_SIDE = f"{CLIENT_NET}.1"
ROUTER_LB_SIDE = f"{LB_NET}.1"
VIP = "198.19.0.10"
VIP_PREFIX = "198.19.0.0/24"
CLIENT_NET6 = "2001:2:0:1"
RETURN_NET6 = "2001:2:0:2"
ROUTER_CLIENT_SIDE6 = f"{CLIENT_NET6}::1"
ROUTER_RETURN_SIDE6 = f"{RETURN_NET6}::1"
VIP6 = "2001:2:0:100::10"
VIP6_PREFIX = "2001:2:0:100::/64"
#: Address family -> the test bed's VIP of that family.
VIPS = {"ipv4": VIP, "ipv6": VIP6}
HTTP_PORT = 80
ECHO_PORT = 7
#: The outer families between the router and the balancers (TestbedSpec.underlay).
UNDERLAYS = ("ipv4", "ipv6")
#: The backends' families (TestbedSpec.backends): all IPv4, or mixed (see backend_family).
BACKEND_FAMILIES = ("ipv4", "mixed")
#: How client packets reach the balancers (TestbedSpec.ingress): wrapped in GRE by the XDP
#: router, or routed by the kernel (ECMP over the balancers as next hops).
INGRESSES = ("gre", "routed")
#: How the balancers reach the servers (TestbedSpec.egress): every VIP's ``encap``.
EGRESSES = ("gre", "ipip", "vxlan", "geneve", "route")
#: What unwraps VXLAN on a server (TestbedSpec.vxlan_server): a kernel VXLAN device, or
#: `rusty-rail decap --methods vxlan`.
VXLAN_SERVERS = ("kernel", "decap")
#: The VNI of both VIPs for the vxlan and geneve egress methods.
TESTBED_VNI = 4200


def client_address(i: int) -> str:
    return f"{CLIENT_NET}.{11 + i}"


def lb_address(i: int) -> str:
    return f"{LB_NET}.{11 + i}"


def server_address(i: int) -> str:
    return f"{LB_NET}.{21 + i}"


def client_address6(i: int) -> str:
    return f"{CLIENT_NET6}::{11 + i}"


def server_return_address6(i: int) -> str:
    return f"{RETURN_NET6}::{21 + i}"


@dataclass(frozen=True)
class TestbedSpec:
    """The test bed's size, families and methods. Default: the seed's "iteration 4" (2
    clients, 2 balancers) with 3 servers, the IPv4 underlay, IPv4 backends, GRE ingress and
    GRE egress (passthrough)."""

    __test__ = False  # not a pytest test class, despite the name

    clients: int = 2
    lbs: int = 2
    servers: int = 3
    xdp_mode: str = "native"
    underlay: str = "ipv4"
    backends: str = "ipv4"
    ingress: str = "gre"
    egress: str = "gre"
    vxlan_server: str = "kernel"
    #: etcd and BGP (cluster.py): the balancers share one store, the router learns them by BGP.
    cluster: bool = False

    def __post_init__(self) -> None:
        for name, value, top in (
            ("clients", self.clients, 50),
            ("lbs", self.lbs, 9),
            ("servers", self.servers, 50),
        ):
            if not 1 <= value <= top:
                raise ValueError(f"{name} must be 1..{top}, got {value}")
        if self.xdp_mode not in ("native", "generic"):
            raise ValueError(f"xdp_mode must be native or generic, got {self.xdp_mode!r}")
        if self.underlay not in UNDERLAYS:
            raise ValueError(f"underlay must be ipv4 or ipv6, got {self.underlay!r}")
        if self.backends not in BACKEND_FAMILIES:
            raise ValueError(f"backends must be ipv4 or mixed, got {self.backends!r}")
        for name, choice, allowed in (
            ("ingress", self.ingress, INGRESSES),
            ("egress", self.egress, EGRESSES),
            ("vxlan_server", self.vxlan_server, VXLAN_SERVERS),
        ):
            if choice not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {choice!r}")
        if self.ingress == "routed" and self.underlay != "ipv4":
            raise ValueError(
                f"underlay {self.underlay!r} is the outer family of GRE ingress: with ingress "
                "routed each VIP is routed to the balancers' addresses of its own family"
            )
        if self.cluster and self.underlay != "ipv4":
            raise ValueError(
                f"underlay {self.underlay!r} with cluster: the router takes each VIP's next hops "
                "from BGP, of the VIP's own family, and the outer family is theirs"
            )

    @property
    def lb_segment_ipv6(self) -> bool:
        """Whether the balancer segment (br2) carries IPv6: for the IPv6 underlay, for IPv6
        backends, for routed ingress or a cluster (the IPv6 VIP's next hops are the balancers'
        IPv6 addresses)."""
        return (
            self.underlay == "ipv6"
            or self.backends == "mixed"
            or self.ingress == "routed"
            or self.cluster
        )

    def backend_family(self, i: int) -> str:
        """Server i's family as a backend: ipv4, or with mixed backends ipv6 for the
        even-numbered servers (s2, s4, ...: i odd)."""
        return "ipv6" if self.backends == "mixed" and i % 2 == 1 else "ipv4"

    def backend_address(self, i: int) -> str:
        """Server i's address as a backend, of its family."""
        return server_address6(i) if self.backend_family(i) == "ipv6" else server_address(i)

    def lb_outer_address(self, i: int) -> str:
        """Balancer i's address as the router sends to it, of the underlay's family."""
        return lb_address6(i) if self.underlay == "ipv6" else lb_address(i)


def balancer_config(
    spec: TestbedSpec, servers: list[int] | None = None, vips: Sequence[str] = (VIP, VIP6)
) -> str:
    """The one configuration every balancer runs: the VIPs (default the IPv4 VIP and the IPv6
    VIP), each with the servers given (default all) as its backends, each by the address of
    its backend family (TestbedSpec.backend_address). Each balancer's lb_address_ipv6 is its
    own, given by RR_LB_ADDRESS_IPV6. Routed ingress: ``ingress = ["routed"]`` (GRE to the
    node is then not balanced); an egress other than gre: every VIP's ``encap`` (and ``vni``
    for vxlan and geneve). A cluster: a ``[bgp]`` section, each balancer announcing the VIPs
    to the router (AS 65001 to AS 65000 at ROUTER_LB_SIDE, hold time 3 s; the router id and
    the next hops are each balancer's own addresses). GRE ingress with GRE egress writes the
    file it always did."""
    chosen = range(spec.servers) if servers is None else servers
    backends = ", ".join(f'"{spec.backend_address(i)}"' for i in chosen)
    ingress = 'ingress = ["routed"]\n' if spec.ingress == "routed" else ""
    encap = f'encap = "{spec.egress}"\n' if spec.egress != "gre" else ""
    if spec.egress in ("vxlan", "geneve"):
        encap += f"vni = {TESTBED_VNI}\n"
    return (
        "# rusty-rail test bed: every balancer runs this file\n"
        'device = "eth0"\n'
        f'xdp_mode = "{spec.xdp_mode}"\n'
        "conntrack_size = 65536\n"
        + ingress
        + "".join(f'[[vips]]\naddress = "{vip}"\n{encap}backends = [{backends}]\n' for vip in vips)
        + (_BGP if spec.cluster else "")
    )


#: A cluster balancer's BGP speaker (docs/cluster.md, "The test bed's --cluster").
_BGP = (
    f"[bgp]\nasn = {LB_ASN}\n"
    f'peers = [{{ address = "{ROUTER_LB_SIDE}", asn = {ROUTER_ASN}, hold_time = {HOLD_TIME} }}]\n'
)
