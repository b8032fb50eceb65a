"""The configuration model: good files and environments load; every mistake is a ConfigError
that names the field, the value and the reason, and nothing else escapes."""

from __future__ import annotations

import tomllib
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from rusty_rail.config import (
    MAX_SEED,
    Action,
    AdminState,
    Backend,
    Config,
    ConfigError,
    Encap,
    Problem,
    Protocol,
    Vip,
    VipKey,
    XdpMode,
    config_from_env,
    config_from_toml_text,
    is_prime,
    load,
    load_toml,
    parse_vip_key,
    validate_as,
)
from rusty_rail.model.flowhash import DEFAULT_SEED

EXAMPLE = Path(__file__).parents[2] / "examples" / "rusty-rail.toml"
SEED_ENV = {"RR_DEVICE": "eth0", "RR_TARGET_IPS": "10.1.0.1;10.1.0.2"}


def toml_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config_from_toml_text(text, source="test.toml")
    return caught.value


def env_error(environ: dict[str, str], config_path: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(environ, config_path)
    return caught.value


def only_problem(error: ConfigError) -> Problem:
    assert len(error.problems) == 1, str(error)
    return error.problems[0]


def vip_toml(body: str, address: str = "198.18.100.1") -> str:
    return f'[[vips]]\naddress = "{address}"\n{body}\n'


# ---------------------------------------------------------------------------------------------
# Good configurations


def test_seed_readme_environment_gives_device_and_default_backends() -> None:
    config = config_from_env(SEED_ENV)
    assert config.device == "eth0"
    assert [backend.address for backend in config.default_backends] == [
        IPv4Address("10.1.0.1"),
        IPv4Address("10.1.0.2"),
    ]
    assert all(b.weight == 1 and b.state is AdminState.UP for b in config.default_backends)
    assert config.vips == ()
    assert config.hash_seed == DEFAULT_SEED
    assert config.xdp_mode is XdpMode.NATIVE
    assert config.lb_address is None


def test_an_empty_configuration_takes_the_documented_defaults() -> None:
    config = Config()
    assert (config.table_size, config.outer_ttl, config.conntrack_size) == (65537, 64, 1 << 20)
    assert config.no_vip_action is Action.PASS
    assert config.malformed_action is Action.DROP
    assert config.default_backends == ()


def test_example_file_loads_with_every_kind_of_backend() -> None:
    config = load_toml(EXAMPLE)
    assert config.device == "eth0"
    assert config.lb_address == IPv4Address("198.18.0.10")
    assert config.hash_seed == 0x5EED0F2A11BA1A9C
    assert [str(vip.key) for vip in config.vips] == [
        "198.18.100.1:80/tcp",
        "198.18.100.2",
        "[2001:2:0:100::1]:53/udp",
    ]
    web = config.vips[0]
    assert [(str(b.address), b.weight, b.state.value) for b in web.backends] == [
        ("198.18.2.1", 1, "up"),
        ("198.18.2.2", 2, "up"),
        ("198.18.2.3", 1, "drain"),
        ("198.18.2.4", 0, "up"),
    ]
    assert web.encap is Encap.GRE
    assert config.table_size_for(web) == 65537
    dns = config.vips[2]
    assert dns.protocol is Protocol.UDP and dns.port == 53
    assert config.table_size_for(dns) == 251
    assert dns.backends[1].state is AdminState.DOWN
    assert isinstance(dns.backends[0].address, IPv6Address)


def test_string_backends_equal_table_backends() -> None:
    as_strings = config_from_toml_text(vip_toml('backends = ["10.1.0.1", "10.1.0.2"]'))
    as_tables = config_from_toml_text(
        vip_toml('backends = [{address = "10.1.0.1"}, {address = "10.1.0.2", weight = 1}]')
    )
    assert as_strings == as_tables


def test_ipv6_addresses_are_accepted_for_the_lb_backends_and_vips() -> None:
    config = config_from_toml_text(
        'lb_address = "2001:2::a"\n'
        'default_backends = ["2001:2:0:1::1"]\n'
        + vip_toml('protocol = "tcp"\nport = 443\nbackends = ["2001:2:0:2::1"]', "2001:2::100")
    )
    assert config.lb_address == IPv6Address("2001:2::a")
    assert config.default_backends[0].address == IPv6Address("2001:2:0:1::1")
    assert str(config.vips[0].key) == "[2001:2::100]:443/tcp"


def test_ipv4_vip_with_ipv6_backends_is_allowed() -> None:
    # GRE carries either family inside either family.
    config = config_from_toml_text(vip_toml('backends = ["2001:2::1"]'))
    assert config.vips[0].backends[0].address == IPv6Address("2001:2::1")


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ('"0x5eed"', 0x5EED),
        ('"0X5EED"', 0x5EED),
        ('"0xffff_ffff_ffff_ffff"', MAX_SEED),
        ('"12345"', 12345),
        ("12345", 12345),
        ("0x5eed", 0x5EED),  # TOML's own hexadecimal integer
        ("0", 0),
    ],
)
def test_a_hash_seed_may_be_written_in_every_documented_form(written: str, value: int) -> None:
    assert config_from_toml_text(f"hash_seed = {written}").hash_seed == value


