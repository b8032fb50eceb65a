"""Which encapsulations decap takes off (``--methods``) and which VNIs (``--vni``), checked
whole before anything is written, and their encoding in the program's decap_config map
(struct decap_config, bpf/decap.bpf.c). docs/decap.md, "Methods", is the operator's page.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from rusty_rail.wire.constants import VNI_MAX

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "VNI_MAX",
    "MethodSet",
    "parse_methods",
]

#: Every method, in the order status lists them.
METHODS = ("gre", "ipip", "vxlan", "geneve")
#: Taken when none are named: the two that claim no UDP port (docs/decap.md says why).
DEFAULT_METHODS = ("gre", "ipip")
#: The methods whose header carries a VNI.
VNI_METHODS = frozenset({"vxlan", "geneve"})

# The bits of decap_config.methods (DECAP_GRE_OFF, DECAP_IPIP, ...). GRE's bit says "off", so
# that a map never written (zeros) means GRE alone, what versions before the methods took.
GRE_OFF = 1 << 0
_METHOD_BITS = {"ipip": 1 << 1, "vxlan": 1 << 2, "geneve": 1 << 3}
# struct decap_config: methods, vni_filter.
CONFIG = struct.Struct("=II")
# The key and value of decap_vnis: the VNI (host order), present.
VNI_KEY = struct.Struct("=I")
VNI_PRESENT = struct.pack("=I", 1)


@dataclass(frozen=True)
class MethodSet:
    """The methods taken (in METHODS order) and the VNIs taken by VXLAN and GENEVE (sorted;
    None: any)."""

    methods: tuple[str, ...] = ("gre",)
    vnis: tuple[int, ...] | None = None

    def config(self) -> bytes:
        """The decap_config value."""
        bits = 0 if "gre" in self.methods else GRE_OFF
        for method in self.methods:
            bits |= _METHOD_BITS.get(method, 0)
        return CONFIG.pack(bits, int(self.vnis is not None))

    @classmethod
    def of_config(cls, value: bytes, vnis: Iterable[int]) -> MethodSet:
        """The set a decap_config value and the keys of decap_vnis stand for."""
        bits, vni_filter = CONFIG.unpack(value)
        methods = [] if bits & GRE_OFF else ["gre"]
        methods += [method for method, bit in _METHOD_BITS.items() if bits & bit]
        return cls(tuple(methods), tuple(sorted(vnis)) if vni_filter else None)

    def as_status(self) -> dict[str, object]:
        vnis = None if self.vnis is None else list(self.vnis)
        return {"methods": list(self.methods), "vnis": vnis}


def parse_methods(
    methods: Iterable[str] | None = None, vnis: Iterable[int | str] | None = None
) -> MethodSet:
    """The methods named (each value may hold several, comma-separated; None: DEFAULT_METHODS)
    and the VNIs (None or empty: any). ValueError names the field and the bad value: an
    unknown method, none at all, a VNI that is no number or out of 0-16777215, VNIs without
    a method that carries them."""
    if methods is None:
        chosen = set(DEFAULT_METHODS)
    else:
        chosen = set()
        for value in methods:
            for name in str(value).split(","):
                name = name.strip().lower()
                if not name:
                    continue
                if name not in METHODS:
                    raise ValueError(f"methods: {name!r} is not a method ({', '.join(METHODS)})")
                chosen.add(name)
        if not chosen:
            raise ValueError(f"methods: none given (choose from {', '.join(METHODS)})")
    taken = _parse_vnis(vnis)
    if taken is not None and not chosen & VNI_METHODS:
        raise ValueError("vni: given, but neither vxlan nor geneve is among the methods")
    return MethodSet(tuple(method for method in METHODS if method in chosen), taken)


def _parse_vnis(values: Iterable[int | str] | None) -> tuple[int, ...] | None:
    if values is None:
        return None
    vnis: set[int] = set()
    for value in values:
        for text in str(value).split(",") if isinstance(value, str) else [value]:
            if isinstance(text, bool):
                raise ValueError(f"vni: {text!r} is not a number")
            try:
                vni = int(str(text).strip(), 10)
            except ValueError:
                raise ValueError(f"vni: {text!r} is not a number") from None
            if not 0 <= vni <= VNI_MAX:
                raise ValueError(f"vni: {vni} is out of range 0-{VNI_MAX}")
            vnis.add(vni)
    return tuple(sorted(vnis)) or None
