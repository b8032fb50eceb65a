"""Backend health without sockets: the [health] settings (merged per level, errors naming field
and value), the HealthBook state machine (rise and fall, ICMP suspect / trust / off, the
floor, recovery, fail-open and drop, admin and configuration changes) and its events.
"""

from __future__ import annotations

import json
import logging
from ipaddress import IPv4Address, ip_address
from itertools import count
from typing import Any

import pytest

from rusty_rail.config import (
    AllUnhealthy,
    CheckType,
    Config,
    ConfigError,
    IcmpPolicy,
    config_from_toml_text,
    merge_health,
    validate_as,
)
from rusty_rail.control.events import EventLog
from rusty_rail.control.health import HealthBook, IcmpState, Status
from rusty_rail.model.icmp import IcmpReport

VIP = "198.19.0.10"
BACKENDS = ["198.18.0.21", "198.18.0.22", "198.18.0.23"]
SERVICE = f"{VIP}:80/tcp"


def config(health: dict[str, Any] | None = None, *, backends: list[Any] | None = None) -> Config:
    vip: dict[str, Any] = {
        "address": VIP,
        "protocol": "tcp",
        "port": 80,
        "backends": BACKENDS if backends is None else backends,
    }
    if health is not None:
        vip["health"] = health
    return validate_as(Config, {"vips": [vip]}, "test")


def book_for(cfg: Config) -> HealthBook:
    clock = count(1000)
    book = HealthBook(EventLog(lambda: float(next(clock))))
    book.configure(cfg)
    return book


def report(backend: str, code: int = 2) -> IcmpReport:
    return IcmpReport(ip_address(backend).packed, ip_address(backend).packed, 3, code)


def statuses(book: HealthBook, service: str = SERVICE) -> list[str]:
    return [b.status.value for b in book.ordered([service])]


def out(book: HealthBook, service: str = SERVICE) -> list[str]:
    return [a for a in BACKENDS if not book.verdict.healthy(service, ip_address(a))]


def events(book: HealthBook) -> list[tuple[str, str | None, str | None, str | None, str]]:
    return [(e.kind, e.backend, e.previous, e.current, e.cause) for e in book.events.since()]


# --- settings ------------------------------------------------------------------------------------


def test_settings_merge_backend_over_vip_over_top_level_over_defaults() -> None:
    cfg = config_from_toml_text(
        f"""
[health]
check = "http"
port = 8080
interval = 5
icmp = "trust"
[[vips]]
address = "{VIP}"
protocol = "tcp"
port = 80
health = {{ fall = 5, icmp_max_removed = 0.25 }}
backends = [
    "{BACKENDS[0]}",
    {{ address = "{BACKENDS[1]}", health = {{ port = 81, icmp = "off" }} }},
]
"""
    )
    vip = cfg.vips[0]
    first, second = (cfg.health_for(vip, backend) for backend in vip.backends)
    assert (first.check, first.port, first.interval, first.fall) == (CheckType.HTTP, 8080, 5.0, 5)
    assert (first.icmp, first.icmp_max_removed, first.rise) == (IcmpPolicy.TRUST, 0.25, 2)
    assert (second.port, second.icmp) == (81, IcmpPolicy.OFF)
    assert first.timeout == 1.0  # the default, shorter than the interval


def test_defaults_check_nothing_and_suspect_icmp_with_the_vip_port() -> None:
    settings = merge_health(vip_port=443)
    assert (settings.check, settings.port, settings.icmp) == (
        CheckType.NONE,
        443,
        IcmpPolicy.SUSPECT,
    )
    assert (settings.all_unhealthy, settings.icmp_max_removed) == (AllUnhealthy.FAIL_OPEN, 0.5)
    assert merge_health(vip_port=None).port is None


def test_the_default_timeout_follows_a_short_interval() -> None:
    cfg = config({"interval": 0.5})
    assert cfg.health_for(cfg.vips[0], cfg.vips[0].backends[0]).timeout == 0.5