def test_address_wide_and_port_vips_on_one_address_are_distinct() -> None:
    config = config_from_toml_text(
        vip_toml("")
        + vip_toml('protocol = "tcp"\nport = 80')
        + vip_toml('protocol = "udp"\nport = 80')
    )
    assert len({vip.key for vip in config.vips}) == 3


def test_protocols_carry_their_ip_protocol_numbers() -> None:
    assert (Protocol.TCP.number, Protocol.UDP.number) == (6, 17)


def test_config_is_immutable_and_hashable() -> None:
    config = load_toml(EXAMPLE)
    with pytest.raises(ValidationError):
        config.device = "eth1"
    assert hash(config) == hash(load_toml(EXAMPLE))


def test_json_dump_validates_back_to_the_same_config() -> None:
    config = load_toml(EXAMPLE)
    dumped = config.model_dump(mode="json")
    assert dumped["hash_seed"] == "0x5eed0f2a11ba1a9c"  # 64-bit safe for JSON readers
    assert validate_as(Config, dumped, "request body") == config
    assert validate_as(Config, config.model_dump(), "python") == config


# ---------------------------------------------------------------------------------------------
# Errors: each names the field path, the value and why


def test_error_message_names_source_path_value_and_reason() -> None:
    error = toml_error(vip_toml('backends = ["10.1.0.1", {address = "10.1.0.2", weight = -1}]'))
    assert str(error) == (
        "configuration error in test.toml: "
        "vips[0].backends[1].weight: -1: must be between 0 and 65535"
    )
    assert error.source == "test.toml"
    assert isinstance(error, ValueError)


def test_several_problems_are_all_listed() -> None:
    error = toml_error('outer_ttl = 0\nxdp_mode = "fast"\nconntrack_size = 10\n')
    assert str(error).splitlines() == [
        "3 configuration errors in test.toml:",
        '  xdp_mode: "fast": must be one of: native, generic',
        "  outer_ttl: 0: must be between 1 and 255",
        "  conntrack_size: 10: must be between 1024 and 134217728",
    ]


def test_messages_carry_no_pydantic_text() -> None:
    error = toml_error(
        'vips = "x"\ndefault_backends = [{}]\nbogus = 1\nhash_seed = 1.5\ndevice = 7\n'
        "[nested]\nkey = 1\n"
    )
    text = str(error)
    for leak in ("pydantic", "http", "Input should", "Value error", "validation error"):
        assert leak not in text
    assert len(error.problems) == 6


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.300", "not an IPv4 or IPv6 address"),
        ("backend-1", "not an IPv4 or IPv6 address"),
        ("10.0.0.0/24", "prefix length"),
        ("fe80::1%eth0", "zone index"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("::ffff:10.0.0.1", 'write "10.0.0.1"'),
    ],
)
def test_a_bad_backend_address_is_named_with_its_reason(address: str, reason: str) -> None:
    problem = only_problem(toml_error(vip_toml(f'backends = ["{address}"]')))
    assert problem.path == "vips[0].backends[0].address"
    assert problem.value == address
    assert reason in problem.reason


BAD_IPV6 = [
    ("fe80::1", "link-local"),
    ("FE80::a:1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fe80::1%eth0", "zone index"),
    ("2001:2::1%3", "zone index"),
    ("::ffff:198.18.0.1", 'write "198.18.0.1"'),
    ("::", "unspecified"),
    ("ff02::1", "multicast"),
    ("ff0e::10", "multicast"),
    ("2001:2::/48", "prefix length"),
    ("2001:2::1::2", "not an IPv4 or IPv6 address"),
    ("[2001:2::21]", 'is in brackets, which only a VIP key with a port needs: write "2001:2::21"'),
]


@pytest.mark.parametrize(("address", "reason"), BAD_IPV6)
def test_an_ipv6_mistake_is_refused_wherever_an_address_goes(address: str, reason: str) -> None:
    for text, path in (
        (f'lb_address = "{address}"', "lb_address"),
        (f'default_backends = ["{address}"]', "default_backends[0].address"),
        (vip_toml("", address), "vips[0].address"),
        (vip_toml(f'backends = [{{address = "{address}"}}]', "2001:2::10"),
         "vips[0].backends[0].address"),
    ):  # fmt: skip
        problem = only_problem(toml_error(text))
        assert (problem.path, problem.value) == (path, address), text
        assert reason in problem.reason, text


@pytest.mark.parametrize(("address", "reason"), BAD_IPV6)
def test_an_ipv6_mistake_is_refused_in_the_environment_and_api_bodies(
    address: str, reason: str
) -> None:
    error = env_error({"RR_DEVICE": "eth0", "RR_TARGET_IPS": f"2001:2::5;{address}"})
    problem = only_problem(error)
    assert (problem.path, problem.value) == ("RR_TARGET_IPS item 2", address)
    assert reason in problem.reason
    problem = only_problem(env_error(SEED_ENV | {"RR_LB_ADDRESS": address}))
    assert (problem.path, problem.value, reason in problem.reason) == (
        "RR_LB_ADDRESS",
        address,
        True,
    )
    with pytest.raises(ConfigError) as caught:
        validate_as(Vip, {"address": "2001:2::10", "backends": [address]}, "request body")
    problem = only_problem(caught.value)
    assert (problem.path, problem.value) == ("backends[0].address", address)
    assert str(caught.value).startswith(
        f'configuration error in request body: backends[0].address: "{address}": '
    )


