"""The control core's plan: stable allocation, table reuse, safe operation order, and the
product's promise checked through the reference pipeline (two nodes, same backend)."""

from __future__ import annotations

import gc
import random
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from rusty_rail.config import Config, config_from_toml_text
from rusty_rail.control.health import Serving
from rusty_rail.control.plan import (
    DEFAULT_SET,
    Allocation,
    ClearBackend,
    DeleteTable,
    DeleteTxPort,
    DeleteVip,
    Plan,
    PlanError,
    SetBackend,
    SetSettings,
    SetTable,
    SetVip,
    allocation_from_state,
    compile_plan,
    diff,
    removals_only,
)
from rusty_rail.model import pipeline
from rusty_rail.model.flowhash import Flow
from rusty_rail.model.state import NONE_INDEX, BackendState, NextHop, Stat, Verdict, VipKey
from rusty_rail.wire.frames import LB_IPV4, OUTER_INNER_IPV6, encapsulate, gre_frame, inner_ipv6

LB = IPv4Address(LB_IPV4)
HOP = NextHop(
    ifindex=1, src_mac=bytes.fromhex("020000000010"), dst_mac=bytes.fromhex("020000000020")
)


def resolved(address: object) -> NextHop:
    return HOP


def config(*backends: str, vip: str = "198.19.0.10", size: int = 251, extra: str = "") -> Config:
    listed = ", ".join(f'"{b}"' if "=" not in b else "{" + b + "}" for b in backends)
    return config_from_toml_text(
        f"table_size = {size}\n{extra}\n"
        f'[[vips]]\naddress = "{vip}"\nprotocol = "tcp"\nport = 80\nbackends = [{listed}]\n'
    )


def plan(cfg: Config, previous: Plan | None = None) -> Plan:
    return compile_plan(
        cfg,
        previous.allocation if previous else Allocation(),
        lb_ipv4=LB,
        resolve_next_hop=resolved,
        previous_tables=previous.tables if previous else None,
    )


BACKENDS = [f"198.18.1.{i}" for i in range(1, 11)]


def slot_of(p: Plan, address: str, service: str = "198.19.0.10:80/tcp") -> int:
    return p.allocation.slot_of(service, ip_address(address))


def test_unchanged_backends_keep_their_slots_when_one_is_added_or_removed() -> None:
    first = plan(config(*BACKENDS))
    added = plan(config(*BACKENDS, "198.18.1.99"), first)
    removed = plan(config(*BACKENDS[1:]), first)
    for address in BACKENDS[1:]:
        assert slot_of(added, address) == slot_of(first, address)
        assert slot_of(removed, address) == slot_of(first, address)
    assert slot_of(first, BACKENDS[0]) not in removed.state.backends


def test_a_freed_slot_is_not_reused_in_the_same_change_and_gets_a_new_generation_later() -> None:
    first = plan(config(*BACKENDS))
    freed = slot_of(first, BACKENDS[0])
    swapped = plan(config(*BACKENDS[1:], "198.18.1.99"), first)
    assert slot_of(swapped, "198.18.1.99") != freed
    reused = plan(config(*BACKENDS[1:], "198.18.1.99", "198.18.1.98"), swapped)
    assert slot_of(reused, "198.18.1.98") == freed
    assert reused.state.backends[freed].generation == first.state.backends[freed].generation + 1


def test_unchanged_services_reuse_their_table_and_changed_ones_rebuild() -> None:
    first = plan(config(*BACKENDS))
    again = plan(config(*BACKENDS), first)
    assert again.tables["198.19.0.10:80/tcp"] is first.tables["198.19.0.10:80/tcp"]
    weighted = plan(config(*BACKENDS[1:], f'address = "{BACKENDS[0]}", weight = 2'), first)
    assert weighted.tables["198.19.0.10:80/tcp"] is not first.tables["198.19.0.10:80/tcp"]


