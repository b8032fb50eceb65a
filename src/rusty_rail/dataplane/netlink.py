"""What rusty-rail asks the kernel's routing side (rtnetlink, through pyroute2): next hops from
the FIB and the neighbour table, interface facts, and running code inside a network namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from ipaddress import ip_address
from typing import Any, Self

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from rusty_rail._types import IPAddress
from rusty_rail.dataplane.fib import Route, lookup_routes
from rusty_rail.model.state import NextHop

__all__ = [
    "NextHopError",
    "NextHopResolver",
    "in_netns",
    "interface_addresses",
    "interface_index",
    "interface_mac",
    "resolve_next_hop",
    "wait_next_hop",
]


# linux/neighbour.h
_NTF_USE = 0x01
_NUD_INCOMPLETE = 0x01
_NUD_REACHABLE = 0x02
_NUD_STALE = 0x04
_NUD_DELAY = 0x08
_NUD_PROBE = 0x10
_NUD_FAILED = 0x20
_NUD_NOARP = 0x40
_NUD_PERMANENT = 0x80
# States whose link-layer address can be used. STALE is usable (the kernel itself sends to a
# stale neighbour while it re-confirms it), but worth a refresh: see resolve_next_hop.
_NUD_USABLE = _NUD_REACHABLE | _NUD_STALE | _NUD_DELAY | _NUD_PROBE | _NUD_NOARP | _NUD_PERMANENT

_RTN_UNICAST = 1
_RTN_NAMES = {
    2: "local",
    3: "broadcast",
    4: "anycast",
    5: "multicast",
    6: "blackhole",
    7: "unreachable",
    8: "prohibit",
    9: "throw",
}

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


class NextHopError(LookupError):
    """The kernel has no usable way to reach an address: no route, a route that does not
    forward (local, blackhole, ...), or an egress interface without Ethernet addresses."""


# -- namespaces ----------------------------------------------------------------------------


def _netns_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"network namespace name {name!r}")
    return f"/run/netns/{name}"


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"enter network namespace {what}: {os.strerror(err)}")


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block with the calling thread inside the named network namespace (as made by
    ``ip netns add``; None: the one it is in). Sockets and BPF calls that name interfaces by
    index then see that namespace; BPF objects themselves are global."""
    if name is None:
        yield
        return
    target = os.open(_netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(target)
        raise
    try:
        _setns(target, repr(name))
        try:
            yield
        finally:
            # Not coming back would leave this thread working in the wrong namespace.
            _setns(original, "of origin")
    finally:
        os.close(target)
        os.close(original)


@contextmanager
def _rtnl(netns: str | None) -> Iterator[Any]:
    if netns is not None:
        _netns_path(netns)
    with IPRoute(netns=netns) as ipr:
        yield ipr


# -- interfaces ----------------------------------------------------------------------------


def _link(ipr: Any, name: str) -> Any:
    try:
        links = ipr.link("get", ifname=name)
    except NetlinkError as error:
        if error.code == errno.ENODEV:
            raise LookupError(f"no interface named {name!r}") from error
        raise
    return links[0]


def interface_index(name: str, *, netns: str | None = None) -> int:
    with _rtnl(netns) as ipr:
        return int(_link(ipr, name)["index"])


def interface_mac(name: str, *, netns: str | None = None) -> bytes:
    """The interface's Ethernet address (6 bytes)."""
    with _rtnl(netns) as ipr:
        link = _link(ipr, name)
    mac = _mac_bytes(link.get("IFLA_ADDRESS"))
    if mac is None:
        raise LookupError(f"interface {name!r} has no Ethernet address")
    return mac


def interface_addresses(name: str, *, netns: str | None = None) -> list[IPAddress]:
    """The interface's IPv4 and IPv6 addresses, as the kernel lists them (IPv6 link-local
    addresses included: filter with ``is_link_local``)."""
    with _rtnl(netns) as ipr:
        index = _link(ipr, name)["index"]
        messages = ipr.get_addr(index=index)
        return [ip_address(message.get("IFA_ADDRESS")) for message in messages]


def _mac_bytes(text: str | None) -> bytes | None:
    if not text:
        return None
    mac = bytes.fromhex(text.replace(":", ""))
    return mac if len(mac) == 6 else None


# -- next hops ------------------------------------------------------------------------------


def _egress(address: IPAddress, answer: Route | OSError) -> tuple[int, IPAddress]:
    """The egress interface and the on-link neighbour (gateway or the address) for address,
    from the FIB's answer (fib.lookup_routes)."""
    if isinstance(answer, OSError):
        code = answer.errno or 0
        # A blackhole route answers EINVAL, unreachable EHOSTUNREACH, prohibit EACCES.
        raise NextHopError(
            f"no route to {address}: {os.strerror(code)} ({errno.errorcode.get(code, code)})"
        )
    if answer.type != _RTN_UNICAST:
        kind = _RTN_NAMES.get(answer.type, f"type {answer.type}")
        raise NextHopError(f"the route to {address} is {kind}, not a unicast next hop")
    if not answer.ifindex:
        raise NextHopError(f"the route to {address} names no egress interface")
    return answer.ifindex, address if answer.gateway is None else answer.gateway


def _neighbour(ipr: Any, neighbour: IPAddress, ifindex: int) -> tuple[int, bytes | None]:
    try:
        entries = ipr.neigh("get", dst=str(neighbour), ifindex=ifindex)
    except NetlinkError as error:
        if error.code == errno.ENOENT:
            return 0, None
        raise
    entry = entries[0]
    return int(entry["state"]), _mac_bytes(entry.get("NDA_LLADDR"))


def _solicit(ipr: Any, neighbour: IPAddress, ifindex: int) -> None:
    """Ask the kernel to (re)resolve the neighbour: an RTM_NEWNEIGH with NTF_USE creates the
    entry if needed and sends ARP / neighbour solicitations as if a packet were waiting, but
    changes nothing that is already known."""
    ipr.neigh("replace", dst=str(neighbour), ifindex=ifindex, flags=_NTF_USE, state=0)


class NextHopResolver:
    """Resolves next hops over one rtnetlink socket, for a round over many addresses
    (resolve_next_hop opens a socket per call). Interface addresses and each neighbour's
    state are read once per resolver (a round's snapshot): use a fresh one for each round."""

    def __init__(self, *, netns: str | None = None) -> None:
        if netns is not None:
            _netns_path(netns)
        self._ipr: Any = IPRoute(netns=netns)
        self._netns = netns
        #: Each egress interface's MAC address and IP MTU (docs/packet-path.md section 8c).
        self._links: dict[int, tuple[bytes | None, int]] = {}
        #: Neighbours asked about in this round: many backends share one gateway.
        self._neighbours: dict[tuple[IPAddress, int], tuple[int, bytes | None]] = {}

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def resolve(self, address: str | IPAddress) -> NextHop | None:
        """As resolve_next_hop."""
        return self.resolve_with_neighbour(ip_address(address))[0]

    def resolve_many(
        self, addresses: Iterable[IPAddress]
    ) -> tuple[dict[IPAddress, NextHop | None], dict[IPAddress, str]]:
        """resolve() for each address, the routes asked for in batches: the next hops (None:
        resolution started), and for the addresses without a usable one, why."""
        found: dict[IPAddress, NextHop | None] = {}
        problems: dict[IPAddress, str] = {}
        for address, answer in self._routes(addresses).items():
            try:
                found[address] = self._next_hop(address, *_egress(address, answer))[0]
            except NextHopError as error:
                found[address] = None
                problems[address] = str(error)
        return found, problems

    def resolve_with_neighbour(self, address: IPAddress) -> tuple[NextHop | None, IPAddress]:
        """The next hop (or None, resolution started) and the neighbour it depends on."""
        return self._next_hop(address, *_egress(address, self._routes([address])[address]))

    def _routes(self, addresses: Iterable[IPAddress]) -> dict[IPAddress, Route | OSError]:
        with in_netns(self._netns):
            return lookup_routes(addresses)

    def _next_hop(
        self, address: IPAddress, ifindex: int, neighbour: IPAddress
    ) -> tuple[NextHop | None, IPAddress]:
        ipr = self._ipr
        src_mac = self._src_mac(ifindex)
        if src_mac is None:
            raise NextHopError(
                f"{address} is reached through ifindex {ifindex}, which has no Ethernet address"
            )
        known = self._neighbours.get((neighbour, ifindex))
        if known is None:
            known = _neighbour(ipr, neighbour, ifindex)
            self._neighbours[(neighbour, ifindex)] = known
            state, dst_mac = known
            if dst_mac is None or not state & _NUD_USABLE or state & _NUD_STALE:
                _solicit(ipr, neighbour, ifindex)  # once per round and neighbour
        state, dst_mac = known
        if dst_mac is None or not state & _NUD_USABLE:
            return None, neighbour
        mtu = self._links[ifindex][1]
        hop = NextHop(ifindex, src_mac, dst_mac, on_link=neighbour == address, mtu=mtu)
        return hop, neighbour

    def _src_mac(self, ifindex: int) -> bytes | None:
        if ifindex not in self._links:
            link = self._ipr.link("get", index=ifindex)[0]
            mtu = int(link.get("IFLA_MTU") or 0)
            self._links[ifindex] = (
                _mac_bytes(link.get("IFLA_ADDRESS")),
                mtu if mtu <= 0xFFFF else 0,
            )
        return self._links[ifindex][0]


def resolve_next_hop(address: str | IPAddress, *, netns: str | None = None) -> NextHop | None:
    """Where frames to ``address`` leave this host, from the kernel's FIB and neighbour table.

    None when the neighbour (the gateway, or the address itself when on-link) is not resolved
    yet: resolution is started and a later call finds it (wait_next_hop waits for it). A STALE
    entry is returned and refreshed at once, because XDP traffic bypasses the stack and would
    never refresh it. Raises NextHopError when there is no usable route."""
    with NextHopResolver(netns=netns) as resolver:
        return resolver.resolve(address)


def wait_next_hop(
    address: str | IPAddress,
    timeout: float = 3.0,
    *,
    netns: str | None = None,
    interval: float = 0.05,
) -> NextHop:
    """resolve_next_hop until it succeeds; TimeoutError naming the neighbour after ``timeout``."""
    address = ip_address(address)
    deadline = time.monotonic() + timeout
    while True:
        with NextHopResolver(netns=netns) as resolver:  # a fresh round: the neighbour again
            next_hop, neighbour = resolver.resolve_with_neighbour(address)
        if next_hop is not None:
            return next_hop
        if time.monotonic() >= deadline:
            what = "it" if neighbour == address else f"its gateway {neighbour}"
            raise TimeoutError(
                f"no next hop for {address}: {what} did not answer ARP / neighbour "
                f"solicitation within {timeout:g} s"
            )
        time.sleep(interval)
