"""Schemathesis against a real daemon: requests generated from the served OpenAPI document,
valid and invalid, for every operation; no answer may be a 5xx, every answer must match the
document (status, content type, schema), and invalid input must be refused. Bounded: about a
second per operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.openapi import from_dict

from tests.support.control_bed import Bed, Node, base_config, control_bed

pytestmark = pytest.mark.bpf
EXAMPLES_PER_OPERATION = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
#: The daemon's bearer token: writes need one (docs/api.md), as the document says.
TOKEN = "fuzz-token-0123456789abcdef"
#: Large prime table sizes are valid but cost a second and 128 MiB each: keep them small.
MAX_FUZZ_TABLE_SIZE = 100_000


@pytest.fixture(scope="module")
def fuzzed(require_root: None) -> Iterator[Node]:
    with control_bed(devices=1) as bed:
        yield start(bed)


def start(bed: Bed) -> Node:
    # Attached, so that /healthz answers 200: a 503 there would be a (documented) fail.
    return bed.start("eth0", base_config("eth0", "198.18.0.2"), attach=True, token=TOKEN)


def _small_tables(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: 1021
            if key == "table_size" and isinstance(item, int) and item > MAX_FUZZ_TABLE_SIZE
            else _small_tables(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_small_tables(item) for item in value]
    return value


def _bounded(case: Case) -> Case:
    if isinstance(case.body, dict | list):
        case.body = _small_tables(case.body)
    # A generated request that carries a bearer token carries the daemon's (one without it,
    # a negative case, must get 401).
    headers = dict(case.headers or {})
    if any(name.lower() == "authorization" for name in headers):
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Authorization"] = f"Bearer {TOKEN}"
        case.headers = headers
    return case


def test_no_generated_request_gets_a_server_error(fuzzed: Node) -> None:
    schema = from_dict(fuzzed.call("GET", "/openapi.json").body)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        strategies = [
            operation.as_strategy(generation_mode=mode).map(_bounded)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        ]

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(strategies))
        def call(case: Case) -> None:
            response = case.call(base_url=fuzzed.client.url, timeout=30)
            case.validate_response(response, checks=CHECKS)

        call()
    # The generated writes carried the token and got through (not only 401s)...
    assert fuzzed.daemon.generation > 0
    # ...and after all that, the daemon still answers, healthy, its last change applied.
    assert fuzzed.call("GET", "/v1/config").status == 200
    assert fuzzed.call("GET", "/healthz").status == 200
