"""Fixtures of the end-to-end tests: the root guard, and two uniquely named network namespaces
joined by a veth pair (198.18.0.0/24, 2001:2::/64), torn down even on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.support.environment import skip_or_fail
from tests.support.veth import VethPair, ip


@pytest.fixture(scope="session")
def require_root() -> None:
    """Root, BPF, iproute2 and network namespaces, else skip, or fail under CI."""
    if os.geteuid() != 0:
        skip_or_fail("end-to-end tests need root")
    if shutil.which("ip") is None:
        skip_or_fail("iproute2's ip is not installed: run scripts/setup")
    try:
        from rusty_rail.dataplane.libbpf import bpf_unavailable_reason
    except ImportError as error:
        skip_or_fail(f"the libbpf binding cannot be imported: {error}")
        return
    reason = bpf_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture(autouse=True)
def _e2e_tests_need_root(require_root: None) -> None:
    """Every end-to-end test builds namespaces."""


def _mac(namespace: str, ifname: str) -> bytes:
    (link,) = json.loads(ip("-n", namespace, "-j", "link", "show", "dev", ifname))
    return bytes.fromhex(str(link["address"]).replace(":", ""))


@pytest.fixture
def veth_pair(require_root: None) -> Iterator[VethPair]:
    token = uuid.uuid4().hex[:6]
    near, far = f"rr-e2e-{token}-near", f"rr-e2e-{token}-far"
    near_if, far_if = f"rrn{token}", f"rrf{token}"
    created: list[str] = []
    try:
        for namespace in (near, far):
            ip("netns", "add", namespace)
            created.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        ip("link", "add", near_if, "netns", near, "type", "veth", "peer", far_if, "netns", far)
        for namespace, ifname, ipv4, ipv6 in (
            (near, near_if, VethPair.NEAR4, VethPair.NEAR6),
            (far, far_if, VethPair.FAR4, VethPair.FAR6),
        ):
            ip("-n", namespace, "addr", "add", f"{ipv4}/24", "dev", ifname)
            ip("-n", namespace, "addr", "add", f"{ipv6}/64", "dev", ifname, "nodad")
            ip("-n", namespace, "link", "set", ifname, "up")
        ip("-n", near, "route", "add", VethPair.GATEWAY_NET4, "via", VethPair.FAR4)
        ip("-n", near, "-6", "route", "add", VethPair.GATEWAY_NET6, "via", VethPair.FAR6)
        yield VethPair(near, far, near_if, far_if, _mac(near, near_if), _mac(far, far_if))
    finally:
        # Deleting a namespace deletes its end of the veth, and with it the peer.
        for namespace in created:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
