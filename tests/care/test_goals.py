"""The goal workflow over HTTP: both sides propose and agree, transitions, validation, logs,
care-team scope (BOLA) and the audit trail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core import clock
from tests.care.conftest import api
from tests.conftest import World

BP = {"kind": "blood_pressure", "target_systolic": 130, "target_diastolic": 80}


@pytest.fixture
def calls(client: TestClient, world: World) -> Callable[[str], Any]:
    """Callers by username."""
    return lambda user: api(client, world, user)


def _propose(call: Any, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = call("POST", path, json=body or BP)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def test_goal_when_clinician_proposes_and_patient_agrees_is_in_force(
    calls: Callable[[str], Any], world: World, count_audit: Callable[..., int]
) -> None:
    pid = world.patients["pa1"].id
    goal = _propose(calls("clina"), f"/api/v1/patients/{pid}/goals", {**BP, "note": "Start"})
    assert goal["status"] == "proposed"
    assert goal["proposed_by"] == "clinician"
    assert goal["waiting_for"] == "patient"
    assert goal["clinician_agreed_at"] is not None
    assert goal["patient_agreed_at"] is None
    assert goal["text"].startswith("Keep home blood pressure below 130/80 mmHg")
    assert goal["progress"]["met"] is None  # no readings yet

    mine = calls("pa1")("GET", "/api/v1/me/goals").json()
    assert [g["id"] for g in mine] == [goal["id"]]
    r = calls("pa1")("POST", f"/api/v1/me/goals/{goal['id']}/agree")
    assert r.status_code == 200, r.text
    agreed = r.json()
    assert agreed["status"] == "agreed"
    assert agreed["waiting_for"] is None
    assert agreed["patient_agreed_at"] is not None
    plan = calls("pa1")("GET", "/api/v1/me/care-plan").json()
    assert [g["id"] for g in plan["goals"]] == [goal["id"]]
    assert count_audit(action="goal.propose", patient_id=pid) == 1
    assert count_audit(action="goal.agree", patient_id=pid, outcome="success") == 1
    # Agreeing wrote a plan version (the first), audited on its own.
    assert count_audit(action="care_plan.version", patient_id=pid) == 1


def test_goal_when_patient_proposes_and_clinician_agrees_is_in_force(
    calls: Callable[[str], Any], world: World
) -> None:
    goal = _propose(calls("pa1"), "/api/v1/me/goals", {"kind": "daily_steps", "target_value": 6000})
    assert (goal["proposed_by"], goal["waiting_for"]) == ("patient", "clinician")
    assert goal["patient_agreed_at"] is not None
    r = calls("clina")("POST", f"/api/v1/goals/{goal['id']}/agree")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "agreed"
    assert r.json()["clinician_agreed_at"] is not None


def test_agree_when_own_side_proposed_is_409(calls: Callable[[str], Any], world: World) -> None:
    pid = world.patients["pa1"].id
    goal = _propose(calls("clina"), f"/api/v1/patients/{pid}/goals")
    # Another clinician of the same side cannot agree for the patient either.
    r = calls("clina")("POST", f"/api/v1/goals/{goal['id']}/agree")
    assert r.status_code == 409
    assert r.json()["code"] == "own_proposal"
    mine = _propose(calls("pa1"), "/api/v1/me/goals", {"kind": "sleep", "target_value": 7})
    r = calls("pa1")("POST", f"/api/v1/me/goals/{mine['id']}/agree")
    assert (r.status_code, r.json()["code"]) == (409, "own_proposal")


def test_decline_when_other_side_closes_goal_and_later_acts_are_409(
    calls: Callable[[str], Any], world: World, count_audit: Callable[..., int]
) -> None:
    pid = world.patients["pa1"].id
    goal = _propose(calls("clina"), f"/api/v1/patients/{pid}/goals")
    r = calls("pa1")("POST", f"/api/v1/me/goals/{goal['id']}/decline", json={"reason": "Too low"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["close_reason"]) == ("declined", "Too low")
    for who, path in (
        ("pa1", f"/api/v1/me/goals/{goal['id']}/agree"),
        ("clina", f"/api/v1/goals/{goal['id']}/withdraw"),
        ("pa1", f"/api/v1/me/goals/{goal['id']}/decline"),
    ):
        r = calls(who)("POST", path)
        assert r.status_code == 409, path
        assert r.json()["code"] == "invalid_transition"
    # A refused act is audited as a failure with its code.
    assert count_audit(action="goal.agree", patient_id=pid, outcome="failure") == 1
    assert calls("pa1")("GET", "/api/v1/me/goals").json() == []
    closed = calls("pa1")("GET", "/api/v1/me/goals?include_closed=true").json()
    assert [g["status"] for g in closed] == ["declined"]


def test_decline_when_own_side_proposed_is_409(calls: Callable[[str], Any], world: World) -> None:
    goal = _propose(calls("pa1"), "/api/v1/me/goals", {"kind": "sodium", "target_value": 2000})
    r = calls("pa1")("POST", f"/api/v1/me/goals/{goal['id']}/decline")
    assert (r.status_code, r.json()["code"]) == (409, "own_proposal")


def test_withdraw_when_proposed_only_proposer_side_may(
    calls: Callable[[str], Any], world: World
) -> None:
    goal = _propose(calls("pa1"), "/api/v1/me/goals", {"kind": "sodium", "target_value": 2000})
    r = calls("clina")("POST", f"/api/v1/goals/{goal['id']}/withdraw")
    assert (r.status_code, r.json()["code"]) == (409, "not_proposer")
    r = calls("pa1")("POST", f"/api/v1/me/goals/{goal['id']}/withdraw")
    assert (r.status_code, r.json()["status"]) == (200, "withdrawn")


def test_withdraw_when_agreed_either_side_ends_it_and_plan_changes(
    calls: Callable[[str], Any], world: World
) -> None:
    pid = world.patients["pa1"].id
    goal = _propose(calls("pa1"), "/api/v1/me/goals", {"kind": "sleep", "target_value": 7})
    calls("clina")("POST", f"/api/v1/goals/{goal['id']}/agree")
    before = calls("clina")("GET", f"/api/v1/patients/{pid}/care-plan").json()
    assert len(before["goals"]) == 1
    r = calls("clina")("POST", f"/api/v1/goals/{goal['id']}/withdraw", json={"reason": "Done"})
    assert (r.status_code, r.json()["status"]) == (200, "withdrawn")
    after = calls("clina")("GET", f"/api/v1/patients/{pid}/care-plan").json()
    assert after["goals"] == []
    assert after["version"] == before["version"] + 1
    assert after["change_reason"] == "Goal withdrawn: sleep"


def test_agree_when_kind_already_agreed_supersedes_the_old_goal(
    calls: Callable[[str], Any], world: World
) -> None:
    pid = world.patients["pa1"].id
    first = _propose(calls("clina"), f"/api/v1/patients/{pid}/goals")
    calls("pa1")("POST", f"/api/v1/me/goals/{first['id']}/agree")
    second = _propose(
        calls("pa1"),
        "/api/v1/me/goals",
        {"kind": "blood_pressure", "target_systolic": 135, "target_diastolic": 85},
    )
    # Proposing does not touch the goal in force; agreeing does.
    listed = {g["id"]: g["status"] for g in calls("pa1")("GET", "/api/v1/me/goals").json()}
    assert listed == {first["id"]: "agreed", second["id"]: "proposed"}
    r = calls("clina")("POST", f"/api/v1/goals/{second['id']}/agree")
    assert r.json()["supersedes_id"] == first["id"]
    everything = calls("pa1")("GET", "/api/v1/me/goals?include_closed=true").json()
    assert {g["id"]: g["status"] for g in everything} == {
        first["id"]: "superseded",
        second["id"]: "agreed",
    }
    plan = calls("pa1")("GET", "/api/v1/me/care-plan").json()
    assert [(g["target_systolic"], g["target_diastolic"]) for g in plan["goals"]] == [(135, 85)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"kind": "blood_pressure", "target_systolic": 79, "target_diastolic": 60},
            "target_systolic",
        ),
        (
            {"kind": "blood_pressure", "target_systolic": 181, "target_diastolic": 80},
            "target_systolic",
        ),
        (
            {"kind": "blood_pressure", "target_systolic": 130, "target_diastolic": 49},
            "target_diastolic",
        ),
        (
            {"kind": "blood_pressure", "target_systolic": 130, "target_diastolic": 111},
            "target_diastolic",
        ),
        (
            {"kind": "blood_pressure", "target_systolic": 100, "target_diastolic": 100},
            "target_systolic",
        ),
        ({"kind": "blood_pressure", "target_systolic": 130}, "target_diastolic"),
        ({"kind": "blood_pressure", "target_value": 130}, "target_value"),
        ({"kind": "daily_steps", "target_value": 499}, "target_value"),
        ({"kind": "daily_steps", "target_value": 50001}, "target_value"),
        ({"kind": "daily_steps"}, "target_value"),
        ({"kind": "daily_steps", "target_value": 7000, "target_systolic": 130}, "target_systolic"),
        ({"kind": "adherence", "target_value": 0.4}, "target_value"),
        ({"kind": "adherence", "target_value": 90}, "target_value"),
        ({"kind": "sodium", "target_value": 499}, "target_value"),
        ({"kind": "sodium", "target_value": 6001}, "target_value"),
        ({"kind": "sleep", "target_value": 3.5}, "target_value"),
        ({"kind": "sleep", "target_value": 12.5}, "target_value"),
    ],
)
def test_propose_when_target_is_nonsense_is_422(
    calls: Callable[[str], Any], world: World, body: dict[str, Any], field: str
) -> None:
    r = calls("pa1")("POST", "/api/v1/me/goals", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_target"
    assert r.json()["field"] == field
    assert calls("pa1")("GET", "/api/v1/me/goals?include_closed=true").json() == []


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "weight", "target_value": 70},
        {"kind": "sleep", "target_value": "seven"},
        {"kind": "sleep", "target_value": 7, "note": "x" * 1001},
    ],
)
def test_propose_when_body_malformed_is_422(
    calls: Callable[[str], Any], body: dict[str, Any]
) -> None:
    r = calls("pa1")("POST", "/api/v1/me/goals", json=body)
    assert (r.status_code, r.json()["code"]) == (422, "validation_error")


@pytest.mark.parametrize(
    ("target", "edge"),
    [
        ({"kind": "blood_pressure", "target_systolic": 80, "target_diastolic": 50}, "low"),
        ({"kind": "blood_pressure", "target_systolic": 180, "target_diastolic": 110}, "high"),
        ({"kind": "daily_steps", "target_value": 500}, "low"),
        ({"kind": "adherence", "target_value": 1}, "high"),
        ({"kind": "sodium", "target_value": 6000}, "high"),
        ({"kind": "sleep", "target_value": 4}, "low"),
    ],
)
def test_propose_when_target_on_range_edge_is_accepted(
    calls: Callable[[str], Any], target: dict[str, Any], edge: str
) -> None:
    _propose(calls("pa1"), "/api/v1/me/goals", target)


def test_log_when_same_day_twice_replaces_the_first(
    calls: Callable[[str], Any], world: World, count_audit: Callable[..., int]
) -> None:
    goal = _propose(calls("pa1"), "/api/v1/me/goals", {"kind": "sodium", "target_value": 2000})
    path = f"/api/v1/me/goals/{goal['id']}/logs"
    today = calls("pa1")  # the app's clock is the real one here
    day = clock.utcnow().date().isoformat()
    first = today("POST", path, json={"day": day, "value": 2500})
    assert first.status_code == 201, first.text
    assert first.json()["replaced"] is False
    again = today("POST", path, json={"day": day, "value": 1900})
    assert again.status_code == 200, again.text
    assert again.json()["replaced"] is True
    logs = today("GET", path).json()
    assert [(log["day"], log["value"]) for log in logs] == [(day, 1900)]
    assert count_audit(action="goal.log", patient_id=world.patients["pa1"].id) == 2


@pytest.mark.parametrize(
    ("kind", "body", "status", "code"),
    [
        ("daily_steps", {"day": "2026-01-01", "value": 1}, 422, "not_loggable"),
        ("sodium", {"day": "2100-01-01", "value": 1000}, 422, "day_in_future"),
        ("sodium", {"day": "2000-01-01", "value": 1000}, 422, "day_too_old"),
        ("sodium", {"day": "today", "value": -1}, 422, "invalid_value"),
        ("sleep", {"day": "today", "value": 25}, 422, "invalid_value"),
        ("sleep", {"day": "not-a-day", "value": 7}, 422, "validation_error"),
    ],
)
def test_log_when_input_wrong_is_refused(
    calls: Callable[[str], Any], kind: str, body: dict[str, Any], status: int, code: str
) -> None:
    target = {"kind": kind, "target_value": {"daily_steps": 7000, "sodium": 2000}.get(kind, 7)}
    goal = _propose(calls("pa1"), "/api/v1/me/goals", target)
    if body["day"] == "today":
        body = {**body, "day": clock.utcnow().date().isoformat()}
    r = calls("pa1")("POST", f"/api/v1/me/goals/{goal['id']}/logs", json=body)
    assert (r.status_code, r.json()["code"]) == (status, code)


def test_log_when_goal_closed_is_409(calls: Callable[[str], Any]) -> None:
    goal = _propose(calls("pa1"), "/api/v1/me/goals", {"kind": "sleep", "target_value": 7})
    calls("pa1")("POST", f"/api/v1/me/goals/{goal['id']}/withdraw")
    body = {"day": clock.utcnow().date().isoformat(), "value": 7}
    r = calls("pa1")("POST", f"/api/v1/me/goals/{goal['id']}/logs", json=body)
    assert (r.status_code, r.json()["code"]) == (409, "goal_closed")


# ------------------------------------------------------------------------------ BOLA


@pytest.fixture
def goals(calls: Callable[[str], Any], world: World) -> dict[str, str]:
    """A clinician-proposed goal of pa1 (team A) and of pb1 (team B)."""
    out = {}
    for patient, clinician in (("pa1", "clina"), ("pb1", "clinb")):
        pid = world.patients[patient].id
        out[patient] = _propose(calls(clinician), f"/api/v1/patients/{pid}/goals")["id"]
    return out


@pytest.mark.parametrize("act", ["agree", "decline", "withdraw"])
def test_patient_when_acting_on_another_patients_goal_gets_404(
    calls: Callable[[str], Any], goals: dict[str, str], act: str
) -> None:
    other = goals["pb1"]
    r = calls("pa1")("POST", f"/api/v1/me/goals/{other}/{act}")
    assert r.status_code == 404
    r = calls("pa1")("POST", f"/api/v1/goals/{other}/{act}")
    assert r.status_code == 404
    # Untouched.
    assert calls("pb1")("GET", "/api/v1/me/goals").json()[0]["status"] == "proposed"


def test_patient_when_reading_another_patient_gets_404(
    calls: Callable[[str], Any], world: World, goals: dict[str, str]
) -> None:
    other = world.patients["pb1"].id
    for path in (
        f"/api/v1/patients/{other}/goals",
        f"/api/v1/patients/{other}/care-plan",
        f"/api/v1/patients/{other}/care-plan/versions",
        f"/api/v1/me/goals/{goals['pb1']}/logs",
    ):
        assert calls("pa1")("GET", path).status_code == 404, path
    r = calls("pa1")("POST", f"/api/v1/patients/{other}/goals", json=BP)
    assert r.status_code == 404


def test_clinician_when_outside_care_team_gets_404(
    calls: Callable[[str], Any],
    world: World,
    goals: dict[str, str],
    count_audit: Callable[..., int],
) -> None:
    pid = world.patients["pa1"].id
    clinb = calls("clinb")
    for method, path in (
        ("GET", f"/api/v1/patients/{pid}/goals"),
        ("POST", f"/api/v1/goals/{goals['pa1']}/agree"),
        ("POST", f"/api/v1/goals/{goals['pa1']}/decline"),
        ("POST", f"/api/v1/goals/{goals['pa1']}/withdraw"),
        ("GET", f"/api/v1/patients/{pid}/care-plan"),
        ("GET", f"/api/v1/patients/{pid}/care-plan/versions"),
        ("POST", "/api/v1/goals/00000000-0000-4000-8000-000000000000/agree"),
    ):
        assert clinb(method, path).status_code == 404, path
    assert clinb("POST", f"/api/v1/patients/{pid}/goals", json=BP).status_code == 404
    r = clinb(
        "PUT", f"/api/v1/patients/{pid}/care-plan/note", json={"note": "x", "change_reason": "y"}
    )
    assert r.status_code == 404
    # Each denial is audited (as the policy's act): agree, decline, withdraw, unknown, propose.
    assert count_audit(action="goal.write", outcome="denied") == 5


@pytest.mark.parametrize("user", ["auditor", "mleng", "admin"])
def test_other_roles_when_calling_goal_and_plan_routes_are_denied(
    calls: Callable[[str], Any], world: World, goals: dict[str, str], user: str
) -> None:
    pid = world.patients["pa1"].id
    call = calls(user)
    for method, path in (
        ("GET", f"/api/v1/patients/{pid}/goals"),
        ("POST", f"/api/v1/goals/{goals['pa1']}/agree"),
        ("GET", f"/api/v1/patients/{pid}/care-plan"),
        ("GET", f"/api/v1/patients/{pid}/care-plan/versions"),
        ("GET", "/api/v1/me/goals"),
        ("GET", "/api/v1/me/care-plan"),
    ):
        assert call(method, path).status_code == 403, (user, path)


def test_unauthenticated_when_calling_goals_is_401(client: TestClient) -> None:
    assert client.get("/api/v1/me/goals").status_code == 401
