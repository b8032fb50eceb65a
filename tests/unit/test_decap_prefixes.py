"""The decap agent's prefixes (rusty_rail.decap.agent.parse_prefixes) and how `rusty-rail
decap` reports a bad one: both families, sorted IPv4 first, every refusal naming the set and
the value. No kernel needed: prefixes are checked before anything is loaded.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

import pytest

from rusty_rail.cli import EXIT_USAGE, main
from rusty_rail.decap.agent import parse_prefixes


def test_prefixes_of_both_families_are_sorted_ipv4_first_and_merged() -> None:
    assert parse_prefixes(
        ["2001:2::/64", "198.18.0.0/24", "2001:2::1", "::/0", "2001:2:0::/64", " 0.0.0.0/0 "],
        "allowed",
    ) == [
        IPv4Network("0.0.0.0/0"),
        IPv4Network("198.18.0.0/24"),
        IPv6Network("::/0"),
        IPv6Network("2001:2::/64"),
        IPv6Network("2001:2::1/128"),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2001:2::1/64", r"local: '2001:2::1/64' is not an IP prefix: .*host bits set"),
        ("fe80::1%eth0", r"local: 'fe80::1%eth0' has a scope id; give the address without %eth0"),
        ("fe80::/64%eth0", r"local: 'fe80::/64%eth0' is not an IP prefix"),
        ("::ffff:198.18.0.1", r"local: '::ffff:198.18.0.1' is an IPv4-mapped IPv6 prefix"),
        ("::ffff:0:0/96", r"local: '::ffff:0:0/96' is an IPv4-mapped IPv6 prefix"),
        ("2001:2::/129", r"local: '2001:2::/129' is not an IP prefix"),
        ("2001:2:::1", r"local: '2001:2:::1' is not an IP prefix"),
    ],
)
def test_bad_ipv6_prefixes_are_refused_by_name(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_prefixes([value], "local")


def test_prefixes_that_merely_contain_mapped_space_are_accepted() -> None:
    assert parse_prefixes(["::/0", "::/64"], "local") == [
        IPv6Network("::/0"),
        IPv6Network("::/64"),
    ]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--allow", "198.18.0.0/24", "--allow", "fe80::1%eth0"], "allowed: 'fe80::1%eth0'"),
        (["--allow", "2001:2::1/64"], "allowed: '2001:2::1/64'"),
        (["--allow", "2001:2::/64", "--local", "::ffff:10.0.0.1"], "local: '::ffff:10.0.0.1'"),
    ],
)
def test_the_cli_refuses_a_bad_prefix_naming_it(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decap", "--device", "rr-none", *argv]) == EXIT_USAGE
    assert named in capsys.readouterr().err
