"""The test bed's router in routed mode: plain kernel routing, no BPF. The VIP prefixes are
routed to the balancers as next hops (ECMP, an L4 multipath hash:
``net.ipv4.fib_multipath_hash_policy=1`` and its IPv6 twin), each family to the balancers'
addresses of that family, as a real router does when the balancers announce the VIPs.

The next hops are a *resilient* nexthop group (``ip nexthop add id G group 1/2 type resilient
buckets 64``), not a plain multipath route. A plain multipath route is hash-threshold: the
hash space is cut into one range per next hop, and removing one next hop re-cuts every range,
moving flows between the survivors too (measured here, Linux 6.18, 3 next hops, 200 flows:
removing one moved 29 of the 129 flows of the two survivors; the resilient group moved none).
A resilient group maps the hash to one of 64 buckets, each bucket to a next hop; removing a
next hop hands only its buckets to the others. The group's ``idle_timer 0`` lets a returning
next hop take buckets back at once (from the fullest next hops, not necessarily the buckets it
had): a flow so moved reaches a balancer that has not seen it, which is harmless while the
backend set is the same (every balancer has the same Maglev tables) and is why the demo keeps
its long-lived connections talking before it changes the backends.

Which hash: with the L4 policy the kernel takes a packet's L4 hash when it carries one
(``fib_multipath_hash``: on a real router the NIC's RSS hash of the 5-tuple, or its own hash of
the 5-tuple when there is none). In the test bed a veth carries the skb across namespaces, and
with it the hash the client's TCP stack gave the connection (``sk_txhash``, random per
connection): a connection stays on one balancer, but ``choose`` (``ip route get``, which
hashes the 5-tuple) cannot say which; the test bed asks the balancers' connection tables
instead (Testbed.lb_of). The clients set ``net.core.txrehash=0`` so that a retransmission
timeout does not re-roll the hash and move the connection.

A balancer failure is its next hop taken out of the group (``set_lbs``); no balancer at all is
a blackhole route. What the router sent to each balancer is counted by nftables
(``rt ip nexthop`` / ``rt ip6 nexthop`` in the forward hook, one named counter per next hop).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from ipaddress import ip_address

from rusty_rail.model.flowhash import Flow
from rusty_rail.testbed.netns import Namespace

__all__ = ["BUCKETS", "KernelRouter"]

#: The buckets of each resilient nexthop group.
BUCKETS = 64
#: The nftables table holding the per-next-hop counters.
NFT_TABLE = "rrtb"
_FAMILIES = {4: ("ip", 100, 1), 6: ("ip6", 106, 51)}  # nft family, group id, first nexthop id


class KernelRouter:
    """The kernel's ECMP over the balancers, in the router namespace ``namespace``.

    ``lbs`` maps an address family (4, 6) to the balancers' addresses of that family, in
    balancer order; ``vips`` maps it to the VIP prefixes of that family. Stateless apart from
    the namespace: any process can make one for a running test bed (``setup`` only once)."""

    def __init__(
        self,
        namespace: Namespace,
        lbs: dict[int, Sequence[str]],
        vips: dict[int, Sequence[str]],
        device: str = "eth0",
    ) -> None:
        self.namespace = namespace
        self.lbs = {family: list(addresses) for family, addresses in lbs.items()}
        self.vips = {family: list(prefixes) for family, prefixes in vips.items()}
        self.device = device

    def _nexthop_id(self, family: int, i: int) -> int:
        return _FAMILIES[family][2] + i

    def _group_id(self, family: int) -> int:
        return _FAMILIES[family][1]

    def setup(self, *, nexthops: bool = True) -> None:
        """The hash policy, one nexthop object per balancer, the counters; no group yet
        (``set_lbs`` makes it). Without ``nexthops`` (a cluster bed, whose routes BGP
        installs) the hash policy and the counters only."""
        self.namespace.sysctl("net.ipv4.fib_multipath_hash_policy", "1")
        self.namespace.sysctl("net.ipv6.fib_multipath_hash_policy", "1")
        counters, rules = [], []
        for family, addresses in self.lbs.items():
            nft_family = _FAMILIES[family][0]
            for i, address in enumerate(addresses):
                if nexthops:
                    self.namespace.ip(
                        "nexthop", "add", "id", str(self._nexthop_id(family, i)),
                        "via", address, "dev", self.device,
                    )  # fmt: skip
                name = _counter_name(family, i)
                counters.append(f"counter {name} {{\n}}\n")
                rules.append(f'rt {nft_family} nexthop {address} counter name "{name}"\n')
        script = (
            f"table inet {NFT_TABLE} {{\n"
            + "".join(counters)
            + "chain forward {\ntype filter hook forward priority 0; policy accept;\n"
            + "".join(rules)
            + "}\n}\n"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".nft") as file:
            file.write(script)
            file.flush()
            self.namespace.exec("nft", "-f", file.name)

    def set_lbs(self, lbs: Sequence[int]) -> None:
        """Route the VIPs to the balancers ``lbs`` (indices): the group of each family
        replaced in place (the survivors keep their buckets), or a blackhole for none."""
        for family in self.lbs:
            group = str(self._group_id(family))
            flag = "-4" if family == 4 else "-6"
            if not lbs:
                for prefix in self.vips.get(family, ()):
                    self.namespace.ip(flag, "route", "replace", "blackhole", prefix)
                self.namespace.ip("nexthop", "del", "id", group, check=False)
                continue
            members = "/".join(str(self._nexthop_id(family, i)) for i in lbs)
            exists = bool(self.namespace.ip("nexthop", "show", "id", group, check=False).strip())
            self.namespace.ip(
                "nexthop", "replace" if exists else "add", "id", group, "group", members,
                "type", "resilient", "buckets", str(BUCKETS), "idle_timer", "0",
            )  # fmt: skip
            for prefix in self.vips.get(family, ()):
                self.namespace.ip(flag, "route", "replace", prefix, "nhid", group)

    def choose(self, flow: Flow, iif: str = "eth1") -> int | None:
        """The balancer (index) the kernel sends ``flow`` to, as a packet without an L4 hash of
        its own arriving on ``iif``: ``ip route get`` with the flow's ports (the 5-tuple
        hash). None when the route has no balancer."""
        family = 6 if len(flow.dst) == 16 else 4
        out = self.namespace.ip(
            f"-{family}", "-j", "route", "get", str(ip_address(flow.dst)),
            "from", str(ip_address(flow.src)),
            "iif", iif, "ipproto", "tcp" if flow.proto == 6 else "udp",
            "sport", str(flow.sport), "dport", str(flow.dport),
            check=False,
        )  # fmt: skip
        routes = json.loads(out) if out.strip() else []
        gateway = routes[0].get("gateway") if routes else None
        addresses = self.lbs.get(family, [])
        return addresses.index(gateway) if gateway in addresses else None

    def lb_counters(self) -> dict[str, dict[str, int]]:
        """Per balancer address (both families): packets and bytes (IP lengths) the router
        forwarded to it."""
        out = self.namespace.exec("nft", "-j", "list", "counters", "table", "inet", NFT_TABLE)
        found: dict[str, dict[str, int]] = {}
        for item in json.loads(out)["nftables"]:
            counter = item.get("counter")
            if counter is None:
                continue
            family, i = _parse_counter_name(counter["name"])
            found[self.lbs[family][i]] = {
                "packets": int(counter["packets"]),
                "bytes": int(counter["bytes"]),
            }
        return found


def _counter_name(family: int, i: int) -> str:
    return f"lb{i + 1}v{family}"


def _parse_counter_name(name: str) -> tuple[int, int]:
    index, family = name.removeprefix("lb").split("v")
    return int(family), int(index) - 1
