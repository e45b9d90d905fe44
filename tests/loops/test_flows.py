"""One evaluation end to end on the database: features, routing, proposals, alerts, audit."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.core import clock
from audit.models import AuditEntry
from device_ingest.models import DeviceClass
from loops import service
from loops.flows import Outcome, evaluate
from loops.models import MedicationRegimen, PatientNotice, ProposalStatus
from policies.envelope import TitrationAction
from tests.conftest import World
from tests.loops.conftest import StubPredictor


def test_evaluate_when_data_insufficient_nudges_once_a_day(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    pid, _ = patient
    readings(150, 90, days=3)
    now = clock.utcnow()
    first = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=now,
        predictor=StubPredictor(TitrationAction.INCREASE),
    )
    second = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=now + timedelta(hours=1),
        predictor=StubPredictor(TitrationAction.INCREASE),
    )
    db.commit()
    assert first.evaluation.outcome == second.evaluation.outcome == Outcome.INSUFFICIENT_DATA
    assert first.proposal is None
    assert [n.kind for n in first.notices] == ["measure"]
    assert second.notices == []


def test_evaluate_when_cuffless_only_makes_no_proposal(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    pid, _ = patient
    readings(160, 95, days=7, per_day=4, device_class=DeviceClass.CUFFLESS_WEARABLE)
    result = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=clock.utcnow(),
        predictor=StubPredictor(TitrationAction.INCREASE),
    )
    assert result.evaluation.outcome == Outcome.INSUFFICIENT_DATA


def test_evaluate_when_inside_envelope_delivers_and_moves_the_dose(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    pid, regimen = patient
    readings(148, 88)
    result = evaluate(
        db,
        patient_id=pid,
        trigger="new_readings",
        now=clock.utcnow(),
        predictor=StubPredictor(TitrationAction.INCREASE),
    )
    db.commit()
    p = result.proposal
    assert p is not None
    assert (p.status, p.route, p.reasons) == (ProposalStatus.DELIVERED, "auto_deliver", [])
    assert (p.from_dose, p.to_dose, p.envelope_version) == (2.5, 5.0, 1)
    assert db.get(MedicationRegimen, regimen.id).current_step == 1  # type: ignore[union-attr]
    assert [n.kind for n in result.notices] == ["recommendation"]
    entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "loop.evaluate")).one()
    details = json.loads(entry.details)
    assert details["model_version"] == "stub:v1"
    assert details["feature_hash"] == p.feature_hash
    assert (details["route"], details["envelope_version"]) == ("auto_deliver", 1)


def test_evaluate_when_kill_switch_on_queues_for_review_and_supersedes(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    pid, regimen = patient
    readings(148, 88)
    service.set_kill_switch(db, enabled=True, reason="test", user_id=None)
    now = clock.utcnow()
    first = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=now,
        predictor=StubPredictor(TitrationAction.INCREASE),
    )
    second = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=now + timedelta(minutes=1),
        predictor=StubPredictor(TitrationAction.INCREASE),
    )
    db.commit()
    assert first.proposal is not None
    assert second.proposal is not None
    assert first.proposal.status == ProposalStatus.SUPERSEDED
    assert second.proposal.status == ProposalStatus.PENDING_REVIEW
    assert second.proposal.reasons == ["kill_switch"]
    assert db.get(MedicationRegimen, regimen.id).current_step == 0  # type: ignore[union-attr]


def test_evaluate_when_model_unsure_sends_to_clinician(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    pid, _ = patient
    readings(148, 88)
    result = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=clock.utcnow(),
        predictor=StubPredictor(TitrationAction.INCREASE, confidence=0.6),
    )
    assert result.proposal is not None
    assert result.proposal.reasons == ["confidence_below_envelope"]


def test_evaluate_when_hold_proposes_nothing(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    pid, _ = patient
    readings(125, 78)
    result = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=clock.utcnow(),
        predictor=StubPredictor(TitrationAction.HOLD),
    )
    assert (result.evaluation.outcome, result.proposal) == (Outcome.HOLD, None)


def test_evaluate_when_no_model_makes_no_proposal(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    pid, _ = patient
    readings(148, 88)
    result = evaluate(db, patient_id=pid, trigger="daily", now=clock.utcnow(), predictor=None)
    assert result.evaluation.outcome == Outcome.MODEL_UNAVAILABLE


def test_evaluate_when_crisis_reading_asks_to_remeasure_then_alerts(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    pid, _ = patient
    readings(140, 85)
    now = clock.utcnow()
    readings(192, 100, days=1, per_day=1, now=now + timedelta(hours=2, minutes=-1))
    asked = evaluate(
        db,
        patient_id=pid,
        trigger="new_readings",
        now=now,
        predictor=StubPredictor(TitrationAction.INCREASE),
    )
    assert [n.kind for n in asked.notices] == ["remeasure_now"]
    assert asked.alerts == []
    assert asked.proposal is not None  # while the re-measurement is pending, nothing is
    assert asked.proposal.status == ProposalStatus.PENDING_REVIEW  # delivered automatically
    assert asked.proposal.reasons == ["open_alert"]
    later = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=now + timedelta(minutes=10),
        predictor=StubPredictor(TitrationAction.INCREASE),
    )
    db.commit()
    assert [a.type for a in later.alerts] == ["hypertensive_crisis"]
    assert later.proposal is not None
    assert "open_alert" in later.proposal.reasons
    notices = db.scalars(select(PatientNotice).where(PatientNotice.patient_id == pid)).all()
    assert [n.kind for n in notices].count("remeasure_now") == 1


def test_worker_when_crisis_never_remeasured_raises_the_alert(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
    engine: Engine,
) -> None:
    from app.db import session_factory
    from loops.models import Alert
    from loops.worker import recheck_remeasures

    pid, _ = patient
    readings(140, 85)
    now = clock.utcnow()
    readings(192, 100, days=1, per_day=1, now=now + timedelta(hours=2, minutes=-1))
    asked = evaluate(
        db,
        patient_id=pid,
        trigger="new_readings",
        now=now,
        predictor=StubPredictor(TitrationAction.HOLD),
    )
    db.commit()
    assert [n.kind for n in asked.notices] == ["remeasure_now"]
    # No further reading arrives; once the deadline passes the worker's check alerts.
    factory = session_factory(engine)
    assert recheck_remeasures(factory, now=now + timedelta(minutes=3)) == []
    assert recheck_remeasures(factory, now=now + timedelta(minutes=6)) == [pid]
    with factory() as s:
        (alert,) = s.scalars(select(Alert).where(Alert.patient_id == pid)).all()
    assert alert.type == "hypertensive_crisis"


def test_acknowledged_alert_when_condition_clears_resolves_and_stops_blocking(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    from loops.alerts import AlertType, Finding, Severity

    pid, _ = patient
    readings(148, 88)
    now = clock.utcnow()
    finding = Finding(AlertType.ADHERENCE_DROP, Severity.MEDIUM, f"{pid}:adherence_drop", "x")
    (alert,) = service.raise_alerts(db, patient_id=pid, found=[finding], now=now)
    blocked = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=now,
        predictor=StubPredictor(TitrationAction.INCREASE),
    )
    assert blocked.proposal is not None
    assert "open_alert" in blocked.proposal.reasons
    service.acknowledge(db, alert=alert, user_id=world.users["clina"].id or 0, note="", now=now)
    later = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=now + timedelta(minutes=1),
        predictor=StubPredictor(TitrationAction.INCREASE),
    )
    db.commit()
    assert later.proposal is not None
    assert "open_alert" not in later.proposal.reasons
    assert alert.status == "resolved"  # the condition cleared after acknowledgement


def test_evaluate_when_model_now_holds_supersedes_queued_change(
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    pid, _ = patient
    # At noon: the next day's evaluation still sees 6 days of readings (enough data) at any
    # hour the test runs; before 02:00 UTC the newest readings would fall a day earlier.
    now = clock.utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    readings(148, 88, now=now)
    service.set_kill_switch(db, enabled=True, reason="test", user_id=None)
    queued = evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=now,
        predictor=StubPredictor(TitrationAction.INCREASE),
    ).proposal
    evaluate(
        db,
        patient_id=pid,
        trigger="daily",
        now=now + timedelta(days=1),
        predictor=StubPredictor(TitrationAction.HOLD),
    )
    db.commit()
    assert queued is not None
    assert queued.status == ProposalStatus.SUPERSEDED