def test_the_refusals_say_what_to_write_instead() -> None:
    reasons = {
        address: only_problem(toml_error(f'default_backends = ["{address}"]')).reason
        for address in ("fe80::1", "fe80::1%eth0", "::ffff:198.18.0.1")
    }
    assert reasons == {
        "fe80::1": "is an IPv6 link-local address (fe80::/10), which means something only on"
        " one link and is not routed: write a global or unique local (fc00::/7) address",
        "fe80::1%eth0": 'has a zone index (scope id, the "%..." part), which a backend or VIP'
        " address cannot use: write the address without it",
        "::ffff:198.18.0.1": 'is an IPv4-mapped IPv6 address; write "198.18.0.1"',
    }


def test_an_ipv6_address_object_with_a_scope_id_is_refused() -> None:
    with pytest.raises(ConfigError, match="zone index"):
        validate_as(Backend, {"address": IPv6Address("2001:2::1%3")}, "request body")


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1", "169.254.1.1", "fd00::1"])
def test_loopback_ipv4_link_local_and_unique_local_addresses_are_accepted(address: str) -> None:
    # Loopback backends are how health checks are tried on one host, in both families;
    # IPv4 link-local is routed like any other address (only IPv6's needs its link).
    as_backend = config_from_toml_text(f'default_backends = ["{address}"]')
    as_vip = config_from_toml_text(vip_toml("", address))
    assert as_backend.default_backends[0].address == as_vip.vips[0].address == ip_address(address)


def test_address_must_be_a_string() -> None:
    problem = only_problem(toml_error("lb_address = 167772161"))
    assert (problem.path, problem.value) == ("lb_address", 167772161)
    assert "string" in problem.reason


def test_a_bad_vip_address_is_named_by_its_path() -> None:
    problem = only_problem(toml_error(vip_toml("", "198.18.100")))
    assert (problem.path, problem.value) == ("vips[0].address", "198.18.100")


def test_duplicate_backend_in_a_vip_even_when_spelled_differently() -> None:
    error = toml_error(vip_toml('backends = ["2001:2::1", "10.1.0.1", "2001:0002:0::0001"]'))
    problem = only_problem(error)
    assert problem.path == "vips[0].backends[2].address"
    assert problem.value == IPv6Address("2001:2::1")
    assert problem.reason == "duplicate backend, same as backends[0]"
    assert 'vips[0].backends[2].address: "2001:2::1": duplicate backend' in str(error)


def test_a_default_backend_given_twice_is_refused() -> None:
    problem = only_problem(toml_error('default_backends = ["10.1.0.1", "10.1.0.1"]'))
    assert problem.path == "default_backends[1].address"
    assert "duplicate backend" in problem.reason


def test_a_vip_given_twice_is_refused_naming_the_first() -> None:
    text = (
        vip_toml('protocol = "tcp"\nport = 80')
        + vip_toml("")
        + vip_toml('protocol = "tcp"\nport = 80')
    )
    problem = only_problem(toml_error(text))
    assert (problem.path, problem.value) == ("vips[2]", "198.18.100.1:80/tcp")
    assert problem.reason == "duplicate VIP, same as vips[0]"


@pytest.mark.parametrize(
    ("text", "path", "hint"),
    [
        ("tablesize = 65537", "tablesize", "did you mean table_size?"),
        (vip_toml('proto = "tcp"'), "vips[0].proto", "did you mean protocol?"),
        (
            vip_toml('backends = [{address = "10.1.0.1", wieght = 2}]'),
            "vips[0].backends[0].wieght",
            "did you mean weight?",
        ),
        (
            'default_backends = [{address = "10.1.0.1", colour = "red"}]',
            "default_backends[0].colour",
            "known keys: address, weight, state",
        ),
    ],
)
def test_an_unknown_key_is_refused_with_a_hint(text: str, path: str, hint: str) -> None:
    problem = only_problem(toml_error(text))
    assert problem.path == path
    assert problem.reason.startswith("unknown key")
    assert hint in problem.reason
    assert problem.value is not None


def test_an_unknown_top_level_table_is_refused_as_an_unknown_key() -> None:
    problem = only_problem(toml_error("[server]\nport = 8080\n"))
    assert (problem.path, problem.value) == ("server", {"port": 8080})
    assert "unknown key" in problem.reason


@pytest.mark.parametrize(
    ("weight", "reason"),
    [
        ("-1", "must be between 0 and 65535"),
        ("65536", "must be between 0 and 65535"),
        ("1.5", "must be an integer"),
        ("true", "must be an integer"),
        ('"2"', "must be an integer"),
    ],
)
def test_a_weight_out_of_range_is_refused_with_its_reason(weight: str, reason: str) -> None:
    problem = only_problem(
        toml_error(vip_toml(f'backends = [{{address = "10.1.0.1", weight = {weight}}}]'))
    )
    assert problem.path == "vips[0].backends[0].weight"
    assert problem.value == tomllib.loads(f"v = {weight}")["v"]
    assert problem.reason == reason


