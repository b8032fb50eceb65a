"""The [bgp] section (docs/configuration.md) and the BIRD configuration it becomes
(control/bird.py): every mistake named by its field; a node's own key, never the store's."""

from __future__ import annotations

import os
import subprocess
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from rusty_rail.api.changes import replace_config
from rusty_rail.api.errors import ApiError
from rusty_rail.cli import main
from rusty_rail.config import Config, ConfigError, config_from_toml_text
from rusty_rail.control.bird import DIRECTORY_PREFIX, _read_answer, _remove_stale, render
from rusty_rail.control.cluster import shared_document
from rusty_rail.control.fingerprint import config_etag, config_fingerprint
from rusty_rail.control.startup import RESTART_KEYS

BASE = 'device = "eth0"\nlb_address = "198.18.0.2"\n'
BGP = '[bgp]\nasn = 65001\npeers = [{ address = "198.18.0.1", asn = 65000 }]\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_toml_text(BASE + text, "test.toml")
    return [str(problem) for problem in caught.value.problems]


def test_a_bgp_section_takes_its_defaults() -> None:
    bgp = config_from_toml_text(BASE + BGP, "test.toml").bgp
    assert bgp is not None and bgp.asn == 65001 and bgp.router_id is None
    (peer,) = bgp.peers
    assert (peer.address, peer.asn, peer.port, peer.hold_time) == (
        ip_address("198.18.0.1"), 65000, 179, 3
    )  # fmt: skip


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("[bgp]\nasn = 0\npeers = [{ address = \"198.18.0.1\", asn = 65000 }]",
         "bgp.asn: 0: must be between 1 and 4294967295"),
        ("[bgp]\nasn = 65001\npeers = [{ address = \"198.18.0.1\", asn = 4294967296 }]",
         "bgp.peers[0].asn: 4294967296: must be between 1 and 4294967295"),
        ("[bgp]\nasn = 65001\npeers = [{ address = \"198.18.0.1\", asn = 65000, "
         "hold_time = 2 }]", "bgp.peers[0].hold_time: 2: must be between 3 and 65535"),
        ("[bgp]\nasn = 65001\npeers = [{ address = \"198.18.0.1\", asn = 65000, port = 0 }]",
         "bgp.peers[0].port: 0: must be between 1 and 65535"),
        ("[bgp]\nasn = 65001\npeers = [{ address = \"198.18.0.300\", asn = 65000 }]",
         'bgp.peers[0].address: "198.18.0.300": not an IPv4 or IPv6 address'),
        ("[bgp]\nasn = 65001\nrouter_id = \"2001:2::1\"\n"
         "peers = [{ address = \"198.18.0.1\", asn = 65000 }]",
         'bgp.router_id: "2001:2::1": must be an IPv4 address (a BGP identifier is 32 bits)'),
        ("[bgp]\nasn = 65001\npeers = [{ address = \"198.18.0.1\", asn = 65001 }]",
         "bgp.peers[0].asn: 65001: is the balancer's own AS (bgp.asn): only eBGP sessions are "
         "set up; give the router's AS"),
        ("[bgp]\nasn = 65001\npeers = [{ address = \"198.18.0.1\", asn = 65000 }, "
         "{ address = \"198.18.0.1\", asn = 65002 }]",
         'bgp.peers[1].address: "198.18.0.1": duplicate peer, same as peers[0]'),
    ],
)  # fmt: skip
def test_each_mistake_is_named_by_its_field(section: str, expected: str) -> None:
    assert problems(section) == [expected]


def test_missing_and_unknown_keys_are_named() -> None:
    assert problems("[bgp]\nasn = 65001\npeers = []") == [
        "bgp.peers: 0: give 1 to 16 routers to announce the VIPs to"
    ]
    assert problems('[bgp]\npeers = [{ address = "198.18.0.1", asn = 65000 }]')[0].startswith(
        "bgp.asn: "
    )
    unknown = problems(BGP + "neighbour = 1\n")
    assert len(unknown) == 1 and unknown[0].startswith("bgp.neighbour: 1: unknown key")


