"""The systemd service protocol (sd_notify(3)), spoken directly: one datagram per message to
the socket systemd names in ``$NOTIFY_SOCKET``. Without that variable (not started by systemd
with ``Type=notify``) every call does nothing.

What the daemon says, and when (docs/deploy.md):

- ``READY=1`` once the data plane is attached and the API listens (the unit is then
  "active"); again after each SIGHUP reload, which is announced by ``RELOADING=1``.
- ``STOPPING=1`` when a stop was asked for.
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while the event loop runs and the program is
  attached: a hung loop or a lost data plane lets systemd restart the service.
- ``STATUS=...``: one line that ``systemctl status`` shows.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger("rusty_rail.daemon")


class Notifier:
    """Messages to systemd's notification socket, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace.
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_seconds = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ...) as one message; False when there is no socket
        or systemd did not take it (logged once per failure, never raised: the service goes on
        without supervision rather than stopping)."""
        if not self.address:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as error:
            log.warning("could not notify systemd at %s: %s", self.address.lstrip("\0"), error)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        # systemd >= 253 wants the monotonic time with RELOADING=1 (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog interval systemd asks for, when it is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000