def test_weight_zero_and_maximum_are_accepted() -> None:
    body = 'backends = [{address = "10.1.0.1", weight = 0}, {address = "10.1.0.2", weight = 65535}]'
    assert [b.weight for b in config_from_toml_text(vip_toml(body)).vips[0].backends] == [0, 65535]


def test_an_unknown_backend_state_is_refused_listing_the_states() -> None:
    problem = only_problem(
        toml_error(vip_toml('backends = [{address = "10.1.0.1", state = "dead"}]'))
    )
    assert (problem.path, problem.value) == ("vips[0].backends[0].state", "dead")
    assert problem.reason == "must be one of: up, drain, down"


def test_a_backend_must_be_an_address_string_or_a_table() -> None:
    problem = only_problem(toml_error(vip_toml("backends = [5]")))
    assert (problem.path, problem.value) == ("vips[0].backends[0]", 5)
    assert "address string or a table" in problem.reason


def test_backends_must_be_an_array() -> None:
    problem = only_problem(toml_error(vip_toml('backends = "10.1.0.1"')))
    assert (problem.path, problem.reason) == ("vips[0].backends", "must be an array")


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        (65536, "must be a prime number (nearest: 65521 and 65537)"),
        (1, "must be between 2 and 16777216"),
        (1 << 24, "must be a prime number (nearest: 16777213)"),
        (16777259, "must be between 2 and 16777216"),
    ],
)
def test_a_table_size_must_be_a_prime_in_range(size: int, reason: str) -> None:
    problem = only_problem(toml_error(f"table_size = {size}"))
    assert (problem.path, problem.value, problem.reason) == ("table_size", size, reason)


def test_a_vips_own_table_size_must_be_a_prime_in_range() -> None:
    problem = only_problem(toml_error(vip_toml("table_size = 1000")))
    assert (problem.path, problem.value) == ("vips[0].table_size", 1000)
    assert "prime" in problem.reason


FIVE_BACKENDS = ", ".join(f'"10.1.0.{n}"' for n in range(1, 6))


@pytest.mark.parametrize(
    ("text", "path", "size_key"),
    [
        (f"table_size = 3\ndefault_backends = [{FIVE_BACKENDS}]", "default_backends", "table_size"),
        (
            "table_size = 3\n" + vip_toml(f"backends = [{FIVE_BACKENDS}]"),
            "vips[0].backends",
            "table_size, or set this VIP's own",
        ),
        (
            vip_toml(f"table_size = 2\nbackends = [{FIVE_BACKENDS}]"),
            "vips[0].backends",
            "this VIP's table_size",
        ),
    ],
)
def test_backends_must_fit_in_the_table(text: str, path: str, size_key: str) -> None:
    problem = only_problem(toml_error(text))
    assert problem.path == path
    assert problem.reason.startswith("5 backends do not fit in a Maglev table of")
    assert problem.reason.endswith(f"slots; raise {size_key}")


def test_is_prime_agrees_with_trial_division() -> None:
    def naive(n: int) -> bool:
        return n >= 2 and all(n % d for d in range(2, n))

    assert [n for n in range(2000) if is_prime(n)] == [n for n in range(2000) if naive(n)]
    assert is_prime(65537) and is_prime(16777213) and not is_prime(16777215)


def test_a_port_needs_a_protocol() -> None:
    problem = only_problem(toml_error(vip_toml("port = 80")))
    assert (problem.path, problem.value) == ("vips[0].port", 80)
    assert "a port needs a protocol" in problem.reason


def test_a_protocol_needs_a_port() -> None:
    problem = only_problem(toml_error(vip_toml('protocol = "udp"')))
    assert (problem.path, problem.value) == ("vips[0].protocol", Protocol.UDP)
    assert "a protocol needs a port" in problem.reason


@pytest.mark.parametrize("port", [0, 65536, -80])
def test_a_port_must_be_between_1_and_65535(port: int) -> None:
    problem = only_problem(toml_error(vip_toml(f'protocol = "tcp"\nport = {port}')))
    assert (problem.path, problem.value) == ("vips[0].port", port)
    assert problem.reason == "must be between 1 and 65535"


def test_bad_encap_lists_the_supported_ones() -> None:
    problem = only_problem(toml_error(vip_toml('encap = "gue"')))
    assert (problem.path, problem.value) == ("vips[0].encap", "gue")
    assert problem.reason == "unsupported encapsulation; supported: gre, ipip, vxlan, geneve, route"


@pytest.mark.parametrize(
    ("written", "value", "reason"),
    [
        ('"0xZZ"', "0xZZ", "not a number"),
        ('"0x"', "0x", "not a number"),
        ('"seed"', "seed", "not a number"),
        ('"-5"', "-5", "not a number"),
        ("-5", -5, "must be between 0 and 0xffffffffffffffff"),
        ('"0x10000000000000000"', "0x10000000000000000", "must be between 0"),
        ("1.0", 1.0, "must be an integer"),
    ],
)
def test_a_bad_hash_seed_is_refused_with_its_reason(
    written: str, value: object, reason: str
) -> None:
    problem = only_problem(toml_error(f"hash_seed = {written}"))
    assert (problem.path, problem.value) == ("hash_seed", value)
    assert reason in problem.reason


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        ("", "must not be empty"),
        ("eth 0", 'must not contain " "'),
        ("eth0:1", 'must not contain ":"'),
        ("a/b", 'must not contain "/"'),
        ("tab\there", 'must not contain "\\t"'),
        ("..", "not a valid interface name"),
        ("a-very-long-name", "is 16 bytes long; interface names have at most 15"),
        ("ééééééééé", "is 18 bytes long"),
    ],
)
def test_a_device_name_the_kernel_would_refuse_is_refused(device: str, reason: str) -> None:
    problem = only_problem(toml_error(f"device = {tomllib_string(device)}"))
    assert (problem.path, problem.value) == ("device", device)
    assert reason in problem.reason


