"""The visit API: the patient's next visit, the care team's view, override, completion and the
due list, with care-team scope (BOLA) and other roles refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from app.core import clock
from loops.models import Alert
from loops.visits.cadence import when_text
from tests.conftest import World

pytestmark = pytest.mark.usefixtures("live_clock")
D = timedelta(days=1)


def _put(client: TestClient, world: World, patient: str, user: str = "clina", **body: object):
    now = clock.utcnow()
    payload = {"due_by": clock.iso(now + 20 * D), "kind": "call", "reason": "Away until then"}
    payload.update(body)
    return client.put(
        f"/api/v1/patients/{world.patients[patient].id}/next-visit",
        json=payload,
        headers=world.auth(user),
    )


def test_my_next_visit_when_uncontrolled_says_when_and_why_in_plain_words(
    client: TestClient, world: World, readings: Callable[..., None], live_clock: datetime
) -> None:
    readings("pa1", 146.0, 91.0, days=7)
    r = client.get("/api/v1/me/next-visit", headers=world.auth("pa1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "visit"
    # Enrolment (10 days ago) + 4 weeks.
    assert body["due_by"].startswith(clock.iso(live_clock + 18 * D)[:19])
    assert body["set_by"] == "schedule"
    assert body["care_team_reason"] is None
    assert "146/91 mmHg" in body["why"]
    assert "below the usual home target of 135/85 mmHg" in body["why"]
    assert "_" not in body["why"]


def test_my_next_visit_when_overridden_shows_care_team_reason_to_own_patient_only(
    client: TestClient, world: World, live_clock: datetime
) -> None:
    assert _put(client, world, "pa1").status_code == 200
    mine = client.get("/api/v1/me/next-visit", headers=world.auth("pa1")).json()
    assert mine["set_by"] == "care_team"
    assert mine["kind"] == "call"
    assert mine["care_team_reason"] == "Away until then"
    day = when_text(live_clock + 20 * D)
    assert mine["why"] == f"Your care team set a call for {day}: Away until then"
    other = client.get("/api/v1/me/next-visit", headers=world.auth("pa2")).json()
    assert other["set_by"] == "schedule"
    assert other["care_team_reason"] is None


def test_care_team_next_visit_shows_rule_beside_override(
    client: TestClient, world: World, alert: Callable[..., Alert], live_clock: datetime
) -> None:
    alert("pa1", age=timedelta(hours=4))
    assert _put(client, world, "pa1").status_code == 200
    r = client.get(
        f"/api/v1/patients/{world.patients['pa1'].id}/next-visit", headers=world.auth("clina")
    )
    assert r.status_code == 200
    v = r.json()
    assert v["kind"] == "call"
    assert v["due_by"].startswith(clock.iso(live_clock + 20 * D)[:19])
    assert v["override"]["reason"] == "Away until then"
    assert v["override"]["by"] == "Clina"
    assert v["schedule"]["kind"] == "visit"
    raised_plus_48 = live_clock - timedelta(hours=4) + timedelta(hours=48)
    assert v["schedule"]["due_by"].startswith(clock.iso(raised_plus_48)[:19])
    assert v["schedule"]["reasons"][0] == "crisis_alert"
    assert v["schedule"]["reason_texts"][0] == "open hypertensive crisis alert"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param({"reason": ""}, "validation_error", id="no_reason"),
        pytest.param({"reason": "   "}, "reason_required", id="blank_reason"),
        pytest.param({"due_by": "2020-01-01T00:00:00Z"}, "date_in_past", id="past"),
        pytest.param({"kind": "lunch"}, "validation_error", id="bad_kind"),
    ],
)
def test_override_when_input_invalid_answers_422(
    client: TestClient, world: World, body: dict[str, object], code: str
) -> None:
    r = _put(client, world, "pa1", **body)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code


def test_complete_when_due_returns_completed_and_next(
    client: TestClient, world: World, count_audit: Callable[..., int], live_clock: datetime
) -> None:
    pid = world.patients["pa2"].id
    url = f"/api/v1/patients/{pid}/next-visit/complete"
    client.get(f"/api/v1/patients/{pid}/next-visit", headers=world.auth("clina"))
    r = client.post(url, json={"note": "Discussed home readings."}, headers=world.auth("clina"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["completed"]["status"] == "completed"
    assert body["next"]["status"] == "due"
    assert body["next"]["id"] != body["completed"]["id"]
    # No data yet: 4 weeks from this review.
    assert body["next"]["due_by"].startswith(clock.iso(live_clock + 28 * D)[:19])
    assert count_audit(action="visit.complete", patient_id=pid) == 1


def test_visits_due_lists_own_care_team_soonest_first(
    client: TestClient, world: World, alert: Callable[..., Alert]
) -> None:
    alert("pa2")
    for who in ("pa1", "pa2", "pb1"):
        client.get("/api/v1/me/next-visit", headers=world.auth(who))
    rows = client.get("/api/v1/visits/due", headers=world.auth("clina")).json()
    assert [r["pseudonym"] for r in rows] == ["P-PA2", "P-PA1"]
    assert rows[0]["reasons"][0] == "crisis_alert"
    near = client.get("/api/v1/visits/due?within_days=3", headers=world.auth("clina")).json()
    assert [r["pseudonym"] for r in near] == ["P-PA2"]
    theirs = client.get("/api/v1/visits/due", headers=world.auth("clinb")).json()
    assert [r["pseudonym"] for r in theirs] == ["P-PB1"]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("get", "next-visit"),
        ("put", "next-visit"),
        ("post", "next-visit/complete"),
        ("get", "previsit-summary"),
        ("get", "previsit-summary.pdf"),
    ],
)
def test_care_team_routes_when_patient_outside_team_answer_404(
    client: TestClient, world: World, method: str, suffix: str, count_audit: Callable[..., int]
) -> None:
    url = f"/api/v1/patients/{world.patients['pb1'].id}/{suffix}"
    body = {"due_by": clock.iso(clock.utcnow() + D), "kind": "visit", "reason": "x", "note": ""}
    kwargs = {"json": body} if method != "get" else {}
    r = getattr(client, method)(url, headers=world.auth("clina"), **kwargs)
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    # A patient cannot reach another patient (nor their own) through the care-team routes.
    p = getattr(client, method)(url, headers=world.auth("pa1"), **kwargs)
    assert p.status_code in (403, 404)
    assert count_audit(outcome="denied", patient_id=world.patients["pb1"].id) == 2


@pytest.mark.parametrize("user", ["auditor", "mleng"])
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/me/next-visit",
        "/api/v1/visits/due",
        "/api/v1/patients/{pid}/next-visit",
        "/api/v1/patients/{pid}/previsit-summary",
        "/api/v1/patients/{pid}/previsit-summary.pdf",
    ],
)
def test_visit_routes_when_auditor_or_ml_engineer_are_refused(
    client: TestClient, world: World, user: str, path: str
) -> None:
    r = client.get(path.format(pid=world.patients["pa1"].id), headers=world.auth(user))
    assert r.status_code in (403, 404)
    assert r.status_code == 403 or path.startswith("/api/v1/me")


def test_override_audit_keeps_no_free_text(
    client: TestClient, world: World, engine: object
) -> None:
    from sqlalchemy import select

    from app.db import session_factory
    from audit.models import AuditEntry

    assert _put(client, world, "pa1", reason="Private: patient's travel plans").status_code == 200
    with session_factory(engine)() as s:  # type: ignore[arg-type]
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "visit.override")).one()
    assert entry.patient_id == world.patients["pa1"].id
    assert "travel" not in str(entry.details)
    assert json.loads(entry.details)["overridden"] is True
