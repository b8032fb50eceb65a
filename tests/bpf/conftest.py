"""The guard every BPF test runs behind: root (or CAP_BPF and friends) and a usable libbpf.
The fixtures the BPF and end-to-end tests share are in tests/conftest.py.
"""

from __future__ import annotations

import pytest

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
