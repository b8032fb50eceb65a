"""The root-test policy: tests that need root, BPF or namespaces skip where those are missing,
and fail instead where RUSTY_RAIL_REQUIRE_ROOT_TESTS=1 says they must run (CI does).
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ROOT_TESTS = "RUSTY_RAIL_REQUIRE_ROOT_TESTS"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail when the environment demands root tests (CI does)."""
    if os.environ.get(REQUIRE_ROOT_TESTS) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ROOT_TESTS}=1: these tests must run here)", pytrace=False)
    pytest.skip(reason)