def test_states_follow_admin_state_weight_and_health() -> None:
    cfg = config(
        'address = "198.18.1.1", state = "drain"',
        'address = "198.18.1.2", state = "down"',
        'address = "198.18.1.3", weight = 0',
        "198.18.1.4",
        "198.18.1.5",
        "198.18.1.6",
    )
    p = compile_plan(
        cfg,
        Allocation(),
        lb_ipv4=LB,
        resolve_next_hop=resolved,
        serving=lambda service, address: {
            ip_address("198.18.1.5"): Serving.OUT,
            ip_address("198.18.1.6"): Serving.DRAIN,
        }.get(address, Serving.SERVE),
    )
    states = {str(ip_address(e.addr)): e.state for e in p.state.backends.values()}
    assert states == {
        "198.18.1.1": BackendState.DRAIN,
        "198.18.1.2": BackendState.DOWN,
        "198.18.1.3": BackendState.DRAIN,
        "198.18.1.4": BackendState.UP,
        "198.18.1.5": BackendState.DOWN,
        "198.18.1.6": BackendState.DRAIN,  # a trusted ICMP report alone: keeps its flows
    }
    # Only the UP backend is in the table.
    (table,) = p.state.tables.values()
    assert set(int(s) for s in table) == {slot_of(p, "198.18.1.4")}


def test_a_service_with_no_eligible_backend_gets_an_all_empty_table() -> None:
    p = plan(config('address = "198.18.1.1", state = "down"'))
    (table,) = p.state.tables.values()
    assert set(int(s) for s in table) == {NONE_INDEX}


def test_default_set_is_a_service_named_in_the_settings() -> None:
    cfg = config_from_toml_text('default_backends = ["198.18.1.1", "198.18.1.2"]\n')
    p = plan(cfg)
    assert p.state.settings.default_vip == p.allocation.vip_index[DEFAULT_SET]
    assert p.state.vips == {}
    assert plan(config("198.18.1.1")).state.settings.default_vip == NONE_INDEX


def test_an_ipv6_backend_without_the_nodes_ipv6_address_is_refused() -> None:
    needs = "2001:2::1 of 198.19.0.10:80/tcp: an IPv6 backend needs the node's IPv6 address"
    with pytest.raises(PlanError, match=needs):
        plan(config("2001:2::1"))
    with pytest.raises(PlanError, match="set lb_address_ipv6 \\(or RR_LB_ADDRESS_IPV6\\)"):
        plan(config("198.18.1.1", "2001:2::1", vip="2001:2:0:19::10"))


def test_ipv6_backends_are_planned_beside_ipv4_ones_with_the_nodes_ipv6_address() -> None:
    lb6 = IPv6Address("2001:2::2")
    p = compile_plan(
        config("198.18.1.1", "2001:2::1", vip="2001:2:0:19::10"),
        Allocation(),
        lb_ipv4=LB,
        lb_ipv6=lb6,
        resolve_next_hop=resolved,
    )
    assert p.state.settings.lb_ipv6 == lb6.packed
    assert p.state.backends[slot_of(p, "2001:2::1", "[2001:2:0:19::10]:80/tcp")].addr == (
        IPv6Address("2001:2::1").packed
    )
    assert p.state.backends[slot_of(p, "198.18.1.1", "[2001:2:0:19::10]:80/tcp")].addr == (
        IPv4Address("198.18.1.1").packed
    )
    (table,) = p.state.tables.values()
    assert len({int(s) for s in table}) == 2  # both families share the VIP's table


def test_without_the_nodes_ipv6_address_the_settings_hold_zeroes() -> None:
    assert plan(config("198.18.1.1")).state.settings.lb_ipv6 == bytes(16)


def test_an_ipv6_vip_with_ipv4_backends_is_planned_and_balances_inner_ipv6() -> None:
    p = plan(config("198.18.1.1", "198.18.1.2", vip="2001:2:0:19::10"))
    key = VipKey(ip_address("2001:2:0:19::10").packed, 6, 80)
    assert p.state.vips == {key: p.allocation.vip_index["[2001:2:0:19::10]:80/tcp"]}
    assert SetVip(key, p.state.vips[key]) in diff(None, p.state)
    assert allocation_from_state(p.state).vip_index == p.allocation.vip_index
    flow = Flow.of("2001:2:0:100::1", "2001:2:0:19::10", 6, 40000, 80)
    frame = encapsulate(inner_ipv6(flow), OUTER_INNER_IPV6)
    result = pipeline.process(p.state, frame)
    assert (result.stat, result.verdict) == (Stat.CT_MISS, Verdict.TX)
    assert result.decision is not None and result.decision.backend_index is not None
    backend = p.state.backends[result.decision.backend_index].addr
    assert backend in (ip_address("198.18.1.1").packed, ip_address("198.18.1.2").packed)


