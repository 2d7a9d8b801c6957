"""schemathesis against `orchestrator serve`, driven by its own /api/openapi.json: no server error, and no response
(status, content type, headers, body) that contradicts the document, for valid and for invalid requests.

Bounded for CI: 25 examples per operation and mode, derandomized (a fixed seed), so every run sends the same
requests.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.http import Served

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_schemathesis(serve_command: Callable[..., Served]) -> None:
    served = serve_command()
    schema = schemathesis.openapi.from_url(f"{served.url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 19  # all but the document itself, which schemathesis leaves out
    session = requests.Session()
    failures: list[str] = []
    for operation in operations:
        has_inputs = any(True for _ in operation.iter_parameters()) or len(operation.body) > 0
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_inputs else (GenerationMode.POSITIVE,):
            checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS

            @settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=served.url, session=session, checks=checks)  # noqa: B023 - called right here

            try:
                run()
            except Exception as exc:
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)
    assert "Traceback" not in served.log.read_text()
