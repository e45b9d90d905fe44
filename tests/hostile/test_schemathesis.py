"""schemathesis against /openapi.json, in process, as each role and a device key: no 500, every
answer documented (status, content type, body), and no operation that declares a credential
answers 2xx without one. A fixed seed and a bounded number of examples keep it to minutes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from tests.hostile.conftest import Caller, Scene

# Who is fuzzed: one of each role, and pa1's device key.
CALLERS = ("pa1", "clina", "auditor", "mleng", "admin", "device")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]
SEED = 20261206
# Examples per operation, caller and mode: enough to reach every documented answer, few enough
# for CI (about 111 operations x 6 callers x 2 modes).
EXAMPLES = int(os.environ.get("CLINAIOPS_FUZZ_EXAMPLES", "3"))


@pytest.mark.slow
@pytest.mark.parametrize("who", CALLERS)
def test_api_when_fuzzed_as_each_role_answers_as_documented(
    app: FastAPI, scene: Scene, as_: Callable[[str], Caller], who: str
) -> None:
    headers = as_(who).headers
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the app's own document is valid
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @seed(SEED)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                fuzz()
            except Unsatisfiable:
                continue  # nothing to make invalid (an operation without parameters)
            except BaseException as exc:  # schemathesis raises a BaseExceptionGroup
                failures.append(f"{operation.label} [{mode}]: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
