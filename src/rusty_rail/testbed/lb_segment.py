"""The balancer segment's IPv6 (br2, 2001:2:0:3::/64), for the IPv6 underlay and for IPv6
backends: its addresses, and how it is kept quiet so that a balancer still sees nothing but
GRE (topology.py's docstring says why that matters).

Quiet by construction, not by filtering what a balancer counts:

- every interface on br2 gets its IPv6 address without duplicate address detection (``nodad``),
  no link-local address (``addrgenmode none``), no router solicitations and no router
  advertisements accepted;
- every IPv6 neighbour a host on br2 sends to is a permanent entry (the router's entries for
  the balancers, the balancers' for the servers), so no neighbour solicitation is sent and no
  advertisement comes back;
- what multicast the kernel still sends (MLD reports from the unspecified address, when an
  address joins its solicited-node group) is not flooded to a balancer's bridge port: br2's
  multicast snooping is off (so no group is "registered" to a port) and the balancers' ports
  have mcast_flood off. Broadcast (ARP, for the IPv4 side) is untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rusty_rail.testbed.netns import Namespace

LB_NET6 = "2001:2:0:3"
LB_PREFIX6 = f"{LB_NET6}::/64"
ROUTER_LB_SIDE6 = f"{LB_NET6}::1"


def lb_address6(i: int) -> str:
    """Balancer i's IPv6 address on br2 (its lb_address_ipv6)."""
    return f"{LB_NET6}::{11 + i}"


def server_address6(i: int) -> str:
    """Server i's IPv6 address on br2 (its address as an IPv6 backend)."""
    return f"{LB_NET6}::{21 + i}"


def quiet_ipv6(namespace: Namespace, ifname: str, address: str) -> None:
    """IPv6 on ``ifname`` with ``address`` (/64) and nothing else: no link-local address, no
    duplicate address detection, no router solicitation or advertisement."""
    namespace.ip("link", "set", ifname, "addrgenmode", "none")
    for key, value in (("accept_ra", "0"), ("router_solicitations", "0"), ("disable_ipv6", "0")):
        namespace.sysctl(f"net.ipv6.conf.{ifname}.{key}", value)
    namespace.ip("-6", "addr", "add", f"{address}/64", "dev", ifname, "nodad")


def static_neighbours(namespace: Namespace, ifname: str, neighbours: Mapping[str, str]) -> None:
    """Permanent neighbour entries (IPv6 address -> MAC) on ``ifname``: never solicited."""
    for address, mac in neighbours.items():
        namespace.ip(
            "-6", "neigh", "replace", address, "lladdr", mac, "dev", ifname, "nud", "permanent"
        )


def no_multicast_to(switch: Namespace, bridge: str, ports: Sequence[str]) -> None:
    """No multicast frame of ``bridge`` reaches ``ports`` (unicast and broadcast still do)."""
    switch.ip("link", "set", bridge, "type", "bridge", "mcast_snooping", "0")
    for port in ports:
        switch.exec("bridge", "link", "set", "dev", port, "mcast_flood", "off")
