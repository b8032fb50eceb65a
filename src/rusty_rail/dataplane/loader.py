"""The balancer's life on an interface: load it (adopting pinned maps after a restart), attach
it once its maps hold a complete state, keep it pinned, detach it on request.

Pins live in <pin root>/<ifname>/: one per map and ``link``. The pinned link keeps the
program attached while no control plane runs; a new control plane loads the same maps and
swaps its program in through the link, so packets keep flowing across a restart. A balancer
the kernel has attached to the interface is found through the kernel first and pinned again
here (dataplane/adoption.py): pins made in another mount namespace, or gone with it, are not
needed. Where the pins would not outlive this process (a bpffs private to its mount
namespace), the program is attached through netlink instead, which needs no pin to stay. The
mechanics are dataplane/pinned.py's; this module adds the balancer's maps, the sizing of its
connection table, and what to tell the operator.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rusty_rail.dataplane.adoption import NotOurProgram, find_attached, repin
from rusty_rail.dataplane.conntrack_maps import CONNTRACK_MAPS
from rusty_rail.dataplane.libbpf import (
    PIN_ROOT,
    AttachedProgram,
    BpfObject,
    LibbpfError,
    Link,
    Map,
    Program,
    XdpMode,
    detach_xdp,
    ensure_bpffs,
    lock_pin_dir,
    pins_outlive_process,
)
from rusty_rail.dataplane.maps import MAP_NAMES, BalancerMaps, prepare_object
from rusty_rail.dataplane.pinned import (
    LinkInOtherMode,
    LinkOnOtherInterface,
    PartialPins,
    PinnedXdpProgram,
    PinnedXdpSpec,
    detach_pinned,
)
from rusty_rail.model.state import Stat

log = logging.getLogger("rusty_rail.daemon")

PROGRAM_NAME = "xdp_balancer"
#: Counters outside BalancerMaps, pinned with its maps so that they survive a restart as the
#: packet counters do: the ICMP outcomes and the per-VIP too-big counts (issue 14, item 5).
#: (The per-VIP new flows and drops, vip_flows, are BalancerMaps' own: it zeroes them.)
COUNTER_MAPS = ("icmp_stats", "vip_too_big")
#: The maps issue 10 added (IPv6 VIPs and flows): a balancer pinned by an earlier version is
#: adopted without them, and they are pinned beside its maps when the new program goes in; so
#: are the per-VIP flow counters and session affinity of issue 15.
ADDED_MAPS = frozenset(
    {
        "vips_v6",
        "conntrack_v6",
        "backend_tunnels",
        "backend_mtu",
        "vip_flows",
        "vip_affinity",
        *COUNTER_MAPS,
    }
)
BALANCER = PinnedXdpSpec(
    "balancer",
    PROGRAM_NAME,
    {name: name for name in (*MAP_NAMES, *COUNTER_MAPS)},
    added_maps=ADDED_MAPS,
)


class LoaderError(RuntimeError):
    """The balancer cannot be loaded, attached or adopted; the message says what to do."""


@dataclass
class Balancer:
    """A loaded balancer program and its maps (attached or not yet)."""

    ifname: str
    ifindex: int
    xdp: PinnedXdpProgram
    maps: BalancerMaps
    #: The flock on the pin directory: one daemon per interface and pin root.
    lock: int | None = None
    #: The hold on the interface in its network namespace, whatever the pin root and the
    #: mount namespace (hold_interface).
    interface_hold: socket.socket | None = None
    #: The pins are on a bpffs of this process's mount namespace only: they go when it exits
    #: (the program stays attached: through netlink, or a bpf_link pinned elsewhere).
    pins_private: bool = False

    @property
    def obj(self) -> BpfObject:
        if self.xdp.obj is None:  # cannot happen: load_balancer loads the object
            raise RuntimeError("the balancer has no object")
        return self.xdp.obj

    @property
    def program(self) -> Program:
        return self.xdp.program

    @property
    def adopted(self) -> bool:
        return self.xdp.adopted

    @property
    def link(self) -> Link | None:
        return self.xdp.link

    def close(self) -> None:
        """Release this process's descriptors and its hold on the pin directory. The pins keep
        the data plane running; a pin directory left empty (a start that failed before
        attaching) is removed."""
        self.maps.close()
        self.xdp.close()
        if self.lock is not None:
            if self.xdp.directory is not None:
                with contextlib.suppress(OSError):  # not empty: it holds the running balancer
                    self.xdp.directory.rmdir()
            os.close(self.lock)
            self.lock = None
        if self.interface_hold is not None:
            self.interface_hold.close()
            self.interface_hold = None


def hold_interface(ifname: str) -> socket.socket | None:
    """Hold ``ifname`` for this process: an abstract Unix socket bound to a name made of it.
    Abstract names belong to the network namespace, as interfaces do, and are no files: a
    daemon in any mount namespace sees them. None when another process holds the name; the
    kernel frees it when its holder exits, however it exits."""
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        holder.bind(b"\0rusty_rail/run/" + os.fsencode(ifname))
    except OSError as error:
        holder.close()
        if error.errno == errno.EADDRINUSE:
            return None
        raise
    return holder


def load_balancer(
    ifname: str, ifindex: int, *, conntrack_size: int, pin_root: Path = PIN_ROOT
) -> Balancer:
    """Load the balancer for ``ifname``. With every map pinned, the pinned maps are reused
    (state, connection table and counters survive); with none, fresh maps are made. A partial
    set of pins is refused: it means an interrupted detach, and guessing would lose state."""
    ensure_bpffs()
    directory = pin_root / ifname
    # The pin directory may be private to a mount namespace: the interface is held too.
    hold = hold_interface(ifname)
    if hold is None:
        raise LoaderError(
            f"another rusty-rail run drives {ifname} in this network namespace (from this or "
            "another mount namespace): stop it first (the next start adopts what it leaves "
            "running)"
        )
    try:
        lock = lock_pin_dir(directory)
    except BaseException:
        hold.close()
        raise
    if lock is None:
        hold.close()
        raise LoaderError(
            f"another rusty-rail run drives {ifname} (it holds {directory}): stop it first (the "
            "next start adopts what it leaves running), or give this one its own --pin-root"
        )
    try:
        balancer = _load_locked(ifname, ifindex, directory, lock, conntrack_size)
    except BaseException:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: nothing was pinned
        os.close(lock)
        hold.close()
        raise
    balancer.interface_hold = hold
    return balancer


def _found_through_the_kernel(ifname: str, ifindex: int, directory: Path) -> AttachedProgram | None:
    """Pin in ``directory`` the balancer the kernel has attached to ``ifindex``, whoever
    pinned it wherever (pins in another mount namespace, or gone with it): the adoption then
    reads it from there. Returns the program when it is attached through netlink (no
    bpf_link): the swap must name it."""
    try:
        attached = find_attached(BALANCER, ifindex)
    except NotOurProgram as error:
        raise LoaderError(
            f"{ifname} runs another XDP program, {error}; rusty-rail adopts only its own "
            f"balancer: detach that program first (`ip link set dev {ifname} xdp off`, or the "
            "tool that attached it) or use another --device"
        ) from None
    except LibbpfError as error:
        raise LoaderError(f"cannot read the XDP program attached to {ifname}: {error}") from error
    if attached is None:
        return None
    with attached:
        try:
            repinned = repin(attached, BALANCER, directory)
        except LibbpfError as error:
            raise LoaderError(
                f"cannot pin the balancer running on {ifname} ({attached.describe()}) in "
                f"{directory}: {error}"
            ) from error
        if repinned:
            log.info(
                "found the balancer on %s through the kernel: %s; pinned %s in %s",
                ifname,
                attached.describe(),
                ", ".join(repinned),
                directory,
            )
        if attached.link is not None:
            return None
        return AttachedProgram.from_id(attached.program.id)


def _load_locked(
    ifname: str, ifindex: int, directory: Path, lock: int, conntrack_size: int
) -> Balancer:
    replacing = _found_through_the_kernel(ifname, ifindex, directory)
    try:
        balancer = _load_pinned(ifname, ifindex, directory, lock, conntrack_size)
    except BaseException:
        if replacing is not None:
            replacing.close()
        raise
    balancer.xdp.replacing = replacing
    balancer.pins_private = pins_outlive_process(directory) is False
    balancer.xdp.linkless = balancer.pins_private
    return balancer


def _load_pinned(
    ifname: str, ifindex: int, directory: Path, lock: int, conntrack_size: int
) -> Balancer:
    try:
        adopted = BALANCER.adoptable(directory)
    except PartialPins as error:
        raise LoaderError(
            f"{directory} holds only some of the balancer's maps (missing: "
            f"{', '.join(error.missing)}); run `rusty-rail detach --device {ifname}` to start "
            "clean"
        ) from None

    def size_conntrack(obj: BpfObject) -> None:
        if adopted:
            with Map.from_pinned(directory / "conntrack") as conntrack:
                pinned_size = conntrack.max_entries
            # The connection table keeps the size it was made with: resizing would drop it.
            for name in CONNTRACK_MAPS:
                obj.set_max_entries(name, pinned_size)
            # An earlier version's counters have fewer reasons: kept (they hold its counts);
            # the reasons past their end are not counted until the maps are made anew.
            with Map.from_pinned(directory / "stats") as stats:
                obj.set_max_entries("stats", min(stats.max_entries, len(Stat)))
        else:
            prepare_object(obj, conntrack_entries=conntrack_size)

    try:
        xdp = PinnedXdpProgram.load(BALANCER, directory, adopt=adopted, configure=size_conntrack)
        try:
            maps = BalancerMaps(xdp.maps)
        except BaseException:
            xdp.close()
            raise
    except LibbpfError as error:
        if adopted:
            raise LoaderError(
                f"cannot reuse the balancer maps pinned in {directory} ({error}); they were made "
                f"by another version: run `rusty-rail detach --device {ifname}` to start clean"
            ) from error
        raise
    return Balancer(ifname, ifindex, xdp, maps, lock)


@contextmanager
def _told_what_to_do(balancer: Balancer, mode: XdpMode) -> Iterator[None]:
    """The pinned link's refusals and the kernel's, as the operator reads them."""
    ifname = balancer.ifname
    try:
        yield
    except LinkOnOtherInterface as error:
        raise LoaderError(
            f"{error.link_path} is attached to ifindex {error.link_ifindex}, not {ifname} "
            f"(ifindex {balancer.ifindex}): the interface was re-created; run "
            f"`rusty-rail detach --device {ifname}` and start again"
        ) from None
    except LinkInOtherMode as error:
        raise LoaderError(
            f"the balancer on {ifname} runs in {error.mode} mode, not {mode}: "
            f"run `rusty-rail detach --device {ifname}` to change the mode"
        ) from None
    except LibbpfError as error:
        # The kernel's refusal (no native XDP, another program attached meanwhile, ...): the
        # error names the operation, the errno and what to do.
        raise LoaderError(f"cannot attach the balancer to {ifname}: {error}") from error


def private_pins_warning(balancer: Balancer) -> str:
    """What a balancer pinned on a private bpffs tells the operator (the log, /healthz)."""
    directory = balancer.xdp.directory
    held = (
        "through netlink, not a bpf_link that would go with the pins"
        if balancer.xdp.link is None
        else "while its bpf_link stays pinned outside this namespace"
    )
    return (
        f"the pins in {directory} are on a bpffs private to this process's mount namespace "
        f"(ip netns exec, a container?) and go when it exits: the balancer stays attached "
        f"{held}, and the next start finds it through the kernel, but nothing outside sees "
        "its pins; to keep them, give the daemon the host's "
        "/sys/fs/bpf (nsenter --net=/run/netns/NAME instead of ip netns exec, or bind-mount "
        "/sys/fs/bpf)"
    )


def check_attachable(balancer: Balancer, mode: XdpMode) -> None:
    """Raise LoaderError when attach_balancer would refuse: call it before writing adopted
    maps, which the running program already reads."""
    with _told_what_to_do(balancer, mode):
        balancer.xdp.check_attachable(balancer.ifindex, mode)


def attach_balancer(balancer: Balancer, mode: XdpMode) -> str:
    """Attach (or, after a restart, swap in) the program; returns what was done, for the log.

    Call it only once the maps hold the complete state: from here on packets see them."""
    with _told_what_to_do(balancer, mode):
        return balancer.xdp.attach(balancer.ifindex, mode)


def detach_balancer(ifname: str, pin_root: Path = PIN_ROOT) -> bool:
    """Detach the balancer from ``ifname`` and remove its pins (state, connection table and
    counters go with them); a balancer the kernel has attached to ``ifname`` (in this network
    namespace) without pins here is detached too. False when there was neither."""
    directory = pin_root / ifname
    found = directory.exists()
    if found:
        detach_pinned(directory)
    try:
        ifindex = socket.if_nametoindex(ifname)
    except OSError:
        return found  # no such interface here: nothing attached to it
    try:
        attached = find_attached(BALANCER, ifindex)
    except NotOurProgram:
        return found  # not ours to detach
    if attached is None:
        return found
    with attached:
        mode = attached.mode
    return detach_xdp(ifindex, mode) or found  # type: ignore[arg-type]