def test_check_shows_a_bgp_problem_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(BASE + BGP.replace("asn = 65001", "asn = -1"))
    assert main(["check", "--config", str(path)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"{path}:4:7: bgp.asn: -1: must be between 1 and 4294967295"
    )


def test_bgp_is_the_nodes_own_key() -> None:
    """Never in the store, not in config_fingerprint; a configuration without it hashes as
    before the key existed; the API may not change it (a restart does)."""
    without = config_from_toml_text(BASE, "test.toml")
    with_bgp = config_from_toml_text(BASE + BGP, "test.toml")
    assert b"bgp" not in shared_document(with_bgp)
    assert config_fingerprint(with_bgp) == config_fingerprint(without)
    assert config_etag(with_bgp) != config_etag(without)
    assert "bgp" not in without.model_dump(mode="json")
    assert "bgp" in RESTART_KEYS
    body = with_bgp.model_dump(mode="json")
    del body["bgp"]
    assert replace_config(with_bgp, body, RESTART_KEYS).bgp == with_bgp.bgp  # left out: kept
    body["bgp"] = {"asn": 65009, "peers": [{"address": "198.18.0.1", "asn": 65000}]}
    with pytest.raises(ApiError) as caught:
        replace_config(with_bgp, body, RESTART_KEYS)
    assert caught.value.status == 409 and "bgp: " in str(caught.value)
    assert replace_config(without, without.model_dump(mode="json"), RESTART_KEYS).bgp is None


def test_bird_announces_host_routes_with_the_nodes_addresses_as_next_hops() -> None:
    config = config_from_toml_text(
        BASE + '[bgp]\nasn = 65001\npeers = [{ address = "198.18.0.1", asn = 65000 }, '
        '{ address = "2001:2::1", asn = 65010, port = 1179, hold_time = 9 }]\n',
        "test.toml",
    )
    assert config.bgp is not None
    routes = [ip_address("198.18.100.2"), ip_address("198.18.100.1"), ip_address("2001:2:9::1")]
    both = render(config.bgp, IPv4Address("198.18.0.9"), IPv4Address("198.18.0.2"),
                  IPv6Address("2001:2::2"), routes)  # fmt: skip
    assert "router id 198.18.0.9;" in both
    assert (
        "protocol static vips4 {\n  ipv4;\n  route 198.18.100.1/32 blackhole;\n"
        "  route 198.18.100.2/32 blackhole;\n}" in both
    )
    assert "protocol static vips6 {\n  ipv6;\n  route 2001:2:9::1/128 blackhole;\n}" in both
    assert "  neighbor 198.18.0.1 port 179 as 65000;\n  hold time 3;\n  keepalive time 1;" in both
    assert "  neighbor 2001:2::1 port 1179 as 65010;\n  hold time 9;\n  keepalive time 3;" in both
    assert both.count("next hop address 198.18.0.2;") == 2
    assert both.count("next hop address 2001:2::2;") == 2
    assert "kernel" not in both  # the host's routing table is never touched
    # Without an IPv6 address of the node: IPv4 only (its IPv6 VIPs have no next hop).
    ipv4_only = render(config.bgp, IPv4Address("198.18.0.2"), IPv4Address("198.18.0.2"), None,
                       routes)  # fmt: skip
    assert "ipv6" not in ipv4_only and "2001:2:9::1" not in ipv4_only


def test_a_bird_answer_ends_at_its_code_and_a_space() -> None:
    lines = ["0001 BIRD 2.0.12 ready.\n"]
    assert _read_answer(iter(lines)) == ["0001 BIRD 2.0.12 ready."]
    answer = ["2002-Name Proto\n", "1002-peer0 BGP --- up 10:00 Established\n",
              " vips4 Static master4 up 10:00\n", "0000 \n", "after\n"]  # fmt: skip
    assert _read_answer(iter(answer))[-1] == "0000 "
    with pytest.raises(OSError, match="closed"):
        _read_answer(iter(["1002-half\n"]))


def test_config_without_bgp_has_no_bgp_key() -> None:
    assert Config().bgp is None


def test_the_directories_of_speakers_whose_daemon_is_gone_are_removed(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"{DIRECTORY_PREFIX}{gone.pid}-eth0-abcd1234"
    live = tmp_path / f"{DIRECTORY_PREFIX}{os.getpid()}-eth0-abcd1234"
    other = tmp_path / "something-else"
    for directory in (stale, live, other):
        directory.mkdir()
        (directory / "bird.conf").write_text("")
    _remove_stale(tmp_path)
    assert not stale.exists() and live.exists() and other.exists()
