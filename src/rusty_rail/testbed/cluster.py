"""The test bed's ``--cluster`` mode (docs/cluster.md, "The test bed's --cluster"): a real etcd
holding the balancers' one desired state, and BGP deciding the router's balancer set.

- **etcd** runs in its own namespace (``etcd``) on the balancer segment, at ETCD_ADDRESS,
  its data under the bed's run directory; every balancer runs with ``--store`` (store_url())
  and ``--node-name lbN``. Of the balancers started together exactly one seeds the store
  with the shared configuration file (a create-only transaction); the others take it.
- **BGP**: BIRD 2 in the router namespace (bgp.py) learns the VIPs' host routes from the
  balancers and installs them as ECMP routes, the kernel hashing by L4
  (``fib_multipath_hash_policy=1``, both families). Routed ingress: the kernel routes the
  VIPs by those routes. GRE ingress: the XDP router runs in FIB mode (router.py) and takes
  each flow's balancer from the same routes.
- **Announcements**: each balancer daemon announces the VIPs itself (its ``[bgp]`` section,
  spec.balancer_config: BIRD 2 as the daemon's child, one session to the router carrying
  both families). :func:`announce` and :func:`withdraw` are the daemon's undrain and drain
  through its API; ``Testbed.set_lbs`` in cluster mode is these two, and waits until the
  router's FIB agrees. A daemon killed outright takes its BIRD with it (PR_SET_PDEATHSIG):
  the session closes and the router drops it at once.

The BGP sessions and the etcd traffic share the balancers' eth0 with the GRE (or routed)
traffic: a balancer's XDP program passes them to its stack (counted as PASS_NOT_GRE, ARP as
PASS_NOT_IP), so the strict "a balancer sees nothing but GRE" checks of the other modes do
not hold here. IPv6 on the segment stays without neighbour discovery: the balancers get a
permanent neighbour entry for the router, as the router has for them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rusty_rail.api.client import ApiClient
from rusty_rail.api.credentials import local_token
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.testbed import bgp
from rusty_rail.testbed.lb_segment import ROUTER_LB_SIDE6, lb_address6
from rusty_rail.testbed.netns import Namespace
from rusty_rail.testbed.spec import (
    LB_NET,
    ROUTER_LB_SIDE,
    VIP,
    VIP6,
    VIP6_PREFIX,
    VIP_PREFIX,
    lb_address,
)

if TYPE_CHECKING:
    from rusty_rail.testbed.topology import Testbed

__all__ = [
    "ANNOUNCED",
    "ETCD_ADDRESS",
    "ETCD_PORT",
    "STORE_PREFIX",
    "announce",
    "balancer_store_args",
    "plumb_etcd",
    "quiet_router_neighbour",
    "set_backends",
    "set_lbs",
    "speaker_pid",
    "start_etcd",
    "start_router_bgp",
    "store_revisions",
    "store_url",
    "wait_store_revision",
    "withdraw",
]

ETCD_ADDRESS = f"{LB_NET}.5"
ETCD_PORT = 2379
STORE_PREFIX = "rusty-rail/testbed"
#: The VIPs the balancers announce (the test bed's configuration has these two).
ANNOUNCED = (VIP, VIP6)


def store_url() -> str:
    """The ``--store`` every balancer of a cluster bed runs with."""
    return f"etcd://{ETCD_ADDRESS}:{ETCD_PORT}/{STORE_PREFIX}"


def balancer_store_args(i: int) -> list[str]:
    """Balancer i's store options: the bed's etcd, node name lb1, lb2, ..."""
    return ["--store", store_url(), "--node-name", f"lb{i + 1}"]


def plumb_etcd(etcd: Namespace) -> None:
    """etcd's address on its eth0 (plugged into the balancer segment)."""
    etcd.ip("addr", "add", f"{ETCD_ADDRESS}/24", "dev", "eth0")