def test_running_out_of_backend_slots_is_a_clear_error() -> None:
    with pytest.raises(PlanError, match="at most 5"):
        compile_plan(
            config(*BACKENDS),
            Allocation(max_backends=5),
            lb_ipv4=LB,
            resolve_next_hop=resolved,
        )


def test_unresolved_next_hops_are_reported_and_left_in_the_state() -> None:
    p = compile_plan(
        config(*BACKENDS[:3]),
        Allocation(),
        lb_ipv4=LB,
        resolve_next_hop=lambda a: None if a == ip_address(BACKENDS[0]) else HOP,
    )
    assert p.unresolved == (ip_address(BACKENDS[0]),)
    assert p.state.backends[slot_of(p, BACKENDS[0])].next_hop is None


def positions(ops: list[object], kind: type, **fields: object) -> list[int]:
    return [
        i
        for i, op in enumerate(ops)
        if isinstance(op, kind) and all(getattr(op, k) == v for k, v in fields.items())
    ]


def test_from_empty_backends_come_before_tables_before_vips() -> None:
    p = plan(config(*BACKENDS))
    ops = diff(None, p.state)
    last_backend = max(positions(ops, SetBackend))
    (table_at,) = positions(ops, SetTable)
    (vip_at,) = positions(ops, SetVip)
    (settings_at,) = positions(ops, SetSettings)
    assert last_backend < table_at < vip_at < settings_at


def test_a_new_backend_is_set_up_before_the_table_that_names_it() -> None:
    first = plan(config(*BACKENDS))
    second = plan(config(*BACKENDS, "198.18.1.99"), first)
    ops = diff(first.state, second.state)
    (new_backend,) = positions(ops, SetBackend, index=slot_of(second, "198.18.1.99"))
    (table_at,) = positions(ops, SetTable)
    assert new_backend < table_at
    assert len(ops) == 2


def test_removed_or_downed_backends_go_only_after_the_table_stops_naming_them() -> None:
    first = plan(config(*BACKENDS))
    removed = plan(config(*BACKENDS[1:]), first)
    ops = diff(first.state, removed.state)
    (table_at,) = positions(ops, SetTable)
    (cleared,) = positions(ops, ClearBackend, index=slot_of(first, BACKENDS[0]))
    assert table_at < cleared

    down = plan(config(f'address = "{BACKENDS[0]}", state = "down"', *BACKENDS[1:]), first)
    ops = diff(first.state, down.state)
    (table_at,) = positions(ops, SetTable)
    (downed,) = positions(ops, SetBackend, index=slot_of(first, BACKENDS[0]))
    assert table_at < downed


def test_a_removed_vip_loses_its_key_before_its_table_and_slots() -> None:
    first = plan(config(*BACKENDS))
    gone = plan(config_from_toml_text("table_size = 251\n"), first)
    ops = diff(first.state, gone.state)
    (vip_at,) = positions(ops, DeleteVip)
    (table_at,) = positions(ops, DeleteTable)
    assert vip_at < table_at < min(positions(ops, ClearBackend))


def test_no_change_means_no_operations() -> None:
    first = plan(config(*BACKENDS))
    assert diff(first.state, plan(config(*BACKENDS), first).state) == []


def backend_for(p: Plan, flow: Flow) -> str:
    result = pipeline.process(p.state, gre_frame(flow))
    assert result.verdict is Verdict.TX, result.stat
    assert result.decision is not None and result.decision.backend_index is not None
    return str(ip_address(p.state.backends[result.decision.backend_index].addr))


def test_two_nodes_with_the_same_config_in_any_order_pick_the_same_backend() -> None:
    # The product's central promise: ECMP may move a flow to another balancer and it keeps its
    # backend. Node B got its backends in another order and through another history of changes,
    # so its slot numbers differ; the backend addresses it picks must not.
    shuffled = BACKENDS[:]
    random.Random(7).shuffle(shuffled)
    node_a = plan(config(*BACKENDS))
    history = plan(config(*shuffled[:4]))
    node_b = plan(config(*shuffled), history)
    assert node_a.allocation.slots != node_b.allocation.slots
    rng = random.Random(1)
    for _ in range(300):
        flow = Flow.of(
            f"198.18.200.{rng.randrange(1, 255)}", "198.19.0.10", 6, rng.randrange(1024, 65535), 80
        )
        assert backend_for(node_a, flow) == backend_for(node_b, flow)