def tomllib_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t") + '"'


@pytest.mark.parametrize("device", ["eth0", "enp3s0f1", "veth-rr.100", "a" * 15, "lo"])
def test_every_valid_device_name_is_accepted(device: str) -> None:
    assert config_from_toml_text(f'device = "{device}"').device == device


def test_vip_on_the_balancers_own_address() -> None:
    problem = only_problem(toml_error('lb_address = "198.18.0.10"\n' + vip_toml("", "198.18.0.10")))
    assert (problem.path, problem.value) == ("vips[0].address", IPv4Address("198.18.0.10"))
    assert "balancer's own address" in problem.reason


def test_lb_address_ipv6_is_read_from_a_file_and_the_environment() -> None:
    config = config_from_toml_text('lb_address_ipv6 = "2001:2::a"\n')
    assert config.lb_address_ipv6 == IPv6Address("2001:2::a")
    assert config_from_toml_text("").lb_address_ipv6 is None
    config = config_from_env(SEED_ENV | {"RR_LB_ADDRESS_IPV6": "2001:2::b"})
    assert config.lb_address_ipv6 == IPv6Address("2001:2::b")


def test_lb_address_ipv6_refuses_ipv4_and_what_every_address_refuses() -> None:
    problem = only_problem(toml_error('lb_address_ipv6 = "198.18.0.10"\n'))
    assert (problem.path, problem.value) == ("lb_address_ipv6", IPv4Address("198.18.0.10"))
    assert "must be an IPv6 address" in problem.reason
    problem = only_problem(toml_error('lb_address_ipv6 = "fe80::1"\n'))
    assert problem.path == "lb_address_ipv6" and "link-local" in problem.reason
    problem = only_problem(env_error(SEED_ENV | {"RR_LB_ADDRESS_IPV6": "2001:2::/64"}))
    assert problem.path == "RR_LB_ADDRESS_IPV6"


def test_a_vip_or_backend_on_the_balancers_own_ipv6_address_is_refused() -> None:
    error = toml_error(
        'lb_address_ipv6 = "2001:2::a"\n'
        + vip_toml('backends = ["2001:2::A", "2001:2::10"]', "2001:2:0::a")
    )
    own = "is the balancer's own address (lb_address_ipv6)"
    assert [(p.path, str(p.value), p.reason) for p in error.problems] == [
        ("vips[0].address", "2001:2::a", own),
        ("vips[0].backends[0].address", "2001:2::a", own),
        ("vips[0].backends[0].address", "2001:2::a", "is a VIP address (vips[0])"),
    ]


def test_an_ipv6_vip_or_backend_on_the_balancers_own_address_is_refused() -> None:
    error = toml_error(
        'lb_address = "2001:2::a"\ndefault_backends = ["2001:0002::000a"]\n'
        + vip_toml('backends = ["2001:2::A", "2001:2::10"]', "2001:2:0::a")
    )
    own = "is the balancer's own address (lb_address)"
    assert [(p.path, str(p.value), p.reason) for p in error.problems] == [
        ("vips[0].address", "2001:2::a", own),
        ("default_backends[0].address", "2001:2::a", own),
        ("default_backends[0].address", "2001:2::a", "is a VIP address (vips[0])"),
        ("vips[0].backends[0].address", "2001:2::a", own),
        ("vips[0].backends[0].address", "2001:2::a", "is a VIP address (vips[0])"),
    ]
    assert 'vips[0].address: "2001:2::a": is the balancer\'s own address' in str(error)


def test_backend_on_the_balancers_own_address_or_a_vip() -> None:
    error = toml_error(
        'lb_address = "198.18.0.10"\ndefault_backends = ["198.18.0.10"]\n'
        + vip_toml('backends = ["198.18.100.1"]')
    )
    assert [(p.path, p.reason) for p in error.problems] == [
        ("default_backends[0].address", "is the balancer's own address (lb_address)"),
        ("vips[0].backends[0].address", "is a VIP address (vips[0])"),
    ]


def test_a_vip_without_an_address_is_refused_as_missing() -> None:
    problem = only_problem(toml_error('[[vips]]\nprotocol = "tcp"\nport = 80\n'))
    assert (problem.path, problem.reason) == ("vips[0].address", "required, but missing")
    assert str(problem) == "vips[0].address: required, but missing"


def test_vips_written_as_a_table_instead_of_an_array() -> None:
    problem = only_problem(toml_error('[vips]\naddress = "198.18.100.1"\n'))
    assert (problem.path, problem.reason) == ("vips", "must be an array")


def test_toml_syntax_error_gives_line_and_column() -> None:
    error = toml_error('device = "eth0"\n\nouter_ttl = = 3\n')
    problem = only_problem(error)
    assert problem.path == "line 3, column 13"
    assert problem.reason.startswith("invalid TOML: ")
    assert str(error).startswith(
        "configuration error in test.toml: line 3, column 13: invalid TOML"
    )