def test_expected_statuses_take_codes_and_classes() -> None:
    cfg = config({"expect_status": [204, "3XX"]})
    settings = cfg.health_for(cfg.vips[0], cfg.vips[0].backends[0])
    assert [settings.status_ok(s) for s in (200, 204, 301, 399, 404, 503)] == [
        False, True, True, True, False, False,
    ]  # fmt: skip
    default = merge_health()
    assert [default.status_ok(s) for s in (200, 302, 404, 500)] == [True, True, False, False]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        config_from_toml_text(text)
    return [str(problem) for problem in raised.value.problems]


ADDRESS_WIDE = f'[[vips]]\naddress = "{VIP}"\nbackends = ["{BACKENDS[0]}"]\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[health]\ncheck = "tcp"\n' + ADDRESS_WIDE,
            "health.port: the tcp check needs a port, and this VIP matches every port: set port",
        ),
        (
            f'[[vips]]\naddress = "{VIP}"\nhealth = {{ check = "http" }}\n'
            f'backends = ["{BACKENDS[0]}"]\n',
            "vips[0].health.port: the http check needs a port, and this VIP matches every port",
        ),
        (
            f'default_backends = ["{BACKENDS[0]}"]\n[health]\ncheck = "tcp"\n',
            "health.port: the tcp check needs a port, and the default set has none",
        ),
        ("[health]\ntimeout = 3\n", "health.timeout: 3.0: must not be longer than the interval"),
        ("[health]\ninterval = 0.05\n", "health.interval: 0.05: must be between 0.1 and 3600"),
        ("[health]\ninterval = true\n", "health.interval: true: must be a number of seconds"),
        ("[health]\nrise = 0\n", "health.rise: 0: must be between 1 and 100"),
        ('[health]\nexpect_status = ["2xx", 600]\n', 'health.expect_status: ["2xx", 600]: item 1'),
        ("[health]\nexpect_status = 200\n", "health.expect_status: 200: must be a non-empty"),
        ('[health]\npath = "/a b"\n', 'health.path: "/a b": must be printable ASCII'),
        ('[health]\nicmp = "always"\n', 'health.icmp: "always": must be one of: suspect, trust'),
        ("[health]\nicmp_max_removed = 1.5\n", "health.icmp_max_removed: 1.5: must be between"),
        ('[health]\nall_unhealthy = "open"\n', 'health.all_unhealthy: "open": must be one of'),
        ("[health]\nchek = 1\n", "health.chek: 1: unknown key (did you mean check?)"),
        (
            ADDRESS_WIDE.replace(f'"{BACKENDS[0]}"', f'{{address = "{BACKENDS[0]}", '
                                 "health = {icmp_hold = 1}}"),
            "vips[0].backends[0].health.icmp_hold: 1: unknown key",
        ),
        (
            "[health]\ninterval = 1\n" + ADDRESS_WIDE.replace(
                f'"{BACKENDS[0]}"', f'{{address = "{BACKENDS[0]}", health = {{timeout = 2}}}}'
            ),
            "vips[0].backends[0].health.timeout: 2.0: must not be longer than the interval (1 s)",
        ),
    ],
)  # fmt: skip
def test_bad_settings_are_named_with_their_value(text: str, expected: str) -> None:
    found = problems(text)
    assert any(problem.startswith(expected) for problem in found), found


def test_a_configuration_without_health_dumps_as_before_and_with_it_round_trips() -> None:
    plain = config()
    assert "health" not in json.dumps(plain.model_dump(mode="json"))
    with_health = config({"check": "http", "fall": 4}, backends=[
        BACKENDS[0], {"address": BACKENDS[1], "health": {"port": 81}},
    ])  # fmt: skip
    dumped = with_health.model_dump(mode="json")
    assert dumped["vips"][0]["health"] == {"check": "http", "fall": 4}
    assert dumped["vips"][0]["backends"][1]["health"] == {"port": 81}
    assert validate_as(Config, dumped, "round trip") == with_health


# --- active checks ------------------------------------------------------------------------------


