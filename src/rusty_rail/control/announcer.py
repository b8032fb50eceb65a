"""What a balancer announces over BGP, and when (docs/cluster.md, "Announcing the VIPs").

The node announces a host route (/32, /128) for every VIP address it serves while all of
these hold: its program is attached to its device, it is not drained, and the daemon is not
stopping. Otherwise it announces nothing (the sessions stay up), and says why. IPv6 VIPs are
announced only when the node has an IPv6 address (lb_address_ipv6, given or found): it is
their next hop.

The daemon asks ``refresh`` on every tick (1 s: a program detached behind its back is seen
within a tick), after every change of the desired state, and on drain and undrain. The speaker
(bird.py) is started and stopped on the daemon's loop thread, whose life its
PR_SET_PDEATHSIG follows; its control-socket calls run on worker threads, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Final

from rusty_rail._types import IPAddress
from rusty_rail.config import Config
from rusty_rail.config.bgp import Bgp
from rusty_rail.control.bird import BirdSpeaker, Session, SpeakerError, protocol_name
from rusty_rail.control.fingerprint import address_order

if TYPE_CHECKING:
    from rusty_rail.api import schemas

log = logging.getLogger("rusty_rail.bgp")

DRAINED: Final = "the node is drained (ctl node drain)"
STOPPING: Final = "the daemon is stopping"
DETACHED: Final = "the data plane is not attached"


def vip_routes(config: Config, ipv6: bool) -> frozenset[IPAddress]:
    """The VIP addresses ``config`` serves (IPv6 ones only when ``ipv6``)."""
    return frozenset(vip.address for vip in config.vips if ipv6 or vip.address.version == 4)


class Announcer:
    """The node's announcements: its speaker, the drained flag, why nothing is announced."""

    def __init__(
        self,
        bgp: Bgp,
        lb_ipv4: IPv4Address,
        lb_ipv6: IPv6Address | None,
        name: str,
    ) -> None:
        self.bgp = bgp
        router_id = bgp.router_id if isinstance(bgp.router_id, IPv4Address) else lb_ipv4
        self.speaker = BirdSpeaker(bgp, router_id, lb_ipv4, lb_ipv6, name)
        self.ipv6 = lb_ipv6 is not None
        #: Why nothing is announced (None: the VIPs are).
        self.withheld: str | None = None
        #: The speaker's last failure while it stands (it is started again each tick).
        self.error: str | None = None
        self.sessions: dict[str, Session] = {}
        self._lock = asyncio.Lock()

    async def refresh(self, config: Config, attached: Callable[[], bool], drained: bool,
                      stopping: bool) -> None:  # fmt: skip
        """Bring the announcements in line with the node's state now."""
        async with self._lock:
            reason = STOPPING if stopping else DRAINED if drained else None
            if reason is None and not await asyncio.to_thread(attached):
                reason = DETACHED
            wanted = frozenset() if reason is not None else vip_routes(config, self.ipv6)
            try:
                if not self.speaker.running():
                    if self.speaker.starts:
                        log.error("BGP speaker: BIRD exited; starting it again")
                    self.speaker.start(wanted)  # on the loop's thread (PR_SET_PDEATHSIG)
                elif await asyncio.to_thread(self.speaker.announce, wanted):
                    log.info("BGP: announcing %d routes%s", len(wanted),
                             f" (withdrawn: {reason})" if reason else "")  # fmt: skip
                self.sessions = await asyncio.to_thread(self.speaker.sessions)
                self.error = None
            except (SpeakerError, OSError) as error:  # OSError: its files, its start
                if self.error != str(error):
                    log.error("BGP speaker: %s", error)
                self.error = str(error)
            if reason != self.withheld:
                if reason is None:
                    log.info("BGP: the VIPs are announced")
                else:
                    log.warning("BGP: every route withdrawn: %s", reason)
            self.withheld = reason

    async def stop(self) -> None:
        """Stop the speaker: its sessions close, the routers withdraw every route."""
        async with self._lock:
            self.withheld = STOPPING
            self.speaker.stop()
            self.sessions = {}

    # --- what the node reports -----------------------------------------------------------

    @property
    def announced(self) -> list[str]:
        return sorted((str(a) for a in self.speaker.routes), key=address_order)

    def status(self) -> schemas.BgpHealth:
        """/healthz's ``bgp``."""
        peers: list[schemas.BgpPeerHealth] = []
        for index, peer in enumerate(self.bgp.peers):
            session = self.sessions.get(protocol_name(index))
            peers.append(
                {
                    "address": str(peer.address),
                    "port": peer.port,
                    "asn": peer.asn,
                    "state": session.info if session is not None else "Down",
                    "established": session is not None and session.established,
                }
            )
        return {
            "asn": self.bgp.asn,
            "router_id": str(self.speaker.router_id),
            "speaker_running": self.speaker.running(),
            "error": self.error,
            "withheld": self.withheld,
            "announced": self.announced,
            "peers": peers,
        }
