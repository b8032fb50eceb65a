"""The seed README's deployment in network namespaces: clients, a router that wraps VIP traffic
in GRE and spreads flows over the balancers (ECMP), balancers running the real daemon with one
shared configuration, and servers that unwrap GRE and answer the clients directly (DSR).

```
 c1..cN ──┐                      ┌── lb1..lbL   (rusty-rail run, XDP balancer)
          ├─ br1 ── router ── br2 ┤
 clients  ┘  198.18.1.0/24   198.18.0.0/24   └── s1..sS  (rusty-rail decap, VIPs on lo, HTTP + echo)
             2001:2:0:1::/64      │                 │
                                  └──── br3 ────────┘  2001:2:0:2::/64, the servers' IPv6 replies
```

Dual stack: the clients reach the IPv4 VIP (VIP, in VIP_PREFIX) and the IPv6 VIP (VIP6, in
VIP6_PREFIX); the router wraps both in GRE (0x0800 or 0x86DD) towards the balancers.

The underlay (``TestbedSpec.underlay``) is the outer family between the router and the
balancers. ``ipv4`` (the default): outer IPv4 GRE, and the balancer segment (br2) is IPv4
only: the servers answer IPv6 over br3, so no neighbour discovery or MLD reaches a balancer
(the DSR checks count every packet a balancer sees). A server's eth0 then takes IPv6 (the
decapsulated inner packets arrive there) but has no IPv6 address, not even a link-local one,
so it says nothing. ``ipv6``: outer IPv6 GRE from the router's 2001:2:0:3::1 to each
balancer's lb_address_ipv6 (RR_LB_ADDRESS_IPV6) in 2001:2:0:3::/64 on br2; the servers' decap
takes that prefix beside 198.18.0.0/24.

The backends (``TestbedSpec.backends``): ``ipv4``, every server by its IPv4 address (the
default), or ``mixed``, the odd-numbered servers (s1, s3, ...) by their IPv4 address and the
even-numbered ones (s2, ...) by their IPv6 address on br2, behind both VIPs: an IPv4 VIP with
IPv6 backends, an IPv6 VIP with backends of both families, the balancer's outer header by the
backend's family. Either of ``underlay ipv6`` or ``mixed`` gives br2 its IPv6 prefix.

br2 with IPv6 must still show a balancer nothing but GRE, so it is kept quiet by
construction (lb_segment.py): every IPv6 neighbour a host on br2 sends to is a static
(permanent) entry, so no neighbour solicitation or advertisement is ever needed; addresses
are added without duplicate address detection and no interface there has a link-local
address or sends router solicitations; what multicast remains (MLD reports, sent from the
unspecified address) is not flooded to the balancers' bridge ports (br2's multicast snooping
off, mcast_flood off on those ports). The DSR checks stay as strict as with the IPv4
underlay: every non-GRE packet a balancer sees is counted against it.

The methods (``TestbedSpec.ingress``, ``egress``): with ``ingress = "gre"`` the router is the
XDP GRE/ECMP program above (router.py); with ``"routed"`` it is the kernel's ECMP over the
balancers' addresses of each family (routed.py, no BPF), the balancers run with ``ingress =
["routed"]`` and br2 carries IPv6 (the IPv6 VIP's next hops). ``egress`` is every VIP's
``encap``; servers.py sets up what takes each method off on the servers (decap, a kernel VXLAN
device, or nothing for ``route``). The DSR checks hold for every combination: a balancer sees
nothing but what the router sent it.

With ``cluster`` (cluster.py, docs/cluster.md) an etcd namespace joins br2 and holds the
balancers' one desired state, and the router's balancer set is what BIRD learns from the
balancers by BGP: the XDP router in FIB mode, or the kernel's routes for routed ingress.

All bridges live in one "switch" namespace. Every bridge port that XDP frames are sent into
carries an XDP_PASS program (a veth drops XDP_TX/XDP_REDIRECT frames otherwise). All names start
with the run's unique tag, and ``down`` removes every namespace, process and pin of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rusty_rail.dataplane.libbpf import (
    BPFFS,
    BpfObject,
    Link,
    attach_xdp,
    bpf_object_path,
    ensure_bpffs,
    remove_pin_dir,
)
from rusty_rail.dataplane.netlink import in_netns
from rusty_rail.model.flowhash import Flow
from rusty_rail.testbed import cluster
from rusty_rail.testbed.lb_segment import (
    ROUTER_LB_SIDE6,
    lb_address6,
    no_multicast_to,
    quiet_ipv6,
    server_address6,
    static_neighbours,
)
from rusty_rail.testbed.netns import Namespace, Netns, leftover_namespaces, run_id
from rusty_rail.testbed.processes import alive, terminate_all
from rusty_rail.testbed.readings import BalancerReadings
from rusty_rail.testbed.routed import KernelRouter
from rusty_rail.testbed.router import Router, choose_lb
from rusty_rail.testbed.servers import ipv6_on, plumb_server, unwrap_on_server
from rusty_rail.testbed.spec import (
    BACKEND_FAMILIES,
    CLIENT_NET,
    CLIENT_NET6,
    ECHO_PORT,
    HTTP_PORT,
    LB_NET,
    RETURN_NET6,
    ROUTER_CLIENT_SIDE,
    ROUTER_CLIENT_SIDE6,
    ROUTER_LB_SIDE,
    ROUTER_RETURN_SIDE6,
    UNDERLAYS,
    VIP,
    VIP6,
    VIP6_PREFIX,
    VIP_PREFIX,
    VIPS,
    TestbedSpec,
    balancer_config,
    client_address,
    client_address6,
    lb_address,
    server_address,
    server_return_address6,
)

__all__ = [
    "BACKEND_FAMILIES",
    "CLIENT_NET",
    "CLIENT_NET6",
    "ECHO_PORT",
    "HTTP_PORT",
    "LB_NET",
    "RETURN_NET6",
    "ROUTER_CLIENT_SIDE",
    "ROUTER_CLIENT_SIDE6",
    "ROUTER_LB_SIDE",
    "ROUTER_RETURN_SIDE6",
    "STATE_DIR",
    "UNDERLAYS",
    "VIP",
    "VIP6",
    "VIP6_PREFIX",
    "VIPS",
    "VIP_PREFIX",
    "Testbed",
    "TestbedSpec",
    "balancer_config",
    "client_address",
    "client_address6",
    "down_all",
    "lb_address",
    "running_testbeds",
    "server_address",
    "server_return_address6",
]

#: Where `rusty-rail testbed up` keeps what `status` and `down` need (one file per run).
STATE_DIR = Path("/run/rusty-rail/testbed")


@dataclass
class Testbed(BalancerReadings):
    """A running test bed. Build it with :func:`up` (or ``with Testbed.up() as bed``)."""

    __test__ = False  # not a pytest test class, despite the name

    spec: TestbedSpec
    tag: str
    workdir: Path
    pin_root: Path
    namespaces: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    router: Router | None = field(default=None, repr=False)
    links: list[Link] = field(default_factory=list, repr=False)

    # --- naming ---------------------------------------------------------------------------

    def ns(self, role: str) -> Namespace:
        return Namespace(f"rrtb-{self.tag}-{role}")

    @property
    def clients(self) -> list[Namespace]:
        return [self.ns(f"c{i + 1}") for i in range(self.spec.clients)]

    @property
    def lbs(self) -> list[Namespace]:
        return [self.ns(f"lb{i + 1}") for i in range(self.spec.lbs)]

    @property
    def servers(self) -> list[Namespace]:
        return [self.ns(f"s{i + 1}") for i in range(self.spec.servers)]

    @property
    def config_path(self) -> Path:
        return self.workdir / "balancer.toml"

    def lb_pin_root(self, i: int) -> Path:
        return self.pin_root / f"lb{i + 1}"

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # --- building -------------------------------------------------------------------------

    @classmethod
    def up(cls, spec: TestbedSpec | None = None, *, tag: str | None = None) -> Testbed:
        """Build and start everything; on any failure, tear down what was built and raise."""
        spec = spec or TestbedSpec()
        tag = tag or run_id()
        ensure_bpffs()
        bed = cls(spec, tag, STATE_DIR / tag, BPFFS / "rusty_rail" / f"testbed-{tag}")
        try:
            bed._build()
        except BaseException:
            bed.down()
            raise
        return bed

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _namespace(self, net: Netns, role: str) -> Namespace:
        namespace = net.namespace(role)
        self.namespaces.append(namespace.name)
        # IPv6 is off unless an interface is given it (_ipv6): anywhere else it would only
        # add neighbour discovery and MLD chatter, to the balancers' counters among others,
        # which the DSR checks read.
        for key in ("all", "default"):
            namespace.sysctl(f"net.ipv6.conf.{key}.disable_ipv6", "1")
        return namespace

    def _build(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pin_root.mkdir(parents=True, exist_ok=True)
        self.save()
        net = Netns(run_tag=self.tag)
        switch = self._namespace(net, "sw")
        router = self._namespace(net, "rt")
        for bridge in ("br1", "br2", "br3"):
            switch.ip("link", "add", bridge, "type", "bridge")
            switch.ip("link", "set", bridge, "up")
        ports: list[str] = []

        def plug(namespace: Namespace, ifname: str, port: str, bridge: str) -> None:
            net.veth(namespace, ifname, switch, port)
            switch.ip("link", "set", port, "master", bridge)
            ports.append(port)

        plug(router, "eth1", "p-rt1", "br1")
        plug(router, "eth0", "p-rt0", "br2")
        plug(router, "eth2", "p-rt2", "br3")
        router.ip("addr", "add", f"{ROUTER_CLIENT_SIDE}/24", "dev", "eth1")
        router.ip("addr", "add", f"{ROUTER_LB_SIDE}/24", "dev", "eth0")
        ipv6_on(router, "eth1", ROUTER_CLIENT_SIDE6)
        ipv6_on(router, "eth2", ROUTER_RETURN_SIDE6)
        if self.spec.lb_segment_ipv6:
            quiet_ipv6(router, "eth0", ROUTER_LB_SIDE6)
        router.sysctl("net.ipv4.ip_forward", "1")
        router.sysctl("net.ipv6.conf.all.forwarding", "1")
        for key in ("all", "default", "eth0", "eth1"):
            router.sysctl(f"net.ipv4.conf.{key}.rp_filter", "0")

        for i in range(self.spec.clients):
            client = self._namespace(net, f"c{i + 1}")
            plug(client, "eth0", f"p-c{i + 1}", "br1")
            client.ip("addr", "add", f"{client_address(i)}/24", "dev", "eth0")
            client.ip("route", "add", "default", "via", ROUTER_CLIENT_SIDE)
            ipv6_on(client, "eth0", client_address6(i))
            client.ip("-6", "route", "add", "default", "via", ROUTER_CLIENT_SIDE6)
            # A veth hands its peer packets whose TCP/UDP checksum is left for "hardware" to
            # fill in; the router's XDP program wraps them in GRE as they are, and nothing
            # downstream would ever fill it in. The seed README turned offloads off for the same
            # reason (netmap); real clients send complete checksums.
            client.exec("ethtool", "-K", "eth0", "tx", "off")
            # A connection's packets carry its socket's hash, which the routed router's ECMP
            # uses (routed.py); it must not be re-rolled after a retransmission timeout.
            client.sysctl("net.core.txrehash", "0")

        self.config_path.write_text(balancer_config(self.spec))
        for i in range(self.spec.lbs):
            lb = self._namespace(net, f"lb{i + 1}")
            plug(lb, "eth0", f"p-lb{i + 1}", "br2")
            lb.ip("addr", "add", f"{lb_address(i)}/24", "dev", "eth0")
            lb.ip("route", "add", "default", "via", ROUTER_LB_SIDE)
            if self.spec.lb_segment_ipv6:
                quiet_ipv6(lb, "eth0", lb_address6(i))
        if self.spec.cluster:
            plug(self._namespace(net, "etcd"), "eth0", "p-etcd", "br2")
            cluster.plumb_etcd(self.ns("etcd"))

        for i in range(self.spec.servers):
            server = self._namespace(net, f"s{i + 1}")
            plug(server, "eth0", f"p-s{i + 1}", "br2")
            plug(server, "eth1", f"p-s{i + 1}v6", "br3")
            plumb_server(server, i, self.spec)
        self.save()
        if self.spec.lb_segment_ipv6:
            self._quiet_lb_segment(switch, router)

        self._attach_pass(switch, ports)
        if self.spec.cluster:
            cluster.start_etcd(self, self.ns("etcd"))
        for i, server in enumerate(self.servers):
            unwrap_on_server(server, i, self.spec, self.pin_root / f"s{i + 1}")
            self.start_process(
                f"s{i + 1}",
                server,
                [
                    sys.executable,
                    "-m",
                    "rusty_rail.testbed.server",
                    "--name",
                    f"s{i + 1}",
                    "--http-port",
                    str(HTTP_PORT),
                    "--echo-port",
                    str(ECHO_PORT),
                ],
            )
        for i, lb in enumerate(self.lbs):
            own = {"RR_LB_ADDRESS_IPV6": lb_address6(i)} if self.spec.lb_segment_ipv6 else {}
            self.start_process(
                f"lb{i + 1}",
                lb,
                [
                    sys.executable,
                    "-m",
                    "rusty_rail",
                    "run",
                    "--config",
                    str(self.config_path),
                    "--pin-root",
                    str(self.lb_pin_root(i)),
                    # Each balancer keeps its own API state, as separate hosts would.
                    "--state-file",
                    str(self.workdir / f"lb{i + 1}.state.json"),
                    "--next-hop-timeout",
                    "5",
                    *(cluster.balancer_store_args(i) if self.spec.cluster else []),
                ],
                own,
            )
        for i in range(self.spec.servers):
            self.wait_log(f"s{i + 1}", "server s")
        for i in range(self.spec.lbs):
            self.wait_log(f"lb{i + 1}", "balancer xdp_balancer on eth0")

        if self.spec.cluster:
            cluster.start_router_bgp(self)
        if self.spec.ingress == "routed":
            self.kernel_router.setup(nexthops=not self.spec.cluster)
        else:
            source = ROUTER_LB_SIDE6 if self.spec.underlay == "ipv6" else ROUTER_LB_SIDE
            self.router = Router.load(
                source=source,
                vips=[VIP_PREFIX, VIP6_PREFIX],
                netns=router.name,
                source6=ROUTER_LB_SIDE6 if self.spec.cluster else None,
            )
            if self.spec.cluster:
                self.router.count_lbs(
                    [f(i) for f in (lb_address, lb_address6) for i in range(self.spec.lbs)]
                )
            self.router.attach("eth1", self.spec.xdp_mode)  # type: ignore[arg-type]
        self.set_lbs(list(range(self.spec.lbs)))
        self.save()

    def _quiet_lb_segment(self, switch: Namespace, router: Namespace) -> None:
        """br2 with IPv6, showing the balancers nothing but GRE (lb_segment.py): permanent
        neighbours where IPv6 is sent, no multicast to the balancers' ports."""
        static_neighbours(
            router, "eth0", {lb_address6(i): lb.mac("eth0") for i, lb in enumerate(self.lbs)}
        )
        servers = {server_address6(i): s.mac("eth0") for i, s in enumerate(self.servers)}
        for lb in self.lbs:
            static_neighbours(lb, "eth0", servers)
        no_multicast_to(switch, "br2", [f"p-lb{i + 1}" for i in range(self.spec.lbs)])
        if self.spec.cluster:
            cluster.quiet_router_neighbour(self)

    def _attach_pass(self, switch: Namespace, ports: list[str]) -> None:
        with BpfObject.open(bpf_object_path("testbed_pass")) as obj:
            obj.load()
            program = obj.program("xdp_pass")
            with in_netns(switch.name):
                for port in ports:
                    self.links.append(
                        attach_xdp(switch.ifindex(port), program, self.spec.xdp_mode)  # type: ignore[arg-type]
                    )
                    self.links[-1].pin(self.pin_root / f"pass-{port}")

    def start_process(
        self,
        name: str,
        namespace: Namespace,
        command: list[str],
        env_add: dict[str, str] | None = None,
    ) -> None:
        """Start a process in ``namespace``'s network (not its mounts: pins stay visible), with
        none of this process's RR_* variables but those of ``env_add``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RR_")} | (env_add or {})
        with self.log(name).open("w") as log:
            process = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{namespace.name}", *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.pids[name] = process.pid
        self.save()

    def wait_log(self, name: str, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            content = self.log(name).read_text() if self.log(name).exists() else ""
            if text in content:
                return content
            if not alive(self.pids.get(name)):
                raise RuntimeError(f"{name} exited before saying {text!r}:\n{content}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not say {text!r} in {timeout} s:\n{content}")
            time.sleep(0.1)

    def keep_running(self) -> None:
        """Let the test bed outlive this process (`rusty-rail testbed up`): the router's XDP
        link is pinned like everything else; `down` removes it with the rest."""
        if self.router is not None:
            self.router.pin(self.pin_root / "router")

    # --- changing it ----------------------------------------------------------------------

    def set_lbs(self, lbs: list[int]) -> None:
        """The router's live balancer set: leaving one out is that balancer dying (GRE
        ingress: the XDP router's set; routed ingress: the balancer's next hop out of the
        kernel's ECMP group; a cluster: its BGP announcements withdrawn, cluster.set_lbs)."""
        if self.spec.cluster:
            cluster.set_lbs(self, lbs)
            return
        if self.spec.ingress == "routed":
            self.kernel_router.set_lbs(lbs)
            return
        if self.router is None:
            raise RuntimeError("the router is not running")
        self.router.set_lbs([self.spec.lb_outer_address(i) for i in lbs])

    @property
    def kernel_router(self) -> KernelRouter:
        """The router of routed ingress: kernel ECMP routes, in the router namespace."""
        return KernelRouter(
            self.ns("rt"),
            {4: [lb_address(i) for i in range(self.spec.lbs)],
             6: [lb_address6(i) for i in range(self.spec.lbs)]},
            {4: [VIP_PREFIX], 6: [VIP6_PREFIX]},
        )  # fmt: skip

    def lb_of(self, flow: Flow, lbs: list[int] | None = None) -> int | None:
        """The balancer (index) the router sends ``flow`` to, among ``lbs`` (default all). GRE
        ingress: the XDP router's choice (choose_lb). Routed ingress and a cluster: the one
        balancer whose connection table holds the flow (None for none or several): the kernel
        hashes the skb's L4 hash, in the test bed the client socket's random one (routed.py),
        which ``ip route get`` cannot know."""
        if self.spec.ingress == "routed" or self.spec.cluster:
            holders = self.lbs_holding(flow)
            return holders[0] if len(holders) == 1 else None
        chosen = list(range(self.spec.lbs)) if lbs is None else lbs
        addresses = [self.spec.lb_outer_address(i) for i in chosen]
        lb = choose_lb(flow, addresses)
        return None if lb is None else chosen[addresses.index(str(lb))]

    def router_lb_counters(self) -> dict[str, dict[str, int]]:
        """Per balancer address: the packets and bytes the router sent to it (the XDP
        router's counters, or routed ingress's nftables counters of both families)."""
        if self.spec.ingress == "routed":
            return self.kernel_router.lb_counters()
        return self.router.lb_counters() if self.router is not None else {}

    def set_backends(self, servers: list[int], timeout: float = 15) -> None:
        """Give every balancer a new backend set: rewrite the shared file, SIGHUP each daemon
        and wait until each has applied it. A cluster (whose balancers follow etcd and refuse
        SIGHUP): one write through lb1's API, cluster.set_backends."""
        if self.spec.cluster:
            cluster.set_backends(self, servers, timeout)
            return
        before = {
            i: self.log(f"lb{i + 1}").read_text().count("reloaded") for i in range(self.spec.lbs)
        }
        self.config_path.write_text(balancer_config(self.spec, servers))
        for i in range(self.spec.lbs):
            os.kill(self.pids[f"lb{i + 1}"], signal.SIGHUP)
        deadline = time.monotonic() + timeout
        for i in range(self.spec.lbs):
            while self.log(f"lb{i + 1}").read_text().count("reloaded") <= before[i]:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"lb{i + 1} did not reload:\n{self.log(f'lb{i + 1}').read_text()}"
                    )
                time.sleep(0.05)

    # --- looking at it --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "spec": asdict(self.spec),
            "namespaces": {name: Path(f"/run/netns/{name}").exists() for name in self.namespaces},
            "processes": {
                name: {"pid": pid, "alive": alive(pid)} for name, pid in self.pids.items()
            },
            "vip": VIP,
            "vip6": VIP6,
            "underlay": self.spec.underlay,
            "ingress": self.spec.ingress,
            "egress": self.spec.egress,
            "backends": {
                f"s{i + 1}": self.spec.backend_address(i) for i in range(self.spec.servers)
            },
            "workdir": str(self.workdir),
            "pins": str(self.pin_root),
        }

    # --- state file and teardown ----------------------------------------------------------

    def save(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = {
            "tag": self.tag,
            "spec": asdict(self.spec),
            "pin_root": str(self.pin_root),
            "namespaces": self.namespaces,
            "pids": self.pids,
        }
        temporary = self.workdir / "state.json.tmp"
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(self.workdir / "state.json")

    @classmethod
    def load(cls, tag: str) -> Testbed:
        state = json.loads((STATE_DIR / tag / "state.json").read_text())
        return cls(
            TestbedSpec(**state["spec"]),
            state["tag"],
            STATE_DIR / tag,
            Path(state["pin_root"]),
            list(state["namespaces"]),
            {k: int(v) for k, v in state["pids"].items()},
        )

    def down(self) -> list[str]:
        """Stop every process, delete every namespace, remove every pin; return problems
        (and keep going past each one: teardown must not stop half-way)."""
        problems: list[str] = []
        terminate_all(self.pids, problems)
        if self.router is not None:
            try:
                self.router.close()
            except Exception as error:
                problems.append(f"router: {error}")
            self.router = None
        for link in self.links:
            link.close()
        self.links.clear()
        for name in reversed(self.namespaces):
            if Path(f"/run/netns/{name}").exists():
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
                if Path(f"/run/netns/{name}").exists():
                    problems.append(f"namespace {name} could not be deleted")
        try:
            remove_pin_dir(self.pin_root)
        except OSError as error:
            problems.append(f"pins {self.pin_root}: {error}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        return problems


def running_testbeds() -> list[str]:
    """Tags of the test beds whose state files exist."""
    if not STATE_DIR.is_dir():
        return []
    return sorted(p.name for p in STATE_DIR.iterdir() if (p / "state.json").exists())


def down_all() -> list[str]:
    """Remove every test bed (and leftover test-bed namespaces of interrupted runs)."""
    problems = []
    for tag in running_testbeds():
        problems += Testbed.load(tag).down()
    for name in leftover_namespaces():
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    leftover_pins = BPFFS / "rusty_rail"
    if leftover_pins.is_dir():
        for directory in leftover_pins.glob("testbed-*"):
            remove_pin_dir(directory)
    return problems
