"""The ctypes mirrors (dataplane/structs.py) against the C structs' BTF: every struct of
bpf/balancer_types.h (and the counter of bpf/lib/stats.h) has the same size, member names,
offsets and member sizes on both sides; the enums and capacities agree with model/state.py and
with the maps the balancer object declares. The layouts come from bpf/btf_anchor.bpf.o, which
declares each mirrored struct, so that no packet-path code has to be shaped to bring a struct into
BTF.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from rusty_rail.dataplane import structs
from rusty_rail.dataplane.conntrack_maps import (
    FLOW6_SET_SIZE,
    FLOW_SET_SIZE,
    conntrack_sets_for,
)
from rusty_rail.dataplane.libbpf import BpfObject, bpf_object_path
from rusty_rail.dataplane.maps import prepare_object
from rusty_rail.model.icmp import IcmpStat
from rusty_rail.model.pmtu import TOO_BIG_COUNT, TooBig
from rusty_rail.model.state import (
    VIP_FLOW_COUNT,
    Action,
    Affinity,
    BackendState,
    Egress,
    Stat,
    VipFlow,
)

pytestmark = pytest.mark.bpf

BPF_DIR = Path(structs.__file__).parent.parent / "bpf"
#: The structs and constants the balancer shares with Python.
TYPES_H = BPF_DIR / "balancer_types.h"
#: The counter every program's stats maps hold, the balancer's included.
STATS_H = BPF_DIR / "lib" / "stats.h"


@cache
def btf_types() -> dict[int, dict[str, Any]]:
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        pytest.fail("bpftool is not installed: run scripts/setup")
    dump = subprocess.run(
        [bpftool, "-j", "btf", "dump", "file", str(bpf_object_path("btf_anchor"))],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {entry["id"]: entry for entry in json.loads(dump)["types"]}


def btf_struct(name: str) -> dict[str, Any]:
    found = [t for t in btf_types().values() if t["kind"] == "STRUCT" and t["name"] == name]
    assert len(found) == 1, f"struct {name} appears {len(found)} times in the object's BTF"
    return found[0]


def btf_size(type_id: int) -> int:
    entry = btf_types()[type_id]
    kind = entry["kind"]
    if kind in ("TYPEDEF", "VOLATILE", "CONST"):
        return btf_size(entry["type_id"])
    if kind == "ARRAY":
        return int(entry["nr_elems"]) * btf_size(entry["type_id"])
    return int(entry["size"])


@pytest.mark.parametrize("name", sorted(structs.MIRRORS))
def test_mirror_matches_the_c_struct(name: str) -> None:
    mirror = structs.MIRRORS[name]
    c_struct = btf_struct(name)
    assert ctypes.sizeof(mirror) == c_struct["size"]
    c_members = [
        (member["name"], member["bits_offset"] // 8, btf_size(member["type_id"]))
        for member in c_struct["members"]
    ]
    py_members = [
        (field_name, getattr(mirror, field_name).offset, getattr(mirror, field_name).size)
        for field_name, *_ in mirror._fields_
    ]
    assert py_members == c_members
    assert all(member["bits_offset"] % 8 == 0 for member in c_struct["members"])


def test_every_shared_struct_has_a_mirror() -> None:
    declared = {
        name
        for header in (TYPES_H, STATS_H)
        for name in re.findall(r"^struct (\w+) \{", header.read_text(), re.MULTILINE)
    }
    assert declared == set(structs.MIRRORS)


def _c_enum(prefix: str) -> dict[str, int]:
    pattern = rf"^\s*{prefix}_(\w+) = (\d+),"
    return {
        name: int(value)
        for name, value in re.findall(pattern, TYPES_H.read_text(), re.MULTILINE)
        if name != "COUNT"
    }


def test_enums_agree_with_model_state() -> None:
    assert _c_enum("STAT") == {stat.name: stat.value for stat in Stat}
    assert _c_enum("BACKEND") == {state.name: state.value for state in BackendState}
    assert _c_enum("ACTION") == {action.name: action.value for action in Action}
    assert _c_enum("ICMP_STAT") == {stat.name: stat.value for stat in IcmpStat}
    assert _c_enum("EGRESS") == {egress.name: egress.value for egress in Egress}
    assert _c_enum("TOO_BIG") == {reason.name: reason.value for reason in TooBig}
    assert int(re.findall(r"TOO_BIG_COUNT = (\d+)", TYPES_H.read_text())[0]) == TOO_BIG_COUNT
    assert _c_enum("VIP_FLOW") == {what.name: what.value for what in VipFlow}
    assert int(re.findall(r"VIP_FLOW_COUNT = (\d+)", TYPES_H.read_text())[0]) == VIP_FLOW_COUNT
    assert _c_enum("AFFINITY") == {mode.name: mode.value for mode in Affinity}


def _c_define(name: str) -> str:
    found = re.search(rf"^#define {name} (.+)$", TYPES_H.read_text(), re.MULTILINE)
    assert found is not None, name
    return found.group(1).strip()


def test_capacities_agree_with_balancer_types_h() -> None:
    assert int(_c_define("MAX_VIPS")) == structs.MAX_VIPS
    assert int(_c_define("MAX_BACKENDS")) == structs.MAX_BACKENDS
    assert int(_c_define("MAX_TX_PORTS")) == structs.MAX_TX_PORTS
    assert int(_c_define("CONNTRACK_WAYS")) == structs.CONNTRACK_WAYS
    assert _c_define("DEFAULT_CONNTRACK_ENTRIES") == "(1 << 20)"
    assert structs.DEFAULT_CONNTRACK_ENTRIES == 1 << 20
    assert int(_c_define("NONE_INDEX").rstrip("u"), 16) == 0xFFFFFFFF
    assert _c_define("ICMP_REPORT_RING_BYTES") == "(1 << 20)"
    assert structs.ICMP_REPORT_RING_BYTES == 1 << 20


def test_the_maps_have_the_mirrored_shapes() -> None:
    with BpfObject.open(bpf_object_path("balancer")) as obj:
        prepare_object(obj, conntrack_entries=1000)
        obj.load()
        shapes = {
            name: (bpf_map.key_size, bpf_map.value_size, bpf_map.max_entries)
            for name in obj.map_names()
            if not name.startswith(".")
            for bpf_map in [obj.map(name)]
        }
    size = ctypes.sizeof
    assert shapes == {
        "settings": (4, size(structs.CSettings), 1),
        "vips": (size(structs.CVipKey), size(structs.CVipValue), structs.MAX_VIPS * 4),
        "vips_v6": (size(structs.CVip6Key), size(structs.CVipValue), structs.MAX_VIPS * 4),
        "tables": (4, 4, structs.MAX_VIPS),
        "backends": (4, size(structs.CBackend), structs.MAX_BACKENDS),
        "backend_tunnels": (4, size(structs.CBackendTunnel), structs.MAX_BACKENDS),
        "backend_mtu": (4, size(structs.CBackendMtu), structs.MAX_BACKENDS),
        "conntrack": (4, FLOW_SET_SIZE, conntrack_sets_for(1000)),
        "conntrack_v6": (4, FLOW6_SET_SIZE, conntrack_sets_for(1000)),
        "stats": (4, size(structs.CCounter), len(Stat)),
        "vip_stats": (4, size(structs.CCounter), structs.MAX_VIPS),
        "backend_stats": (4, size(structs.CCounter), structs.MAX_BACKENDS),
        "tx_ports": (4, 4, structs.MAX_TX_PORTS),
        "icmp_watch": (4, size(structs.CIcmpWatch), structs.MAX_BACKENDS),
        "icmp_watch_v6": (16, size(structs.CIcmpWatch), structs.MAX_BACKENDS),
        "icmp_stats": (4, size(structs.CCounter), len(IcmpStat)),
        "icmp_reports": (0, 0, structs.ICMP_REPORT_RING_BYTES),
        "vip_too_big": (4, size(structs.CCounter), structs.MAX_VIPS * TOO_BIG_COUNT),
        "too_big_buckets": (4, size(structs.CTooBigBucket), structs.MAX_VIPS),
        "vip_flows": (4, size(structs.CCounter), structs.MAX_VIPS * VIP_FLOW_COUNT),
        "vip_affinity": (4, size(structs.CVipAffinity), structs.MAX_VIPS),
    }
    assert conntrack_sets_for(1000) == 256  # 250 sets, rounded up to a power of two
