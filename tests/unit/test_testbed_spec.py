"""The test bed's methods as plain values (issue 11, item 5): the configuration every balancer
runs for each ingress and egress, read back by the real configuration loader, and the
specification's refusals, each naming its field."""

from __future__ import annotations

import pytest

from rusty_rail.config.sources import config_from_toml_text
from rusty_rail.testbed.bgp import router_config
from rusty_rail.testbed.spec import EGRESSES, TESTBED_VNI, TestbedSpec, balancer_config


@pytest.mark.parametrize("egress", EGRESSES)
@pytest.mark.parametrize("ingress", ["gre", "routed"])
def test_every_balancer_runs_the_methods_of_the_spec(ingress: str, egress: str) -> None:
    config = config_from_toml_text(balancer_config(TestbedSpec(ingress=ingress, egress=egress)))
    assert [str(item) for item in config.ingress] == [ingress]
    for vip in config.vips:
        assert str(vip.encap) == egress
        assert vip.vni == (TESTBED_VNI if egress in ("vxlan", "geneve") else None)


def test_gre_ingress_with_gre_egress_writes_the_file_it_always_did() -> None:
    text = balancer_config(TestbedSpec())
    assert "ingress" not in text and "encap" not in text and "vni" not in text


def test_routed_ingress_puts_ipv6_on_the_balancer_segment() -> None:
    assert not TestbedSpec().lb_segment_ipv6
    assert TestbedSpec(ingress="routed").lb_segment_ipv6


def test_a_cluster_puts_ipv6_on_the_balancer_segment() -> None:
    """The IPv6 VIP's BGP next hops (and GRE ingress's outer IPv6) are the balancers' IPv6
    addresses there."""
    assert TestbedSpec(cluster=True).lb_segment_ipv6


def test_a_cluster_balancer_announces_the_vips_to_the_router() -> None:
    """Its own [bgp] section: AS 65001 to the router's AS 65000 at 198.18.0.1, hold time 3 s;
    no other mode has one."""
    config = config_from_toml_text(balancer_config(TestbedSpec(cluster=True)))
    assert config.bgp is not None and config.bgp.asn == 65001
    ((peer),) = config.bgp.peers
    assert (str(peer.address), peer.asn, peer.hold_time) == ("198.18.0.1", 65000, 3)
    assert config_from_toml_text(balancer_config(TestbedSpec())).bgp is None


def test_the_router_takes_both_families_over_one_session_per_balancer() -> None:
    """The daemon's speaker opens one session per router carrying both families: the router's
    one protocol has a channel for each, from the IPv4 range of the segment."""
    text = router_config("198.18.0.1", "198.18.0.0/24", {4: ["198.19.0.0/24"], 6: ["2001:2::/64"]})
    assert text.count("protocol bgp") == 1 and text.count("neighbor range 198.18.0.0/24") == 1
    assert "ipv4 { import filter vips4; export none; };" in text
    assert "ipv6 { import filter vips6; export none; };" in text


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"ingress": "ecmp"}, "ingress must be one of gre, routed, got 'ecmp'"),
        ({"egress": "gue"}, "egress must be one of gre, ipip, vxlan, geneve, route, got 'gue'"),
        ({"vxlan_server": "ovs"}, "vxlan_server must be one of kernel, decap, got 'ovs'"),
        ({"ingress": "routed", "underlay": "ipv6"}, "underlay 'ipv6' is the outer family"),
        ({"cluster": True, "underlay": "ipv6"}, "underlay 'ipv6' with cluster"),
    ],
)
def test_a_spec_that_cannot_be_built_is_refused_by_field(
    fields: dict[str, str | bool], named: str
) -> None:
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        TestbedSpec(**fields)  # type: ignore[arg-type]
