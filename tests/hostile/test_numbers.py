"""Integers past what the database stores (a BIGINT, or an INTEGER for user and care-team ids)
in a path, a query or a body, found by schemathesis: each is a 422 problem document, never an
overflow while binding it or a PostgreSQL range error (a 500)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.hostile.conftest import Caller, Scene, assert_problem

PASSWORD = "correct-horse-battery-9"  # strong enough: only the NUL is wrong
HUGE = 2**63  # one past the largest BIGINT
PAST_INTEGER = 2**31  # one past the largest INTEGER (user and care-team ids)
# (caller, method, path, body)
OVERFLOWS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("clina", "GET", f"/api/v1/patients?offset={HUGE}", None),
    ("clina", "GET", f"/api/v1/patients?offset={10**28}", None),
    ("admin", "POST", f"/api/v1/admin/users/{HUGE}/disable", None),
    ("admin", "POST", f"/api/v1/admin/users/{PAST_INTEGER}/disable", None),
    ("admin", "POST", f"/api/v1/admin/users/{-PAST_INTEGER * 1000}/disable", None),
    ("admin", "POST", f"/api/v1/admin/care-teams/{-PAST_INTEGER * 1000}/members", {"user_id": 1}),
    ("admin", "POST", f"/api/v1/admin/care-teams/{PAST_INTEGER}/members", {"user_id": 1}),
    ("admin", "POST", "/api/v1/admin/care-teams/1/members", {"user_id": PAST_INTEGER}),
    ("admin", "POST", f"/api/v1/admin/care-teams/{HUGE}/members", {"user_id": 1}),
    ("admin", "POST", "/api/v1/admin/care-teams/1/members", {"user_id": HUGE}),
    ("clina", "GET", f"/api/v1/review/queue?offset={HUGE}", None),
    ("auditor", "GET", f"/api/v1/audit/entries?after_seq={HUGE}", None),
    ("auditor", "GET", f"/api/v1/audit/proofs/inclusion?seq={HUGE}&tree_size=1", None),
    ("auditor", "GET", f"/api/v1/audit/proofs/consistency?first=1&second={HUGE}", None),
    ("auditor", "GET", f"/api/v1/audit/export?from_seq={HUGE}", None),
]


@pytest.mark.parametrize(("who", "method", "path", "body"), OVERFLOWS)
def test_request_when_integer_overflows_the_database_is_422(
    scene: Scene,
    as_: Callable[[str], Caller],
    who: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    r = as_(who)(method, path, json=body) if body is not None else as_(who)(method, path)
    assert_problem(r, 422)
    assert r.json()["code"] == "validation_error"


def test_admin_patient_when_care_team_id_overflows_is_422(
    scene: Scene, as_: Callable[[str], Caller]
) -> None:
    body = {
        "pseudonym": "P-HUGE",
        "given_name": "G",
        "family_name": "F",
        "birth_date": "1960-01-01",
        "sex": "female",
        "care_team_id": PAST_INTEGER,
    }
    assert_problem(as_("admin")("POST", "/api/v1/admin/patients", json=body), 422)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/admin/care-teams", {"name": "Team\x00C"}),
        ("/api/v1/admin/users", {"username": "u\x00", "password": PASSWORD, "full_name": "F"}),
        ("/api/v1/admin/users", {"username": "u2", "password": PASSWORD, "full_name": "F\x00"}),
    ],
)
def test_admin_create_when_text_holds_nul_is_422(
    scene: Scene, as_: Callable[[str], Caller], path: str, body: dict[str, Any]
) -> None:
    # Found by schemathesis on PostgreSQL, which refuses NUL in text it stores.
    assert_problem(as_("admin")("POST", path, json={"role": "clinician", **body}), 422)
