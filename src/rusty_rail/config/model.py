"""The configuration model: backends, VIPs (and their keys) and the whole Config of one node,
with the checks that concern more than one field."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Self

from pydantic import (
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_serializer,
    model_serializer,
    model_validator,
)

from rusty_rail._types import IPAddress
from rusty_rail.model.flowhash import DEFAULT_SEED

from .bgp import Bgp
from .enums import Action, AdminState, Affinity, CheckType, Encap, Ingress, Protocol, XdpMode
from .errors import ConfigError, Invalid, Loc, Problem
from .fields import (
    ADDRESS_SCHEMA,
    DEFAULT_CONNTRACK_SIZE,
    DEFAULT_TABLE_SIZE,
    ActionField,
    Address,
    AdminStateField,
    AffinityField,
    AlsoAccepts,
    ConntrackSize,
    DeviceName,
    EncapField,
    FrozenModel,
    IngressField,
    OptionalAddress,
    OptionalEncapField,
    OptionalPort,
    OptionalProtocol,
    OptionalTableSize,
    OptionalVni,
    Seed,
    TableSize,
    Ttl,
    Weight,
    XdpModeField,
    check_address,
)
from .health import BackendHealth, Health, HealthSettings, merge_health

#: Keys left out of dumps while they hold these values (the defaults of keys added later), so
#: that configurations without them read and hash exactly as they did before the keys existed.
_OMITTED_AT: Final[Mapping[str, object]] = {
    "health": None,
    "vni": None,
    "encap": None,
    "ingress": ("gre",),
    "affinity": "5-tuple",
    "bgp": None,
}


class _OmitsNoHealth(FrozenModel):
    """A model whose later keys (``health``, ``vni``, a backend's ``encap``, ``ingress``,
    ``bgp``) are
    left out of dumps while unset (see ``_OMITTED_AT``)."""

    @model_serializer(mode="wrap")
    def _without_unset_keys(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key, unset in _OMITTED_AT.items():
                value = data.get(key, ...)
                if value == unset or (isinstance(value, list) and tuple(value) == unset):
                    del data[key]
        return data


class Backend(_OmitsNoHealth):
    """A server behind a VIP. In TOML it may be written as just its address string."""

    address: Address
    weight: Weight = 1
    state: AdminStateField = AdminState.UP
    #: This backend's own egress method, over its VIP's (None: the VIP's).
    encap: OptionalEncapField = None
    #: This backend's own VXLAN / GENEVE network identifier, over its VIP's.
    vni: OptionalVni = None
    #: This backend's own health settings, over the VIP's.
    health: BackendHealth | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_address_string(cls, data: object) -> object:
        if isinstance(data, str):
            return {"address": data}
        if not isinstance(data, Mapping | Backend):
            raise ValueError(
                'must be an address string or a table such as {address = "10.1.0.1", weight = 2}'
            )
        return data


#: A backend in a list of them, where it may be written as just its address.
BackendEntry = Annotated[Backend, AlsoAccepts(ADDRESS_SCHEMA)]


@dataclass(frozen=True, slots=True)
class VipKey:
    """What a VIP matches: an address, and either a protocol and port or neither (address-wide).

    Its string form is canonical and is what :func:`parse_vip_key` reads:
    ``198.18.100.1``, ``198.18.100.1:80/tcp``, ``2001:2::1``, ``[2001:2::1]:80/tcp``.
    """

    address: IPAddress
    protocol: Protocol | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.protocol is None or self.port is None:
            return str(self.address)
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}/{self.protocol.value}"


class Vip(_OmitsNoHealth):
    """A virtual IP service: what it matches, how packets reach its backends, and the backends."""

    address: Address
    protocol: OptionalProtocol = None
    port: OptionalPort = None
    encap: EncapField = Encap.GRE
    #: The VXLAN / GENEVE network identifier of the backends (each may set its own).
    vni: OptionalVni = None
    #: Maglev table size for this VIP; None means the configuration's ``table_size``.
    table_size: OptionalTableSize = None
    #: The flow fields the VIP's Maglev choice hashes (session affinity).
    affinity: AffinityField = Affinity.FIVE_TUPLE
    backends: tuple[BackendEntry, ...] = ()
    #: Health checks and ICMP learning for this VIP's backends, over the top level's.
    health: Health | None = None

    @property
    def key(self) -> VipKey:
        return VipKey(self.address, self.protocol, self.port)

    def encap_of(self, backend: Backend) -> Encap:
        """The egress method of ``backend``: its own, or this VIP's."""
        return backend.encap if backend.encap is not None else self.encap

    def vni_of(self, backend: Backend) -> int | None:
        """The VNI of ``backend``: its own, or this VIP's."""
        return backend.vni if backend.vni is not None else self.vni

    @model_validator(mode="after")
    def _check_vip(self) -> Self:
        problems: list[Problem] = []
        if self.vni is not None and not self.encap.has_vni:
            reason = f'a VNI means nothing to encap "{self.encap.value}": only vxlan and geneve'
            problems.append(Problem(("vni",), reason, self.vni))
        inheriting = [b for b in self.backends if b.vni is None and self.encap_of(b).has_vni]
        if self.encap.has_vni and self.vni is None and (inheriting or not self.backends):
            reason = f'encap "{self.encap.value}" needs a VNI: set vni = 0..16777215'
            problems.append(Problem(("vni",), reason))
        problems += _egress_problems(self.backends, self.encap, self.vni, ("backends",))
        if self.port is not None and self.protocol is None:
            problems.append(
                Problem(
                    ("port",), 'a port needs a protocol: add protocol = "tcp" or "udp"', self.port
                )
            )
        if self.protocol is not None and self.port is None:
            problems.append(
                Problem(
                    ("protocol",), "a protocol needs a port: add port = 1..65535", self.protocol
                )
            )
        problems += _duplicate_backends(self.backends, ("backends",))
        if self.table_size is not None:
            problems += _table_fits(
                self.table_size, self.backends, ("backends",), "this VIP's table_size"
            )
        if problems:
            raise Invalid(problems)
        return self


