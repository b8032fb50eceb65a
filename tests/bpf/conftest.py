"""The guard every BPF test runs behind: root (or CAP_BPF and friends) and a usable libbpf;
and the one-daemon control bed most API and ctl tests use (a module that needs another bed
defines its own `bed` and `node`, which take precedence). The fixtures the BPF and end-to-end
tests share are in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.control_bed import Bed, Node, base_config, control_bed
from tests.support.environment import skip_or_fail


@pytest.fixture(scope="session")
def require_root() -> None:
    """Root (or CAP_BPF and friends) and a usable libbpf, else skip, or fail under CI."""
    try:
        from rusty_rail.dataplane.libbpf import bpf_unavailable_reason
    except ImportError as error:
        skip_or_fail(f"the libbpf binding cannot be imported: {error}")
        return
    reason = bpf_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture(autouse=True)
def _bpf_tests_need_root(require_root: None) -> None:
    """Every test under tests/bpf talks to the kernel."""


@pytest.fixture(scope="module")
def bed(require_root: None) -> Iterator[Bed]:
    """One daemon on eth0 of a control bed, for the whole module."""
    with control_bed(devices=1) as control:
        control.start("eth0", base_config("eth0", "198.18.0.2"))
        yield control


@pytest.fixture
def node(bed: Bed) -> Node:
    """That daemon, back at the base configuration."""
    node = bed.nodes["eth0"]
    node.reset()
    return node
