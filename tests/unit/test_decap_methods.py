"""The decap agent's methods and VNIs (rusty_rail.decap.methods.parse_methods): the default,
lists given either way, every refusal naming the field and the value, and the encoding the
program reads (struct decap_config), including the zeros of a map never written."""

from __future__ import annotations

import struct

import pytest

from rusty_rail.cli import EXIT_USAGE, main
from rusty_rail.decap.methods import DEFAULT_METHODS, METHODS, MethodSet, parse_methods


def test_the_default_is_gre_and_ipip_with_any_vni() -> None:
    assert DEFAULT_METHODS == ("gre", "ipip")
    assert parse_methods() == MethodSet(("gre", "ipip"), None)


def test_methods_comma_separated_or_repeated_come_out_in_one_order() -> None:
    assert parse_methods(["geneve,gre", " VXLAN "]) == MethodSet(("gre", "vxlan", "geneve"))
    assert parse_methods(["ipip", "ipip"]).methods == ("ipip",)
    assert parse_methods(["gre,ipip,vxlan,geneve"]).methods == METHODS


def test_vnis_are_sorted_merged_and_empty_means_any() -> None:
    assert parse_methods(["vxlan"], ["200", 100, "100,7"]).vnis == (7, 100, 200)
    assert parse_methods(["vxlan"], []).vnis is None
    assert parse_methods(["geneve"], [0, 16777215]).vnis == (0, 16777215)


@pytest.mark.parametrize(
    ("methods", "vnis", "message"),
    [
        (["gue"], None, r"methods: 'gue' is not a method \(gre, ipip, vxlan, geneve\)"),
        (["gre,route"], None, r"methods: 'route' is not a method"),
        ([], None, r"methods: none given"),
        ([" , "], None, r"methods: none given"),
        (["vxlan"], [16777216], r"vni: 16777216 is out of range 0-16777215"),
        (["vxlan"], [-1], r"vni: -1 is out of range"),
        (["vxlan"], ["ten"], r"vni: 'ten' is not a number"),
        (["vxlan"], ["0x10"], r"vni: '0x10' is not a number"),
        (["gre", "ipip"], [5], r"vni: given, but neither vxlan nor geneve is among the methods"),
        (None, [5], r"vni: given, but neither vxlan nor geneve"),
    ],
)
def test_bad_methods_and_vnis_are_refused_by_name(
    methods: list[str] | None, vnis: list[int | str] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_methods(methods, vnis)


def test_the_config_encoding_and_back() -> None:
    # bits: GRE off 1, IPIP 2, VXLAN 4, GENEVE 8; then the VNI filter flag
    assert MethodSet(("gre",)).config() == struct.pack("=II", 0, 0)
    assert MethodSet(("gre", "ipip")).config() == struct.pack("=II", 2, 0)
    assert MethodSet(("vxlan",), (1,)).config() == struct.pack("=II", 1 | 4, 1)
    assert MethodSet(METHODS).config() == struct.pack("=II", 2 | 4 | 8, 0)
    for method_set in (
        MethodSet(("gre",)),
        MethodSet(("ipip", "geneve"), (3, 9)),
        MethodSet(METHODS, None),
    ):
        back = MethodSet.of_config(method_set.config(), method_set.vnis or ())
        assert back == method_set
    # a map never written: GRE alone, any VNI
    assert MethodSet.of_config(bytes(8), [42]) == MethodSet(("gre",), None)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--methods", "gre,gue"], "methods: 'gue'"),
        (["--methods", "vxlan", "--vni", "16777216"], "vni: 16777216"),
        (["--vni", "5"], "vni: given, but neither vxlan nor geneve"),
    ],
)
def test_the_cli_refuses_bad_methods_naming_them(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decap", "--device", "rr-none", "--allow", "198.18.0.0/24", *argv]) == EXIT_USAGE
    assert named in capsys.readouterr().err
