"""The desired state on disk: atomic replacement (a writer killed at any moment leaves the old
file or the new one, whole), refusal of broken files, and the start-up precedence rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rusty_rail.api import changes
from rusty_rail.api.client import TOKEN_VARIABLE
from rusty_rail.api.credentials import TokenFileError, local_token
from rusty_rail.cli import run as run_command
from rusty_rail.config import config_from_toml_text
from rusty_rail.control import state_file
from rusty_rail.control.daemon import Daemon
from rusty_rail.control.errors import StartupError
from rusty_rail.control.options import ApiOptions, DaemonOptions, parse_api_address
from rusty_rail.control.startup import desired_at_start, fixed_keys, startup_config

CONFIG_TEXT = """
device = "eth0"
[[vips]]
address = "198.18.100.1"
protocol = "tcp"
port = 80
backends = ["198.18.2.1", "198.18.2.2"]
"""
CONFIG = config_from_toml_text(CONFIG_TEXT)


def test_a_written_state_reads_back_equal(tmp_path: Path) -> None:
    path = tmp_path / "state" / "lb.state.json"
    assert state_file.read(path) is None
    state_file.write(path, CONFIG, generation=7, source="api")
    saved = state_file.read(path)
    assert saved is not None
    assert (saved.config, saved.generation, saved.source) == (CONFIG, 7, "api")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert state_file.leftover_temporaries(path.parent) == []
    assert state_file.remove(path) and not state_file.remove(path)


def test_default_paths_sit_next_to_the_configuration() -> None:
    assert state_file.default_path(Path("/etc/rusty-rail.toml"), "eth0") == Path(
        "/etc/rusty-rail.state.json"
    )
    assert state_file.default_path(None, "eth0") == Path("/var/lib/rusty-rail/eth0.state.json")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"format": "rusty-rail desired state v1", "generation": 1, "con', "not valid JSON"),
        ('{"format": "something else"}', "is not a 'rusty-rail desired state v1' document"),
        ('{"format": "rusty-rail desired state v1", "generation": -1}', "no valid generation"),
        (
            '{"format": "rusty-rail desired state v1", "generation": 1, "config": '
            '{"table_size": 4}}',
            "table_size: 4: must be a prime number",
        ),
    ],
)
def test_broken_state_files_are_refused_with_the_way_out(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "lb.state.json"
    path.write_text(content)
    with pytest.raises(state_file.StateFileError) as error:
        state_file.read(path)
    assert reason in str(error.value)
    assert "--reset-state" in str(error.value)


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from rusty_rail.config import config_from_toml_text
    from rusty_rail.control import state_file

    path = Path(sys.argv[1])
    # Two states of very different sizes, so a torn write could not pass for either.
    small = config_from_toml_text('device = "eth0"')
    big = config_from_toml_text(
        'device = "eth0"\\n[[vips]]\\naddress = "198.18.100.1"\\nbackends = ['
        + ", ".join(f'"198.18.{2 + i // 250}.{1 + i % 250}"' for i in range(3000))
        + "]"
    )
    # Encoded once: the loop is all file replacement, the part that must be atomic.
    contents = [
        state_file.encode(big if n % 2 else small, generation=n, source="test")
        for n in range(1, 3)
    ]
    print("ready", flush=True)
    while True:
        for content in contents:
            state_file.write_bytes(path, content)
    """
)


def test_a_writer_killed_at_any_moment_leaves_a_whole_state(tmp_path: Path) -> None:
    path = tmp_path / "lb.state.json"
    state_file.write(path, CONFIG, generation=0, source="test")
    seen_generations = set()
    for round_number in range(8):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.037 * round_number)  # land the kill at different points
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        saved = state_file.read(path)  # raises if the file were torn
        assert saved is not None
        assert saved.config.device == "eth0"
        assert len(saved.config.vips) in (0, 1)
        seen_generations.add(saved.generation)
    assert len(seen_generations) > 1, "the writer never got to replace the file"
    # Killed writers may leave their temporary files; the state file is whole regardless,
    # and the daemon removes them when it starts.
    options = DaemonOptions(config_path=tmp_path / "lb.toml", state_file=path, api=None)
    (tmp_path / "lb.toml").write_text(CONFIG_TEXT)
    startup_config({}, options)
    assert state_file.leftover_temporaries(tmp_path) == []


def test_at_start_the_saved_state_wins_except_for_fixed_keys(tmp_path: Path) -> None:
    config_path = tmp_path / "lb.toml"
    config_path.write_text(CONFIG_TEXT)
    path = state_file.default_path(config_path, "eth0")
    edited = changes.put_backend(
        CONFIG, changes.parse_target("198.18.100.1:80/tcp"), changes.parse_address("198.18.2.3"),
        {"weight": 4},
    )[0].model_copy(update={"conntrack_size": 4096, "lb_address": None})  # fmt: skip
    state_file.write(path, edited, generation=3, source="api")
    environ = {"RR_LB_ADDRESS": "198.18.0.2"}
    options = DaemonOptions(config_path=config_path, state_file=path, api=None)
    config, fixed, generation = startup_config(environ, options)
    assert generation == 3
    assert [str(b.address) for b in config.vips[0].backends][-1] == "198.18.2.3"
    assert config.conntrack_size == CONFIG.conntrack_size  # restart-only: from the file
    assert str(config.lb_address) == "198.18.0.2"  # the environment's, for this node
    assert "lb_address" in fixed and "RR_LB_ADDRESS" in fixed["lb_address"]
    assert set(fixed) >= {"device", "xdp_mode", "conntrack_size"}

    reset = DaemonOptions(config_path=config_path, state_file=path, api=None, reset_state=True)
    config, _, generation = startup_config(environ, reset)
    assert (generation, len(config.vips[0].backends)) == (0, 2)
    assert path.exists()  # removed only once the start succeeded (start_daemon)


