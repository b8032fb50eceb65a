"""The BGP speaker of a balancer: a BIRD 2 process, the daemon's child (docs/cluster.md,
"Announcing the VIPs"). This module knows BIRD: its configuration, its control socket, its
life; what to announce and when is announcer.py's.

BIRD runs in the foreground (``bird -f``, it never forks) with PR_SET_PDEATHSIG: when the
daemon dies, even by SIGKILL, the kernel kills BIRD, its TCP sessions close, and the routers
withdraw the routes at once. BIRD keeps no state across starts: each start sends what the
daemon asks for then.

The routes live in two ``static`` protocols (blackhole routes in BIRD's own tables: BIRD has
no ``kernel`` protocol here, so the host's routing table is never touched); each peer's
channels export them with the node's address as the next hop. A change of the routes is a new
configuration file and ``configure``: BIRD then sends only the difference, on the sessions it
keeps.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path
from typing import Final

from rusty_rail._types import IPAddress
from rusty_rail.config.bgp import Bgp
from rusty_rail.control.errors import StartupError

log = logging.getLogger("rusty_rail.bgp")

BIRD: Final = "bird"
#: The speaker's directory (its configuration and control socket), in /run:
#: rusty-rail-bgp-PID-DEVICE-XXXXXXXX, PID the daemon's.
DIRECTORY_PREFIX: Final = "rusty-rail-bgp-"
#: How long a call on BIRD's control socket may take.
CONTROL_SECONDS: Final = 5.0
#: How long BIRD may take to start (its control socket to answer) and to stop.
START_SECONDS: Final = 10.0
STOP_SECONDS: Final = 5.0
_PR_SET_PDEATHSIG: Final = 1
_libc = ctypes.CDLL(None, use_errno=True)


class SpeakerError(RuntimeError):
    """BIRD is missing, did not start, or refused a configuration or a command."""


@dataclass(frozen=True)
class Session:
    """One peer's BGP session as BIRD reports it."""

    #: BIRD's protocol state (up, start, down, ...) and its BGP state (Established, Active,
    #: Connect, OpenSent, ... with the last error when there was one).
    state: str
    info: str

    @property
    def established(self) -> bool:
        return self.state == "up" and self.info.startswith("Established")


def protocol_name(index: int) -> str:
    """BIRD's protocol name of peers[index]."""
    return f"peer{index}"


def render(
    bgp: Bgp,
    router_id: IPv4Address,
    next_hop4: IPv4Address,
    next_hop6: IPv6Address | None,
    routes: Iterable[IPAddress],
) -> str:
    """BIRD's configuration announcing ``routes`` (host routes: /32, /128) to every peer.
    IPv6 routes need ``next_hop6``; without it the sessions carry IPv4 only."""
    host4 = sorted(str(ip_network(a)) for a in routes if a.version == 4)
    host6 = sorted(str(ip_network(a)) for a in routes if a.version == 6)
    lines = [
        "# Written by rusty-rail run: the VIPs this balancer announces (docs/cluster.md).",
        f"router id {router_id};",
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        "protocol device { }",
        "protocol static vips4 {",
        "  ipv4;",
        *(f"  route {prefix} blackhole;" for prefix in host4),
        "}",
    ]
    if next_hop6 is not None:
        lines += [
            "protocol static vips6 {",
            "  ipv6;",
            *(f"  route {prefix} blackhole;" for prefix in host6),
            "}",
        ]
    for index, peer in enumerate(bgp.peers):
        lines += [
            f"protocol bgp {protocol_name(index)} {{",
            f"  local as {bgp.asn};",
            f"  neighbor {peer.address} port {peer.port} as {peer.asn};",
            f"  hold time {peer.hold_time};",
            f"  keepalive time {max(1, peer.hold_time // 3)};",
            # Try again soon after a failed or lost session (BIRD's defaults wait minutes).
            "  connect delay time 0;",
            "  connect retry time 1;",
            "  error wait time 1, 10;",
            "  ipv4 {",
            "    import none;",
            '    export where proto = "vips4";',
            f"    next hop address {next_hop4};",
            "  };",
        ]
        if next_hop6 is not None:
            lines += [
                "  ipv6 {",
                "    import none;",
                '    export where proto = "vips6";',
                f"    next hop address {next_hop6};",
                "  };",
            ]
        lines.append("}")
    return "\n".join(lines) + "\n"


def bird_binary() -> str | None:
    """Where BIRD is (Debian installs it in /usr/sbin, which a user's PATH may lack)."""
    return shutil.which(BIRD) or shutil.which(BIRD, path="/usr/sbin:/sbin")


def check_speaker() -> None:
    """Before anything is attached: the speaker a [bgp] section needs is installed."""
    if bird_binary() is None:
        raise StartupError(
            "bgp: BIRD 2 is not installed (`bird` not found): install Debian's bird2 "
            "(scripts/setup does), or remove the [bgp] section"
        )


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the thread that started it ends."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _runtime_directory() -> Path:
    run = Path("/run")
    return run if run.is_dir() and os.access(run, os.W_OK) else Path(tempfile.gettempdir())


