"""Section 3 of docs/packet-path.md, GRE: version, flags, key, sequence and the protocol
carried."""

from __future__ import annotations

from rusty_rail.model.state import Stat, Verdict
from rusty_rail.wire.build import gre
from rusty_rail.wire.constants import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    ETH_P_TEB,
    GRE_FLAG_R,
    GRE_FLAG_STRICT,
    GRE_RESERVED0_MASK,
)
from rusty_rail.wire.frames import OUTER_INNER_IPV6, Outer, encapsulate, inner_ipv4, inner_ipv6
from tests.support.cases._base import (
    GRE_WEB,
    WEB6_FLOW,
    WEB_FLOW,
    WEB_PORT_VIP,
    Section,
    _frame,
    _outer_ipv4,
)

SECTION = Section()
kept, forwarded = SECTION.kept, SECTION.forwarded
_malformed_both_ways = SECTION.malformed_both_ways

# 3. GRE

kept(
    "gre-0-bytes",
    "the outer packet ends where GRE would start",
    _frame(_outer_ipv4(b"")),
    Stat.GRE_MALFORMED,
    Verdict.DROP,
)
_malformed_both_ways(
    "gre-3-bytes",
    "3 bytes of GRE before the GRE end (the frame goes on)",
    _frame(_outer_ipv4(GRE_WEB, total_length=23)),
    Stat.GRE_MALFORMED,
)
for _version in (1, 7):
    kept(
        f"gre-version-{_version}",
        f"GRE version {_version} belongs to the host",
        encapsulate(inner_ipv4(WEB_FLOW), Outer(gre_version=_version)),
        Stat.PASS_UNSUPPORTED,
        Verdict.PASS,
    )
kept(
    "gre-version-before-reserved",
    "version 1 with R set: the version is checked first",
    encapsulate(inner_ipv4(WEB_FLOW), Outer(gre_version=1, gre_extra_flags=GRE_FLAG_R)),
    Stat.PASS_UNSUPPORTED,
    Verdict.PASS,
)
for _bit_name, _bit in (
    ("routing", GRE_FLAG_R),
    ("strict-route", GRE_FLAG_STRICT),
    ("recursion-1", 0x0100),
    ("recursion-7", 0x0700),
):
    _malformed_both_ways(
        f"gre-{_bit_name}",
        f"GRE bit 0x{_bit:04x} set",
        encapsulate(inner_ipv4(WEB_FLOW), Outer(gre_extra_flags=_bit)),
        Stat.GRE_MALFORMED,
    )
forwarded(
    "gre-reserved0-ignored",
    "the reserved bits 0x00F8 are ignored and carried through",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(gre_extra_flags=GRE_RESERVED0_MASK),
)
for _c in (False, True):
    for _k in (None, 0xA5A5A5A5):
        for _s in (None, 7):
            _label = "".join(
                name for name, on in (("C", _c), ("K", _k is not None), ("S", _s is not None)) if on
            )
            forwarded(
                f"gre-fields-{_label or 'none'}",
                f"GRE optional fields {_label or 'none'}, carried through unchanged",
                WEB_FLOW,
                WEB_PORT_VIP,
                outer=Outer(gre_checksum=_c, gre_key=_k, gre_sequence=_s),
            )
forwarded(
    "gre-checksum-wrong-value",
    "a wrong GRE checksum is not checked, only carried",
    WEB_FLOW,
    WEB_PORT_VIP,
    outer=Outer(gre_checksum=0x1234),
)
_GRE_KEYED = gre(ETH_P_IPV4, inner_ipv4(WEB_FLOW), key=1)
_malformed_both_ways(
    "gre-key-cut-short",
    "K set, the GRE end 2 bytes into the key",
    _frame(_outer_ipv4(_GRE_KEYED, total_length=20 + 6)),
    Stat.GRE_MALFORMED,
)
kept(
    "gre-cks-cut-short",
    "C, K and S set, the GRE end 15 bytes in",
    _frame(
        _outer_ipv4(
            gre(ETH_P_IPV4, inner_ipv4(WEB_FLOW), checksum=True, key=1, sequence=2),
            total_length=20 + 15,
        )
    ),
    Stat.GRE_MALFORMED,
    Verdict.DROP,
)
forwarded(
    "gre-protocol-ipv6",
    "GRE protocol 0x86dd: inner IPv6, balanced (section 4b)",
    WEB6_FLOW,
    WEB_PORT_VIP,
    outer=OUTER_INNER_IPV6,
    inner=inner_ipv6(WEB6_FLOW),
)
for _proto_name, _proto in (("teb", ETH_P_TEB), ("zero", 0), ("arp", 0x0806)):
    kept(
        f"gre-protocol-{_proto_name}",
        f"GRE protocol 0x{_proto:04x} is not balanced",
        encapsulate(inner_ipv4(WEB_FLOW), Outer(gre_protocol=_proto)),
        Stat.PASS_UNSUPPORTED,
        Verdict.PASS,
    )
kept(
    "gre-protocol-after-length",
    "K set and cut short, protocol IPv6: the header length is checked first",
    _frame(_outer_ipv4(gre(ETH_P_IPV6, b"", key=1), total_length=20 + 4)),
    Stat.GRE_MALFORMED,
    Verdict.DROP,
)

CASES = SECTION.cases
