"""Running the test-bed router on one frame (BPF_PROG_TEST_RUN), for the router tests."""

from __future__ import annotations

from rusty_rail.testbed.router import Router


def packet_deltas(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, int]:
    """The packets each counter gained between two readings, the unchanged ones left out."""
    return {
        name: after[name]["packets"] - before[name]["packets"]
        for name in after
        if after[name]["packets"] != before[name]["packets"]
    }


def counted(router: Router, before: dict[str, dict[str, int]]) -> dict[str, int]:
    """The packets the router counted since ``before`` (a reading of its counters)."""
    return packet_deltas(before, router.counters())


def send(router: Router, frame: bytes, **kwargs: int) -> tuple[int, bytes, dict[str, int]]:
    """The verdict, the frame that leaves, and the packets counted per reason meanwhile."""
    before = router.counters()
    result = router.program.test_run(frame, **kwargs)
    return result.retval, result.data, counted(router, before)