def _remove_stale(root: Path) -> None:
    """Remove the directories of speakers whose daemon is gone (a daemon killed by SIGKILL
    could not): each is named after its daemon's pid."""
    for directory in root.glob(f"{DIRECTORY_PREFIX}*"):
        pid = directory.name.removeprefix(DIRECTORY_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(directory, ignore_errors=True)


class BirdSpeaker:
    """One BIRD process: start, reconfigure with new routes, report sessions, stop. Start
    and stop it from a thread that lives as long as it should (the daemon's loop thread):
    PR_SET_PDEATHSIG follows the thread that started it."""

    def __init__(
        self,
        bgp: Bgp,
        router_id: IPv4Address,
        next_hop4: IPv4Address,
        next_hop6: IPv6Address | None,
        name: str,
    ) -> None:
        self.bgp = bgp
        self.router_id = router_id
        self.next_hop4 = next_hop4
        self.next_hop6 = next_hop6
        self.name = name
        self.routes: frozenset[IPAddress] = frozenset()
        self.process: subprocess.Popen[bytes] | None = None
        self.directory: Path | None = None
        self.starts = 0

    @property
    def config_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "bird.conf"

    @property
    def control_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "bird.ctl"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, routes: Iterable[IPAddress]) -> None:
        """Start BIRD announcing ``routes``; raises SpeakerError when it does not come up."""
        binary = bird_binary()
        if binary is None:
            raise SpeakerError("BIRD 2 is not installed (`bird` not found)")
        self.stop()
        root = _runtime_directory()
        _remove_stale(root)
        prefix = f"{DIRECTORY_PREFIX}{os.getpid()}-{self.name}-"
        self.directory = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
        wanted = frozenset(routes)
        self._write(wanted)
        command = [binary, "-f", "-c", str(self.config_path), "-s", str(self.control_path)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        self.starts += 1
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                self.command("show status")
                break
            except SpeakerError as error:
                if self.process.poll() is not None:
                    raise SpeakerError(
                        f"BIRD exited with status {self.process.returncode} at start "
                        f"(its messages are in the daemon's log): {error}"
                    ) from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise SpeakerError(f"BIRD did not answer within {START_SECONDS:g} s") from None
                time.sleep(0.02)
        self.routes = wanted
        log.info("BGP speaker: BIRD (pid %d) started with %d routes, peers %s",
                 self.process.pid, len(wanted),
                 ", ".join(f"{p.address} AS {p.asn}" for p in self.bgp.peers))  # fmt: skip

    def announce(self, routes: Iterable[IPAddress]) -> bool:
        """Announce exactly ``routes`` (withdraw the rest); False when nothing changed."""
        wanted = frozenset(routes)
        if wanted == self.routes:
            return False
        self._write(wanted)
        answer = self.command("configure")
        if not any(line.startswith(("0003", "0004", "0018", "0019")) for line in answer):
            raise SpeakerError(f"BIRD refused the new routes: {' / '.join(answer)}")
        self.routes = wanted
        return True

    def sessions(self) -> dict[str, Session]:
        """BIRD's view of each peer's session, by protocol name (peer0, peer1, ...)."""
        found = {}
        for line in self.command("show protocols"):
            # "1002-" before the first line of a table, a space before the others
            content = line[1:] if line.startswith(" ") else line[5:]
            fields = content.split()
            # name, protocol, table, state, since (one word: a time today, else a date), info
            if len(fields) >= 5 and fields[1] == "BGP":
                found[fields[0]] = Session(fields[3], " ".join(fields[5:]))
        return found

    def command(self, text: str) -> list[str]:
        """One command on BIRD's control socket: the lines of its answer (code and text)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
                control.settimeout(CONTROL_SECONDS)
                control.connect(str(self.control_path))
                reader = control.makefile("r", encoding="utf-8", errors="replace")
                _read_answer(reader)  # the greeting: 0001 BIRD ... ready.
                control.sendall(text.encode() + b"\n")
                return _read_answer(reader)
        except OSError as error:
            raise SpeakerError(f"BIRD's control socket {self.control_path}: {error}") from None

    def stop(self) -> None:
        """Stop BIRD: it closes its sessions (a Cease to each router, which withdraws every
        route at once) and exits."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.info("BGP speaker: BIRD stopped; the routers withdraw its routes")
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        self.routes = frozenset()

    def _write(self, routes: frozenset[IPAddress]) -> None:
        text = render(self.bgp, self.router_id, self.next_hop4, self.next_hop6, routes)
        temporary = self.config_path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(self.config_path)


def _read_answer(reader: Iterable[str]) -> list[str]:
    """Lines up to the last of an answer: a 4-digit code and a space (more lines of the same
    answer have a "-" after the code, or begin with a space)."""
    lines = []
    for raw in reader:
        line = raw.rstrip("\n")
        lines.append(line)
        if len(line) >= 5 and line[:4].isdigit() and line[4] == " ":
            return lines
    raise OSError("the connection closed in the middle of an answer")
