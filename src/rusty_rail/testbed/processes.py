"""The test bed's processes (servers, balancers): whether one is alive, and stopping one with
its whole process group."""

from __future__ import annotations

import os
import signal
import time

__all__ = ["alive", "terminate"]


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
        return True
    return finished == 0


def terminate(pid: int, name: str, problems: list[str], timeout: float = 10) -> None:
    if not alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            problems.append(f"{name} (pid {pid}) did not stop on SIGTERM; killed")
            break
        time.sleep(0.05)