class Config(_OmitsNoHealth):
    """The whole configuration of one balancer node."""

    #: How packets reach this node: GRE to it, plain packets routed to a VIP, or both.
    ingress: IngressField = (Ingress.GRE,)
    #: The interface that receives and sends the GRE traffic; None: not chosen here.
    device: DeviceName = None
    xdp_mode: XdpModeField = XdpMode.NATIVE
    #: The node's own outer address (the GRE destination); None: discovered from the device.
    lb_address: OptionalAddress = None
    #: The node's own outer IPv6 address (outer IPv6 GRE ends here; the source of the outer
    #: IPv6 headers sent to IPv6 backends); None: discovered from the device when it has one
    #: global IPv6 address.
    lb_address_ipv6: OptionalAddress = None
    hash_seed: Seed = DEFAULT_SEED
    table_size: TableSize = DEFAULT_TABLE_SIZE
    outer_ttl: Ttl = 64
    no_vip_action: ActionField = Action.PASS
    malformed_action: ActionField = Action.DROP
    conntrack_size: ConntrackSize = DEFAULT_CONNTRACK_SIZE
    #: Where GRE traffic matching no VIP goes (the seed's RR_TARGET_IPS); empty: nowhere.
    default_backends: tuple[BackendEntry, ...] = ()
    vips: tuple[Vip, ...] = ()
    #: Health checks and ICMP learning for every VIP and the default set (docs/health.md).
    health: Health | None = None
    #: This node's BGP speaker, which announces the VIPs to its routers (docs/cluster.md);
    #: None: nothing is announced.
    bgp: Bgp | None = None

    def table_size_for(self, vip: Vip) -> int:
        """The Maglev table size ``vip`` uses."""
        return vip.table_size if vip.table_size is not None else self.table_size

    def health_for(self, vip: Vip | None, backend: Backend) -> HealthSettings:
        """The health settings of ``backend`` of ``vip`` (None: the default set)."""
        if vip is None:
            return merge_health(self.health, backend.health)
        return merge_health(self.health, vip.health, backend.health, vip_port=vip.port)

    @field_serializer("hash_seed", when_used="json")
    def _seed_as_hex(self, seed: int) -> str:
        # JSON readers often hold numbers as doubles, which cannot carry 64 bits.
        return f"{seed:#018x}"

    @model_validator(mode="after")
    def _check_config(self) -> Self:
        problems = _duplicate_backends(self.default_backends, ("default_backends",))
        problems += _egress_problems(self.default_backends, Encap.GRE, None, ("default_backends",))
        if self.lb_address_ipv6 is not None and self.lb_address_ipv6.version != 6:
            reason = "must be an IPv6 address (the IPv4 one is lb_address)"
            problems.append(Problem(("lb_address_ipv6",), reason, self.lb_address_ipv6))
        problems += _table_fits(
            self.table_size, self.default_backends, ("default_backends",), "table_size"
        )
        vip_addresses: dict[IPAddress, int] = {}
        seen_keys: dict[VipKey, int] = {}
        for index, vip in enumerate(self.vips):
            vip_addresses.setdefault(vip.address, index)
            if vip.key in seen_keys:
                reason = f"duplicate VIP, same as vips[{seen_keys[vip.key]}]"
                problems.append(Problem(("vips", index), reason, str(vip.key)))
            seen_keys.setdefault(vip.key, index)
            if vip.table_size is None:
                loc: Loc = ("vips", index, "backends")
                size_key = "table_size, or set this VIP's own"
                problems += _table_fits(self.table_size, vip.backends, loc, size_key)
            if vip.address == self.lb_address:
                reason = "is the balancer's own address (lb_address)"
                problems.append(Problem(("vips", index, "address"), reason, vip.address))
            if vip.address == self.lb_address_ipv6:
                reason = "is the balancer's own address (lb_address_ipv6)"
                problems.append(Problem(("vips", index, "address"), reason, vip.address))

        def check_backends(backends: Sequence[Backend], loc: Loc) -> None:
            for position, backend in enumerate(backends):
                where = (*loc, position, "address")
                if backend.address == self.lb_address:
                    reason = "is the balancer's own address (lb_address)"
                    problems.append(Problem(where, reason, backend.address))
                if backend.address == self.lb_address_ipv6:
                    reason = "is the balancer's own address (lb_address_ipv6)"
                    problems.append(Problem(where, reason, backend.address))
                if backend.address in vip_addresses:
                    reason = f"is a VIP address (vips[{vip_addresses[backend.address]}])"
                    problems.append(Problem(where, reason, backend.address))

        check_backends(self.default_backends, ("default_backends",))
        for index, vip in enumerate(self.vips):
            check_backends(vip.backends, ("vips", index, "backends"))
        problems += self._health_problems()
        if problems:
            raise Invalid(problems)
        return self

    def _health_problems(self) -> list[Problem]:
        """What the merged health settings of each backend get wrong, reported at the most
        specific level that has a health table."""
        problems: list[Problem] = []
        services: list[tuple[Vip | None, Loc, tuple[Backend, ...]]] = [
            (None, (), self.default_backends)
        ]
        services += [(vip, ("vips", i), vip.backends) for i, vip in enumerate(self.vips)]
        for vip, vip_loc, backends in services:
            service_loc: Loc = (*vip_loc, "health") if vip and vip.health else ("health",)
            backends_key = "backends" if vip is not None else "default_backends"
            levels = (self.health,) if vip is None else (self.health, vip.health)
            service = merge_health(*levels)
            if service.timeout > service.interval:
                reason = f"must not be longer than the interval ({service.interval:g} s)"
                problems.append(Problem((*service_loc, "timeout"), reason, service.timeout))
            # Backends without a health table of their own share one merge (and, located at
            # the service, one problem): 1000 of them need not be merged 1000 times.
            shared: HealthSettings | None = None
            for position, backend in enumerate(backends):
                where = service_loc
                first_shared = False
                if backend.health is not None:
                    where = (*vip_loc, backends_key, position, "health")
                    settings = self.health_for(vip, backend)
                elif shared is None:
                    settings = shared = self.health_for(vip, backend)
                    first_shared = True
                else:
                    settings = shared
                method = vip.encap_of(backend) if vip else (backend.encap or Encap.GRE)
                if method is not Encap.GRE and settings.check is CheckType.TUNNEL:
                    reason = (
                        f"the tunnel check probes through GRE, and this backend's encap is "
                        f'"{method.value}": use tcp or http for it, or no check'
                    )
                    problems.append(Problem((*where, "check"), reason, "tunnel"))
                if backend.health is None and not first_shared:
                    continue
                if settings.check in (CheckType.TCP, CheckType.HTTP) and settings.port is None:
                    reason = (
                        f"the {settings.check.value} check needs a port, and "
                        + ("this VIP matches every port" if vip else "the default set has none")
                        + ": set port"
                    )
                    problems.append(Problem((*where, "port"), reason))
                own = backend.health
                if (
                    own is not None
                    and (own.timeout, own.interval) != (None, None)
                    and settings.timeout > settings.interval
                ):
                    reason = f"must not be longer than the interval ({settings.interval:g} s)"
                    problems.append(Problem((*where, "timeout"), reason, settings.timeout))
        unique: dict[tuple[Loc, str], Problem] = {}
        for problem in problems:
            unique.setdefault((problem.loc, problem.reason), problem)
        return list(unique.values())


