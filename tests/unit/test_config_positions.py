"""Issue 15, item 7: every problem of a configuration file with its file, line and column
(`rusty-rail check`, `ctl config put`), from the positions config/positions.py finds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rusty_rail.cli import main
from rusty_rail.config.positions import json_positions, locate, toml_positions

TOML = """\
# a comment with "quotes" and [brackets]
device = "eth0"   # trailing comment
hash_seed = "0x12#34"
health.interval = 2.0

[[vips]]
address = "198.18.100.1"
backends = [
    "198.18.2.1",   # one
    { address = "198.18.2.2", weight = -3 },
]

[[vips]]
address = 'literal#string'
port = 70000
note = \"\"\"multi
line [not a table]\"\"\"
"""


def test_toml_positions_follow_tables_arrays_inline_tables_and_strings() -> None:
    found = toml_positions(TOML)
    assert found[("device",)] == (2, 10)
    assert found[("hash_seed",)] == (3, 13)
    assert found[("health", "interval")] == (4, 19)
    assert found[("vips", 0)] == (6, 1)
    assert found[("vips", 0, "backends", 0)] == (9, 5)
    assert found[("vips", 0, "backends", 1, "weight")] == (10, 40)
    assert found[("vips", 1, "port")] == (15, 8)
    assert found[("vips", 1, "note")] == (16, 8)
    assert ("not a table",) not in found
    # A key that is not written is located at its nearest written ancestor.
    assert locate(found, ("vips", 1, "backends")) == (13, 1)
    assert locate(found, ("nothing",)) is None


def test_json_positions() -> None:
    text = json.dumps({"etag": "x", "config": {"vips": [{"port": 70000}]}}, indent=1)
    found = json_positions(text)
    line, column = found[("config", "vips", 0, "port")]
    assert text.splitlines()[line - 1][column - 1 :].startswith("70000")


def test_a_scanner_that_cannot_follow_keeps_what_it_found() -> None:
    found = toml_positions('device = "eth0"\n[[vips\naddress = 1\n')
    assert found[("device",)] == (1, 10)


def test_check_prints_every_problem_with_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(TOML.replace('hash_seed = "0x12#34"', "table_size = 1000"))
    assert main(["check", "--config", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:3:14: table_size: 1000: must be a prime number (nearest: 997 and 1009)",
        f"{path}:10:40: vips[0].backends[1].weight: -3: must be between 0 and 65535",
        f'{path}:14:11: vips[1].address: "literal#string": not an IPv4 or IPv6 address',
        f"{path}:15:8: vips[1].port: 70000: must be between 1 and 65535",
        f'{path}:16:8: vips[1].note: "multi\\nline [not a table]": unknown key; known keys: '
        "address, protocol, port, encap, "
        "vni, table_size, affinity, backends, health",
        f"{path}: 5 problems",
    ]


def test_check_of_a_valid_file_and_of_broken_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        'device = "eth0"\n[[vips]]\naddress = "198.18.100.1"\nbackends = ["198.18.2.1"]\n'
    )
    assert main(["check", "--config", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok: 1 VIPs, 1 backends\n"
    broken = tmp_path / "broken.toml"
    broken.write_text('device = "eth0"\n[[vips]\n')
    assert main(["check", "--config", str(broken)]) == 1
    assert capsys.readouterr().err.startswith(f"{broken}:2:7: invalid TOML: ")


def test_check_needs_no_root() -> None:
    with tempfile.TemporaryDirectory() as where:  # pytest's tmp_path is root's alone
        os.chmod(where, 0o755)
        good = Path(where) / "good.toml"
        good.write_text('device = "eth0"\n')
        good.chmod(0o644)
        result = _as_nobody(good)
    assert result.returncode == 0, result.stderr


def _as_nobody(good: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "rusty_rail", "check", "--config", str(good)],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