def test_established_flows_stay_when_a_backend_is_added() -> None:
    first = plan(config(*BACKENDS))
    flows = [Flow.of("198.18.200.1", "198.19.0.10", 6, port, 80) for port in range(2000, 2400)]
    chosen = {flow: backend_for(first, flow) for flow in flows}
    second = plan(config(*BACKENDS, "198.18.1.99"), first)
    second.state.conntrack.update(first.state.conntrack)
    for flow in flows:
        result = pipeline.process(second.state, gre_frame(flow))
        assert result.stat is Stat.CT_HIT
        assert backend_for(second, flow) == chosen[flow]


def test_more_egress_interfaces_than_the_data_plane_redirects_to_is_refused() -> None:
    """Issue 16, defect 3: a change the data plane cannot hold is refused by the plan,
    before it is saved; it used to fail only while writing the maps."""
    backends = [f"198.18.{i // 200}.{1 + i % 200}" for i in range(65)]
    interface = {ip_address(address): index + 1 for index, address in enumerate(backends)}

    def one_interface_each(address: object) -> NextHop:
        return NextHop(interface[address], HOP.src_mac, HOP.dst_mac)  # type: ignore[index]

    for count, refused in ((64, False), (65, True)):
        cfg = config(*backends[:count])
        if refused:
            with pytest.raises(PlanError, match=r"65 egress interfaces.*at most 64"):
                compile_plan(cfg, Allocation(), lb_ipv4=LB, resolve_next_hop=one_interface_each)
        else:
            compile_plan(cfg, Allocation(), lb_ipv4=LB, resolve_next_hop=one_interface_each)


def test_an_egress_interface_no_backend_uses_any_more_is_removed_last() -> None:
    def by_last_octet(address: object) -> NextHop:
        return NextHop(int(str(address).rsplit(".", 1)[1]), HOP.src_mac, HOP.dst_mac)

    def planned(*backends: str) -> Plan:
        return compile_plan(
            config(*backends), Allocation(), lb_ipv4=LB, resolve_next_hop=by_last_octet
        )

    before, after = planned(*BACKENDS[:3]), planned(*BACKENDS[:2])
    ops = diff(before.state, after.state)
    assert ops[-1] == DeleteTxPort(3)
    assert [op for op in ops if isinstance(op, DeleteTxPort)] == [DeleteTxPort(3)]
    assert not [op for op in diff(None, after.state) if isinstance(op, DeleteTxPort)]


def test_a_plan_that_would_build_more_table_slots_than_its_budget_is_refused() -> None:
    first = plan(config(*BACKENDS, size=251))
    bigger = config(*BACKENDS, size=1021)
    with pytest.raises(PlanError, match=r"1 tables of 1021 slots in all; at most 1000"):
        compile_plan(
            bigger,
            first.allocation,
            lb_ipv4=LB,
            resolve_next_hop=resolved,
            previous_tables=first.tables,
            max_build_slots=1000,
        )
    # Tables that are reused cost nothing against the budget.
    compile_plan(
        config(*BACKENDS, size=251),
        first.allocation,
        lb_ipv4=LB,
        resolve_next_hop=resolved,
        previous_tables=first.tables,
        max_build_slots=0,
    )


def test_the_removals_of_a_change_keep_what_stays_and_add_nothing() -> None:
    current = config(*BACKENDS[:4])
    wanted = config(BACKENDS[0], BACKENDS[2], "198.18.9.9")
    bridge = removals_only(current, wanted)
    assert [str(b.address) for b in bridge.vips[0].backends] == [BACKENDS[0], BACKENDS[2]]
    assert removals_only(current, config(*BACKENDS[:4], vip="198.19.0.99")).vips == ()


def test_the_cached_facts_of_a_table_go_with_the_table() -> None:
    """The soak (issue 14, item 7) found dead tables kept alive by this cache: about 256 KiB
    per API write, a gigabyte before its bound evicted any."""
    from rusty_rail.control import plan as plan_module
    from rusty_rail.control.plan import table_inputs
    from rusty_rail.model.maglev import build_table

    before = len(plan_module._TABLE_FACTS)
    tables = [build_table([(ip_address(f"198.18.1.{i}"), 1)], 1021, 7) for i in range(1, 30)]
    for table in tables:
        table_inputs(table)
    assert len(plan_module._TABLE_FACTS) == before + len(tables)
    del table, tables
    gc.collect()
    assert len(plan_module._TABLE_FACTS) == before
