"""FHIR output for auditors: AuditEvents from the audit log and Provenances of AI proposals
and signed decisions, validated with the R4B models and checked against the database."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.provenance import Provenance
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from audit import keys
from audit import service as audit
from audit.models import AuditEntry
from loops.models import Proposal, ProposalStatus
from loops.review import service as review
from loops.review.models import Decision
from mlops.models import ModelVersion
from reports import fhir
from reports.models import Filters, Period
from tests.conftest import PASSWORD, World
from tests.review.conftest import propose, regimens

__all__ = ["propose", "regimens"]  # fixtures reused from the review tests

ARTIFACT = "ab" * 32


@dataclass
class Clinic:
    """Four proposals (approved, rejected, modified, delivered by v2), API reads, a denial, a
    sign-in, and a period around all of it."""

    world: World
    period: Period
    approved: Proposal
    rejected: Proposal
    modified: Proposal
    delivered: Proposal

    def pid(self, key: str) -> str:
        return self.world.patients[key].id

    def pseudonym(self, key: str) -> str:
        return self.world.patients[key].pseudonym


@pytest.fixture
def clinic(world: World, client: TestClient, propose: Callable[..., Proposal]) -> Clinic:
    s = world.session
    s.add(
        ModelVersion(
            name="titration", version=1, status="production", artifact_path="x",
            artifact_sha256=ARTIFACT, data_hash="0" * 64, code_version="c",
            feature_names=[], params={}, metrics={}, privacy={}, created_by="test",
        )
    )  # fmt: skip
    approved, rejected, modified = propose("pa1"), propose("pa2"), propose("pb1")
    delivered = propose("pb2", "hold", status=ProposalStatus.DELIVERED)
    delivered.model_version = "titration:v2"
    s.commit()
    now = clock.utcnow()
    for proposal, user, kind, extra in (
        (approved, "clina", "approve", {}),
        (rejected, "clina", "reject", {"reason_code": "other", "reason_text": "not now"}),
        (modified, "clinb", "modify", {"decided_step": 0, "reason_code": "clinical_judgement"}),
    ):
        review.decide(
            s,
            proposal_id=proposal.id,
            user=world.users[user],
            kind=kind,
            password=PASSWORD,
            meaning_confirmed=True,
            now=now,
            settings=world.settings,
            **extra,
        )
    s.commit()
    pa1 = world.patients["pa1"].id
    assert client.get(f"/api/v1/patients/{pa1}", headers=world.auth("clina")).is_success
    assert client.get("/api/v1/patients", headers=world.auth("clina")).is_success
    assert client.get(f"/api/v1/patients/{pa1}", headers=world.auth("clinb")).status_code == 404
    token = client.post("/api/v1/auth/token", data={"username": "auditor", "password": PASSWORD})
    assert token.is_success
    for p in (approved, rejected, modified, delivered):
        s.refresh(p)
    s.commit()
    period = Period(clock.utcnow() - timedelta(days=1), clock.utcnow() + timedelta(hours=1))
    return Clinic(world, period, approved, rejected, modified, delivered)


def _entries(db: Session, **where: Any) -> list[AuditEntry]:
    stmt = select(AuditEntry).order_by(col(AuditEntry.seq))
    for name, value in where.items():
        stmt = stmt.where(getattr(AuditEntry, name) == value)
    return list(db.scalars(stmt))


def _events(db: Session, clinic: Clinic, filters: Filters | None = None) -> list[dict[str, Any]]:
    entries = fhir.period_entries(db, period=clinic.period, filters=filters or Filters())
    return fhir.audit_events(db, entries, log_id="ab" * 32)


def _by_id(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in resources}


def _log_details(event: dict[str, Any]) -> dict[str, str]:
    log = next(e for e in event["entity"] if e["role"]["code"] == "13")
    return {d["type"]: d["valueString"] for d in log["detail"]}


def _subtype_codes(event: dict[str, Any]) -> list[str]:
    return [c["code"] for c in event["subtype"]]


# --- AuditEvent --------------------------------------------------------------------------------


def test_every_audit_entry_becomes_a_valid_audit_event(clinic: Clinic, db: Session) -> None:
    entries = _entries(db)
    events = _by_id(_events(db, clinic))
    assert len(events) == len(entries) >= 4
    for entry in entries:
        event = events[f"audit-{entry.seq}"]
        AuditEvent.model_validate(event)
        assert event["recorded"] == clock.iso(entry.ts)
        assert event["outcome"] == {"success": "0", "denied": "4", "failure": "8"}[entry.outcome]
        assert event["action"] in {"C", "R", "U", "D", "E"}
        assert event["subtype"][-1] == {"system": fhir.ACTION_SYSTEM, "code": entry.action}
        details = _log_details(event)
        assert details["seq"] == str(entry.seq)
        assert details["leaf_hash"] == entry.leaf_hash
        assert details.get("prev_leaf_hash", "") == entry.prev_leaf_hash
        assert details.get("request_id") == entry.request_id
        agent = event["agent"][0]
        assert agent["requestor"] is True
        assert agent["role"][0]["text"] == entry.actor_role
        assert event["source"]["observer"]["display"] == "ClinAIOps"
        assert event["source"]["type"][0]["code"] == "4"


def test_api_read_is_a_rest_read_by_the_clinician_of_the_patient(
    clinic: Clinic, db: Session
) -> None:
    clina = clinic.world.users["clina"]
    (entry,) = _entries(db, action="patient.read", actor=f"user:{clina.id}", outcome="success")
    event = _by_id(_events(db, clinic))[f"audit-{entry.seq}"]
    assert event["type"]["code"] == "rest"
    assert event["type"]["system"] == "http://terminology.hl7.org/CodeSystem/audit-event-type"
    assert _subtype_codes(event) == ["read", "patient.read"]
    assert event["action"] == "R"
    assert event["agent"][0]["who"] == {
        "type": "Practitioner",
        "identifier": {"system": fhir.ACTOR_SYSTEM, "value": f"user:{clina.id}"},
        "display": "clina",
    }
    (patient,) = [e for e in event["entity"] if e["role"]["code"] == "1"]
    assert patient["what"] == {
        "reference": f"Patient/{clinic.pid('pa1')}",
        "display": clinic.pseudonym("pa1"),
    }
    assert _log_details(event)["request_id"] == entry.request_id


def test_listing_names_every_patient_it_showed(clinic: Clinic, db: Session) -> None:
    (entry,) = _entries(db, action="patient.list")
    shown = json.loads(entry.details)["patient_ids"]
    event = _by_id(_events(db, clinic))[f"audit-{entry.seq}"]
    patients = [e["what"]["reference"] for e in event["entity"] if e["role"]["code"] == "1"]
    assert patients == [f"Patient/{pid}" for pid in shown]
    assert (event["action"], _subtype_codes(event)[0]) == ("E", "search-type")


def test_denial_is_a_minor_failure_with_its_code(clinic: Clinic, db: Session) -> None:
    (entry,) = _entries(db, outcome="denied", actor=f"user:{clinic.world.users['clinb'].id}")
    event = _by_id(_events(db, clinic))[f"audit-{entry.seq}"]
    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == f"denied: {json.loads(entry.details)['code']}"


def test_sign_in_is_dicom_user_authentication_login(clinic: Clinic, db: Session) -> None:
    (entry,) = _entries(db, action="auth.login")
    event = _by_id(_events(db, clinic))[f"audit-{entry.seq}"]
    assert event["type"] == {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "110114",
        "display": "User Authentication",
    }
    assert _subtype_codes(event) == ["110122", "auth.login"]
    assert event["action"] == "E"


def test_patient_users_appear_by_patient_reference_never_by_name(
    clinic: Clinic, db: Session, client: TestClient
) -> None:
    world = clinic.world
    assert client.get("/api/v1/me/recommendations", headers=world.auth("pa1")).is_success
    db.commit()
    events = _events(db, clinic)
    mine = [e for e in events if e["agent"][0]["role"][0]["text"] == "patient"]
    assert mine
    assert all(e["agent"][0]["who"]["reference"] == f"Patient/{clinic.pid('pa1')}" for e in mine)
    text = json.dumps(events)
    for patient in world.patients.values():
        assert patient.given_name not in text
        assert patient.family_name not in text


def test_audit_events_follow_the_patient_filter(clinic: Clinic, db: Session) -> None:
    events = _events(db, clinic, Filters(patient_id=clinic.pseudonym("pa1")))
    assert events
    for event in events:
        refs = [e["what"].get("reference") for e in event["entity"]]
        assert f"Patient/{clinic.pid('pa1')}" in refs


@pytest.mark.parametrize(
    ("action", "code"),
    [
        ("patient.read", "R"),
        ("patient.list", "E"),
        ("observation.ingest", "C"),
        ("proposal.decide", "U"),
        ("goal.withdraw", "U"),
        ("auth.login", "E"),
        ("audit.checkpoint", "E"),
        ("model.rollout.start", "U"),
        ("device.delete", "D"),
    ],
)
def test_action_code_from_the_verb(action: str, code: str) -> None:
    assert fhir.action_code(action) == code


# --- Provenance --------------------------------------------------------------------------------


def _provenances(db: Session, clinic: Clinic, **filters: Any) -> dict[str, dict[str, Any]]:
    return _by_id(fhir.provenances(db, period=clinic.period, filters=Filters(**filters)))


def _decision(db: Session, proposal: Proposal) -> Decision:
    found = db.scalars(select(Decision).where(col(Decision.proposal_id) == proposal.id)).first()
    assert found is not None
    return found


def test_every_proposal_and_decision_has_a_valid_provenance(clinic: Clinic, db: Session) -> None:
    provenances = _provenances(db, clinic)
    proposals = db.scalars(select(Proposal)).all()
    decisions = db.scalars(select(Decision)).all()
    assert set(provenances) == {f"proposal-{p.id}" for p in proposals} | {
        f"decision-{d.id}" for d in decisions
    }
    assert (len(proposals), len(decisions)) == (4, 3)
    for resource in provenances.values():
        Provenance.model_validate(resource)


def test_proposal_provenance_names_the_model_as_author(clinic: Clinic, db: Session) -> None:
    p = clinic.approved
    resource = _provenances(db, clinic)[f"proposal-{p.id}"]
    assert resource["target"] == [{"reference": f"MedicationRequest/{p.id}"}]
    assert resource["recorded"] == clock.iso(p.created_at)
    (agent,) = resource["agent"]
    assert agent["type"]["coding"][0]["code"] == "author"
    assert agent["who"] == {"reference": "#model", "display": "titration:v1"}
    (device,) = resource["contained"]
    assert device["resourceType"] == "Device"
    assert device["identifier"] == [
        {"system": fhir.MODEL_SYSTEM, "value": "titration:v1"},
        {"system": fhir.ARTIFACT_SYSTEM, "value": ARTIFACT},
    ]
    assert device["version"] == [{"value": "1"}]
    assert device["deviceName"] == [{"name": "titration", "type": "model-name"}]
    assert resource["entity"][0]["what"]["identifier"]["value"] == p.feature_hash
    assert resource["policy"] == [
        f"urn:clinaiops:safety-envelope:{p.patient_id}:v{p.envelope_version}"
    ]


def test_unknown_model_version_is_still_a_device(clinic: Clinic, db: Session) -> None:
    resource = _provenances(db, clinic)[f"proposal-{clinic.delivered.id}"]
    (device,) = resource["contained"]
    assert device["identifier"] == [{"system": fhir.MODEL_SYSTEM, "value": "titration:v2"}]


@pytest.mark.parametrize(
    ("which", "sig_code", "agent_type"),
    [
        ("approved", "1.2.840.10065.1.12.1.5", "verifier"),
        ("rejected", "1.2.840.10065.1.12.1.13", "verifier"),
        ("modified", "1.2.840.10065.1.12.1.16", "author"),
    ],
)
def test_decision_provenance_carries_the_signature_manifestation(
    clinic: Clinic, db: Session, which: str, sig_code: str, agent_type: str
) -> None:
    decision = _decision(db, getattr(clinic, which))
    resource = _provenances(db, clinic)[f"decision-{decision.id}"]
    assert resource["target"] == [{"reference": f"MedicationRequest/{decision.proposal_id}"}]
    assert resource["recorded"] == clock.iso(decision.signed_at)
    (agent,) = resource["agent"]
    assert agent["type"]["coding"][0]["code"] == agent_type
    assert agent["role"] == [{"text": decision.meaning}]
    assert agent["who"]["display"] == decision.signer_printed_name
    assert agent["who"]["identifier"]["value"] == f"user:{decision.signer_user_id}"
    model = resource["entity"][0]["agent"][0]
    assert model["who"] == {"reference": "#model", "display": decision.model_version}
    (signature,) = resource["signature"]
    assert signature["type"] == [
        {
            "system": "urn:iso-astm:E1762-95:2013",
            "code": sig_code,
            "display": {
                "verifier": "Verification Signature" if which == "approved" else "Review Signature",
                "author": "Modification Signature",
            }[agent_type],
        }
    ]
    assert signature["when"] == clock.iso(decision.signed_at)
    assert signature["who"] == agent["who"]
    extensions = {e["url"].rsplit(":", 1)[-1]: e["valueString"] for e in signature["extension"]}
    assert extensions == {
        "signature-meaning": decision.meaning,
        "signed-record-sha256": decision.record_hash,
        "signature-key-id": decision.key_id,
    }
    # A FHIR consumer can check the signature with the log's public key.
    path = clinic.world.settings.signing_key_path
    assert path is not None
    public = keys.load_signing_key(path).public_key()
    public.verify(base64.b64decode(signature["data"]), decision.record_hash.encode("ascii"))


def test_provenance_filters_narrow_by_patient_actor_and_model(clinic: Clinic, db: Session) -> None:
    pa1 = _provenances(db, clinic, patient_id=clinic.pseudonym("pa1"))
    assert set(pa1) == {
        f"proposal-{clinic.approved.id}",
        f"decision-{_decision(db, clinic.approved).id}",
    }
    by_clinb = _provenances(db, clinic, actor="clinb")
    assert set(by_clinb) == {f"decision-{_decision(db, clinic.modified).id}"}
    v2 = _provenances(db, clinic, model_version=2)
    assert set(v2) == {f"proposal-{clinic.delivered.id}"}
    assert _provenances(db, clinic, patient_id="P-NOBODY") == {}


# --- NDJSON and Bundle -------------------------------------------------------------------------


def test_export_writes_one_ndjson_file_per_type_and_a_bundle(clinic: Clinic, db: Session) -> None:
    built = fhir.export(db, period=clinic.period, filters=Filters(), now=clinic.period.end)
    assert set(built.files) == {"AuditEvent.ndjson", "Provenance.ndjson", fhir.BUNDLE_FILE}
    events = [json.loads(line) for line in built.files["AuditEvent.ndjson"].splitlines()]
    provenances = [json.loads(line) for line in built.files["Provenance.ndjson"].splitlines()]
    for event in events:
        AuditEvent.model_validate(event)
    for resource in provenances:
        Provenance.model_validate(resource)
    in_period = db.scalars(
        select(col(AuditEntry.seq)).where(
            col(AuditEntry.ts) >= clinic.period.start, col(AuditEntry.ts) < clinic.period.end
        )
    ).all()
    assert [e["id"] for e in events] == [f"audit-{seq}" for seq in in_period]
    assert len(provenances) == 7
    document = json.loads(built.files[fhir.BUNDLE_FILE])
    checked = Bundle.model_validate(document)
    assert checked.type == "collection"
    assert [e["resource"] for e in document["entry"]] == events + provenances
    sth = audit.latest_sth(db)
    log_system = fhir.LOG_SYSTEM if sth is None else f"{fhir.LOG_SYSTEM}:{sth.log_id}"
    assert all(
        any(e["what"].get("identifier", {}).get("system") == log_system for e in ev["entity"])
        for ev in events
    )


def test_searchset_bundle_counts_and_marks_matches(clinic: Clinic, db: Session) -> None:
    resources = _events(db, clinic)[:3]
    document = fhir.bundle(resources, now=clinic.period.end, type_=fhir.BundleType.SEARCHSET)
    Bundle.model_validate(document)
    assert document["type"] == "searchset"
    assert document["total"] == 3
    assert all(e["search"] == {"mode": "match"} for e in document["entry"])
    urls = [e["fullUrl"] for e in document["entry"]]
    assert len(set(urls)) == 3
    assert all(u.startswith("urn:uuid:") for u in urls)
    assert fhir.full_url(resources[0]) == urls[0]  # stable across exports
