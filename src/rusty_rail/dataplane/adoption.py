"""Adoption through the kernel: the program of a PinnedXdpSpec found attached to an interface
by the kernel's ids (the XDP attachment of the ifindex, the bpf_link holding it, the maps in
the program's info), whoever pinned it and in whichever mount namespace, and pinned again in
this process's pin directory so that the pinned lifecycle (pinned.py) adopts it as it adopts
pins.

A bpffs may be private to a mount namespace (`ip netns exec`, a container, systemd's
PrivateMounts=): the pins then go with it while the program keeps running. The kernel's ids
do not: they are the one view every restart shares.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rusty_rail.dataplane.libbpf import (
    AttachedProgram,
    Link,
    Map,
    query_xdp,
    xdp_link_holding,
)
from rusty_rail.dataplane.libbpf._fd import Closeable
from rusty_rail.dataplane.libbpf._ffi import BPF_PROG_TYPE_XDP, OBJ_NAME_LEN
from rusty_rail.dataplane.pinned import LINK_PIN, PinnedXdpSpec

__all__ = ["Attached", "NotOurProgram", "find_attached", "repin"]

log = logging.getLogger("rusty_rail.dataplane")


class NotOurProgram(RuntimeError):
    """Another program than the spec's is attached to the interface: never adopted."""

    def __init__(self, prog_id: int, name: str, mode: str, why: str) -> None:
        super().__init__(f"XDP program id {prog_id} ({name!r}, {mode} mode): {why}")
        self.prog_id = prog_id
        self.name = name
        self.mode = mode
        self.why = why


@dataclass
class Attached(Closeable):
    """The spec's program attached to an interface, as the kernel has it: the program, the
    mode it runs in, its maps (by their names in the spec; an earlier version's program may
    lack some added_maps) and the bpf_link holding it (None: attached through netlink)."""

    program: AttachedProgram
    mode: str
    maps: dict[str, Map]
    link: Link | None

    def close(self) -> None:
        for bpf_map in self.maps.values():
            bpf_map.close()
        if self.link is not None:
            self.link.close()
        self.program.close()

    def describe(self) -> str:
        """How it is attached, for the log."""
        holder = f"bpf_link id {self.link.id}" if self.link is not None else "netlink, no bpf_link"
        return f"program id {self.program.id} in {self.mode} mode ({holder})"


def _kernel_name(name: str) -> str:
    return name[: OBJ_NAME_LEN - 1]  # the kernel keeps BPF_OBJ_NAME_LEN - 1 characters


def find_attached(spec: PinnedXdpSpec, ifindex: int) -> Attached | None:
    """The spec's program attached to ``ifindex`` (in this thread's network namespace), or
    None when nothing is attached. NotOurProgram when something else is: another name or
    type, or without the maps the spec's program has."""
    attachment = query_xdp(ifindex)
    if attachment is None:
        return None
    program = AttachedProgram.from_id(attachment.prog_id)
    maps: dict[str, Map] = {}
    try:
        if program.prog_type != BPF_PROG_TYPE_XDP or program.name != _kernel_name(
            spec.program_name
        ):
            raise NotOurProgram(
                attachment.prog_id, program.name, attachment.mode, f"not {spec.program_name}"
            )
        wanted = {_kernel_name(name): name for name in spec.map_pins}
        for map_id in program.map_ids:
            bpf_map = Map.from_id(map_id)
            name = wanted.get(bpf_map.name)
            if name is None or name in maps:
                bpf_map.close()  # the object's own (.rodata, ...) or not the spec's
                continue
            maps[name] = bpf_map
        missing = sorted(set(spec.map_pins) - set(maps) - spec.added_maps)
        if missing:
            raise NotOurProgram(
                attachment.prog_id,
                program.name,
                attachment.mode,
                f"named {spec.program_name} but without the maps {', '.join(missing)}",
            )
        link = xdp_link_holding(ifindex, attachment.prog_id)
    except BaseException:
        for bpf_map in maps.values():
            bpf_map.close()
        program.close()
        raise
    return Attached(program, attachment.mode, maps, link)


def repin(attached: Attached, spec: PinnedXdpSpec, directory: Path) -> list[str]:
    """Pin in ``directory`` (an existing pin directory) what of ``attached`` is not pinned
    there: its maps when none of the spec's is (a directory holding some is adopted as it is,
    as before: its pins are what the load checks), its bpf_link when no link is. Returns the
    names pinned, ``link`` among them."""
    pinned: list[str] = []
    if not any((directory / pin).exists() for pin in spec.map_pins.values()):
        for name, bpf_map in attached.maps.items():
            bpf_map.pin(directory / spec.map_pins[name])
            pinned.append(name)
    link_path = directory / LINK_PIN
    if attached.link is not None and not link_path.exists():
        attached.link.pin(link_path)
        pinned.append(LINK_PIN)
    return pinned