def test_a_check_takes_fall_failures_to_go_down_and_rise_successes_to_come_back() -> None:
    book = book_for(config({"check": "tcp", "fall": 3, "rise": 2}))
    backend = ip_address(BACKENDS[0])
    assert statuses(book) == ["healthy"] * 3
    assert not book.check_result(SERVICE, backend, False, "refused")
    assert not book.check_result(SERVICE, backend, False, "refused")
    assert out(book) == []
    assert book.check_result(SERVICE, backend, False, "refused")  # the third: down
    assert out(book) == [BACKENDS[0]]
    assert not book.check_result(SERVICE, backend, True, "connected")
    assert not book.check_result(SERVICE, backend, False, "refused")  # the rise starts over
    assert not book.check_result(SERVICE, backend, True, "connected")
    assert book.check_result(SERVICE, backend, True, "connected")
    assert out(book) == []
    assert events(book) == [
        ("health", BACKENDS[0], "healthy", "unhealthy", "check"),
        ("health", BACKENDS[0], "unhealthy", "healthy", "check"),
    ]
    assert book.events.since()[0].detail == "refused"


def test_results_for_unchecked_or_unknown_backends_change_nothing() -> None:
    book = book_for(config())
    assert not book.check_result(SERVICE, ip_address(BACKENDS[0]), False, "refused")
    assert not book.check_result("198.19.0.99", ip_address(BACKENDS[0]), False, "refused")
    assert statuses(book) == ["healthy"] * 3 and book.checked() == []


# --- ICMP ---------------------------------------------------------------------------------------


def test_suspect_a_report_is_confirmed_by_a_failed_probe() -> None:
    book = book_for(config())
    assert not book.report(report(BACKENDS[0]))
    assert statuses(book) == ["suspect", "healthy", "healthy"]
    assert out(book) == [] and book.to_confirm(ip_address(BACKENDS[0]))
    assert book.probe_result(ip_address(BACKENDS[0]), False, "no echo reply")
    assert out(book) == [BACKENDS[0]] and not book.to_confirm(ip_address(BACKENDS[0]))
    assert list(book.to_recover()) == [ip_address(BACKENDS[0])]
    assert events(book) == [
        ("health", BACKENDS[0], "healthy", "suspect", "icmp"),
        ("health", BACKENDS[0], "suspect", "unhealthy", "probe"),
    ]


def test_suspect_a_report_is_cleared_by_a_probe_that_gets_through() -> None:
    book = book_for(config())
    book.report(report(BACKENDS[1], code=1))
    assert not book.probe_result(ip_address(BACKENDS[1]), True, "echo reply in 0.3 ms")
    assert statuses(book) == ["healthy"] * 3
    assert book.reports == {(ip_address(BACKENDS[1]), 1): 1}


def test_after_a_confirmed_failure_rise_probes_bring_it_back_and_a_report_restarts_them() -> None:
    book = book_for(config({"rise": 3}))
    address = ip_address(BACKENDS[0])
    book.report(report(BACKENDS[0]))
    book.probe_result(address, False, "no echo")
    book.probe_result(address, True, "echo")
    book.probe_result(address, True, "echo")
    book.report(report(BACKENDS[0]))  # still refusing GRE now and then
    book.probe_result(address, True, "echo")
    book.probe_result(address, True, "echo")
    assert out(book) == [BACKENDS[0]]
    assert book.probe_result(address, True, "echo")
    assert out(book) == [] and book.to_recover() == {}


def test_trust_takes_out_at_once_up_to_the_floor_then_probes_decide() -> None:
    book = book_for(config({"icmp": "trust", "icmp_max_removed": 0.34}))
    assert book.floor_allowance(SERVICE) == 1
    assert book.report(report(BACKENDS[0]))
    assert out(book) == [BACKENDS[0]]
    assert not book.report(report(BACKENDS[1]))  # the floor holds: suspect instead
    assert statuses(book) == ["unhealthy", "suspect", "healthy"]
    assert book.floor_held == {SERVICE: 1}
    assert ("floor", BACKENDS[1], None, None, "floor") in events(book)
    # A probe that fails confirms the second; the first stays out until it rises.
    assert book.probe_result(ip_address(BACKENDS[1]), False, "no echo")
    assert out(book) == BACKENDS[:2]
    # Confirming the first (a failed recovery probe) makes room under the floor again.
    book.probe_result(ip_address(BACKENDS[0]), False, "no echo")
    assert book.backends[(SERVICE, ip_address(BACKENDS[0]))].icmp_confirmed
    assert book.report(report(BACKENDS[2]))
    assert book.floor_held == {SERVICE: 1}


