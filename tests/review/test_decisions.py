"""Signed decisions: approve, modify, reject; the signature ceremony; feedback labels; what
the patient and FHIR see afterwards."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.medicationrequest import MedicationRequest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.models import LoginAttempt
from audit.keys import load_signing_key
from audit.models import AuditEntry
from loops.models import MedicationRegimen, PatientNotice, Proposal, ProposalStatus
from loops.review.models import Decision, ReviewClaim
from loops.review.signing import record_document, record_hash, verify_signature
from tests.conftest import World
from tests.review.conftest import decision_body


def _decide(client: TestClient, world: World, p: Proposal, who: str = "clina", **body: object):  # type: ignore[no-untyped-def]
    return client.post(
        f"/api/v1/review/proposals/{p.id}/decision",
        json=decision_body(**body),  # type: ignore[arg-type]
        headers=world.auth(who),
    )


def _medication_request(client: TestClient, world: World, proposal_id: str) -> dict[str, object]:
    bundle = client.get(
        f"/fhir/R4/MedicationRequest?patient={world.patients['pa1'].id}",
        headers=world.auth("clina"),
    ).json()
    (found,) = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == proposal_id]
    return found  # type: ignore[no-any-return]


def test_decide_when_approved_delivers_to_patient_and_orders(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    propose: Callable[..., Proposal],
    count_audit: Callable[..., int],
) -> None:
    p = propose("pa1")
    assert client.post(
        f"/api/v1/review/proposals/{p.id}/claim", headers=world.auth("clina")
    ).is_success
    response = _decide(client, world, p, kind="approve")
    assert response.status_code == 201
    body = response.json()
    assert body["kind"] == "approve"
    assert body["decided_step"] == 2
    assert body["decided_dose"] == 20.0
    sig = body["signature"]
    assert sig["printed_name"] == "Clina"
    assert sig["username"] == "clina"
    assert sig["meaning"] == "approved as prescriber"
    assert sig["algorithm"] == "Ed25519"
    assert len(sig["signature"]) == 128
    assert sig["record_hash"] == record_hash(body["record"])
    with short() as s:
        proposal = s.get(Proposal, p.id)
        regimen = s.get(MedicationRegimen, p.regimen_id)
        assert proposal is not None
        assert regimen is not None
        assert proposal.status == ProposalStatus.APPROVED
        assert proposal.delivered_at is not None
        assert regimen.current_step == 2
        assert regimen.last_changed_at == proposal.delivered_at
        assert s.get(ReviewClaim, p.id) is None
        decision = s.scalars(select(Decision)).one()
        assert decision.features["cuff_sbp_mean_7d"] == 145.0
        assert decision.feature_hash == "a" * 64
        assert decision.label_action == "increase"
        assert decision.proposal_action == "increase"
        assert decision.model_version == "titration:v1"
        notice = s.scalars(
            select(PatientNotice).where(col(PatientNotice.kind) == "recommendation")
        ).one()
        assert notice.text.startswith("Approved by your clinician: lisinopril 20 mg")
    mine = client.get("/api/v1/me/recommendations", headers=world.auth("pa1")).json()
    (rec,) = [r for r in mine if r["id"] == p.id]
    assert rec["status"] == "approved by your clinician"
    assert rec["text"] == "Approved by your clinician: take lisinopril 20 mg instead of 10 mg."
    assert rec["dose_to"] == 20.0
    order = _medication_request(client, world, p.id)
    assert order["intent"] == "order"
    assert order["status"] == "active"
    assert order["requester"] == {"display": "Clina"}
    MedicationRequest.model_validate(order)  # valid FHIR R4(B)
    assert count_audit(action="proposal.decide") == 1
    with short() as s:
        entry = s.scalars(
            select(AuditEntry).where(col(AuditEntry.action) == "proposal.decide")
        ).one()
        assert entry.resource_id == p.id
        assert entry.patient_id == world.patients["pa1"].id
        assert '"meaning":"approved as prescriber"' in entry.details
        assert sig["record_hash"] in entry.details


def test_decide_when_modified_moves_to_the_chosen_step_with_reason(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    propose: Callable[..., Proposal],
) -> None:
    p = propose("pa1")
    missing = _decide(client, world, p, kind="modify", decided_step=0)
    assert missing.status_code == 422
    assert missing.json()["field"] == "reason_code"
    off = _decide(client, world, p, kind="modify", decided_step=9, reason_code="adverse_effect")
    assert off.status_code == 422
    assert off.json()["field"] == "decided_step"
    same = _decide(client, world, p, kind="modify", decided_step=2, reason_code="adverse_effect")
    assert same.status_code == 422
    assert same.json()["code"] == "same_as_proposed"
    response = _decide(
        client, world, p, kind="modify", decided_step=0, reason_code="adverse_effect"
    )
    assert response.status_code == 201
    body = response.json()
    assert body["decided_dose"] == 5.0
    assert body["label_action"] == "decrease"
    assert body["signature"]["meaning"] == "modified as prescriber"
    with short() as s:
        regimen = s.get(MedicationRegimen, p.regimen_id)
        assert regimen is not None
        assert regimen.current_step == 0
        assert s.get(Proposal, p.id).status == ProposalStatus.MODIFIED  # type: ignore[union-attr]
    mine = client.get("/api/v1/me/recommendations", headers=world.auth("pa1")).json()
    (rec,) = [r for r in mine if r["id"] == p.id]
    assert rec["status"] == "changed by your clinician"
    assert rec["text"] == "Changed by your clinician: take lisinopril 5 mg instead of 10 mg."
    assert rec["dose_to"] == 5.0
    assert rec["explanation"] == ""
    order = _medication_request(client, world, p.id)
    assert order["intent"] == "order"
    assert order["status"] == "active"
    assert order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 5.0  # type: ignore[index]


def test_decide_when_rejected_needs_a_reason_and_changes_nothing(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    propose: Callable[..., Proposal],
) -> None:
    p = propose("pa1")
    no_reason = _decide(client, world, p, kind="reject")
    assert no_reason.status_code == 422
    assert no_reason.json()["field"] == "reason_code"
    bad = _decide(client, world, p, kind="reject", reason_code="because")
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid_reason"
    other = _decide(client, world, p, kind="reject", reason_code="other")
    assert other.status_code == 422
    assert other.json()["field"] == "reason_text"
    response = _decide(
        client,
        world,
        p,
        kind="reject",
        reason_code="patient_preference",
        reason_text="prefers to wait for the next visit",
    )
    assert response.status_code == 201
    body = response.json()
    assert body["signature"]["meaning"] == "rejected as reviewing clinician"
    assert body["decided_step"] == 1
    assert body["label_action"] == "hold"
    with short() as s:
        regimen = s.get(MedicationRegimen, p.regimen_id)
        proposal = s.get(Proposal, p.id)
        assert regimen is not None
        assert regimen.current_step == 1
        assert proposal is not None
        assert proposal.status == ProposalStatus.REJECTED
        assert proposal.delivered_at is None
        assert s.scalars(select(PatientNotice)).first() is None
    order = _medication_request(client, world, p.id)
    assert order["status"] == "cancelled"
    assert order["intent"] == "proposal"


def test_decide_when_password_is_wrong_decides_nothing_and_is_audited(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    propose: Callable[..., Proposal],
    count_audit: Callable[..., int],
) -> None:
    p = propose("pa1")
    response = _decide(client, world, p, password="not-my-password")
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "signature_invalid"
    assert response.json()["reason"] == "invalid_credentials"
    unconfirmed = _decide(client, world, p, meaning_confirmed=False)
    assert unconfirmed.status_code == 403
    assert unconfirmed.json()["reason"] == "meaning_not_confirmed"
    with short() as s:
        proposal = s.get(Proposal, p.id)
        regimen = s.get(MedicationRegimen, p.regimen_id)
        assert proposal is not None
        assert proposal.status == ProposalStatus.PENDING_REVIEW
        assert regimen is not None
        assert regimen.current_step == 1
        assert s.scalars(select(Decision)).first() is None
        attempt = s.get(LoginAttempt, "clina")
        assert attempt is not None
        assert attempt.failures == 1
    assert count_audit(action="proposal.decide", outcome="denied") == 2
    assert count_audit(action="proposal.decide") == 2


def test_decide_when_already_decided_is_409_with_who_and_when(
    client: TestClient, world: World, propose: Callable[..., Proposal]
) -> None:
    p = propose("pa1")
    first = _decide(client, world, p)
    assert first.status_code == 201
    again = _decide(client, world, p, kind="reject", reason_code="other", reason_text="x")
    assert again.status_code == 409
    problem = again.json()
    assert problem["code"] == "already_decided"
    assert problem["holder"] == "Clina"
    signed = datetime.fromisoformat(first.json()["signature"]["signed_at"])
    assert datetime.fromisoformat(problem["at"]) == signed


def test_signature_when_record_or_signature_is_moved_fails_to_verify(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    propose: Callable[..., Proposal],
) -> None:
    a, b = propose("pa1"), propose("pa2")
    assert _decide(client, world, a).status_code == 201
    assert _decide(client, world, b).status_code == 201
    assert world.settings.signing_key_path is not None
    public = load_signing_key(world.settings.signing_key_path).public_key()
    with short() as s:
        first = s.scalars(select(Decision).where(col(Decision.proposal_id) == a.id)).one()
        second = s.scalars(select(Decision).where(col(Decision.proposal_id) == b.id)).one()
        assert verify_signature(first, public_key=public)
        assert verify_signature(second, public_key=public)
        s.expunge_all()
    # The signature alone copied onto another record: its hash no longer matches.
    moved = Decision.model_validate(second.model_dump())
    moved.signature = first.signature
    assert not verify_signature(moved, public_key=public)
    # Hash and signature both copied: the record does not hash to them.
    moved.record_hash = first.record_hash
    assert not verify_signature(moved, public_key=public)
    # A changed field: the dose.
    altered = Decision.model_validate(first.model_dump())
    altered.decided_dose = 40.0
    assert not verify_signature(altered, public_key=public)
    # A consistent hash for a forged record, with no key to sign it.
    forged = Decision.model_validate(first.model_dump())
    forged.decided_dose = 40.0
    forged.record_hash = record_hash(record_document(forged))
    assert not verify_signature(forged, public_key=public)


def test_read_decision_when_auditor_asks_reports_a_valid_signature(
    client: TestClient, world: World, propose: Callable[..., Proposal]
) -> None:
    p = propose("pa1")
    decided = _decide(client, world, p).json()
    for who in ("auditor", "clina"):
        response = client.get(f"/api/v1/decisions/{decided['id']}", headers=world.auth(who))
        assert response.status_code == 200
        assert response.json()["signature_valid"] is True
        assert response.json()["record"] == decided["record"]
    outside = client.get(f"/api/v1/decisions/{decided['id']}", headers=world.auth("clinb"))
    assert outside.status_code == 404
    patient = client.get(f"/api/v1/decisions/{decided['id']}", headers=world.auth("pa1"))
    assert patient.status_code == 403


def test_decide_when_regimen_moved_since_the_proposal_is_409(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    propose: Callable[..., Proposal],
) -> None:
    p = propose("pa1")
    with short() as s:
        regimen = s.get(MedicationRegimen, p.regimen_id)
        assert regimen is not None
        regimen.current_step = 3
        s.commit()
    response = _decide(client, world, p)
    assert response.status_code == 409
    assert response.json()["code"] == "regimen_changed"
    rejected = _decide(client, world, p, kind="reject", reason_code="clinical_judgement")
    assert rejected.status_code == 201


def test_decision_when_stored_cannot_be_updated_or_deleted(
    client: TestClient, world: World, engine: Engine, propose: Callable[..., Proposal]
) -> None:
    p = propose("pa1")
    decided = _decide(client, world, p).json()
    for statement in (
        "UPDATE decisions SET decided_dose = 40.0 WHERE id = :id",
        "DELETE FROM decisions WHERE id = :id",
    ):
        with engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text(statement), {"id": decided["id"]})
