"""One XDP program's life on an interface, written once for the balancer, the decap agent and
the test bed's router: load (reusing its pinned maps), attach or swap through the pinned link
after checking its interface and mode, pin maps and link, detach and unpin.

A program's pins live in one directory on a bpffs: one pin per map (``PinnedXdpSpec.map_pins``
names them) and ``link``. The pinned link keeps the program attached while no process holds it;
a new process loads the same maps and swaps its program in through the link, so packets keep
flowing across a restart. The callers keep their own policy and their own messages: which
maps, how the object is sized, what a mismatch means (refuse, or start afresh).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rusty_rail.dataplane.libbpf import (
    AttachedProgram,
    BpfObject,
    Link,
    Map,
    Program,
    XdpMode,
    attach_xdp,
    attach_xdp_netlink,
    bpf_object_path,
    detach_xdp,
    pin_dir,
    query_xdp,
    remove_pin_dir,
)
from rusty_rail.dataplane.libbpf._fd import Closeable

__all__ = [
    "LINK_PIN",
    "Closeable",
    "LinkInOtherMode",
    "LinkOnOtherInterface",
    "PartialPins",
    "PinnedXdpProgram",
    "PinnedXdpSpec",
    "detach_pinned",
    "open_pinned_link",
]

LINK_PIN = "link"


class PartialPins(RuntimeError):
    """Some of a program's maps are pinned and some are not: an interrupted detach. Guessing
    would lose state, so nothing is loaded."""

    def __init__(self, directory: Path, missing: list[str]) -> None:
        super().__init__(f"{directory} holds only some of the maps (missing: {', '.join(missing)})")
        self.directory = directory
        self.missing = missing


class LinkOnOtherInterface(RuntimeError):
    """The pinned link is attached to another interface (or to none: the one it had is gone)."""

    def __init__(self, link_path: Path, link_ifindex: int) -> None:
        super().__init__(f"{link_path} is attached to ifindex {link_ifindex}")
        self.link_path = link_path
        self.link_ifindex = link_ifindex


class LinkInOtherMode(RuntimeError):
    """The pinned program runs in another XDP mode than the one asked for."""

    def __init__(self, link_path: Path, mode: str) -> None:
        super().__init__(f"the program of {link_path} runs in {mode} mode")
        self.link_path = link_path
        self.mode = mode


@dataclass(frozen=True)
class PinnedXdpSpec:
    """What one kind of program pins: its object (``bpf/<object_name>.bpf.o``), its program,
    and its maps (name in the object -> file name of the pin)."""

    object_name: str
    program_name: str
    map_pins: Mapping[str, str]
    #: Maps a later version added. A pin set that lacks only (some of) these was made by an
    #: earlier version: it is adopted, and the added maps are pinned beside it at attach.
    added_maps: frozenset[str] = frozenset()

    def adoptable(self, directory: Path) -> bool:
        """True when the maps are pinned in ``directory`` (load reuses them; an earlier
        version's set, without some added_maps, included), False when none is; PartialPins
        in between."""
        present = [name for name, pin in self.map_pins.items() if (directory / pin).exists()]
        missing = sorted(set(self.map_pins) - set(present))
        if present and missing and not set(missing) <= self.added_maps:
            raise PartialPins(directory, missing)
        return bool(present)

    def unpinned(self, directory: Path) -> list[str]:
        """The maps not pinned in ``directory``."""
        return [name for name, pin in self.map_pins.items() if not (directory / pin).exists()]


def open_pinned_link(directory: Path) -> Link | None:
    """The link pinned in ``directory``, or None when there is none."""
    path = directory / LINK_PIN
    if not path.exists():
        return None
    return Link.from_pinned(path)


def detach_pinned(directory: Path) -> bool:
    """Detach the program the link pinned in ``directory`` holds, then remove the directory
    and every pin in it. False when no attached link was there."""
    detached = False
    link = open_pinned_link(directory)
    if link is not None:
        with link:
            if link.ifindex:  # 0: the link lost its interface, nothing to detach
                link.detach()
                detached = True
    remove_pin_dir(directory)
    return detached


class PinnedXdpProgram(Closeable):
    """An XDP program with its maps, its link once attached, and where they are pinned
    (``directory``; None until pinned, for a program that may never be).

    ``load`` makes one from the object (reusing the pinned maps when asked), ``from_pins``
    adopts the maps and link that another process pinned, without a program. ``close()``
    releases this process's descriptors only: what is pinned keeps running."""

    def __init__(
        self,
        spec: PinnedXdpSpec,
        directory: Path | None,
        *,
        maps: dict[str, Map],
        obj: BpfObject | None = None,
        program: Program | None = None,
        link: Link | None = None,
        adopted: bool = False,
    ) -> None:
        self.spec = spec
        self.directory = directory
        self.maps = maps
        self.obj = obj
        self._program = program
        self.link = link
        #: The maps came from pins (they hold the state of an earlier process).
        self.adopted = adopted
        self._maps_pinned = adopted
        #: Adopted from an earlier version's pins: the maps it did not have, pinned at attach.
        self.added_unpinned: list[str] = []
        #: The program attached through netlink (no bpf_link) that attach() swaps out.
        self.replacing: AttachedProgram | None = None
        #: A first attach goes through netlink, not a pinned bpf_link: for pins that die with
        #: this process (a private bpffs), where a link would detach with them.
        self.linkless = False
        #: The interface this process attached to through netlink (detach() takes it off).
        self._netlink_ifindex: int | None = None

    @classmethod
    def load(
        cls,
        spec: PinnedXdpSpec,
        directory: Path | None,
        *,
        adopt: bool = False,
        configure: Callable[[BpfObject], None] | None = None,
    ) -> PinnedXdpProgram:
        """Open the object, let ``configure`` size it, reuse the maps pinned in ``directory``
        when ``adopt`` (see PinnedXdpSpec.adoptable), load it. Nothing is attached."""
        reused = directory if adopt else None
        if adopt and reused is None:
            raise ValueError("adopting pinned maps needs their directory")
        obj = BpfObject.open(bpf_object_path(spec.object_name))
        try:
            if configure is not None:
                configure(obj)
            unpinned = spec.unpinned(reused) if reused is not None else []
            if reused is not None:
                for name, pin in spec.map_pins.items():
                    if name not in unpinned:
                        obj.reuse_pinned_map(name, reused / pin)
            obj.load()
            program = obj.program(spec.program_name)
            maps = {name: obj.map(name) for name in spec.map_pins}
        except BaseException:
            obj.close()
            raise
        xdp = cls(spec, directory, maps=maps, obj=obj, program=program, adopted=adopt)
        xdp.added_unpinned = unpinned
        return xdp

    @classmethod
    def from_pins(cls, spec: PinnedXdpSpec, directory: Path) -> PinnedXdpProgram:
        """The maps and the link (if any) pinned in ``directory``; there is no program."""
        maps: dict[str, Map] = {}
        try:
            for name, pin in spec.map_pins.items():
                maps[name] = Map.from_pinned(directory / pin)
            link = open_pinned_link(directory)
        except BaseException:
            for bpf_map in maps.values():
                bpf_map.close()
            raise
        return cls(spec, directory, maps=maps, link=link, adopted=True)

    @property
    def program(self) -> Program:
        if self._program is None:
            raise RuntimeError(f"{self.spec.program_name} was adopted from pins: no program")
        return self._program

    # attachment

    def pinned_link(self, ifindex: int, mode: XdpMode) -> Link | None:
        """The pinned link the program would be swapped into (None: a first attach), after
        checking that the swap can be done: LinkOnOtherInterface, LinkInOtherMode."""
        if self.directory is None:
            return None
        link = open_pinned_link(self.directory)
        if link is None:
            return None
        try:
            if link.ifindex != ifindex:
                raise LinkOnOtherInterface(self.directory / LINK_PIN, link.ifindex)
            attached = query_xdp(ifindex)
            if attached is not None and attached.mode != mode:
                raise LinkInOtherMode(self.directory / LINK_PIN, attached.mode)
        except BaseException:
            link.close()
            raise
        return link

    def check_attachable(self, ifindex: int, mode: XdpMode) -> None:
        """Raise what attach() would raise about the pinned link or the program it replaces,
        changing nothing: call it before writing adopted maps, which the running program
        already reads."""
        link = self.pinned_link(ifindex, mode)
        if link is not None:
            link.close()
        elif self.replacing is not None:
            self._check_replaced_mode(ifindex, mode)

    def _check_replaced_mode(self, ifindex: int, mode: XdpMode) -> None:
        attached = query_xdp(ifindex)
        if attached is not None and attached.mode != mode:
            where = self.directory / LINK_PIN if self.directory is not None else Path("netlink")
            raise LinkInOtherMode(where, attached.mode)

    def attach(self, ifindex: int, mode: XdpMode) -> str:
        """Attach the program, or swap it into the pinned link; returns what was done, for
        the log. Pinned (``directory`` set): maps and link are pinned on a first attach, and
        removed again if the attach fails."""
        if self.directory is None:
            self.link = attach_xdp(ifindex, self.program, mode)
            return f"attached in {mode} mode"
        pin_dir(self.directory.name, root=self.directory.parent)  # on a bpffs, 0700
        link = self.pinned_link(ifindex, mode)
        if link is not None:
            added = self._pin_added(self.directory)
            try:
                link.update_program(self.program)
            except BaseException:
                link.close()
                for name in added:
                    with contextlib.suppress(FileNotFoundError):
                        (self.directory / self.spec.map_pins[name]).unlink()
                raise
            self.link = link
            return f"swapped the new program into the pinned {mode} XDP link"
        if self.replacing is not None:
            return self._swap_through_netlink(ifindex, mode, self.replacing)
        self._pin_added(self.directory)
        pinning_maps = not self._maps_pinned
        try:
            if pinning_maps:
                self._pin_maps(self.directory)
            if self.linkless:
                attach_xdp_netlink(ifindex, self.program, mode)
                self._netlink_ifindex = ifindex
                self._maps_pinned = True
                return f"attached in {mode} mode through netlink (no bpf_link)"
            link = attach_xdp(ifindex, self.program, mode)
            try:
                link.pin(self.directory / LINK_PIN)
            except BaseException:
                link.close()  # unpinned: detaches
                raise
        except BaseException:
            if pinning_maps:
                remove_pin_dir(self.directory)
            raise
        self._maps_pinned = True
        self.link = link
        return f"attached in {mode} mode"

    def _swap_through_netlink(self, ifindex: int, mode: XdpMode, replacing: AttachedProgram) -> str:
        """Replace the program attached through netlink, atomically (only while it is still
        the one attached); the swapped-in program stays attached the same way."""
        if self.directory is None:  # cannot happen: attach() checked it
            raise RuntimeError("a netlink swap needs the pin directory")
        self._check_replaced_mode(ifindex, mode)
        added = self._pin_added(self.directory)
        try:
            attach_xdp_netlink(ifindex, self.program, mode, replacing=replacing)
        except BaseException:
            for name in added:
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / self.spec.map_pins[name]).unlink()
            raise
        self._netlink_ifindex = ifindex
        replacing.close()  # it is off the interface: nothing holds it any more
        self.replacing = None
        return f"swapped the new program in through netlink in {mode} mode (no bpf_link)"

    def runs_on(self, ifindex: int) -> bool:
        """Whether this program runs on ``ifindex`` now: through its link, or through netlink
        where this process attached it (asked of the calling thread's network namespace)."""
        if self.link is not None:
            return self.link.prog_id == self.program.id and self.link.ifindex == ifindex
        if self._netlink_ifindex != ifindex:
            return False
        attached = query_xdp(ifindex)
        return attached is not None and attached.prog_id == self.program.id

    def pin(self, directory: Path) -> None:
        """Pin the maps, and the link if attached, in ``directory`` (created on a bpffs)."""
        pin_dir(directory.name, root=directory.parent)
        self._pin_maps(directory)
        if self.link is not None:
            self.link.pin(directory / LINK_PIN)
        self.directory = directory
        self._maps_pinned = True

    def _pin_added(self, directory: Path) -> list[str]:
        """Pin the maps an earlier version's pin set lacked (adopted ones only); returns them."""
        added, self.added_unpinned = self.added_unpinned, []
        for name in added:
            self.maps[name].pin(directory / self.spec.map_pins[name])
        return added

    def _pin_maps(self, directory: Path) -> None:
        for name, pin in self.spec.map_pins.items():
            self.maps[name].pin(directory / pin)

    def detach(self) -> None:
        """Take the program off its interface now, pinned or not; the link's pin goes with
        it, the maps' pins stay."""
        if self.link is None:
            if self._netlink_ifindex is not None:
                ifindex, self._netlink_ifindex = self._netlink_ifindex, None
                detach_xdp(ifindex)
            return
        link, self.link = self.link, None
        try:
            if link.ifindex:
                link.detach()
        finally:
            link.close()
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / LINK_PIN).unlink()

    def close(self) -> None:
        try:
            if self.replacing is not None:
                self.replacing.close()
                self.replacing = None
            if self.link is not None:
                self.link.close()
                self.link = None
        finally:
            if self.obj is not None:
                self.obj.close()  # the maps are the object's
            else:
                for bpf_map in self.maps.values():
                    bpf_map.close()
