"""The hand-off from ingestion: debounced per patient, once per burst, durable, retried."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.core import clock
from app.db import session_factory
from device_ingest.models import EvaluationRequest, OutboxStatus
from loops.dispatch import MAX_ATTEMPTS, drain, evaluate_all
from loops.models import Evaluation, MedicationRegimen, Proposal
from policies.envelope import TitrationAction
from tests.conftest import World
from tests.loops.conftest import StubPredictor


def _pending(db: Session, patient_id: str, n: int, at: object) -> None:
    for _ in range(n):
        db.add(
            EvaluationRequest(
                patient_id=patient_id, reason="new_readings", created_at=at, available_at=at
            )
        )
    db.commit()


def test_drain_when_burst_pending_evaluates_once_after_debounce(
    engine: Engine,
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
) -> None:
    pid, _ = patient
    readings(148, 88)
    now = clock.utcnow()
    _pending(db, pid, 3, now)
    factory = session_factory(engine)
    stub = StubPredictor(TitrationAction.INCREASE)
    early = drain(factory, now=now + timedelta(seconds=5), predictor=lambda s: stub)
    assert early.evaluated == []
    done = drain(factory, now=now + timedelta(seconds=31), predictor=lambda s: stub)
    assert done.evaluated == [pid]
    with factory() as s:
        assert {r.status for r in s.scalars(select(EvaluationRequest))} == {OutboxStatus.DONE}
        assert len(s.scalars(select(Evaluation)).all()) == 1
        assert len(s.scalars(select(Proposal)).all()) == 1


def test_drain_when_process_restarted_still_finds_pending_work(
    engine: Engine,
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
    db_url: str,
) -> None:
    from app.db import make_engine

    pid, _ = patient
    readings(148, 88)
    now = clock.utcnow() - timedelta(minutes=5)
    _pending(db, pid, 1, now)
    engine.dispose()  # as if the process that accepted the readings had died
    fresh = make_engine(db_url)
    report = drain(
        session_factory(fresh),
        now=clock.utcnow(),
        predictor=lambda s: StubPredictor(TitrationAction.HOLD),
    )
    fresh.dispose()
    assert report.evaluated == [pid]


def test_drain_when_evaluation_fails_backs_off_then_gives_up(
    engine: Engine,
    world: World,
    patient: tuple[str, MedicationRegimen],
    db: Session,
) -> None:
    pid, _ = patient
    now = clock.utcnow() - timedelta(minutes=5)
    _pending(db, pid, 1, now)
    factory = session_factory(engine)

    def broken(session: Session) -> StubPredictor:
        raise RuntimeError("model store down")

    t = clock.utcnow()
    for attempt in range(MAX_ATTEMPTS):
        report = drain(factory, now=t, predictor=broken)
        assert report.failed == [pid], attempt
        t += timedelta(minutes=2**attempt, seconds=1)
    with factory() as s:
        (request,) = s.scalars(select(EvaluationRequest)).all()
        assert (request.status, request.attempts) == (OutboxStatus.FAILED, MAX_ATTEMPTS)
        assert request.last_error == "RuntimeError"


def test_daily_run_when_patients_on_regimens_evaluates_each(
    engine: Engine,
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
) -> None:
    pid, _ = patient
    readings(126, 78)
    report = evaluate_all(
        session_factory(engine),
        now=clock.utcnow(),
        predictor=lambda s: StubPredictor(TitrationAction.HOLD),
    )
    assert (report.evaluated, report.failed) == ([pid], [])


def test_drain_when_chunked_evaluates_each_due_patient_once(
    engine: Engine,
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    db: Session,
    count_audit: Callable[..., int],
) -> None:
    pid, _ = patient
    other = world.patients["pb1"].id  # no regimen: only the alert rules run
    readings(148, 88)
    now = clock.utcnow() - timedelta(minutes=5)
    _pending(db, pid, 2, now)
    _pending(db, other, 1, now)
    factory = session_factory(engine)
    report = drain(
        factory,
        now=clock.utcnow(),
        predictor=lambda s: StubPredictor(TitrationAction.INCREASE),
        chunk=10,
    )
    assert (report.evaluated, report.failed) == ([pid, other], [])
    with factory() as s:
        requests = s.scalars(select(EvaluationRequest)).all()
        assert {(r.status, r.attempts) for r in requests} == {(OutboxStatus.DONE, 1)}
        assert sorted(e.patient_id for e in s.scalars(select(Evaluation))) == sorted([pid, other])
    assert count_audit(action="loop.evaluate") == 2


def test_drain_when_chunk_fails_retries_each_patient_alone(
    engine: Engine,
    world: World,
    patient: tuple[str, MedicationRegimen],
    db: Session,
) -> None:
    pid, _ = patient
    other = world.patients["pb1"].id
    now = clock.utcnow() - timedelta(minutes=5)
    _pending(db, pid, 1, now)
    _pending(db, other, 1, now)
    factory = session_factory(engine)

    def broken(session: Session) -> StubPredictor:
        raise RuntimeError("model store down")

    report = drain(factory, now=clock.utcnow(), predictor=broken, chunk=10)
    assert (report.evaluated, sorted(report.failed)) == ([], sorted([pid, other]))
    with factory() as s:
        requests = s.scalars(select(EvaluationRequest)).all()
        assert {(r.status, r.attempts, r.last_error) for r in requests} == {
            (OutboxStatus.PENDING, 1, "RuntimeError")
        }
        assert s.scalars(select(Evaluation)).all() == []
