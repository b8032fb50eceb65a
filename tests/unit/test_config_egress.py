"""Ingress and egress in the configuration (docs/configuration.md: ingress, encap, vni): what is
accepted, what is refused with the field named, what reaches the data-plane state, and that a
configuration without the keys dumps and hashes as before they existed."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from rusty_rail.config import ConfigError, Encap, Ingress, config_from_toml_text, load
from rusty_rail.control.fingerprint import config_etag, config_fingerprint
from rusty_rail.control.plan import Allocation, PlanError, compile_plan
from rusty_rail.model.state import Egress, NextHop

HOP = NextHop(1, bytes.fromhex("020000000010"), bytes.fromhex("020000000020"))
GATEWAY_HOP = NextHop(1, HOP.src_mac, HOP.dst_mac, on_link=False)

#: A configuration written before ingress, encap overrides and vni existed, and what the
#: version before them answered for it (computed by that version).
OLD = (
    'lb_address = "198.18.0.2"\ndefault_backends = ["198.18.2.9"]\n[[vips]]\n'
    'address = "198.18.100.1"\nprotocol = "tcp"\nport = 80\n'
    'backends = ["198.18.2.1", {address = "2001:2::2:1", weight = 3}]\n'
)
OLD_FINGERPRINT = "0a7dd5474bbf94f5757bcb62ec06e0baf94de602b08b7e48db83cfadd2239b87"
OLD_ETAG = "a823181d984a57c8587911ef99e588c8d10e475031771b18e1c647589654f71d"


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        config_from_toml_text(text, source="test.toml")
    return [(problem.path, problem.reason) for problem in caught.value.problems]


def vip(body: str, backends: str = '["198.18.2.1"]') -> str:
    return f'[[vips]]\naddress = "198.18.100.1"\n{body}\nbackends = {backends}\n'


def test_a_configuration_without_the_new_keys_dumps_and_hashes_as_before() -> None:
    config = config_from_toml_text(OLD)
    assert config.ingress == (Ingress.GRE,)
    assert config_fingerprint(config) == OLD_FINGERPRINT
    assert config_etag(config) == OLD_ETAG
    dumped = config.model_dump(mode="json")
    assert "ingress" not in dumped and "vni" not in dumped["vips"][0]
    assert all("encap" not in b and "vni" not in b for b in dumped["vips"][0]["backends"])
    explicit = config_from_toml_text('ingress = ["gre"]\n' + OLD)
    assert config_etag(explicit) == OLD_ETAG


def test_ingress_is_a_node_key_that_changes_the_etag_not_the_fingerprint() -> None:
    both = config_from_toml_text('ingress = ["gre", "routed"]\n' + OLD)
    assert both.ingress == (Ingress.GRE, Ingress.ROUTED)
    assert config_fingerprint(both) == OLD_FINGERPRINT
    assert config_etag(both) != OLD_ETAG
    assert both.model_dump(mode="json")["ingress"] == ["gre", "routed"]
    assert config_from_toml_text('ingress = "routed , gre"').ingress == (
        Ingress.ROUTED,
        Ingress.GRE,
    )
    env = load({"RR_DEVICE": "eth0", "RR_TARGET_IPS": "198.18.2.1", "RR_INGRESS": "routed"})
    assert env.ingress == (Ingress.ROUTED,)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("[]", 'must name at least one ingress: "gre", "routed" or both'),
        ('["gre", "gre"]', "names an ingress twice"),
        ('"tunnel"', "must be one of: gre, routed"),
        ("3", 'must be a list such as ["gre", "routed"], or a string "gre,routed"'),
    ],
)
def test_bad_ingress_is_refused_at_ingress(value: str, reason: str) -> None:
    assert problems(f"ingress = {value}") == [("ingress", reason)]


@pytest.mark.parametrize("encap", list(Encap))
def test_every_encap_is_accepted_with_the_vni_it_needs(encap: Encap) -> None:
    vni = "vni = 4096" if encap.has_vni else ""
    config = config_from_toml_text(vip(f'encap = "{encap.value}"\n{vni}'))
    assert config.vips[0].encap is encap
    assert config.vips[0].vni == (4096 if encap.has_vni else None)


def test_bad_encap_lists_the_supported_ones() -> None:
    assert problems(vip('encap = "gue"')) == [
        ("vips[0].encap", "unsupported encapsulation; supported: gre, ipip, vxlan, geneve, route")
    ]


@pytest.mark.parametrize(
    ("body", "backends", "expected"),
    [
        ('encap = "vxlan"', '["198.18.2.1"]', [("vips[0].vni", 'encap "vxlan" needs a VNI')]),
        ('encap = "geneve"', "[]", [("vips[0].vni", 'encap "geneve" needs a VNI')]),
        ('encap = "vxlan"\nvni = 16777216', "[]", [("vips[0].vni", "must be between 0")]),
        ('encap = "vxlan"\nvni = -1', "[]", [("vips[0].vni", "must be between 0")]),
        ("vni = 7", "[]", [("vips[0].vni", 'a VNI means nothing to encap "gre"')]),
        ('encap = "ipip"\nvni = 7', "[]", [("vips[0].vni", 'a VNI means nothing to encap "ipip"')]),
        (
            "",
            '[{address = "198.18.2.1", encap = "geneve"}]',
            [("vips[0].backends[0].vni", 'encap "geneve" needs a VNI: set vni here or on the VIP')],
        ),
        (
            'encap = "vxlan"\nvni = 1',
            '[{address = "198.18.2.1", encap = "route", vni = 2}]',
            [("vips[0].backends[0].vni", 'a VNI means nothing to encap "route"')],
        ),
        (
            "",
            '[{address = "198.18.2.1", encap = "tunnel"}]',
            [("vips[0].backends[0].encap", "unsupported encapsulation")],
        ),
    ],
)
def test_bad_vni_and_encap_name_their_field(
    body: str, backends: str, expected: list[tuple[str, str]]
) -> None:
    found = problems(vip(body, backends))
    assert [path for path, _ in found] == [path for path, _ in expected]
    for (_, reason), (_, start) in zip(found, expected, strict=True):
        assert reason.startswith(start), reason


def test_a_default_set_backend_may_override_gre_and_its_vni_is_checked() -> None:
    config = config_from_toml_text(
        'default_backends = [{address = "198.18.2.1", encap = "vxlan", vni = 9}]'
    )
    assert config.default_backends[0].encap is Encap.VXLAN
    assert problems('default_backends = [{address = "198.18.2.1", vni = 9}]') == [
        (
            "default_backends[0].vni",
            'a VNI means nothing to encap "gre": only vxlan and geneve',
        )
    ]


def plan(text: str, hop: NextHop = HOP) -> dict[bytes, tuple[Egress, int]]:
    result = compile_plan(
        config_from_toml_text(text),
        Allocation(),
        lb_ipv4=IPv4Address("198.18.0.2"),
        resolve_next_hop=lambda address: hop,
    )
    return {e.addr: (e.egress, e.vni) for e in result.state.backends.values()}


def test_the_vips_encap_and_vni_reach_every_backend_slot_unless_it_overrides_them() -> None:
    backends = (
        '["198.18.2.1", {address = "198.18.2.2", vni = 77}, {address = "198.18.2.3", '
        'encap = "ipip"}, {address = "198.18.2.4", encap = "geneve"}]'
    )
    slots = plan(vip('encap = "vxlan"\nvni = 5', backends))
    assert slots == {
        IPv4Address("198.18.2.1").packed: (Egress.VXLAN, 5),
        IPv4Address("198.18.2.2").packed: (Egress.VXLAN, 77),
        IPv4Address("198.18.2.3").packed: (Egress.IPIP, 0),
        IPv4Address("198.18.2.4").packed: (Egress.GENEVE, 5),
    }
    assert plan(vip("")) == {IPv4Address("198.18.2.1").packed: (Egress.GRE, 0)}


def test_ingress_reaches_the_settings() -> None:
    def settings(text: str) -> tuple[bool, bool]:
        state = compile_plan(
            config_from_toml_text(text),
            Allocation(),
            lb_ipv4=IPv4Address("198.18.0.2"),
            resolve_next_hop=lambda address: HOP,
        ).state
        return state.settings.gre_ingress, state.settings.routed_ingress

    assert settings("") == (True, False)
    assert settings('ingress = ["routed"]') == (False, True)
    assert settings('ingress = ["gre", "routed"]') == (True, True)


def test_route_to_a_backend_behind_a_gateway_is_refused_when_the_plan_is_made() -> None:
    text = vip('encap = "route"')
    assert plan(text) == {IPv4Address("198.18.2.1").packed: (Egress.ROUTE, 0)}
    with pytest.raises(PlanError, match=r"198\.18\.2\.1 .*encap route needs a backend on a direc"):
        plan(text, GATEWAY_HOP)
    # Another method to the same backend behind a gateway is fine.
    assert plan(vip('encap = "ipip"'), GATEWAY_HOP)


def test_a_tunnel_check_is_refused_for_a_backend_that_is_not_sent_gre() -> None:
    health = '[health]\ncheck = "tunnel"\n'
    assert problems(health + vip('encap = "ipip"')) == [
        (
            "health.check",
            'the tunnel check probes through GRE, and this backend\'s encap is "ipip": use tcp '
            "or http for it, or no check",
        )
    ]
    own = '[{address = "198.18.2.1", encap = "route", health = {check = "tunnel"}}]'
    assert [path for path, _ in problems(vip("", own))] == ["vips[0].backends[0].health.check"]
    assert config_from_toml_text(health + vip(""))  # GRE: the probe takes the traffic's path