def test_toml_syntax_error_at_end_of_file_gives_its_line() -> None:
    problem = only_problem(toml_error('device = "eth0"\nvips = [\n'))
    assert problem.path.startswith("line 3, column 1")


def test_duplicate_toml_key_is_a_syntax_error() -> None:
    problem = only_problem(toml_error("outer_ttl = 3\nouter_ttl = 4\n"))
    assert "invalid TOML" in problem.reason


def test_api_bodies_are_validated_with_the_configurations_messages() -> None:
    vip = validate_as(Vip, {"address": "198.18.100.9", "backends": ["10.1.0.1"]}, "request body")
    assert vip.backends == (Backend(address=IPv4Address("10.1.0.1")),)
    with pytest.raises(ConfigError) as caught:
        validate_as(Backend, {"address": "10.1.0.1", "weight": 70000}, "request body")
    assert str(caught.value) == (
        "configuration error in request body: weight: 70000: must be between 0 and 65535"
    )
    with pytest.raises(ConfigError, match="must be a table"):
        validate_as(Config, ["not", "a", "table"], "request body")


# ---------------------------------------------------------------------------------------------
# Files


def test_a_missing_configuration_file_says_it_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_toml(tmp_path / "absent.toml")
    assert str(caught.value) == (
        f"configuration error in {tmp_path / 'absent.toml'}: "
        "cannot read the file: No such file or directory"
    )


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('device = "\xe9th0"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_toml(path)


def test_errors_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("outer_ttl = 256\n")
    with pytest.raises(ConfigError) as caught:
        load_toml(path)
    assert (
        str(caught.value)
        == f"configuration error in {path}: outer_ttl: 256: must be between 1 and 255"
    )


# ---------------------------------------------------------------------------------------------
# The environment


def test_target_ips_tolerate_whitespace_and_empty_items() -> None:
    config = config_from_env({"RR_DEVICE": "eth0", "RR_TARGET_IPS": " ;10.1.0.1 ;; 2001:2::1;"})
    assert [b.address for b in config.default_backends] == [
        ip_address("10.1.0.1"),
        ip_address("2001:2::1"),
    ]


def test_empty_items_between_target_ips_are_skipped() -> None:
    config = config_from_env({"RR_DEVICE": "eth0", "RR_TARGET_IPS": "10.1.0.1;;10.1.0.2"})
    assert len(config.default_backends) == 2


@pytest.mark.parametrize("value", ["", ";", " ; ;; "])
def test_target_ips_without_any_address_are_refused(value: str) -> None:
    problem = only_problem(env_error({"RR_DEVICE": "eth0", "RR_TARGET_IPS": value}))
    assert (problem.path, problem.value) == ("RR_TARGET_IPS", value)
    assert "no backend addresses" in problem.reason


def test_bad_target_ip_is_named_with_its_position() -> None:
    error = env_error({"RR_DEVICE": "eth0", "RR_TARGET_IPS": "10.1.0.1;;10.1.0.x;10.1.0.1"})
    assert [(p.path, p.value) for p in error.problems] == [
        ("RR_TARGET_IPS item 3", "10.1.0.x"),
        ("RR_TARGET_IPS item 4", "10.1.0.1"),
    ]
    assert error.problems[1].reason == "duplicate backend, same as item 1"
    assert error.source == "environment"
    assert 'RR_TARGET_IPS item 3: "10.1.0.x": not an IPv4 or IPv6 address' in str(error)


def test_the_optional_environment_variables_set_their_keys() -> None:
    config = config_from_env(
        SEED_ENV
        | {"RR_XDP_MODE": "generic", "RR_LB_ADDRESS": "198.18.0.10", "RR_HASH_SEED": "0x1234"}
    )
    assert config.xdp_mode is XdpMode.GENERIC
    assert config.lb_address == IPv4Address("198.18.0.10")
    assert config.hash_seed == 0x1234


def test_variable_problems_are_named_by_variable_and_all_reported() -> None:
    error = env_error(
        {
            "RR_DEVICE": "eth/0",
            "RR_TARGET_IPS": "10.1.0.1;bad",
            "RR_XDP_MODE": "offload",
            "RR_HASH_SEED": "0xnope",
        }
    )
    assert [(p.path, p.value) for p in error.problems] == [
        ("RR_DEVICE", "eth/0"),
        ("RR_XDP_MODE", "offload"),
        ("RR_HASH_SEED", "0xnope"),
        ("RR_TARGET_IPS item 2", "bad"),
    ]


def test_target_ip_that_is_the_balancers_address_is_named_by_item() -> None:
    error = env_error(SEED_ENV | {"RR_LB_ADDRESS": "10.1.0.2"})
    problem = only_problem(error)
    assert (problem.path, problem.value) == ("RR_TARGET_IPS item 2", IPv4Address("10.1.0.2"))


def test_an_unknown_rr_variable_is_refused_with_a_suggestion() -> None:
    problem = only_problem(env_error(SEED_ENV | {"RR_TARGET_IP": "10.1.0.3"}))
    assert (problem.path, problem.value) == ("RR_TARGET_IP", "10.1.0.3")
    assert "unknown variable (did you mean RR_TARGET_IPS?)" in problem.reason
    assert "known: RR_CONFIG, RR_DEVICE, RR_HASH_SEED, RR_INGRESS, RR_LB_ADDRESS" in problem.reason


def test_other_variables_are_ignored() -> None:
    assert (
        config_from_env(SEED_ENV | {"PATH": "/bin", "RRX": "1", "rr_device": "x"}).device == "eth0"
    )


def test_an_optional_variable_set_but_empty_is_refused() -> None:
    problem = only_problem(env_error(SEED_ENV | {"RR_LB_ADDRESS": ""}))
    assert (problem.path, problem.value) == ("RR_LB_ADDRESS", "")
    assert "set but empty" in problem.reason


def test_nothing_configured_says_how_to_run() -> None:
    error = env_error({"HOME": "/root"})
    assert 'RR_DEVICE=eth0 RR_TARGET_IPS="10.1.0.1;10.1.0.2" rusty-rail run' in str(error)
    assert "RR_CONFIG" in str(error)


@pytest.mark.parametrize("missing", ["RR_DEVICE", "RR_TARGET_IPS"])
def test_device_and_targets_are_both_required_without_a_file(missing: str) -> None:
    environ = {name: value for name, value in SEED_ENV.items() if name != missing}
    problem = only_problem(env_error(environ))
    assert problem.path == missing
    assert "required without a configuration file" in problem.reason


def test_load_reads_the_file_named_by_rr_config() -> None:
    assert load({"RR_CONFIG": str(EXAMPLE)}) == load_toml(EXAMPLE)


def test_variables_override_the_file() -> None:
    overrides = {
        "RR_DEVICE": "eth7",
        "RR_XDP_MODE": "generic",
        "RR_LB_ADDRESS": "198.18.0.99",
        "RR_HASH_SEED": "42",
    }
    config = load(overrides, EXAMPLE)
    assert (config.device, config.xdp_mode, config.hash_seed) == ("eth7", XdpMode.GENERIC, 42)
    assert config.lb_address == IPv4Address("198.18.0.99")
    assert config.vips == load_toml(EXAMPLE).vips


def test_config_path_argument_wins_over_rr_config(tmp_path: Path) -> None:
    config = load({"RR_CONFIG": str(tmp_path / "absent.toml")}, EXAMPLE)
    assert config.device == "eth0"


def test_bad_override_is_named_by_variable(tmp_path: Path) -> None:
    error = env_error({"RR_LB_ADDRESS": "198.18.100.1"}, EXAMPLE)
    problem = only_problem(error)
    # The override collides with a VIP in the file: reported against the file's VIP.
    assert problem.path == "vips[0].address"
    assert error.source == f"{EXAMPLE} with RR_LB_ADDRESS from the environment"
    problem = only_problem(env_error({"RR_DEVICE": "bad name"}, EXAMPLE))
    assert (problem.path, problem.value) == ("RR_DEVICE", "bad name")


def test_file_and_target_ips_together_are_ambiguous() -> None:
    error = env_error({"RR_TARGET_IPS": "10.1.0.1", "RR_CONFIG": str(EXAMPLE)})
    problem = only_problem(error)
    assert (problem.path, problem.value) == ("RR_TARGET_IPS", "10.1.0.1")
    assert "cannot be combined with a configuration file" in problem.reason
    assert "ambiguous" in problem.reason
    only_problem(env_error({"RR_TARGET_IPS": "10.1.0.1"}, EXAMPLE))


def test_a_missing_rr_config_file_is_named_as_the_source(tmp_path: Path) -> None:
    error = env_error({"RR_CONFIG": str(tmp_path / "absent.toml")})
    assert error.source == str(tmp_path / "absent.toml")
    assert "No such file" in only_problem(error).reason


# ---------------------------------------------------------------------------------------------
# VIP keys


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("198.18.100.1", VipKey(IPv4Address("198.18.100.1"))),
        ("198.18.100.1:80/tcp", VipKey(IPv4Address("198.18.100.1"), Protocol.TCP, 80)),
        ("[2001:2::1]:53/udp", VipKey(IPv6Address("2001:2::1"), Protocol.UDP, 53)),
        ("2001:2::1", VipKey(IPv6Address("2001:2::1"))),
        ("[2001:2::1]", VipKey(IPv6Address("2001:2::1"))),
        ("[2001:0002::0001]:53/udp", VipKey(IPv6Address("2001:2::1"), Protocol.UDP, 53)),
    ],
)
def test_every_documented_vip_key_spelling_parses(text: str, key: VipKey) -> None:
    assert parse_vip_key(text) == key


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("198.18.100.1:80", "a port needs a protocol"),
        ("198.18.100.1/tcp", "a protocol needs a port"),
        ("198.18.100.1:0/tcp", "between 1 and 65535"),
        ("198.18.100.1:http/tcp", "between 1 and 65535"),
        ("198.18.100.1:80/sctp", "must be one of: tcp, udp"),
        ("198.18.100.0/24", 'protocol "24" must be one of: tcp, udp'),
        ("2001:2::1:80/tcp", "written in brackets"),
        ("[198.18.100.1]:80/tcp", "only IPv6 addresses are written in brackets"),
        ("[2001:2::1:80/tcp", 'missing "]"'),
        ("[2001:2::1]80/tcp", 'expected ":port"'),
        ("vip.example.com:80/tcp", "not an IPv4 or IPv6 address"),
        ("[fe80::10]:80/tcp", "link-local"),
        ("[2001:2::10%eth0]:80/tcp", "zone index"),
        ("2001:2::10%3", "zone index"),
        ("[::ffff:198.18.100.1]:80/tcp", 'write "198.18.100.1"'),
        ("", "not an IPv4 or IPv6 address"),
    ],
)
def test_a_bad_vip_key_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_vip_key(text)
    problem = only_problem(caught.value)
    assert problem.value == text
    assert reason in problem.reason


