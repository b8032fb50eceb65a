"""The test bed's processes (servers, balancers): whether one is alive, and stopping one with
its whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["alive", "terminate_all"]


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; reap it if it is ours.
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        # Not ours (`testbed up` has exited; init adopted it): a zombie that init has not
        # reaped yet has exited all the same.
        return not _zombie(pid)
    return finished == 0


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True  # gone meanwhile
    # The state follows the command name, which is in parentheses and may contain any byte.
    return stat[stat.rfind(")") + 2 :].startswith("Z")


def terminate_all(pids: dict[str, int], problems: list[str], timeout: float = 10) -> None:
    """Stop every process group at once: SIGTERM to all, then wait for all (a teardown takes
    as long as the slowest, not the sum); SIGKILL for what is left at ``timeout``."""
    waiting = {}
    for name, pid in pids.items():
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
                waiting[name] = pid
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while waiting:
        waiting = {name: pid for name, pid in waiting.items() if alive(pid)}
        if waiting and time.monotonic() > deadline:
            for name, pid in waiting.items():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                problems.append(f"{name} (pid {pid}) did not stop on SIGTERM; killed")
            return
        if waiting:
            time.sleep(0.02)