def serving(book: HealthBook, backend: str) -> str:
    return book.verdict.serving(SERVICE, ip_address(backend)).value


def test_a_trusted_report_drains_until_a_probe_or_the_check_confirms() -> None:
    """Issue 14, item 5: a trusted report alone keeps the backend's connections (drain: no
    new flows); a failed probe, or a failing check, confirms it down (its flows move)."""
    book = book_for(config({"icmp": "trust", "icmp_max_removed": 0.67, "check": "tcp", "fall": 1}))
    book.report(report(BACKENDS[0]))
    book.report(report(BACKENDS[1]))
    assert statuses(book) == ["unhealthy", "unhealthy", "healthy"]
    assert [serving(book, b) for b in BACKENDS] == ["drain", "drain", "serve"]
    assert book.probe_result(ip_address(BACKENDS[0]), False, "no echo")  # confirmed
    assert [serving(book, b) for b in BACKENDS] == ["out", "drain", "serve"]
    book.check_result(SERVICE, ip_address(BACKENDS[1]), False, "refused")  # its check fails
    assert [serving(book, b) for b in BACKENDS] == ["out", "out", "serve"]


def test_a_trusted_report_that_probes_clear_brings_the_backend_back_without_a_break() -> None:
    book = book_for(config({"icmp": "trust", "icmp_max_removed": 0.34, "rise": 2}))
    book.report(report(BACKENDS[0]))
    assert serving(book, BACKENDS[0]) == "drain"
    book.probe_result(ip_address(BACKENDS[0]), True, "echo")
    assert serving(book, BACKENDS[0]) == "drain"  # a recovery probe, the rise counts
    assert book.probe_result(ip_address(BACKENDS[0]), True, "echo")
    assert serving(book, BACKENDS[0]) == "serve" and statuses(book)[0] == "healthy"


def test_a_forged_flood_under_trust_takes_out_no_more_than_the_floor() -> None:
    book = book_for(config({"icmp": "trust", "icmp_max_removed": 0.5}))
    for _ in range(100):
        for backend in BACKENDS:
            book.report(report(backend))
        for backend in BACKENDS:  # every probe gets through: the reports were forged
            book.probe_result(ip_address(backend), True, "echo")
        assert len(out(book)) <= 1
    assert book.floor_held[SERVICE] >= 99
    # The floor holding is one event while it holds, not one per report.
    assert [kind for kind, *_ in events(book)].count("floor") == 1


def test_icmp_off_ignores_reports_and_unwatches_the_address() -> None:
    book = book_for(config({"icmp": "off"}))
    assert not book.report(report(BACKENDS[0]))
    assert statuses(book) == ["healthy"] * 3 and book.watched() == set()
    assert book.reports == {(ip_address(BACKENDS[0]), 2): 1}  # counted all the same


def test_one_address_in_two_vips_follows_each_vips_policy() -> None:
    cfg = validate_as(
        Config,
        {
            "vips": [
                {"address": VIP, "protocol": "tcp", "port": 80, "backends": BACKENDS},
                {
                    "address": VIP,
                    "protocol": "tcp",
                    "port": 443,
                    "health": {"icmp": "trust"},
                    "backends": BACKENDS,
                },
            ]
        },
        "test",
    )
    book = book_for(cfg)
    book.report(report(BACKENDS[0]))
    assert statuses(book) == ["suspect", "healthy", "healthy"]
    assert statuses(book, f"{VIP}:443/tcp") == ["unhealthy", "healthy", "healthy"]
    book.probe_result(ip_address(BACKENDS[0]), True, "echo")
    assert statuses(book) == ["healthy"] * 3
    assert statuses(book, f"{VIP}:443/tcp")[0] == "unhealthy"  # trusted: out until it rises
    assert book.watched() == {ip_address(a) for a in BACKENDS}


# --- every backend unhealthy ---------------------------------------------------------------------


def _all_down(book: HealthBook) -> None:
    for backend in BACKENDS:
        for _ in range(3):
            book.check_result(SERVICE, ip_address(backend), False, "refused")


