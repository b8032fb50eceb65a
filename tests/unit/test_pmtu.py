"""model/pmtu.py, section 8c of docs/packet-path.md, beyond the packet cases: the token bucket's
arithmetic, the overheads of section 8b's table, and the ICMP errors of the cases as scapy
reads them (addresses, type, code, MTU, checksums recomputed by scapy)."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, IPerror
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether

from rusty_rail.model.pmtu import (
    TOO_BIG_BURST,
    TOO_BIG_REFILL_SHIFT,
    Bucket,
    TooBigLimiter,
    overhead,
)
from rusty_rail.model.state import BackendEntry, BackendState, Egress, Stat
from tests.support.cases import CASES, PacketCase
from tests.support.cases.pmtu import OVERHEAD

TICK = 1 << TOO_BIG_REFILL_SHIFT


def test_a_bucket_refills_one_token_a_tick_up_to_the_burst() -> None:
    limiter = TooBigLimiter({0: Bucket(stamp_ns=1000, tokens=0)}, now_ns=1000 + TICK - 1)
    assert not limiter.take(0)  # less than one tick: nothing added, the stamp kept
    assert limiter.buckets[0] == Bucket(1000, 0)
    limiter.now_ns = 1000 + 3 * TICK
    assert limiter.take(0)
    assert limiter.buckets[0] == Bucket(1000 + 3 * TICK, 2)
    limiter.now_ns += 1000 * TICK
    assert limiter.take(0)
    assert limiter.buckets[0].tokens == TOO_BIG_BURST - 1


def test_a_bucket_stamped_in_the_future_is_not_refilled() -> None:
    limiter = TooBigLimiter({0: Bucket(stamp_ns=1 << 63, tokens=1)}, now_ns=5 << 40)
    assert limiter.take(0) and not limiter.take(0)


def test_a_vip_without_a_bucket_has_a_full_one() -> None:
    limiter = TooBigLimiter(now_ns=0)
    assert all(limiter.take(7) for _ in range(TOO_BIG_BURST))
    assert not limiter.take(7)
    assert limiter.take(8)


@pytest.mark.parametrize("egress", list(Egress))
def test_overheads_are_section_8b_table(egress: Egress) -> None:
    entries = [
        BackendEntry(addr, 0, 1, BackendState.UP, None, egress=egress)
        for addr in (bytes(4), bytes(16))
    ]
    assert tuple(overhead(entry) for entry in entries) == OVERHEAD[egress]


ICMP_CASES = [case for case in CASES if case.stat == Stat.TOO_BIG_ICMP]


def _text(address: bytes) -> str:
    return str(ipaddress.ip_address(address))


@pytest.mark.parametrize("case", ICMP_CASES, ids=lambda case: case.name)
def test_icmp_errors_read_right_in_scapy(case: PacketCase) -> None:
    assert case.flow is not None and case.expected_frame is not None
    out, before = Ether(case.expected_frame), Ether(case.frame)
    assert (out.dst, out.src) == (before.src, before.dst)  # back where it came from
    client, vip = _text(case.flow.src), _text(case.flow.dst)
    if case.flow.is_ipv6:
        ip6, error = out[IPv6], out[ICMPv6PacketTooBig]
        assert (ip6.src, ip6.dst, ip6.hlim, error.code) == (vip, client, 64, 0)
        assert len(bytes(ip6)) <= 1280
        rebuilt = ip6.copy()
        del rebuilt[ICMPv6PacketTooBig].cksum
        assert IPv6(bytes(rebuilt))[ICMPv6PacketTooBig].cksum == error.cksum
        assert error.mtu < len(bytes(before[IPv6]))  # smaller than what the client sent
        return
    ip, error = out[IP], out[ICMP]
    assert (ip.src, ip.dst, ip.ttl, bool(ip.flags.DF)) == (vip, client, 64, True)
    assert (error.type, error.code) == (3, 4)
    rebuilt = ip.copy()
    del rebuilt.chksum
    del rebuilt[ICMP].chksum
    again = IP(bytes(rebuilt))
    assert (again.chksum, again[ICMP].chksum) == (ip.chksum, error.chksum)
    quoted = out[IPerror]
    assert (quoted.src, quoted.dst) == (client, vip)
    assert error.nexthopmtu < quoted.len  # smaller than what the client sent