def start_etcd(bed: Testbed, etcd: Namespace) -> None:
    """etcd in ``etcd``, its data in the bed's run directory; returns once it serves."""
    binary = shutil.which("etcd")
    if binary is None:
        raise RuntimeError("--cluster needs etcd: run scripts/setup (Debian's etcd-server)")
    client = f"http://{ETCD_ADDRESS}:{ETCD_PORT}"
    peer = "http://127.0.0.1:2380"
    bed.start_process(
        "etcd",
        etcd,
        [
            binary, "--name", "testbed", "--data-dir", str(bed.workdir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"testbed={peer}",
        ],
    )  # fmt: skip
    bed.wait_log("etcd", "ready to serve client requests")


def start_router_bgp(bed: Testbed) -> None:
    """The router's ECMP hash policy (L4, both families) and its BIRD (bgp.router_config)."""
    router = bed.ns("rt")
    router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")
    router.sysctl("net.ipv6.fib_multipath_hash_policy", "1")
    config = bed.workdir / "bird-rt.conf"
    config.write_text(
        bgp.router_config(ROUTER_LB_SIDE, f"{LB_NET}.0/24", {4: [VIP_PREFIX], 6: [VIP6_PREFIX]})
    )
    bed.start_process("bird-rt", router, bgp.bird_command(config, bed.workdir, "bird-rt"))
    bed.wait_log("bird-rt", "Started")


def quiet_router_neighbour(bed: Testbed) -> None:
    """Each balancer's permanent IPv6 neighbour entry for the router (its BGP peer)."""
    router_mac = bed.ns("rt").mac("eth0")
    for lb in bed.lbs:
        lb.ip("-6", "neigh", "replace", ROUTER_LB_SIDE6, "lladdr", router_mac, "dev", "eth0",
              "nud", "permanent")  # fmt: skip


def _node_api(bed: Testbed, i: int, path: str) -> None:
    """POST ``path`` to balancer i's API (in its namespace, with the host's local token)."""
    with in_netns(bed.lbs[i].name):
        ApiClient(token=local_token()).post(path, {})


def announce(bed: Testbed, i: int) -> None:
    """Balancer i announces the test bed's VIPs to the router: its daemon undrained
    (``POST /v1/node/undrain``).

    The daemon's speaker holds one eBGP session, AS 65001 to the router's AS 65000 at
    ROUTER_LB_SIDE (hold time 3 s, keepalive 1 s), carrying a host route for each VIP of
    ANNOUNCED (/32, /128) with next hop lb_address(i) and lb_address6(i). Returns once the
    daemon has taken it, not once the routes are in the router's FIB (set_lbs waits for
    that). Announcing twice is one announcement."""
    _node_api(bed, i, "/v1/node/undrain")


def withdraw(bed: Testbed, i: int) -> None:
    """Balancer i stops announcing: its daemon drained (``POST /v1/node/drain``), which
    withdraws its routes on the session it keeps; the router drops its next hops at once.

    On return the daemon has withdrawn; its data plane is untouched (it keeps forwarding
    what still reaches it). Withdrawing twice is one withdrawal."""
    _node_api(bed, i, "/v1/node/drain")


def speaker_pid(bed: Testbed, i: int) -> int:
    """The pid of balancer i's BGP speaker: the BIRD its daemon runs as a child."""
    daemon = bed.pids[f"lb{i + 1}"]
    for task in Path(f"/proc/{daemon}/task").iterdir():
        for child in (task / "children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().strip() == "bird":
                return int(child)
    raise LookupError(f"lb{i + 1} (pid {daemon}) runs no BIRD")


def set_lbs(bed: Testbed, lbs: list[int], timeout: float = 15) -> float:
    """Make ``lbs`` (indices) the balancers that announce, and wait until the router's routes
    to both VIPs have exactly their next hops; return the seconds from the first withdrawal
    or announcement until then."""
    start = time.monotonic()
    for i in range(bed.spec.lbs):
        if i not in lbs:
            withdraw(bed, i)
    for i in lbs:
        announce(bed, i)
    router = bed.ns("rt")
    bgp.wait_next_hops(router, VIP, {lb_address(i) for i in lbs}, timeout)
    bgp.wait_next_hops(router, VIP6, {lb_address6(i) for i in lbs}, timeout)
    return time.monotonic() - start


def store_revisions(bed: Testbed) -> list[int]:
    """The store revision each balancer has applied (its /healthz), in order."""
    revisions = []
    for lb in bed.lbs:
        with in_netns(lb.name):
            revisions.append(int(ApiClient().get("/healthz")["store"]["revision"]))
    return revisions


def wait_store_revision(bed: Testbed, revision: int, timeout: float = 15) -> float:
    """Wait until every balancer has applied store revision ``revision`` (or a later one);
    return the seconds it took. TimeoutError naming each node's revision after ``timeout``."""
    start = time.monotonic()
    while min(revisions := store_revisions(bed)) < revision:
        if time.monotonic() - start > timeout:
            raise TimeoutError(
                f"the balancers applied store revisions {revisions}, not {revision}, "
                f"after {timeout} s"
            )
        time.sleep(0.02)
    return time.monotonic() - start


def set_backends(bed: Testbed, servers: list[int], timeout: float = 15) -> None:
    """Every VIP's backends become ``servers`` (indices; a subset of the current ones): one
    ``PUT /v1/config`` through lb1's API, then wait until every balancer has applied it."""
    wanted = {bed.spec.backend_address(i) for i in servers}
    with in_netns(bed.lbs[0].name):
        client = ApiClient(token=local_token())
        config = client.get("/v1/config")
        for vip in config["vips"]:
            vip["backends"] = [b for b in vip["backends"] if b["address"] in wanted]
        client.put("/v1/config", config)
    wait_store_revision(bed, store_revisions(bed)[0], timeout)
