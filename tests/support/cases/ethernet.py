"""Section 1 of docs/packet-path.md, Ethernet: the frame's length, EtherType and VLAN tags."""

from __future__ import annotations

from rusty_rail.model.state import Stat, Verdict
from rusty_rail.wire.constants import ETH_P_8021AD, ETH_P_ARP
from rusty_rail.wire.fields import VlanTag
from rusty_rail.wire.frames import Outer, encapsulate, inner_ipv4
from tests.support.cases._base import WEB_FLOW, WEB_FRAME, WEB_PORT_VIP, Section, _frame

SECTION = Section()
kept, forwarded = SECTION.kept, SECTION.forwarded

# 1. Ethernet

kept("eth-empty", "an empty frame", b"", Stat.PASS_NOT_IP, Verdict.PASS)
kept(
    "eth-13-bytes",
    "one byte short of an Ethernet header",
    WEB_FRAME[:13],
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "eth-arp",
    "ARP is for the host",
    _frame(bytes(28), ethertype=ETH_P_ARP),
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "eth-ipv4-no-payload",
    "EtherType IPv4 and nothing after it",
    _frame(b""),
    Stat.PASS_OUTER_MALFORMED,
    Verdict.PASS,
)
forwarded("vlan-0-tags", "plain Ethernet", WEB_FLOW, WEB_PORT_VIP)
forwarded("vlan-1-tag", "one 802.1Q tag, kept", WEB_FLOW, WEB_PORT_VIP, outer=Outer(vlans=(100,)))
forwarded(
    "vlan-2-tags-qinq",
    "802.1ad outer tag and 802.1Q inner tag, both kept",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(vlans=(VlanTag(10, ETH_P_8021AD, pcp=5), VlanTag(20))),
)
forwarded(
    "vlan-2-tags-dot1q",
    "two 802.1Q tags",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(vlans=(VlanTag(10, pcp=7, dei=True), 4095)),
)
kept(
    "vlan-3-tags",
    "a third tag is not parsed",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(vlans=(1, 2, 3))),
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "vlan-tag-cut-short",
    "a tag with no room for the EtherType after it",
    _frame(b"", vlans=(5,))[:16],
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "vlan-tag-at-frame-end",
    "a VLAN TPID as the last two bytes",
    _frame(b"", ethertype=0x8100),
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "vlan-second-tag-cut-short",
    "the second tag is cut short",
    _frame(b"", vlans=(5,), ethertype=0x8100)[:20],
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)
kept(
    "vlan-arp",
    "ARP inside a tag",
    _frame(bytes(28), ethertype=ETH_P_ARP, vlans=(5,)),
    Stat.PASS_NOT_IP,
    Verdict.PASS,
)

CASES = SECTION.cases
