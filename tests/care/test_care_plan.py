"""The care plan: content, versions written only on change and audited, the note, the daily
snapshot, a lost race on the first version, the append-only table, and FHIR CarePlan."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from app.db import session_factory
from audit.models import AuditEntry
from loops.care import service, views
from loops.care.models import CarePlanVersion
from loops.models import MedicationRegimen
from tests.care.conftest import api
from tests.conftest import World

BP = {"kind": "blood_pressure", "target_systolic": 130, "target_diastolic": 80}


@pytest.fixture
def calls(client: TestClient, world: World) -> Callable[[str], Any]:
    """Callers by username."""
    return lambda user: api(client, world, user)


def _agreed_bp(calls: Callable[[str], Any], world: World, patient: str = "pa1") -> str:
    pid = world.patients[patient].id
    clinician = "clina" if patient.startswith("pa") else "clinb"
    goal = calls(clinician)("POST", f"/api/v1/patients/{pid}/goals", json=BP).json()["id"]
    assert calls(patient)("POST", f"/api/v1/me/goals/{goal}/agree").status_code == 200
    return str(goal)


def test_care_plan_when_read_has_medications_goals_envelope_team_in_plain_language(
    calls: Callable[[str], Any], world: World, regimens: dict[str, MedicationRegimen]
) -> None:
    _agreed_bp(calls, world)
    r = calls("pa1")("GET", "/api/v1/me/care-plan")
    assert r.status_code == 200, r.text
    plan = r.json()
    assert r.headers["etag"] == f'"{plan["content_hash"]}"'
    [med] = plan["medications"]
    assert (med["drug"], med["current_step"], med["current_dose"]) == ("lisinopril", 1, 10.0)
    assert med["ladder"] == [5.0, 10.0, 20.0, 40.0]
    assert med["text"] == (
        "Lisinopril 10 mg once daily (step 2 of 4 on the dose ladder: 5, 10, 20, 40 mg)"
    )
    assert [g["kind"] for g in plan["goals"]] == ["blood_pressure"]
    assert plan["envelope"]["version"] == 1
    text = " ".join(plan["envelope"]["text"])
    assert "The app may raise your lisinopril dose by one step at a time" in text
    assert "between 5 mg and 40 mg" in text
    assert "cuffless watches or bands never count" in text
    assert plan["care_team"] == [
        {"team": "Team A", "members": [{"user_id": world.users["clina"].id, "name": "Clina"}]}
    ]
    assert plan["note"] == ""
    # The care team reads the same version.
    same = calls("clina")("GET", f"/api/v1/patients/{world.patients['pa1'].id}/care-plan")
    assert same.json() == plan


def test_care_plan_when_nothing_changed_keeps_its_version(
    calls: Callable[[str], Any],
    world: World,
    regimens: dict[str, MedicationRegimen],
    count_audit: Callable[..., int],
    engine: Engine,
) -> None:
    pid = world.patients["pa1"].id
    first = calls("pa1")("GET", "/api/v1/me/care-plan").json()
    assert first["version"] == 1
    assert first["change_reason"] == "First version"
    for _ in range(3):
        again = calls("clina")("GET", f"/api/v1/patients/{pid}/care-plan").json()
        assert again["version"] == 1
    assert count_audit(action="care_plan.version", patient_id=pid) == 1
    assert count_audit(action="care_plan.read", patient_id=pid) == 4
    with session_factory(engine)() as s:
        reads = s.scalars(
            select(col(AuditEntry.details))
            .where(col(AuditEntry.action) == "care_plan.read")
            .order_by(col(AuditEntry.seq))
        ).all()
    # The read that wrote the first version says so (its entry was enriched, not written
    # early by the version's savepoint).
    assert [json.loads(d)["created"] for d in reads] == [True, False, False, False]
    assert json.loads(reads[0])["version"] == 1


def test_care_plan_when_dose_changes_writes_a_system_version(
    calls: Callable[[str], Any],
    world: World,
    regimens: dict[str, MedicationRegimen],
    count_audit: Callable[..., int],
) -> None:
    pid = world.patients["pa1"].id
    assert calls("pa1")("GET", "/api/v1/me/care-plan").json()["version"] == 1
    regimen = regimens["pa1"]
    regimen.current_step = 2
    world.session.add(regimen)
    world.session.commit()
    plan = calls("pa1")("GET", "/api/v1/me/care-plan").json()
    assert plan["version"] == 2
    assert plan["medications"][0]["current_dose"] == 20.0
    assert plan["change_reason"] == "Changed: medications"
    versions = calls("clina")("GET", f"/api/v1/patients/{pid}/care-plan/versions").json()
    assert [(v["version"], v["created_by"]) for v in versions] == [(2, None), (1, None)]
    assert versions[1]["content"]["medications"][0]["current_dose"] == 10.0
    assert count_audit(action="care_plan.version", patient_id=pid) == 2


def test_care_plan_when_goal_agreed_versions_with_the_agreeing_user(
    calls: Callable[[str], Any],
    world: World,
    regimens: dict[str, MedicationRegimen],
    engine: Engine,
) -> None:
    pid = world.patients["pa1"].id
    calls("clina")("GET", f"/api/v1/patients/{pid}/care-plan")
    _agreed_bp(calls, world)
    versions = calls("clina")("GET", f"/api/v1/patients/{pid}/care-plan/versions").json()
    assert versions[0]["version"] == 2
    assert versions[0]["created_by"] == "Pa1"  # the patient agreed last
    assert versions[0]["change_reason"] == "Goal agreed: home blood pressure"
    with session_factory(engine)() as s:
        entry = s.scalars(
            select(AuditEntry)
            .where(col(AuditEntry.action) == "care_plan.version", col(AuditEntry.patient_id) == pid)
            .order_by(col(AuditEntry.seq).desc())
        ).first()
        assert entry is not None
        assert entry.actor_role == "patient"
        details = json.loads(entry.details)
        assert details["version"] == 2
        assert details["trigger"] == "goal_agreed"
        assert details["changed"] == ["goals"]
        # Ids and codes only: no goal text or note in the trail.
        assert "Keep" not in entry.details


def test_note_when_edited_with_reason_versions_once(
    calls: Callable[[str], Any], world: World, count_audit: Callable[..., int]
) -> None:
    pid = world.patients["pa1"].id
    clina = calls("clina")
    path = f"/api/v1/patients/{pid}/care-plan/note"
    body = {"note": "Recheck in 4 weeks.", "change_reason": "Visit", "expected_version": 0}
    r = clina("PUT", path, json=body)
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["note"]) == (1, "Recheck in 4 weeks.")
    r = clina("PUT", path, json={"note": "Recheck in 4 weeks.", "change_reason": "Again"})
    assert r.json()["version"] == 1  # the same note: nothing changed
    r = clina("PUT", path, json={"note": "Recheck in 2 weeks.", "change_reason": "Worse"})
    assert (r.json()["version"], r.json()["change_reason"]) == (2, "Worse")
    assert calls("pa1")("GET", "/api/v1/me/care-plan").json()["note"] == "Recheck in 2 weeks."
    versions = clina("GET", f"/api/v1/patients/{pid}/care-plan/versions").json()
    assert [v["created_by"] for v in versions] == ["Clina", "Clina"]
    assert count_audit(action="care_plan.note", patient_id=pid) == 3
    assert count_audit(action="care_plan.version", patient_id=pid) == 2


def test_note_when_reason_missing_is_422_and_stale_is_409(
    calls: Callable[[str], Any], world: World
) -> None:
    pid = world.patients["pa1"].id
    path = f"/api/v1/patients/{pid}/care-plan/note"
    r = calls("clina")("PUT", path, json={"note": "x", "change_reason": "  "})
    assert (r.status_code, r.json()["code"]) == (422, "reason_required")
    calls("clina")("PUT", path, json={"note": "a", "change_reason": "first"})
    r = calls("clina")("PUT", path, json={"note": "b", "change_reason": "b", "expected_version": 0})
    assert (r.status_code, r.json()["code"]) == (409, "stale_care_plan")
    r = calls("clina")("PUT", path, json={"note": "x" * 2001, "change_reason": "long"})
    assert r.status_code == 422


def test_note_when_patient_edits_is_403(calls: Callable[[str], Any], world: World) -> None:
    pid = world.patients["pa1"].id
    r = calls("pa1")(
        "PUT", f"/api/v1/patients/{pid}/care-plan/note", json={"note": "x", "change_reason": "y"}
    )
    assert r.status_code == 403


def test_versions_when_patient_reads_own_history_is_allowed(
    calls: Callable[[str], Any], world: World
) -> None:
    calls("pa1")("GET", "/api/v1/me/care-plan")
    pid = world.patients["pa1"].id
    r = calls("pa1")("GET", f"/api/v1/patients/{pid}/care-plan/versions")
    assert r.status_code == 200
    assert [v["version"] for v in r.json()] == [1]


def test_snapshot_all_when_run_versions_only_changed_plans(
    world: World, regimens: dict[str, MedicationRegimen], engine: Engine
) -> None:
    s = world.session
    now = clock.utcnow()
    first = service.snapshot_all(session=s, now=now)
    s.commit()
    # Every patient gets a first version, audited as the system's.
    assert sorted(v.patient_id for v in first) == sorted(p.id for p in world.patients.values())
    assert service.snapshot_all(session=s, now=now) == []
    regimens["pb1"].current_step = 0
    s.add(regimens["pb1"])
    s.commit()
    second = service.snapshot_all(session=s, now=now)
    s.commit()
    assert [(v.patient_id, v.version) for v in second] == [(world.patients["pb1"].id, 2)]
    with session_factory(engine)() as check:
        actors = check.scalars(
            select(col(AuditEntry.actor)).where(col(AuditEntry.action) == "care_plan.version")
        ).all()
        assert set(actors) == {service.SYSTEM_ACTOR}
        assert len(actors) == len(world.patients) + 1


def test_snapshot_all_when_chunked_covers_every_patient(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "SNAPSHOT_CHUNK", 1)
    written = service.snapshot_all(session=world.session, now=clock.utcnow())
    assert len(written) == len(world.patients)
    world.session.rollback()


def test_first_version_when_another_writer_won_the_race_answers_without_error(
    calls: Callable[[str], Any],
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    count_audit: Callable[..., int],
) -> None:
    # Version 1 exists, but this request's first look (as if it read before the other
    # writer committed) sees none: the insert of version 1 fails in its savepoint, the
    # newest version is read again and, with the same content, answered as it is.
    calls("pa1")("GET", "/api/v1/me/care-plan")
    real = service.latest_version
    seen = {"n": 0}

    def stale_once(session: Session, *, patient_id: str) -> CarePlanVersion | None:
        seen["n"] += 1
        return None if seen["n"] == 1 else real(session, patient_id=patient_id)

    monkeypatch.setattr(service, "latest_version", stale_once)
    r = calls("pa1")("GET", "/api/v1/me/care-plan")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert seen["n"] == 2
    # The failed savepoint did not take the read's audit entry with it.
    pid = world.patients["pa1"].id
    assert count_audit(action="care_plan.read", patient_id=pid) == 2
    assert count_audit(action="care_plan.version", patient_id=pid) == 1


@pytest.mark.postgres
def test_first_version_when_two_reads_race_on_postgres_both_answer(
    app: FastAPI, world: World, engine: Engine
) -> None:
    pid = world.patients["pa1"].id
    headers = [world.auth("pa1"), world.auth("clina")]
    paths = ["/api/v1/me/care-plan", f"/api/v1/patients/{pid}/care-plan"]
    results: list[int] = []
    barrier = threading.Barrier(8)

    def read(i: int) -> None:
        with TestClient(app, raise_server_exceptions=False) as c:
            barrier.wait()
            r = c.get(paths[i % 2], headers=headers[i % 2])
            results.append(r.status_code)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [200] * 8
    with session_factory(engine)() as s:
        versions = s.scalars(
            select(col(CarePlanVersion.version)).where(col(CarePlanVersion.patient_id) == pid)
        ).all()
        assert list(versions) == [1]


def test_care_plan_versions_when_updated_in_place_are_refused(
    calls: Callable[[str], Any], world: World, engine: Engine
) -> None:
    calls("pa1")("GET", "/api/v1/me/care-plan")
    with session_factory(engine)() as s:
        with pytest.raises(DBAPIError):
            s.execute(text("UPDATE care_plan_versions SET note = 'rewritten'"))
        s.rollback()


# ------------------------------------------------------------------------------ FHIR


def test_fhir_when_asked_returns_a_valid_care_plan(
    calls: Callable[[str], Any], world: World, regimens: dict[str, MedicationRegimen]
) -> None:
    goal = _agreed_bp(calls, world)
    pid = world.patients["pa1"].id
    calls("clina")(
        "PUT",
        f"/api/v1/patients/{pid}/care-plan/note",
        json={"note": "Home readings twice daily.", "change_reason": "Visit"},
    )
    by_query = calls("pa1")("GET", "/api/v1/me/care-plan?format=fhir")
    by_accept = calls("clina")(
        "GET", f"/api/v1/patients/{pid}/care-plan", headers={"Accept": "application/fhir+json"}
    )
    for r in (by_query, by_accept):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+json")
    doc = by_query.json()
    assert by_accept.json() == doc
    plan = CarePlan.model_validate(doc)
    assert (plan.status, plan.intent) == ("active", "plan")
    assert plan.subject.reference == f"Patient/{pid}"
    assert doc["meta"]["versionId"] == "2"
    contained = {c["resourceType"]: c for c in doc["contained"]}
    assert contained["Goal"]["id"] == f"goal-{goal}"
    assert [t["measure"]["coding"][0]["code"] for t in contained["Goal"]["target"]] == [
        "8480-6",
        "8462-4",
    ]
    assert [g["reference"] for g in doc["goal"]] == [f"#goal-{goal}"]
    detail = doc["activity"][0]["detail"]
    assert detail["kind"] == "MedicationRequest"
    assert detail["productCodeableConcept"]["coding"][0]["code"] == "29046"
    assert detail["quantity"]["value"] == 10.0
    notes = [n["text"] for n in doc["note"]]
    assert notes[0] == "Home readings twice daily."
    assert notes[1].startswith("Automatic titration (safety envelope v1):")
    assert contained["CareTeam"]["participant"][0]["member"]["display"] == "Clina"


def test_fhir_when_plan_is_empty_is_still_valid(calls: Callable[[str], Any]) -> None:
    doc = calls("pa2")("GET", "/api/v1/me/care-plan?format=fhir").json()
    CarePlan.model_validate(doc)
    assert "activity" not in doc
    assert doc["note"][0]["text"].startswith("Automatic titration: The app does not change")


def test_fhir_search_when_router_mounted_returns_a_searchset(
    app: FastAPI, world: World, regimens: dict[str, MedicationRegimen]
) -> None:
    app.include_router(views.fhir_router)
    pid = world.patients["pa1"].id
    with TestClient(app) as c:
        r = c.get(f"/fhir/R4/CarePlan?patient=Patient/{pid}", headers=world.auth("clina"))
        assert r.status_code == 200, r.text
        bundle = Bundle.model_validate(r.json())
        assert bundle.type == "searchset"
        CarePlan.model_validate(r.json()["entry"][0]["resource"])
        other = c.get(f"/fhir/R4/CarePlan?patient={pid}", headers=world.auth("clinb"))
        assert other.status_code == 404
        own = c.get("/fhir/R4/CarePlan", headers=world.auth("pa1"))
        assert own.status_code == 200
