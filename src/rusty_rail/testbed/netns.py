"""Network namespaces and veth links for the test bed, named uniquely and always torn down.

Everything here shells out to iproute2 (`ip`), the tool an operator would use by hand, so a
failing step prints the same command and message a person could reproduce.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Every namespace the test bed makes starts with this, so leftovers can be found and removed.
NAMESPACE_PREFIX = "rrtb-"


class NetnsError(RuntimeError):
    """An iproute2 command failed; the message carries the command and its stderr."""


def run(command: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """Run a command, return its stdout; raise NetnsError with the command and stderr."""
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetnsError(f"{' '.join(command)}: {error}") from error
    if check and done.returncode != 0:
        message = (done.stderr or done.stdout).strip()
        raise NetnsError(f"{' '.join(command)}: exit {done.returncode}: {message}")
    return done.stdout


def run_id() -> str:
    """A short id unique to this run: namespace and interface names are built from it."""
    return f"{os.getpid() % 0xFFFF:04x}{secrets.token_hex(2)}"


@dataclass(frozen=True)
class Namespace:
    """A named network namespace."""

    name: str

    def ip(self, *args: str, check: bool = True) -> str:
        return run(["ip", "-n", self.name, *args], check=check)

    def exec(self, *command: str, check: bool = True, timeout: float = 30) -> str:
        return run(["ip", "netns", "exec", self.name, *command], check=check, timeout=timeout)

    def popen(self, *command: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a long-running command inside the namespace (a server, a daemon)."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *command], **kwargs)  # type: ignore[call-overload, no-any-return]

    def sysctl(self, key: str, value: str) -> None:
        self.exec("sysctl", "-q", "-w", f"{key}={value}")

    def ifindex(self, ifname: str) -> int:
        return int(self.exec("cat", f"/sys/class/net/{ifname}/ifindex").strip())

    def mac(self, ifname: str) -> str:
        return self.exec("cat", f"/sys/class/net/{ifname}/address").strip()


@dataclass
class Netns:
    """A set of namespaces made by one run; ``close()`` removes them all, whatever happened."""

    run_tag: str = field(default_factory=run_id)
    namespaces: list[Namespace] = field(default_factory=list)

    def namespace(self, role: str) -> Namespace:
        name = f"{NAMESPACE_PREFIX}{self.run_tag}-{role}"
        run(["ip", "netns", "add", name])
        namespace = Namespace(name)
        self.namespaces.append(namespace)
        namespace.ip("link", "set", "lo", "up")
        return namespace

    def veth(self, a: Namespace, a_name: str, b: Namespace, b_name: str) -> None:
        """A veth pair with one end in each namespace, both ends up."""
        if max(len(a_name), len(b_name)) > 15:
            raise NetnsError(f"interface names must be at most 15 characters: {a_name}, {b_name}")
        temp = f"rrv{secrets.token_hex(4)}"
        run(["ip", "link", "add", temp, "type", "veth", "peer", "name", f"{temp}p"])
        try:
            run(["ip", "link", "set", temp, "netns", a.name, "name", a_name])
            run(["ip", "link", "set", f"{temp}p", "netns", b.name, "name", b_name])
        except NetnsError:
            run(["ip", "link", "del", temp], check=False)
            raise
        a.ip("link", "set", a_name, "up")
        b.ip("link", "set", b_name, "up")

    def close(self) -> None:
        errors = []
        for namespace in reversed(self.namespaces):
            try:
                run(["ip", "netns", "del", namespace.name])
            except NetnsError as error:
                errors.append(str(error))
        self.namespaces.clear()
        if errors:
            raise NetnsError("; ".join(errors))

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def leftover_namespaces() -> list[str]:
    """Test-bed namespaces that exist now (from this run or an earlier, interrupted one)."""
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return []
    return sorted(p.name for p in netns_dir.iterdir() if p.name.startswith(NAMESPACE_PREFIX))


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    """``with netns() as net: ...``: namespaces that are gone afterwards, also on failure."""
    net = Netns()
    try:
        yield net
    finally:
        net.close()
