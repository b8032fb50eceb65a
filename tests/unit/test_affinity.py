"""Session affinity in the reference and the control plane: which fields each mode hashes,
what a client's connections share, the configuration's checks, and the plan's operations (an
affinity is written with its table; a VIP index new to a VIP has its counters zeroed)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from rusty_rail.api.readmodels import dry_run
from rusty_rail.config import Affinity, Config, ConfigError, config_from_toml_text
from rusty_rail.control.plan import (
    Allocation,
    DeleteTable,
    Plan,
    ResetVipCounters,
    SetAffinity,
    SetTable,
    compile_plan,
    diff,
)
from rusty_rail.model import state as model_state
from rusty_rail.model.affinity import AFFINITY_NAMES, affinity_flow, affinity_hash
from rusty_rail.model.flowhash import DEFAULT_SEED, Flow, flow_hash
from rusty_rail.model.pipeline import lookup
from rusty_rail.model.state import DataplaneState, NextHop
from rusty_rail.wire.constants import PROTO_TCP, PROTO_UDP

MODE = model_state.Affinity
HOP = NextHop(ifindex=2, src_mac=bytes(6), dst_mac=bytes(6))


def test_the_configuration_names_are_the_model_modes() -> None:
    assert {AFFINITY_NAMES[mode] for mode in MODE} == {mode.value for mode in Affinity}
    assert [mode.name for mode in MODE] == [mode.name for mode in Affinity]


def test_each_mode_hashes_only_its_fields() -> None:
    flow = Flow.of("198.18.5.5", "198.18.100.1", PROTO_TCP, 40000, 80)
    assert affinity_flow(flow, MODE.FIVE_TUPLE) == flow
    assert affinity_hash(flow, MODE.FIVE_TUPLE) == flow_hash(flow)
    assert affinity_flow(flow, MODE.SOURCE_IP) == Flow.of("198.18.5.5", "0.0.0.0", 0)
    assert affinity_flow(flow, MODE.SOURCE_IP_PROTO) == Flow.of("198.18.5.5", "0.0.0.0", 6)
    assert affinity_flow(flow, MODE.NO_SOURCE_PORT) == Flow.of(
        "198.18.5.5", "198.18.100.1", PROTO_TCP, 0, 80
    )
    flow6 = Flow.of("2001:2::5", "2001:2::10", PROTO_UDP, 5000, 53)
    assert affinity_flow(flow6, MODE.SOURCE_IP) == Flow.of("2001:2::5", "::", 0)


@pytest.mark.parametrize("mode", list(MODE))
def test_what_a_clients_connections_share_under_each_mode(mode: model_state.Affinity) -> None:
    base = Flow.of("198.18.5.5", "198.18.100.1", PROTO_TCP, 40000, 80)
    variants = {
        "sport": Flow.of("198.18.5.5", "198.18.100.1", PROTO_TCP, 40001, 80),
        "dport": Flow.of("198.18.5.5", "198.18.100.1", PROTO_TCP, 40000, 443),
        "proto": Flow.of("198.18.5.5", "198.18.100.1", PROTO_UDP, 40000, 80),
        "dst": Flow.of("198.18.5.5", "198.18.100.2", PROTO_TCP, 40000, 80),
    }
    kept = {
        MODE.FIVE_TUPLE: set(),
        MODE.SOURCE_IP: {"sport", "dport", "proto", "dst"},
        MODE.SOURCE_IP_PROTO: {"sport", "dport", "dst"},
        MODE.NO_SOURCE_PORT: {"sport"},
    }[mode]
    same = {
        name
        for name, other in variants.items()
        if affinity_hash(other, mode, DEFAULT_SEED) == affinity_hash(base, mode, DEFAULT_SEED)
    }
    assert same == kept


TOML = """
device = "eth0"
lb_address = "198.18.0.2"
table_size = 251
[[vips]]
address = "198.18.100.1"
protocol = "tcp"
port = 80
{affinity}
backends = ["198.18.64.1", "198.18.64.2", "198.18.64.3", "198.18.64.4"]
"""


def config(affinity: str | None = None) -> Config:
    line = "" if affinity is None else f'affinity = "{affinity}"'
    return config_from_toml_text(TOML.format(affinity=line), "lb.toml")


def plan(affinity: str | None = None, previous: Allocation | None = None) -> Plan:
    return compile_plan(
        config(affinity),
        previous or Allocation(),
        lb_ipv4=IPv4Address("198.18.0.2"),
        resolve_next_hop=lambda address: HOP,
    )


def test_an_unknown_mode_is_refused_naming_the_field_and_the_choices() -> None:
    with pytest.raises(ConfigError) as raised:
        config("sticky")
    text = str(raised.value)
    assert "vips[0].affinity" in text and "sticky" in text and "source-ip+proto" in text


def test_the_default_is_left_out_of_dumps_so_saved_states_do_not_change() -> None:
    assert "affinity" not in config().model_dump(mode="json")["vips"][0]
    assert config("5-tuple") == config()
    assert config("source-ip").model_dump(mode="json")["vips"][0]["affinity"] == "source-ip"


def test_the_plan_carries_the_mode_and_the_lookup_honours_it() -> None:
    five, client = plan(), plan("source-ip")
    assert five.state.affinity == {} and client.state.affinity == {0: MODE.SOURCE_IP}
    flows = [Flow.of("198.18.5.5", "198.18.100.1", PROTO_TCP, 30000 + i, 80) for i in range(40)]
    assert len({lookup(five.state, flow).backend_index for flow in flows}) > 1
    decisions = [lookup(client.state, flow) for flow in flows]
    assert len({decision.backend_index for decision in decisions}) == 1
    assert all(d.affinity is MODE.SOURCE_IP and d.pick_hash is not None for d in decisions)
    assert "affinity source-ip" in decisions[0].explain()


def test_a_mode_change_is_written_with_the_table_and_undone_when_the_vip_goes() -> None:
    five, client = plan(), plan("source-ip")
    ops = diff(five.state, client.state)
    assert ops == [SetAffinity(0, MODE.SOURCE_IP)]  # the table itself did not change
    first = diff(None, client.state)
    kinds = [type(op) for op in first]
    assert kinds.index(SetAffinity) < kinds.index(SetTable)
    assert ResetVipCounters not in kinds  # new maps: nothing to zero (and a restart keeps them)
    gone = DataplaneState(settings=client.state.settings)
    removal = diff(client.state, gone)
    assert removal[removal.index(DeleteTable(0)) + 1] == SetAffinity(0, MODE.FIVE_TUPLE)


def test_a_vip_index_new_to_its_vip_has_its_counters_zeroed_first() -> None:
    before = plan()
    empty = DataplaneState(settings=before.state.settings)
    again = diff(empty, before.state)
    kinds = [type(op) for op in again]
    assert again[kinds.index(ResetVipCounters)] == ResetVipCounters(0)
    assert kinds.index(ResetVipCounters) < kinds.index(SetTable)
    assert ResetVipCounters(0) not in diff(before.state, plan("source-ip").state)


def test_a_dry_run_calls_a_mode_change_a_table_change_that_moves_no_tracked_flow() -> None:
    five, client = plan(), plan("source-ip", five_allocation := plan().allocation)
    assert five_allocation.vip_index == client.allocation.vip_index
    flows = [Flow.of("198.18.5.5", "198.18.100.1", PROTO_TCP, 30000 + i, 80) for i in range(20)]
    tracked = []
    for flow in flows:
        decision = lookup(five.state, flow)
        assert decision.backend_index is not None
        generation = five.state.backends[decision.backend_index].generation
        tracked.append((flow, model_state.CtEntry(decision.backend_index, generation)))
    views, complete = dry_run(five, client, tracked)
    view = views["198.18.100.1:80/tcp"]
    assert complete and (view["change"], view["table_slots_moved"]) == ("changed", None)
    assert (view["flows_tracked"], view["flows_moved"]) == (20, 0)
    assert dry_run(five, plan(), tracked)[0]["198.18.100.1:80/tcp"]["change"] == "unchanged"