addresses = st.one_of(
    st.ip_addresses(v=4).filter(lambda a: not (a.is_unspecified or a.is_multicast)),
    st.ip_addresses(v=6).filter(
        lambda a: not (a.is_unspecified or a.is_multicast or a.ipv4_mapped or a.is_link_local)
    ),
).filter(lambda a: str(a) != "255.255.255.255")

vip_keys = st.one_of(
    st.builds(VipKey, addresses),
    st.builds(VipKey, addresses, st.sampled_from(Protocol), st.integers(1, 65535)),
)


@given(vip_keys)
def test_a_vip_keys_text_parses_back_to_the_same_key(key: VipKey) -> None:
    assert parse_vip_key(str(key)) == key


@given(vip_keys)
def test_a_vips_key_text_parses_back_to_that_vips_key(key: VipKey) -> None:
    vip = Vip(address=key.address, protocol=key.protocol, port=key.port)
    assert parse_vip_key(str(vip.key)) == vip.key == key


@given(st.text(alphabet="0123456789abcdef:.[]/tcpud x%", max_size=30))
def test_parse_vip_key_raises_only_config_error(text: str) -> None:
    try:
        key = parse_vip_key(text)
    except ConfigError as error:
        assert error.problems
    else:
        assert parse_vip_key(str(key)) == key


