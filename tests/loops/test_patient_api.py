"""The patient API of the loop, alerts and their acknowledgement, the kill switch, and
proposals as FHIR MedicationRequest."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core import clock
from loops import service
from loops.alerts import AlertType, Finding, Severity
from loops.models import Alert, MedicationRegimen, Proposal, ProposalStatus
from tests.conftest import FrozenClock, World


@pytest.fixture
def regimens(world: World) -> dict[str, MedicationRegimen]:
    """Amlodipine 2.5/5/10 mg for every patient, at the first step."""
    ladder = service.create_ladder(
        world.session, drug="amlodipine", steps=[2.5, 5.0, 10.0], rxnorm_code="17767"
    )
    out = {
        k: service.start_regimen(world.session, patient_id=p.id, ladder=ladder)
        for k, p in world.patients.items()
    }
    world.session.commit()
    return out


@pytest.fixture
def propose(world: World, regimens: dict[str, MedicationRegimen]) -> Callable[..., Proposal]:
    """Store a proposal for a patient with a given status."""

    def make(patient: str, status: ProposalStatus, action: str = "increase") -> Proposal:
        to_step = {"increase": 1, "hold": 0, "decrease": 0}[action]
        p = Proposal(
            patient_id=world.patients[patient].id,
            regimen_id=regimens[patient].id,
            model_version="test-1",
            feature_hash="0" * 64,
            features={},
            action=action,
            from_step=0,
            to_step=to_step,
            from_dose=2.5,
            to_dose=[2.5, 5.0, 10.0][to_step],
            probabilities={"decrease": 0.05, "hold": 0.15, "increase": 0.8},
            confidence=0.8,
            explanation={"patient_text": "Your home readings are above target."},
            envelope_version=1,
            route="auto_deliver",
            reasons=[],
            status=status,
        )
        world.session.add(p)
        world.session.commit()
        return p

    return make


def test_recommendations_when_patient_asks_lists_only_their_own(
    client: TestClient, world: World, propose: Callable[..., Proposal]
) -> None:
    own = propose("pa1", ProposalStatus.DELIVERED)
    propose("pb1", ProposalStatus.DELIVERED)
    propose("pa1", ProposalStatus.SUPERSEDED)
    body = client.get("/api/v1/me/recommendations", headers=world.auth("pa1")).json()
    assert [r["id"] for r in body] == [own.id]
    assert body[0]["text"] == "Your care plan suggests you take amlodipine 5 mg instead of 2.5 mg."
    assert body[0]["explanation"] == "Your home readings are above target."
    assert body[0]["status"] == "recommended"


def test_response_when_patient_answers_records_it_and_symptoms(
    client: TestClient,
    world: World,
    propose: Callable[..., Proposal],
    count_audit: Callable[..., int],
) -> None:
    p = propose("pa1", ProposalStatus.DELIVERED)
    r = client.post(
        f"/api/v1/me/recommendations/{p.id}/response",
        headers=world.auth("pa1"),
        json={"response": "took_it", "symptoms": ["dizziness"], "note": "mild"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["response"] == "took_it"
    assert count_audit(action="recommendation.respond", patient_id=p.patient_id) == 1


def test_response_when_other_patients_proposal_is_404(
    client: TestClient, world: World, propose: Callable[..., Proposal]
) -> None:
    p = propose("pb1", ProposalStatus.DELIVERED)
    r = client.post(
        f"/api/v1/me/recommendations/{p.id}/response",
        headers=world.auth("pa1"),
        json={"response": "took_it"},
    )
    assert r.status_code == 404


def test_response_when_still_under_review_is_409(
    client: TestClient, world: World, propose: Callable[..., Proposal]
) -> None:
    p = propose("pa1", ProposalStatus.PENDING_REVIEW)
    r = client.post(
        f"/api/v1/me/recommendations/{p.id}/response",
        headers=world.auth("pa1"),
        json={"response": "took_it"},
    )
    assert r.status_code == 409


def test_response_when_symptom_unknown_is_422(
    client: TestClient, world: World, propose: Callable[..., Proposal]
) -> None:
    p = propose("pa1", ProposalStatus.DELIVERED)
    r = client.post(
        f"/api/v1/me/recommendations/{p.id}/response",
        headers=world.auth("pa1"),
        json={"response": "took_it", "symptoms": ["<script>"]},
    )
    assert r.status_code == 422


def _crisis(patient_id: str) -> Finding:
    return Finding(
        AlertType.CRISIS,
        Severity.CRITICAL,
        f"{patient_id}:{AlertType.CRISIS}",
        "192/110 mmHg, confirmed",
    )


def test_alerts_when_finding_repeats_stay_one_alert(world: World, db: Session) -> None:
    pid = world.patients["pa1"].id
    now = clock.utcnow()
    assert len(service.raise_alerts(db, patient_id=pid, found=[_crisis(pid)], now=now)) == 1
    assert service.raise_alerts(db, patient_id=pid, found=[_crisis(pid)], now=now) == []
    db.commit()
    assert len(service.open_alerts(db, patient_id=pid)) == 1


def test_alerts_when_duplicate_inserted_behind_the_service_are_refused(
    world: World, db: Session
) -> None:
    pid = world.patients["pa1"].id
    for _ in range(2):
        db.add(
            Alert(
                patient_id=pid,
                type="hypertensive_crisis",
                severity="critical",
                key=f"{pid}:hypertensive_crisis",
                detail="x",
                raised_at=clock.utcnow(),
            )
        )
    with pytest.raises(IntegrityError):
        db.commit()
    db.rollback()


def test_acknowledge_when_care_team_acts_records_time_once(
    client: TestClient, world: World, db: Session
) -> None:
    pid = world.patients["pa1"].id
    (alert,) = service.raise_alerts(db, patient_id=pid, found=[_crisis(pid)], now=clock.utcnow())
    db.commit()
    listed = client.get(f"/api/v1/patients/{pid}/alerts", headers=world.auth("clina")).json()
    assert [a["id"] for a in listed] == [alert.id]
    assert (
        client.post(
            f"/api/v1/alerts/{alert.id}/acknowledge",
            headers=world.auth("clinb"),
            json={"note": "x"},
        ).status_code
        == 404
    )
    ok = client.post(
        f"/api/v1/alerts/{alert.id}/acknowledge",
        headers=world.auth("clina"),
        json={"note": "called the patient"},
    )
    assert ok.status_code == 200
    assert ok.json()["status"] == "acknowledged"
    again = client.post(
        f"/api/v1/alerts/{alert.id}/acknowledge", headers=world.auth("clina"), json={}
    )
    assert again.status_code == 409
    mine = client.get("/api/v1/me/alerts", headers=world.auth("pa1")).json()
    assert [a["status"] for a in mine["alerts"]] == ["acknowledged"]


def test_escalation_when_unacknowledged_raises_level(
    world: World, db: Session, frozen_clock: FrozenClock
) -> None:
    pid = world.patients["pa1"].id
    service.raise_alerts(db, patient_id=pid, found=[_crisis(pid)], now=frozen_clock.now)
    db.commit()
    assert service.escalate_due(db, now=frozen_clock.now + timedelta(minutes=14)) == []
    (escalated,) = service.escalate_due(db, now=frozen_clock.now + timedelta(minutes=15))
    assert escalated.escalation_level == 1
    db.commit()


def test_kill_switch_when_admin_sets_it_is_visible_and_audited(
    client: TestClient, world: World, count_audit: Callable[..., int]
) -> None:
    assert (
        client.put(
            "/api/v1/admin/kill-switch",
            headers=world.auth("admin"),
            json={"enabled": True, "reason": ""},
        ).status_code
        == 422
    )
    r = client.put(
        "/api/v1/admin/kill-switch",
        headers=world.auth("admin"),
        json={"enabled": True, "reason": "model incident"},
    )
    assert r.json() == {"enabled": True, "reason": "model incident"}
    assert client.get("/api/v1/admin/kill-switch", headers=world.auth("clina")).json()["enabled"]
    assert (
        client.put(
            "/api/v1/admin/kill-switch",
            headers=world.auth("clina"),
            json={"enabled": False, "reason": "x"},
        ).status_code
        == 403
    )
    assert count_audit(action="kill_switch.set", outcome="success") == 1
    assert count_audit(action="kill_switch.set", outcome="failure") == 1  # the reasonless try


def test_medication_requests_when_searched_are_valid_fhir_with_intent(
    client: TestClient, world: World, propose: Callable[..., Proposal]
) -> None:
    propose("pa1", ProposalStatus.PENDING_REVIEW)
    propose("pa1", ProposalStatus.APPROVED)
    r = client.get(
        f"/fhir/R4/MedicationRequest?patient={world.patients['pa1'].id}",
        headers=world.auth("clina"),
    )
    assert r.status_code == 200
    bundle = Bundle.model_validate(r.json())
    pairs = sorted((e.resource.intent, e.resource.status) for e in bundle.entry or [])
    assert pairs == [("order", "active"), ("proposal", "draft")]
    assert (
        client.get(
            f"/fhir/R4/MedicationRequest?patient={world.patients['pa1'].id}",
            headers=world.auth("clinb"),
        ).status_code
        == 404
    )
