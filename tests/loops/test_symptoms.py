"""Patient-reported symptoms: the API (validation, scope, audit) and the hand-off to the loop
that lets a dizziness report raise the low-BP alert without waiting for a reading."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app import simulate
from app.core import clock
from app.core.config import Settings
from app.db import session_factory
from app.patients.models import Patient
from app.simulate import run
from audit.models import AuditEntry
from device_ingest.models import EvaluationRequest, OutboxStatus
from device_ingest.simulator import Cohort
from loops import service
from loops.alerts import AlertType
from loops.dispatch import drain
from loops.flows import evaluate
from loops.models import (
    Alert,
    AlertStatus,
    Evaluation,
    MedicationRegimen,
    Proposal,
    ProposalStatus,
    SymptomReport,
)
from mlops.symptoms import day_reports
from tests.conftest import FrozenClock, World

URL = "/api/v1/me/symptoms"
NOTE = "Woke up dizzy after the new tablet; my neighbour Jane had to help me."


def _post(client: TestClient, world: World, who: str = "pa1", **body: Any) -> Any:
    return client.post(URL, headers=world.auth(who), json=body)


def _error_paths(response: Any) -> list[str]:
    return [e["path"] for e in response.json().get("errors", [])]


def _report(world: World, patient: str, when: datetime, *codes: str, note: str = "") -> None:
    world.session.add(
        SymptomReport(
            patient_id=world.patients[patient].id, reported_at=when, symptoms=list(codes), note=note
        )
    )
    world.session.commit()


# --- reporting ---------------------------------------------------------------------------


def test_report_when_patient_sends_symptoms_stores_them_verbatim(
    client: TestClient, world: World, frozen_clock: FrozenClock
) -> None:
    r = _post(client, world, symptoms=["dizziness", "headache", "dizziness"], note=f"  {NOTE}\n")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["symptoms"] == ["dizziness", "headache"]  # each code once, in order
    assert body["note"] == f"  {NOTE}\n"
    assert datetime.fromisoformat(body["reported_at"]) == frozen_clock.now
    stored = world.session.get(SymptomReport, body["id"])
    assert stored is not None
    assert (stored.patient_id, stored.note) == (world.patients["pa1"].id, f"  {NOTE}\n")


def test_report_when_only_a_note_is_accepted(client: TestClient, world: World) -> None:
    r = _post(client, world, note="Tired all week.")
    assert r.status_code == 201, r.text
    assert r.json()["symptoms"] == []


def test_report_when_backdated_within_14_days_keeps_the_time_in_utc(
    client: TestClient, world: World, frozen_clock: FrozenClock
) -> None:
    felt = frozen_clock.now - timedelta(days=13, hours=20)
    local = felt.astimezone(datetime.now().astimezone().tzinfo).isoformat()
    r = _post(client, world, symptoms=["fainting"], reported_at=local)
    assert r.status_code == 201, r.text
    assert datetime.fromisoformat(r.json()["reported_at"]) == felt


def test_report_when_symptom_unknown_is_422_naming_the_field(
    client: TestClient, world: World
) -> None:
    r = _post(client, world, symptoms=["dizziness", "vertigo"])
    assert r.status_code == 422
    assert _error_paths(r) == ["body/symptoms/1"]


def test_report_when_nothing_named_is_422(client: TestClient, world: World) -> None:
    for body in ({}, {"symptoms": [], "note": "   "}):
        r = _post(client, world, **body)
        assert r.status_code == 422
        assert r.json()["code"] == "symptom_required"
        assert _error_paths(r) == ["body/symptoms"]


def test_report_when_note_too_long_is_422(client: TestClient, world: World) -> None:
    assert _post(client, world, note="x" * 2000).status_code == 201
    r = _post(client, world, note="x" * 2001)
    assert r.status_code == 422
    assert _error_paths(r) == ["body/note"]


@pytest.mark.parametrize(
    ("shift", "status"),
    [
        (timedelta(minutes=4), 201),  # a phone's clock a little ahead
        (timedelta(minutes=6), 422),
        (timedelta(days=1), 422),
        (-timedelta(days=14, minutes=1), 422),
    ],
)
def test_report_when_time_outside_the_window_is_422(
    client: TestClient, world: World, frozen_clock: FrozenClock, shift: timedelta, status: int
) -> None:
    r = _post(client, world, symptoms=["cough"], reported_at=(frozen_clock.now + shift).isoformat())
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["code"] == "invalid_reported_at"
        assert _error_paths(r) == ["body/reported_at"]


def test_report_when_time_has_no_offset_is_422(client: TestClient, world: World) -> None:
    r = _post(client, world, symptoms=["cough"], reported_at="2026-12-01T08:00:00")
    assert r.status_code == 422
    assert _error_paths(r) == ["body/reported_at"]


def test_report_when_field_unknown_is_422_not_dropped(client: TestClient, world: World) -> None:
    r = _post(client, world, symptoms=["headache"], severity="severe")
    assert r.status_code == 422
    assert _error_paths(r) == ["body/severity"]


@pytest.mark.parametrize(
    ("shift", "problem"),
    [
        (timedelta(0), None),
        (timedelta(minutes=5), None),
        (timedelta(minutes=5, seconds=1), "must not be in the future"),
        (-timedelta(days=14), None),
        (-timedelta(days=14, seconds=1), "must be within the last 14 days"),
    ],
)
def test_symptom_time_problem_at_the_bounds(shift: timedelta, problem: str | None) -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert service.symptom_time_problem(now + shift, now=now) == problem


def test_report_symptoms_when_code_unknown_raises() -> None:
    with pytest.raises(ValueError, match="unknown symptom"):
        service.report_symptoms(
            None,  # type: ignore[arg-type]  # refused before any database work
            patient_id="p",
            symptoms=["vertigo"],
            note="",
            reported_at=clock.utcnow(),
            now=clock.utcnow(),
        )


# --- audit and logs ----------------------------------------------------------------------


def test_report_audit_details_hold_codes_and_count_never_the_note(
    client: TestClient, world: World, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ok = _post(client, world, symptoms=["dizziness", "fatigue"], note=NOTE)
    assert ok.status_code == 201
    too_long = _post(client, world, symptoms=["dizziness"], note=NOTE * 40)
    assert too_long.status_code == 422
    no_time = _post(client, world, note=NOTE, reported_at="2020-01-01T00:00:00Z")
    assert no_time.status_code == 422
    with session_factory(engine)() as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action == "symptom.report")).all()
        assert json.loads(entries[0].details) == {"symptoms": ["dizziness", "fatigue"], "count": 2}
        assert (entries[0].resource_type, entries[0].resource_id) == (
            "symptom_report",
            str(ok.json()["id"]),
        )
        assert [json.loads(e.details) for e in entries[1:]] == [
            {"code": "validation_error"},
            {"code": "invalid_reported_at"},
        ]
        everything = " ".join(e.details for e in s.scalars(select(AuditEntry)))
    assert "dizzy" not in everything
    assert "Jane" not in everything
    assert "Jane" not in caplog.text


# --- the hand-off to the loop ------------------------------------------------------------


def test_report_enqueues_an_evaluation_in_the_outbox(
    client: TestClient, world: World, engine: Engine
) -> None:
    assert _post(client, world, symptoms=["cough"]).status_code == 201
    with session_factory(engine)() as s:
        (request,) = s.scalars(select(EvaluationRequest)).all()
    assert (request.patient_id, request.reason, request.status) == (
        world.patients["pa1"].id,
        "symptom_report",
        OutboxStatus.PENDING,
    )


def test_report_when_dizzy_with_a_low_reading_raises_low_bp_alert_end_to_end(
    client: TestClient,
    world: World,
    engine: Engine,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    count_audit: Callable[..., int],
) -> None:
    pid, _ = patient
    readings(112, 70, days=7, per_day=2)
    readings(86, 58, days=1, per_day=1)  # two hours ago; the 3-day mean stays above 100
    db = world.session
    evaluate(db, patient_id=pid, trigger="daily", now=clock.utcnow(), predictor=None)
    db.commit()
    low = select(Alert).where(Alert.patient_id == pid, Alert.type == AlertType.LOW_BP)
    assert db.scalars(low).all() == []  # SBP 86 alone is not low BP without a symptom
    db.commit()  # end the read (keeping objects loaded): the API and the worker write next

    assert _post(client, world, symptoms=["dizziness"]).status_code == 201
    report = drain(
        session_factory(engine),
        now=clock.utcnow(),
        predictor=lambda s: None,
        debounce=timedelta(0),
    )

    assert report.evaluated == [pid]
    with session_factory(engine)() as s:
        (alert,) = s.scalars(low).all()
        assert alert.status == AlertStatus.OPEN
        latest = s.scalars(
            select(Evaluation)
            .where(col(Evaluation.patient_id) == pid)
            .order_by(col(Evaluation.id).desc())
        ).first()
        assert latest is not None
        assert latest.trigger == "symptom_report"
        assert {r.status for r in s.scalars(select(EvaluationRequest))} == {OutboxStatus.DONE}
    assert count_audit(action="loop.evaluate", patient_id=pid) == 2


def test_report_when_only_a_cough_with_a_low_reading_raises_no_alert(
    client: TestClient,
    world: World,
    engine: Engine,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
) -> None:
    readings(112, 70, days=7, per_day=2)
    readings(86, 58, days=1, per_day=1)
    assert _post(client, world, symptoms=["cough"], note="dizzy").status_code == 201
    drain(
        session_factory(engine), now=clock.utcnow(), predictor=lambda s: None, debounce=timedelta(0)
    )
    with session_factory(engine)() as s:
        assert s.scalars(select(Alert).where(Alert.type == AlertType.LOW_BP)).all() == []


def test_answer_to_recommendation_with_symptoms_also_enqueues_an_evaluation(
    client: TestClient, world: World, engine: Engine, patient: tuple[str, MedicationRegimen]
) -> None:
    pid, regimen = patient
    proposal = Proposal(
        patient_id=pid,
        regimen_id=regimen.id,
        model_version="test-1",
        feature_hash="0" * 64,
        features={},
        action="increase",
        from_step=0,
        to_step=1,
        from_dose=2.5,
        to_dose=5.0,
        probabilities={},
        confidence=0.9,
        explanation={},
        route="auto_deliver",
        status=ProposalStatus.DELIVERED,
    )
    world.session.add(proposal)
    world.session.commit()
    r = client.post(
        f"/api/v1/me/recommendations/{proposal.id}/response",
        headers=world.auth("pa1"),
        json={"response": "took_it", "symptoms": ["fainting"]},
    )
    assert r.status_code == 200, r.text
    with session_factory(engine)() as s:
        (stored,) = s.scalars(select(SymptomReport)).all()
        assert (stored.symptoms, stored.proposal_id) == (["fainting"], proposal.id)
        assert [q.reason for q in s.scalars(select(EvaluationRequest))] == ["symptom_report"]


# --- reading reports back ----------------------------------------------------------------


def test_my_symptoms_lists_only_own_reports_newest_first_within_the_days(
    client: TestClient, world: World, frozen_clock: FrozenClock
) -> None:
    now = frozen_clock.now
    _report(world, "pa1", now - timedelta(days=2), "headache")
    _report(world, "pa1", now - timedelta(hours=1), "dizziness", note="after lunch")
    _report(world, "pa1", now - timedelta(days=40), "cough")  # outside the default 30 days
    _report(world, "pb1", now - timedelta(hours=1), "swelling")
    r = client.get(URL, headers=world.auth("pa1"))
    assert r.status_code == 200, r.text
    assert [(x["symptoms"], x["note"]) for x in r.json()] == [
        (["dizziness"], "after lunch"),
        (["headache"], ""),
    ]
    day = (now - timedelta(days=2)).date().isoformat()
    r = client.get(URL, headers=world.auth("pa1"), params={"from": day, "to": day})
    assert [x["symptoms"] for x in r.json()] == [["headache"]]


def test_my_symptoms_when_range_reversed_is_422(client: TestClient, world: World) -> None:
    r = client.get(
        URL, headers=world.auth("pa1"), params={"from": "2026-12-05", "to": "2026-12-01"}
    )
    assert r.status_code == 422


def test_patient_symptoms_when_care_team_reads_them_is_audited(
    client: TestClient, world: World, count_audit: Callable[..., int]
) -> None:
    _report(world, "pa1", clock.utcnow() - timedelta(hours=3), "dizziness", note=NOTE)
    pa1 = world.patients["pa1"].id
    r = client.get(f"/api/v1/patients/{pa1}/symptoms", headers=world.auth("clina"))
    assert r.status_code == 200, r.text
    assert [(x["symptoms"], x["note"]) for x in r.json()] == [(["dizziness"], NOTE)]
    assert count_audit(action="symptom.read", patient_id=pa1, outcome="success") == 1


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [
        ("clinb", "/api/v1/patients/{pa1}/symptoms", 404),  # another team's patient
        ("pa1", "/api/v1/patients/{pb1}/symptoms", 404),  # another patient
        ("pa1", "/api/v1/patients/{pa1}/symptoms", 200),  # their own record
        ("auditor", "/api/v1/patients/{pa1}/symptoms", 403),
        ("auditor", URL, 403),
        ("mleng", "/api/v1/patients/{pa1}/symptoms", 403),
        ("clina", URL, 404),  # not a patient: no own record to read
    ],
)
def test_symptom_reads_obey_scope(
    client: TestClient, world: World, who: str, path: str, status: int
) -> None:
    url = path.format(pa1=world.patients["pa1"].id, pb1=world.patients["pb1"].id)
    assert client.get(url, headers=world.auth(who)).status_code == status


@pytest.mark.parametrize(("who", "status"), [("auditor", 403), ("clina", 403), ("mleng", 403)])
def test_report_when_not_a_patient_is_refused(
    client: TestClient, world: World, db: Session, who: str, status: int
) -> None:
    assert _post(client, world, who, symptoms=["cough"]).status_code == status
    assert db.scalars(select(SymptomReport)).all() == []


def test_report_without_token_is_401(client: TestClient) -> None:
    assert client.post(URL, json={"symptoms": ["cough"]}).status_code == 401


# --- the simulator -----------------------------------------------------------------------


def test_simulation_stores_the_generated_symptoms_once_and_audits_them(
    engine: Engine,
    settings: Settings,
    db: Session,
    count_audit: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    days, seed = 21, 3
    first = run(engine, settings, n_patients=6, days=days, seed=seed, evaluate=False)
    # The same cohort in memory (no titration without the loop): the reports it generates.
    cohort = Cohort(6, seed, start=datetime.now(UTC).date() - timedelta(days=days))
    expected = sorted(
        (r.pseudonym, r.time, r.symptoms)
        for day in range(days)
        for r in day_reports(cohort.simulate_day(day), cohort.patients, seed=seed).values()
    )
    rows = db.execute(
        select(Patient.pseudonym, SymptomReport.reported_at, SymptomReport.symptoms).join(
            Patient, col(Patient.id) == col(SymptomReport.patient_id)
        )
    ).all()
    db.rollback()  # end the read: the counts below and the rerun use sessions of their own
    assert expected
    assert sorted((p, t, tuple(s)) for p, t, s in rows) == expected
    assert first.symptom_reports == len(expected)
    assert count_audit(action="symptom.report", actor="system:simulator") == len(expected)
    again = run(engine, settings, n_patients=6, days=days, seed=seed, evaluate=False)
    assert again.symptom_reports == 0
    assert db.query(SymptomReport).count() == len(expected)
    db.rollback()
    # A day later the days are re-dated: the ingest refuses all but the new last day (409),
    # and only that day's symptom reports are added, no re-dated copies of the others.
    monkeypatch.setattr(simulate, "datetime", _Tomorrow)
    later = run(engine, settings, n_patients=6, days=days, seed=seed, evaluate=False)
    assert later.status_counts[409] > 0
    shifted = Cohort(6, seed, start=datetime.now(UTC).date() - timedelta(days=days - 1))
    for day in range(days - 1):
        shifted.simulate_day(day)
    last = day_reports(shifted.simulate_day(days - 1), shifted.patients, seed=seed)
    assert later.symptom_reports == len(last)
    assert db.query(SymptomReport).count() == len(expected) + len(last)
    db.rollback()


class _Tomorrow(datetime):
    """`datetime` whose now() is a day ahead."""

    @classmethod
    def now(cls, tz: Any = None) -> _Tomorrow:  # type: ignore[override]
        real = datetime.now(tz) + timedelta(days=1)
        return cls.fromtimestamp(real.timestamp(), tz)
