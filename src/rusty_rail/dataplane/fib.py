"""Route lookups in the kernel's FIB, many at once: one RTM_GETROUTE per address, like
`ip route get`, sent in batches over one raw rtnetlink socket and answered in order. A daemon
with 16,000 backends asks about each at start; one request at a time through pyroute2 took
about 0.3 ms each, a batch takes a few microseconds each.

The answer for each address is what `ip route get` prints: the route's type, its egress
interface and its gateway (RTA_GATEWAY, or RTA_VIA for an IPv4 route through an IPv6
gateway), or the error the kernel gave (a blackhole route answers EINVAL, unreachable
EHOSTUNREACH, prohibit EACCES).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

from rusty_rail._types import IPAddress

# linux/netlink.h, linux/rtnetlink.h
_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_RTM_NEWROUTE: Final = 24
_RTM_GETROUTE: Final = 26
_NLM_F_REQUEST: Final = 0x01
_RTA_DST: Final = 1
_RTA_OIF: Final = 4
_RTA_GATEWAY: Final = 5
_RTA_VIA: Final = 18

_NLMSGHDR: Final = struct.Struct("=IHHII")
_RTMSG: Final = struct.Struct("=BBBBBBBBI")
_RTATTR: Final = struct.Struct("=HH")
_NLMSGERR: Final = struct.Struct("=i")
#: Requests per send: their answers (about 100 bytes each) stay well inside the socket's
#: receive buffer, so none is dropped before it is read.
BATCH: Final = 256


@dataclass(frozen=True, slots=True)
class Route:
    """The kernel's answer for one address: the route's type (RTN_*), its egress interface
    (0: none) and its gateway (None: on-link)."""

    type: int
    ifindex: int
    gateway: IPAddress | None


def _align(length: int) -> int:
    return (length + 3) & ~3


def _request(address: IPAddress, seq: int) -> bytes:
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    packed = address.packed
    attribute = _RTATTR.pack(_RTATTR.size + len(packed), _RTA_DST) + packed
    body = _RTMSG.pack(family, len(packed) * 8, 0, 0, 0, 0, 0, 0, 0) + attribute
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), _RTM_GETROUTE, _NLM_F_REQUEST, seq, 0) + body


def _address(family: int, data: bytes) -> IPAddress | None:
    if family == socket.AF_INET and len(data) >= 4:
        return IPv4Address(data[:4])
    if family == socket.AF_INET6 and len(data) >= 16:
        return IPv6Address(data[:16])
    return None


def _route(message: bytes) -> Route:
    family, _, _, _, _, _, _, route_type, _ = _RTMSG.unpack_from(message)
    ifindex, gateway = 0, None
    offset = _RTMSG.size
    while offset + _RTATTR.size <= len(message):
        length, kind = _RTATTR.unpack_from(message, offset)
        if length < _RTATTR.size:
            break
        data = message[offset + _RTATTR.size : offset + length]
        if kind == _RTA_OIF and len(data) >= 4:
            ifindex = struct.unpack_from("=I", data)[0]
        elif kind == _RTA_GATEWAY:
            gateway = _address(family, data)
        elif kind == _RTA_VIA and len(data) >= 2:
            gateway = _address(struct.unpack_from("=H", data)[0], data[2:])
        offset += _align(length)
    return Route(route_type, ifindex, gateway)


def lookup_routes(addresses: Iterable[IPAddress]) -> dict[IPAddress, Route | OSError]:
    """The route the kernel would use for each address, from the calling thread's network
    namespace, or the OSError it answered with."""
    wanted = list(dict.fromkeys(ip_address(a) for a in addresses))
    answers: dict[IPAddress, Route | OSError] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        for start in range(0, len(wanted), BATCH):
            batch = wanted[start : start + BATCH]
            by_seq = {start + i + 1: address for i, address in enumerate(batch)}
            sock.sendall(b"".join(_request(a, seq) for seq, a in by_seq.items()))
            while by_seq:
                data = sock.recv(1 << 16)
                offset = 0
                while offset + _NLMSGHDR.size <= len(data):
                    length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
                    if length < _NLMSGHDR.size:
                        break
                    body = data[offset + _NLMSGHDR.size : offset + length]
                    address = by_seq.pop(seq, None)
                    if address is not None:
                        if kind == _RTM_NEWROUTE:
                            answers[address] = _route(body)
                        elif kind == _NLMSG_ERROR:
                            code = -_NLMSGERR.unpack_from(body)[0]
                            answers[address] = OSError(code, errno.errorcode.get(code, str(code)))
                        elif kind != _NLMSG_DONE:
                            answers[address] = OSError(errno.EPROTO, f"netlink message {kind}")
                    offset += _align(length)
    return answers