def _duplicate_backends(backends: Sequence[Backend], loc: Loc) -> list[Problem]:
    problems = []
    first: dict[IPAddress, int] = {}
    for position, backend in enumerate(backends):
        if backend.address in first:
            reason = f"duplicate backend, same as {loc[-1]}[{first[backend.address]}]"
            problems.append(Problem((*loc, position, "address"), reason, backend.address))
        first.setdefault(backend.address, position)
    return problems


def _egress_problems(
    backends: Sequence[Backend], encap: Encap, vni: int | None, loc: Loc
) -> list[Problem]:
    """A backend's own VNI where its method has none, and a VXLAN or GENEVE backend (by its
    own encap) with no VNI of its own or from its VIP."""
    problems = []
    for position, backend in enumerate(backends):
        method = backend.encap if backend.encap is not None else encap
        if backend.vni is not None and not method.has_vni:
            reason = f'a VNI means nothing to encap "{method.value}": only vxlan and geneve'
            problems.append(Problem((*loc, position, "vni"), reason, backend.vni))
        if backend.encap is not None and method.has_vni and backend.vni is None and vni is None:
            reason = f'encap "{method.value}" needs a VNI: set vni here or on the VIP'
            problems.append(Problem((*loc, position, "vni"), reason))
    return problems


def _table_fits(size: int, backends: Sequence[Backend], loc: Loc, size_key: str) -> list[Problem]:
    if len(backends) <= size:
        return []
    reason = (
        f"{len(backends)} backends do not fit in a Maglev table of {size} slots; raise {size_key}"
    )
    return [Problem(loc, reason)]