# ---------------------------------------------------------------------------------------------
# Nothing but ConfigError escapes, whatever the input


toml_values = st.recursive(
    st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.booleans(),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.sampled_from(["10.1.0.1", "2001:2::1", "tcp", "gre", "drain", "0x10", "eth0"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(["address", "weight", "state", "port", "x"]), children),
    ),
    max_leaves=8,
)
config_keys = st.sampled_from([*Config.model_fields, *Vip.model_fields, "backends", "unknown"])


@given(st.dictionaries(config_keys, toml_values, max_size=6))
def test_arbitrary_data_gives_a_config_or_a_config_error(data: dict[str, Any]) -> None:
    try:
        validate_as(Config, data, "fuzz")
    except ConfigError as error:
        assert error.problems
        assert all(problem.reason for problem in error.problems)


@given(st.text(max_size=60))
def test_arbitrary_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        config_from_toml_text(text)
    except ConfigError as error:
        assert str(error).startswith(("configuration error in <string>", f"{len(error.problems)}"))


def test_the_json_schema_carries_every_bound() -> None:
    schema = Config.model_json_schema()
    text = str(schema)
    assert "'ge':" not in text and "'le':" not in text  # constraints, not stray keywords
    weight = schema["$defs"]["Backend"]["properties"]["weight"]
    assert (weight["minimum"], weight["maximum"]) == (0, 65535)
    health = schema["$defs"]["Health"]["properties"]
    bounds = {
        key: (health[key]["anyOf"][0]["minimum"], health[key]["anyOf"][0]["maximum"])
        for key in ("interval", "timeout", "icmp_hold", "icmp_confirm_timeout", "rise", "port")
    }
    assert bounds == {
        "interval": (0.1, 3600),
        "timeout": (0.01, 60),
        "icmp_hold": (0, 3600),
        "icmp_confirm_timeout": (0.01, 10),
        "rise": (1, 100),
        "port": (1, 65535),
    }
    assert schema["properties"]["conntrack_size"]["minimum"] == 1024
    assert schema["properties"]["outer_ttl"]["maximum"] == 255
    assert schema["$defs"]["AdminState"]["enum"] == [state.value for state in AdminState]
    # What the validators also read: a seed as text, a backend as its address.
    seed = schema["properties"]["hash_seed"]["anyOf"]
    assert [part["type"] for part in seed] == ["integer", "string"]
    entry = schema["properties"]["default_backends"]["items"]["anyOf"]
    assert entry[0] == {"$ref": "#/$defs/Backend"} and entry[1]["type"] == "string"


def test_a_tunnel_check_on_an_ipv6_backend_is_taken() -> None:
    """The tunnel probe speaks IPv6 (an ICMPv6 echo inside IPv6 GRE): a VIP with both families
    of backends may give all of them the tunnel check."""
    text = vip_toml(
        'port = 80\nprotocol = "tcp"\nbackends = ["198.18.2.1", "2001:2::21"]\n'
        '[vips.health]\ncheck = "tunnel"\n',
        address="2001:2::10",
    )
    config = config_from_toml_text(text, source="test.toml")
    vip = config.vips[0]
    assert [config.health_for(vip, b).check.value for b in vip.backends] == ["tunnel"] * 2
