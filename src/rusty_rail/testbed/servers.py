"""The test bed's servers: their addresses and VIPs (every server holds both VIPs on lo, ARP
quiet about them), and what takes the balancers' packets off the wire, by the egress method
(TestbedSpec.egress):

- ``gre``, ``ipip``, ``geneve``: `rusty-rail decap` on eth0 with that method (``gre``: decap's
  default methods, gre and ipip, as before the methods existed), the balancer segment's
  prefixes allowed;
- ``vxlan``: the kernel's VXLAN device (docs/decap.md, "Kernel VXLAN instead of rusty-rail
  decap"): ``vxlan0`` for VNI TESTBED_VNI on UDP 4789 with the server's IPv4 address as its
  local one, its MAC the inner destination the balancers write (TUNNEL_INNER_DST_MAC), IPv6 on
  it without any address so that the IPv6 VIP's packets are taken too; a server that is an
  IPv6 backend gets ``vxlan6`` beside it (local its IPv6 address, ``udp6zerocsumrx``: the
  balancers send a zero UDP checksum). With ``vxlan_server = "decap"``, `rusty-rail decap
  --methods vxlan --vni TESTBED_VNI` instead;
- ``route``: nothing: the packet to the VIP arrives on eth0 with the server's MAC (direct
  routing), and the VIP on lo takes it.
"""

from __future__ import annotations

from pathlib import Path

from rusty_rail.decap.agent import decap_attach
from rusty_rail.testbed.lb_segment import LB_PREFIX6, quiet_ipv6, server_address6
from rusty_rail.testbed.netns import Namespace
from rusty_rail.testbed.spec import (
    LB_NET,
    ROUTER_LB_SIDE,
    ROUTER_RETURN_SIDE6,
    TESTBED_VNI,
    VIP,
    VIP6,
    TestbedSpec,
    server_address,
    server_return_address6,
)
from rusty_rail.wire.constants import TUNNEL_INNER_DST_MAC

__all__ = ["VXLAN_PORT", "ipv6_on", "plumb_server", "unwrap_on_server"]

#: The IANA VXLAN port; a kernel device listens on 8472 unless told.
VXLAN_PORT = 4789


def ipv6_on(namespace: Namespace, ifname: str, address: str | None) -> None:
    """IPv6 on ``ifname``: with ``address`` (a /64, no duplicate address detection), or with
    no address at all, not even a link-local one (it receives, and says nothing)."""
    if address is None:
        namespace.ip("link", "set", ifname, "addrgenmode", "none")
    namespace.sysctl(f"net.ipv6.conf.{ifname}.accept_ra", "0")
    namespace.sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", "0")
    if address is not None:
        namespace.ip("-6", "addr", "add", f"{address}/64", "dev", ifname, "nodad")


def plumb_server(server: Namespace, i: int, spec: TestbedSpec) -> None:
    """Server i's addresses, VIPs and routes (eth0 on br2, eth1 on br3 plugged already):
    IPv4 on eth0, both VIPs on lo, IPv6 replies out of eth1, ARP quiet about the VIPs,
    reverse-path filtering off."""
    server.ip("addr", "add", f"{server_address(i)}/24", "dev", "eth0")
    server.ip("addr", "add", f"{VIP}/32", "dev", "lo")
    server.ip("route", "add", "default", "via", ROUTER_LB_SIDE)
    # IPv6: the VIP on lo, the packets to it in on eth0, the replies out of eth1.
    server.sysctl("net.ipv6.conf.lo.disable_ipv6", "0")
    server.ip("-6", "addr", "add", f"{VIP6}/128", "dev", "lo")
    if spec.lb_segment_ipv6:
        quiet_ipv6(server, "eth0", server_address6(i))
    else:
        ipv6_on(server, "eth0", None)
    ipv6_on(server, "eth1", server_return_address6(i))
    server.ip("-6", "route", "add", "default", "via", ROUTER_RETURN_SIDE6)
    for key in ("all", "default", "eth0", "lo"):
        server.sysctl(f"net.ipv4.conf.{key}.rp_filter", "0")
    server.sysctl("net.ipv4.conf.all.arp_ignore", "1")
    server.sysctl("net.ipv4.conf.all.arp_announce", "2")


def unwrap_on_server(server: Namespace, i: int, spec: TestbedSpec, pin_root: Path) -> str:
    """Set up what takes server i's packets from the balancers, by ``spec.egress``; returns
    what it is (``decap``, ``kernel-vxlan`` or ``none``)."""
    if spec.egress == "route":
        return "none"
    if spec.egress == "vxlan" and spec.vxlan_server == "kernel":
        _kernel_vxlan(server, "vxlan0", server_address(i))
        if spec.backend_family(i) == "ipv6":
            _kernel_vxlan(server, "vxlan6", server_address6(i), "udp6zerocsumrx")
        return "kernel-vxlan"
    methods = None if spec.egress == "gre" else [spec.egress]
    vnis = [TESTBED_VNI] if spec.egress in ("vxlan", "geneve") else None
    allowed = [f"{LB_NET}.0/24", *([LB_PREFIX6] if spec.lb_segment_ipv6 else [])]
    decap_attach(
        "eth0",
        allowed,
        spec.xdp_mode,  # type: ignore[arg-type]
        methods=methods,
        vnis=vnis,
        netns=server.name,
        pin_root=pin_root,
    )
    return "decap"


def _kernel_vxlan(server: Namespace, ifname: str, local: str, *options: str) -> None:
    """A receive-only VXLAN device (no remote, no learning) for TESTBED_VNI on ``local``."""
    server.ip(
        "link", "add", ifname, "type", "vxlan", "id", str(TESTBED_VNI),
        "dstport", str(VXLAN_PORT), "local", local, "nolearning", *options,
    )  # fmt: skip
    mac = ":".join(f"{byte:02x}" for byte in TUNNEL_INNER_DST_MAC)
    server.ip("link", "set", ifname, "address", mac)
    # The inner IPv6 packets to the VIP arrive here too: IPv6 on, but no address at all.
    ipv6_on(server, ifname, None)
    server.sysctl(f"net.ipv4.conf.{ifname}.rp_filter", "0")
    server.ip("link", "set", ifname, "up")
