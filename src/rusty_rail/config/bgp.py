"""The [bgp] section: how this balancer announces its VIPs to its routers (docs/cluster.md,
"Announcing the VIPs"). A node's own settings, like ``device``: never in the store."""

from __future__ import annotations

from typing import Annotated, Final, Self

from pydantic import BeforeValidator, Field, model_validator

from .errors import Invalid, Problem
from .fields import Address, FrozenModel, OptionalAddress, _integer_between

MAX_ASN: Final = 4_294_967_295
DEFAULT_BGP_PORT: Final = 179
#: BGP's hold time in seconds: the session is declared dead after this long without a
#: message (RFC 4271: 0 or at least 3; 0, no keepalives, is not offered).
DEFAULT_HOLD_TIME: Final = 3
MAX_HOLD_TIME: Final = 65535
#: Routers one balancer peers with.
MAX_PEERS: Final = 16

_Asn = Annotated[int, Field(ge=1, le=MAX_ASN)]
Asn = Annotated[_Asn, BeforeValidator(_integer_between(1, MAX_ASN))]
_Port = Annotated[int, Field(ge=1, le=65535)]
BgpPort = Annotated[_Port, BeforeValidator(_integer_between(1, 65535))]
_HoldTime = Annotated[int, Field(ge=3, le=MAX_HOLD_TIME)]
HoldTime = Annotated[_HoldTime, BeforeValidator(_integer_between(3, MAX_HOLD_TIME))]


class BgpPeer(FrozenModel):
    """A router this balancer opens a BGP session to."""

    address: Address
    asn: Asn
    port: BgpPort = DEFAULT_BGP_PORT
    #: Seconds without a message from the router before the session is declared dead.
    hold_time: HoldTime = DEFAULT_HOLD_TIME


class Bgp(FrozenModel):
    """The balancer's BGP speaker: its AS, its router ID and the routers it peers with."""

    asn: Asn
    #: The BGP identifier, an IPv4 address; None: the node's lb_address.
    router_id: OptionalAddress = None
    #: At least one, at most MAX_PEERS.
    peers: tuple[BgpPeer, ...]

    @model_validator(mode="after")
    def _check_bgp(self) -> Self:
        problems: list[Problem] = []
        if self.router_id is not None and self.router_id.version != 4:
            reason = "must be an IPv4 address (a BGP identifier is 32 bits)"
            problems.append(Problem(("router_id",), reason, self.router_id))
        if not 1 <= len(self.peers) <= MAX_PEERS:
            reason = f"give 1 to {MAX_PEERS} routers to announce the VIPs to"
            problems.append(Problem(("peers",), reason, len(self.peers)))
        seen: dict[tuple[str, int], int] = {}
        for index, peer in enumerate(self.peers):
            key = (str(peer.address), peer.port)
            if key in seen:
                reason = f"duplicate peer, same as peers[{seen[key]}]"
                problems.append(Problem(("peers", index, "address"), reason, peer.address))
            seen.setdefault(key, index)
            if peer.asn == self.asn:
                reason = (
                    "is the balancer's own AS (bgp.asn): only eBGP sessions are set up; "
                    "give the router's AS"
                )
                problems.append(Problem(("peers", index, "asn"), reason, peer.asn))
        if problems:
            raise Invalid(problems)
        return self