def test_fail_open_sends_to_every_backend_when_all_are_unhealthy() -> None:
    book = book_for(config({"check": "tcp"}))
    _all_down(book)
    assert statuses(book) == ["unhealthy"] * 3
    assert out(book) == [] and book.fail_open[SERVICE]
    assert book.summary()[SERVICE] | {} == {
        "backends": 3,
        "unhealthy": BACKENDS,
        "suspect": [],
        "all_unhealthy": True,
        "fail_open": True,
        "icmp_floor_held": 0,
    }
    kinds = [(kind, current) for kind, _, _, current, _ in events(book)]
    assert kinds[-1] == ("fail-open", "fail-open")
    assert not book.check_result(SERVICE, ip_address(BACKENDS[2]), True, "ok")  # rise 2
    assert book.check_result(SERVICE, ip_address(BACKENDS[2]), True, "ok")
    assert out(book) == BACKENDS[:2] and not book.fail_open[SERVICE]
    assert events(book)[-2][:4] == ("health", BACKENDS[2], "unhealthy", "healthy")
    assert events(book)[-1][:4] == ("fail-open", None, "fail-open", "closed")


def test_drop_leaves_a_vip_whose_backends_are_all_unhealthy_with_none() -> None:
    book = book_for(config({"check": "tcp", "all_unhealthy": "drop"}))
    _all_down(book)
    assert out(book) == BACKENDS and not book.fail_open[SERVICE]
    assert book.summary()[SERVICE]["all_unhealthy"]


def test_admin_down_backends_do_not_keep_a_vip_from_failing_open() -> None:
    cfg = config({"check": "tcp"}, backends=[
        BACKENDS[0], BACKENDS[1], {"address": BACKENDS[2], "state": "down"},
    ])  # fmt: skip
    book = book_for(cfg)
    for backend in BACKENDS[:2]:
        for _ in range(3):
            book.check_result(SERVICE, ip_address(backend), False, "refused")
    assert book.fail_open[SERVICE] and out(book) == []


# --- configuration changes -----------------------------------------------------------------------


def test_reconfiguring_keeps_state_resets_changed_checks_and_forgets_removed_backends() -> None:
    book = book_for(config({"check": "tcp"}))
    _all_down(book)
    book.report(report(BACKENDS[1]))
    # drain one, drop another, change the check: the check state starts over.
    cfg = config({"check": "http", "icmp": "off"}, backends=[
        {"address": BACKENDS[0], "state": "drain"}, BACKENDS[1],
    ])  # fmt: skip
    book.configure(cfg)
    assert [b.address for b in book.ordered()] == [ip_address(a) for a in BACKENDS[:2]]
    assert statuses(book) == ["healthy", "healthy"]
    assert book.backends[(SERVICE, ip_address(BACKENDS[1]))].icmp is IcmpState.OK
    assert ("admin", BACKENDS[0], "up", "drain", "admin") in events(book)
    assert (SERVICE, ip_address(BACKENDS[2])) not in book


def test_a_new_service_and_the_default_set_start_healthy() -> None:
    cfg = validate_as(Config, {"default_backends": BACKENDS[:1]}, "test")
    book = book_for(cfg)
    assert [b.status for b in book.ordered(["default"])] == [Status.HEALTHY]
    assert book.verdict.healthy("default", IPv4Address(BACKENDS[0]))
    assert book.verdict.healthy("unknown", IPv4Address(BACKENDS[0]))


# --- events -------------------------------------------------------------------------------------


def test_events_are_numbered_filtered_and_logged_as_json(caplog: pytest.LogCaptureFixture) -> None:
    log = EventLog(lambda: 12.5, kept=3)
    with caplog.at_level(logging.INFO, "rusty_rail.events"):
        for number in range(5):
            log.add("health", "a" if number % 2 else "b", "10.0.0.1", "healthy", "unhealthy",
                    "check", f"failure {number}")  # fmt: skip
    assert [e.id for e in log.since()] == [3, 4, 5]  # three kept
    assert [e.id for e in log.since(3)] == [4, 5]
    assert [e.id for e in log.since(0, limit=1)] == [3]
    assert [e.id for e in log.since(vip="a")] == [4]
    logged = json.loads(caplog.records[-1].getMessage().removeprefix("event "))
    assert logged == log.since()[-1].as_json()
    assert logged["from"] == "healthy" and logged["to"] == "unhealthy"
    assert caplog.records[-1].levelno == logging.WARNING
