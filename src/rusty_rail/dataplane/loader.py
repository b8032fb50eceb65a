"""The balancer's life on an interface: load it (adopting pinned maps after a restart), attach
it once its maps hold a complete state, keep it pinned, detach it on request.

Pins live in <pin root>/<ifname>/: one per map and ``link``. The pinned link keeps the
program attached while no control plane runs; a new control plane loads the same maps and
swaps its program in through the link, so packets keep flowing across a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rusty_rail.dataplane.libbpf import (
    PIN_ROOT,
    BpfObject,
    LibbpfError,
    Link,
    Map,
    Program,
    XdpMode,
    attach_xdp,
    bpf_object_path,
    ensure_bpffs,
    pin_dir,
    query_xdp,
    remove_pin_dir,
)
from rusty_rail.dataplane.maps import MAP_NAMES, BalancerMaps, prepare_object

PROGRAM_NAME = "xdp_balancer"
LINK_PIN = "link"


class LoaderError(RuntimeError):
    """The balancer cannot be loaded, attached or adopted; the message says what to do."""


@dataclass
class Balancer:
    """A loaded balancer program and its maps (attached or not yet)."""

    ifname: str
    ifindex: int
    directory: Path
    obj: BpfObject
    program: Program
    maps: BalancerMaps
    adopted: bool
    link: Link | None = None

    def close(self) -> None:
        """Release this process's descriptors. The pins keep the data plane running."""
        if self.link is not None:
            self.link.close()
            self.link = None
        self.maps.close()
        self.obj.close()


def load_balancer(
    ifname: str, ifindex: int, *, conntrack_size: int, pin_root: Path = PIN_ROOT
) -> Balancer:
    """Load the balancer for ``ifname``. With every map pinned, the pinned maps are reused
    (state, connection table and counters survive); with none, fresh maps are made. A partial
    set of pins is refused: it means an interrupted detach, and guessing would lose state."""
    ensure_bpffs()
    directory = pin_root / ifname
    present = [name for name in MAP_NAMES if (directory / name).exists()]
    if present and len(present) != len(MAP_NAMES):
        missing = sorted(set(MAP_NAMES) - set(present))
        raise LoaderError(
            f"{directory} holds only some of the balancer's maps (missing: {', '.join(missing)}); "
            f"run `rusty-rail detach --device {ifname}` to start clean"
        )
    adopted = bool(present)
    obj = BpfObject.open(bpf_object_path("balancer"))
    try:
        if adopted:
            with Map.from_pinned(directory / "conntrack") as conntrack:
                pinned_size = conntrack.max_entries
            # The connection table keeps the size it was made with: resizing would drop it.
            obj.set_max_entries("conntrack", pinned_size)
            for name in MAP_NAMES:
                obj.reuse_pinned_map(name, directory / name)
        else:
            prepare_object(obj, conntrack_entries=conntrack_size)
        obj.load()
        program = obj.program(PROGRAM_NAME)
        maps = BalancerMaps.of_object(obj)
    except LibbpfError as error:
        obj.close()
        if adopted:
            raise LoaderError(
                f"cannot reuse the balancer maps pinned in {directory} ({error}); they were made "
                f"by another version: run `rusty-rail detach --device {ifname}` to start clean"
            ) from error
        raise
    except BaseException:
        obj.close()
        raise
    return Balancer(ifname, ifindex, directory, obj, program, maps, adopted)


def _pinned_link(balancer: Balancer, mode: XdpMode) -> Link | None:
    """The pinned link the program would be swapped into (None: a first attach), after
    checking that the swap can be done: same interface, same mode."""
    link_path = balancer.directory / LINK_PIN
    if not link_path.exists():
        return None
    link = Link.from_pinned(link_path)
    try:
        if link.ifindex != balancer.ifindex:
            raise LoaderError(
                f"{link_path} is attached to ifindex {link.ifindex}, not {balancer.ifname} "
                f"(ifindex {balancer.ifindex}): the interface was re-created; run "
                f"`rusty-rail detach --device {balancer.ifname}` and start again"
            )
        attached = query_xdp(balancer.ifindex)
        if attached is not None and attached.mode != mode:
            raise LoaderError(
                f"the balancer on {balancer.ifname} runs in {attached.mode} mode, not {mode}: "
                f"run `rusty-rail detach --device {balancer.ifname}` to change the mode"
            )
    except BaseException:
        link.close()
        raise
    return link


def check_attachable(balancer: Balancer, mode: XdpMode) -> None:
    """Raise LoaderError when attach_balancer would refuse: call it before writing adopted
    maps, which the running program already reads."""
    link = _pinned_link(balancer, mode)
    if link is not None:
        link.close()


def attach_balancer(balancer: Balancer, mode: XdpMode) -> str:
    """Attach (or, after a restart, swap in) the program; returns what was done, for the log.

    Call it only once the maps hold the complete state: from here on packets see them."""
    directory = pin_dir(balancer.ifname, root=balancer.directory.parent)
    link_path = directory / LINK_PIN
    link = _pinned_link(balancer, mode)
    if link is not None:
        try:
            link.update_program(balancer.program)
        except BaseException:
            link.close()
            raise
        balancer.link = link
        return f"swapped the new program into the pinned {mode} XDP link"
    if not balancer.adopted:
        for name in MAP_NAMES:
            getattr(balancer.maps, name).pin(directory / name)
    try:
        link = attach_xdp(balancer.ifindex, balancer.program, mode)
        link.pin(link_path)
    except BaseException:
        if not balancer.adopted:
            remove_pin_dir(directory)
        raise
    balancer.link = link
    return f"attached in {mode} mode"


def detach_balancer(ifname: str, pin_root: Path = PIN_ROOT) -> bool:
    """Detach the balancer from ``ifname`` and remove its pins (state, connection table and
    counters go with them). False when nothing was pinned."""
    directory = pin_root / ifname
    if not directory.exists():
        return False
    link_path = directory / LINK_PIN
    if link_path.exists():
        with Link.from_pinned(link_path) as link:
            link.detach()
    remove_pin_dir(directory)
    return True