def test_a_broken_saved_state_stops_the_start_before_anything_is_touched(tmp_path: Path) -> None:
    config_path = tmp_path / "lb.toml"
    config_path.write_text(CONFIG_TEXT)
    path = tmp_path / "lb.state.json"
    path.write_text("{")
    options = DaemonOptions(config_path=config_path, state_file=path, api=None)
    with pytest.raises(StartupError, match="--reset-state"):
        startup_config({}, options)


def test_fixed_keys_follow_the_environment() -> None:
    assert set(fixed_keys({})) == {"device", "xdp_mode", "conntrack_size", "bgp"}
    assert "hash_seed" in fixed_keys({"RR_HASH_SEED": "1"})
    merged = desired_at_start(
        CONFIG.model_copy(update={"table_size": 251}), CONFIG, fixed_keys({}), "test"
    )
    assert merged.table_size == CONFIG.table_size  # not fixed: the saved state's


def test_api_addresses_parse_every_documented_form_and_refuse_others() -> None:
    assert parse_api_address("127.0.0.1:9180") == ("127.0.0.1", 9180)
    assert parse_api_address("[::1]:80") == ("::1", 80)
    assert parse_api_address("9999") == ("127.0.0.1", 9999)
    assert parse_api_address("localhost:1") == ("127.0.0.1", 1)
    for bad in ("example.org:80", "127.0.0.1", "[::1]80", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_api_address(bad)
    assert ApiOptions("::1", 1).url == "http://[::1]:1"


def test_no_token_no_bind_beyond_loopback() -> None:
    daemon = Daemon(CONFIG, DaemonOptions(api=ApiOptions("0.0.0.0", 9180)))
    with pytest.raises(StartupError, match="without a token"):
        daemon.start()


def test_a_state_file_others_could_have_written_is_not_loaded(tmp_path: Path) -> None:
    """Issue 16, defect 8: the state file decides where traffic goes."""
    path = tmp_path / "lb.state.json"
    state_file.write(path, CONFIG, generation=1, source="api")
    assert state_file.read(path) is not None
    path.chmod(0o664)
    with pytest.raises(state_file.StateFileError, match="can be written by group or others"):
        state_file.read(path)
    path.chmod(0o600)
    os.chown(path, 1000, -1)
    with pytest.raises(state_file.StateFileError, match="owned by uid 1000, not by root"):
        state_file.read(path)
    os.chown(path, 0, -1)
    tmp_path.chmod(0o777)
    try:
        with pytest.raises(state_file.StateFileError, match="directory anyone can write to"):
            state_file.read(path)
        tmp_path.chmod(0o1777)  # sticky, as /tmp: others cannot replace root's file
        assert state_file.read(path) is not None
    finally:
        tmp_path.chmod(0o700)


def test_a_state_file_nested_too_deeply_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "lb.state.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(state_file.StateFileError, match=r"nested too deeply.*--reset-state"):
        state_file.read(path)


def test_an_api_beyond_loopback_needs_a_token_of_sixteen_characters(tmp_path: Path) -> None:
    for token in (None, "", "x", "fifteen-chars-x"):
        options = DaemonOptions(api=ApiOptions("0.0.0.0", 0, token), pin_root=tmp_path)
        with pytest.raises(StartupError, match="at least 16 characters"):
            Daemon(CONFIG.model_copy(update={"device": "nosuch0"}), options).start()


def test_the_api_token_comes_from_the_file_the_environment_or_the_host_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14, item 4: with no token given, `run` makes the host's token file (0600) at its
    first start and reads it afterwards; a file others may read is refused."""
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    host_file = tmp_path / "run" / "api-token"
    token, source = run_command.api_token(None, host_file)
    assert source == str(host_file) and len(token) == 64
    assert host_file.stat().st_mode & 0o777 == 0o600
    assert run_command.api_token(None, host_file) == (token, str(host_file))  # kept
    assert local_token(host_file) == token
    monkeypatch.setenv(TOKEN_VARIABLE, "from-the-environment-0123")
    assert run_command.api_token(None, host_file) == (
        "from-the-environment-0123",
        f"${TOKEN_VARIABLE}",
    )
    given = tmp_path / "token"
    with pytest.raises(TokenFileError, match=f"cannot read the token file {given}"):
        run_command.api_token(given, host_file)  # a given file is never made up
    given.write_text("0123456789abcdef0123\n")
    given.chmod(0o600)
    assert run_command.api_token(given, host_file) == ("0123456789abcdef0123", str(given))
    given.chmod(0o644)
    with pytest.raises(
        TokenFileError, match=r"can be read or written by group or others \(mode 644\)"
    ):
        run_command.api_token(given, host_file)
    given.chmod(0o600)
    given.write_text("\n")
    with pytest.raises(TokenFileError, match="is empty"):
        run_command.api_token(given, host_file)
    link = tmp_path / "link"
    link.symlink_to(host_file)
    with pytest.raises(TokenFileError, match="is a symbolic link"):
        run_command.api_token(link, host_file)
