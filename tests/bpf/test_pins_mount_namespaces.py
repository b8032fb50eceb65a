"""pins_outlive_process: whether the bpffs under a pin root is also PID 1's (its pins outlive
the process) or one a private mount namespace mounted (`ip netns exec`): real mount
namespaces made by unshare, and mountinfo texts for the parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rusty_rail.dataplane.libbpf import pins_outlive_process
from rusty_rail.dataplane.libbpf.pins import _bpffs_devices

pytestmark = pytest.mark.bpf

MOUNTINFO = """\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:12 master:3 - bpf bpf rw,mode=700
31 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
40 1 8:1 /srv/bpf /mnt/x rw - ext4 /dev/sda1 rw
"""

PROBE = (
    "import sys; from pathlib import Path; "
    "from rusty_rail.dataplane.libbpf import pins_outlive_process; "
    "print(pins_outlive_process(Path(sys.argv[1])))"
)


def test_the_bpffs_devices_of_a_mountinfo_are_read_past_the_optional_fields() -> None:
    assert _bpffs_devices(MOUNTINFO) == {"0:26"}
    assert _bpffs_devices("") == set()
    assert _bpffs_devices("garbage\n1 2 3\n") == set()


def test_the_hosts_bpffs_outlives_the_process(bpffs_dir: Path) -> None:
    assert pins_outlive_process(bpffs_dir) is True
    assert pins_outlive_process(bpffs_dir / "eth0" / "not-yet") is True  # its nearest parent


def test_a_bpffs_pid_1_does_not_mount_does_not(bpffs_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "mountinfo"
    other.write_text(MOUNTINFO)  # PID 1 would mount another bpffs (0:26) than this one
    assert pins_outlive_process(bpffs_dir, init_mountinfo=other) is False
    assert pins_outlive_process(bpffs_dir, init_mountinfo=tmp_path / "unreadable") is None
    assert pins_outlive_process(tmp_path) is None  # not on a bpffs at all


def _probe(*unshare: str, path: str = "/sys/fs/bpf") -> str:
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", *unshare, sys.executable, "-c",
         PROBE, path],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_copied_mount_namespace_shares_the_bpffs_a_fresh_mount_does_not(
    bpffs_dir: Path,
) -> None:
    # unshare --mount copies the mounts: /sys/fs/bpf is the host's bpffs, pins there outlive.
    assert _probe(path=str(bpffs_dir)) == "True"
    # What ip netns exec does: /sys mounted anew, and a bpffs of its own over /sys/fs/bpf.
    fresh = ["sh", "-c", 'mount -t bpf bpf /sys/fs/bpf && exec "$@"', "sh"]
    assert _probe(*fresh) == "False"
