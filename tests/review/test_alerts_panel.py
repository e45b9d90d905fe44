"""The alerts inbox (crisis pinned, acknowledge with a note, escalate) and the panel."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import clock
from loops.models import Alert, AlertStatus, MedicationRegimen, Proposal
from loops.review import service as review
from loops.review.models import AlertEscalation
from loops.visits import service as visits
from tests.conftest import World


def test_inbox_when_alerts_mixed_pins_crisis_then_status_severity_age(
    client: TestClient, world: World, raise_alert: Callable[..., Alert]
) -> None:
    gap = raise_alert("pa2", "data_gap", "low", age=timedelta(days=2))
    adherence = raise_alert("pa1", "adherence_drop", "medium", age=timedelta(hours=5))
    seen = raise_alert(
        "pa2", "persistent_low_bp", "high", age=timedelta(hours=9), status=AlertStatus.ACKNOWLEDGED
    )
    crisis = raise_alert("pa1", age=timedelta(minutes=3))
    raise_alert("pa1", "other", "low", status=AlertStatus.RESOLVED)
    theirs = raise_alert("pb1")
    body = client.get("/api/v1/review/alerts", headers=world.auth("clina")).json()
    assert [e["alert"]["id"] for e in body] == [crisis.id, adherence.id, gap.id, seen.id]
    assert [e["pinned"] for e in body] == [True, False, False, False]
    assert body[0]["patient"]["pseudonym"] == "P-PA1"
    with_resolved = client.get(
        "/api/v1/review/alerts?include_resolved=true", headers=world.auth("clina")
    ).json()
    assert len(with_resolved) == 5
    other = client.get("/api/v1/review/alerts", headers=world.auth("clinb")).json()
    assert [e["alert"]["id"] for e in other] == [theirs.id]


def test_acknowledge_when_note_given_is_recorded_with_who_and_when(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    raise_alert: Callable[..., Alert],
) -> None:
    alert = raise_alert("pa1")
    response = client.post(
        f"/api/v1/alerts/{alert.id}/acknowledge",
        json={"note": "called the patient; re-measured 150/95"},
        headers=world.auth("clina"),
    )
    assert response.status_code == 200
    (entry,) = client.get("/api/v1/review/alerts", headers=world.auth("clina")).json()
    assert entry["acknowledged_by"] == "Clina"
    assert entry["alert"]["acknowledgement_note"] == "called the patient; re-measured 150/95"
    assert entry["alert"]["acknowledged_at"] is not None
    with short() as s, pytest.raises(review.ReviewConflict) as caught:
        review.acknowledge(
            s, alert_id=alert.id, user=world.users["clina"], note="again", now=clock.utcnow()
        )
    assert caught.value.code == "already_acknowledged"
    assert caught.value.holder == "Clina"


def test_escalate_when_unresolved_raises_level_and_keeps_the_note(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    raise_alert: Callable[..., Alert],
    count_audit: Callable[..., int],
) -> None:
    alert = raise_alert("pa1")
    url = f"/api/v1/alerts/{alert.id}/escalate"
    empty = client.post(url, json={"note": ""}, headers=world.auth("clina"))
    assert empty.status_code == 422
    response = client.post(url, json={"note": "paged Dr. Lee"}, headers=world.auth("clina"))
    assert response.status_code == 200
    assert response.json()["escalation_level"] == 1
    with short() as s:
        (row,) = s.scalars(select(AlertEscalation)).all()
        assert row.note == "paged Dr. Lee"
        assert row.level == 1
        assert row.user_id == world.users["clina"].id
    assert count_audit(action="alert.escalate", outcome="success") == 1
    (entry,) = client.get("/api/v1/review/alerts", headers=world.auth("clina")).json()
    assert entry["escalations"] == 1
    resolved = raise_alert("pa2", "data_gap", "low", status=AlertStatus.RESOLVED)
    late = client.post(
        f"/api/v1/alerts/{resolved.id}/escalate", json={"note": "x"}, headers=world.auth("clina")
    )
    assert late.status_code == 409
    assert late.json()["code"] == "alert_resolved"


def test_panel_when_patients_differ_shows_control_alerts_and_pending(
    client: TestClient,
    world: World,
    regimens: dict[str, MedicationRegimen],
    propose: Callable[..., Proposal],
    raise_alert: Callable[..., Alert],
    add_readings: Callable[..., None],
) -> None:
    add_readings("pa1", 150, 92)
    add_readings("pa2", 122, 76, days=2)
    pending = propose("pa1", age=timedelta(hours=30))
    raise_alert("pa1")
    rows = client.get("/api/v1/review/panel", headers=world.auth("clina")).json()
    by_key = {r["patient"]["pseudonym"]: r for r in rows}
    assert set(by_key) == {"P-PA1", "P-PA2"}
    pa1, pa2 = by_key["P-PA1"], by_key["P-PA2"]
    assert pa1["control"] == "uncontrolled"
    assert pa1["cuff_sbp_mean_7d"] == 150.0
    assert pa1["cuff_readings_7d"] == 14
    assert pa1["open_alerts"] == 1
    assert pa1["crisis_alert"]
    assert pa1["pending_proposals"] == 1
    assert pa1["review_overdue"] is True
    due = pending.created_at + timedelta(hours=24)
    assert pa1["next_review_due"].startswith(clock.iso(due)[:19])
    assert pa2["control"] == "controlled"
    assert pa2["pending_proposals"] == 0
    assert pa2["next_review_due"] is None
    assert pa2["last_reading_at"] is not None
    only = client.get("/api/v1/review/panel?search=pa2", headers=world.auth("clina")).json()
    assert [r["patient"]["pseudonym"] for r in only] == ["P-PA2"]
    filtered = client.get(
        "/api/v1/review/panel?status=pending_review", headers=world.auth("clina")
    ).json()
    assert [r["patient"]["pseudonym"] for r in filtered] == ["P-PA1"]
    theirs = client.get("/api/v1/review/panel", headers=world.auth("clinb")).json()
    assert {r["patient"]["pseudonym"] for r in theirs} == {"P-PB1", "P-PB2"}
    assert {r["control"] for r in theirs} == {"no_data"}


def test_panel_when_visit_due_shows_it_as_next_review(
    client: TestClient,
    world: World,
    regimens: dict[str, MedicationRegimen],
    add_readings: Callable[..., None],
) -> None:
    add_readings("pa2", 122, 76, days=2)
    visit = visits.recompute(
        world.session, patient_id=world.patients["pa2"].id, now=clock.utcnow()
    ).visit
    world.session.commit()
    rows = client.get("/api/v1/review/panel", headers=world.auth("clina")).json()
    pa2 = next(r for r in rows if r["patient"]["pseudonym"] == "P-PA2")
    # No proposal waits, so the next review is the due visit the cadence rule set.
    assert pa2["next_visit_due"].startswith(clock.iso(visit.due_by)[:19])
    assert pa2["next_review_due"] == pa2["next_visit_due"]
    assert (pa2["next_visit_kind"], pa2["next_visit_overridden"]) == (visit.kind, False)
