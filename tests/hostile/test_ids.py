"""require() with ids no record can have: longer than a UUID, or with NUL in them. PostgreSQL
refused them (in the denial's audit row, in a lookup): a 500 on every patient route."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from tests.hostile.conftest import Caller, Scene, acts, assert_problem


@pytest.mark.parametrize("bad", ["a" * 37, "a" * 1000, "%00", "x%00y"])
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/patients/{bad}/goals",
        "/api/v1/patients/{bad}/care-plan",
        "/api/v1/patients/{bad}/next-visit",
        "/api/v1/patients/{bad}/messages",
        "/api/v1/goals/{bad}/agree",
        "/api/v1/me/goals/{bad}/logs",
        "/api/v1/me/messages/{bad}",
        "/api/v1/messages/threads/{bad}",
        "/fhir/R4/CarePlan?patient={bad}",
        "/api/v1/patients/{bad}/readings",  # an older route with the same dependency
    ],
)
def test_route_when_id_cannot_exist_is_404_and_audited_once(
    scene: Scene, as_: Callable[[str], Caller], engine: Engine, path: str, bad: str
) -> None:
    who = "pa1" if "/me/" in path else "clina"
    method = "POST" if path.endswith("agree") else "GET"
    n = acts(engine)
    r = as_(who)(method, path.format(bad=bad))
    # The patient's own route finds the patient without the id; the path check then refuses.
    assert_problem(r, *((404, 422) if path.startswith("/api/v1/me/goals") else (404,)))
    assert acts(engine) == n + 1
