"""Two network namespaces joined by a veth pair, as the end-to-end tests' ``veth_pair`` fixture
builds them, and ``ip``, iproute2 with its error output as the exception's message.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


def ip(*args: str) -> str:
    """Run iproute2's ``ip``; its error output becomes the exception's message."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class VethPair:
    """Namespace ``near`` holds interface ``near_if``; its peer ``far_if`` lives in ``far``.
    ``near`` routes GATEWAY_NET4 / GATEWAY_NET6 through the far end."""

    near: str
    far: str
    near_if: str
    far_if: str
    near_mac: bytes
    far_mac: bytes

    NEAR4 = "198.18.0.1"
    FAR4 = "198.18.0.2"
    NEAR6 = "2001:2::1"
    FAR6 = "2001:2::2"
    GATEWAY_NET4 = "198.19.0.0/24"
    GATEWAY_NET6 = "2001:2:0:1::/64"

    def near_ip(self, *args: str) -> str:
        return ip("-n", self.near, *args)

    def far_ip(self, *args: str) -> str:
        return ip("-n", self.far, *args)