# ---------------------------------------------------------------------------------------------
# VIP keys as text (the REST API's paths use them)


_PORT = re.compile(r"[0-9]{1,5}")


def parse_vip_key(text: str, source: str = "VIP key") -> VipKey:
    """Read a VIP key in its canonical form (see :class:`VipKey`); raises ConfigError."""

    def fail(reason: str) -> ConfigError:
        return ConfigError([Problem((), reason, text)], source)

    raw = text.strip()
    protocol_text: str | None = None
    if "/" in raw:
        raw, protocol_text = raw.rsplit("/", 1)
    port_text: str | None = None
    if raw.startswith("["):
        host, bracket, rest = raw[1:].partition("]")
        if not bracket:
            raise fail('missing "]" after the IPv6 address')
        if rest:
            if not rest.startswith(":"):
                raise fail('expected ":port" after "]"')
            port_text = rest[1:]
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    else:
        host = raw
    try:
        address = check_address(host)
    except ValueError as error:
        raise fail(f"address {json.dumps(host)}: {error}") from None
    if raw.startswith("[") and address.version == 4:
        raise fail("only IPv6 addresses are written in brackets")
    protocol: Protocol | None = None
    if protocol_text is not None:
        try:
            protocol = Protocol(protocol_text)
        except ValueError:
            known = ", ".join(member.value for member in Protocol)
            raise fail(f"protocol {json.dumps(protocol_text)} must be one of: {known}") from None
    if port_text is None and protocol is None:
        return VipKey(address)
    if port_text is None:
        if address.version == 6 and not raw.startswith("["):
            raise fail(
                "a protocol needs a port, and an IPv6 address with a port is written in"
                f" brackets: [address]:port/{protocol_text}"
            )
        raise fail(f'a protocol needs a port, e.g. "{_host(address)}:80/{protocol_text}"')
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise fail(f"port {json.dumps(port_text)} must be a number between 1 and 65535")
    if protocol is None:
        raise fail(f'a port needs a protocol, e.g. "{_host(address)}:{int(port_text)}/tcp"')
    return VipKey(address, protocol, int(port_text))


def _host(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)
