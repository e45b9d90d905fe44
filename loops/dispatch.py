"""Drain the loop's hand-off (each patient with new readings or a symptom report, once per
burst) and the daily run (every patient on an active regimen, in chunks)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from device_ingest.models import EvaluationRequest, OutboxStatus
from loops.flows import Predictor, evaluate, evaluate_many
from loops.models import MedicationRegimen, RegimenStatus
from loops.service import SYMPTOM_EVALUATION

log = logging.getLogger("clinaiops.loop")
MAX_ATTEMPTS = 5
NEW_READINGS = "new_readings"
SYMPTOM_REPORT = SYMPTOM_EVALUATION
# Patients per transaction in batched runs: one commit and one batched evaluation per chunk.
# On SQLite a chunk's transaction holds the single writer slot while it runs (about 0.5 s for
# 200 patients on a slow 2-core machine), so ingest requests wait that long at most.
CHUNK = 200


@dataclass
class DrainReport:
    """What one pass did (patient ids only: no PHI in logs)."""

    evaluated: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def due_patients(session: Session, *, now: datetime, debounce: timedelta, limit: int) -> list[str]:
    """Patients whose oldest pending request has waited out the debounce window."""
    rows = session.execute(
        select(col(EvaluationRequest.patient_id), col(EvaluationRequest.created_at))
        .where(
            col(EvaluationRequest.status) == OutboxStatus.PENDING,
            col(EvaluationRequest.available_at) <= now,
        )
        .order_by(col(EvaluationRequest.id))
    ).all()
    oldest: dict[str, datetime] = {}
    for patient_id, created in rows:
        oldest.setdefault(patient_id, created)
    return [p for p, t in oldest.items() if now - t >= debounce][:limit]


def _claim(session: Session, patient_ids: list[str], now: datetime) -> list[EvaluationRequest]:
    stmt = select(EvaluationRequest).where(
        col(EvaluationRequest.patient_id).in_(patient_ids),
        col(EvaluationRequest.status) == OutboxStatus.PENDING,
        col(EvaluationRequest.available_at) <= now,
    )
    if session.get_bind().dialect.name == "postgresql":
        # Several replicas may drain at once: each request is taken by one of them.
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.scalars(stmt))


def _trigger(claimed: list[EvaluationRequest], patient_id: str) -> str:
    """What the evaluation answers: `symptom_report` when only symptom reports asked for
    it, else `new_readings`."""
    reasons = {r.reason for r in claimed if r.patient_id == patient_id}
    return SYMPTOM_REPORT if reasons == {SYMPTOM_REPORT} else NEW_READINGS


def _done(claimed: list[EvaluationRequest], now: datetime) -> None:
    for request in claimed:
        request.status, request.processed_at = OutboxStatus.DONE, now
        request.attempts += 1


def drain(
    factory: sessionmaker[Session],
    *,
    now: datetime,
    predictor: Callable[[Session], Predictor | None],
    debounce: timedelta = timedelta(seconds=30),
    limit: int = 100,
    as_of: datetime | None = None,
    chunk: int = 1,
) -> DrainReport:
    """Evaluate due patients, each with its audit entry, `chunk` patients per transaction.

    `as_of` evaluates at another time than the outbox is read at (simulated time). The
    in-process worker keeps `chunk` 1: a transaction per patient gives the SQLite writer
    slot back to ingestion between patients. A chunk that fails is rolled back and its
    patients are evaluated again one per transaction, so retries stay per patient.
    """
    report = DrainReport()
    with factory() as session:
        patients = due_patients(session, now=now, debounce=debounce, limit=limit)
        session.rollback()
    step = max(chunk, 1)
    for start in range(0, len(patients), step):
        ids = patients[start : start + step]
        if len(ids) > 1 and _drain_chunk(factory, ids, now, as_of or now, predictor, report):
            continue
        for patient_id in ids:
            _drain_one(factory, patient_id, now, as_of or now, predictor, report)
    return report


def _drain_chunk(
    factory: sessionmaker[Session],
    patient_ids: list[str],
    now: datetime,
    as_of: datetime,
    predictor: Callable[[Session], Predictor | None],
    report: DrainReport,
) -> bool:
    """Evaluate a chunk in one transaction; False (nothing kept) if anything failed."""
    with factory() as session:
        try:
            claimed = _claim(session, patient_ids, now)
            mine = {request.patient_id for request in claimed}
            evaluated = [p for p in patient_ids if p in mine]  # others: another replica's
            by_trigger: dict[str, list[str]] = {}
            for patient_id in evaluated:
                by_trigger.setdefault(_trigger(claimed, patient_id), []).append(patient_id)
            model = predictor(session)
            for trigger, ids in by_trigger.items():
                evaluate_many(session, patient_ids=ids, trigger=trigger, now=as_of, predictor=model)
            _done(claimed, now)
            session.commit()
        except Exception as exc:
            session.rollback()
            log.warning("evaluating a chunk failed, one by one now: %s", type(exc).__name__)
            return False
    report.evaluated += evaluated
    return True


def _drain_one(
    factory: sessionmaker[Session],
    patient_id: str,
    now: datetime,
    as_of: datetime,
    predictor: Callable[[Session], Predictor | None],
    report: DrainReport,
) -> None:
    with factory() as session:
        claimed = _claim(session, [patient_id], now)
        if not claimed:
            return  # another replica took them
        try:
            evaluate(
                session,
                patient_id=patient_id,
                trigger=_trigger(claimed, patient_id),
                now=as_of,
                predictor=predictor(session),
            )
            _done(claimed, now)
            session.commit()
            report.evaluated.append(patient_id)
        except Exception as exc:
            session.rollback()
            log.warning("evaluation failed for a patient: %s", type(exc).__name__)
            _record_failure(factory, patient_id, now, type(exc).__name__)
            report.failed.append(patient_id)


def _record_failure(
    factory: sessionmaker[Session], patient_id: str, now: datetime, error: str
) -> None:
    with factory() as session:
        for request in _claim(session, [patient_id], now):
            request.attempts += 1
            request.last_error = error[:200]
            if request.attempts >= MAX_ATTEMPTS:
                request.status = OutboxStatus.FAILED
            else:  # back off: 1, 2, 4, 8 minutes
                request.available_at = now + timedelta(minutes=2 ** (request.attempts - 1))
        session.commit()


def evaluate_all(
    factory: sessionmaker[Session],
    *,
    now: datetime,
    predictor: Callable[[Session], Predictor | None],
    chunk: int = CHUNK,
) -> DrainReport:
    """The daily run: every patient on an active regimen, `chunk` patients per transaction
    (one batched evaluation, one commit, one audit entry per patient).

    A chunk that fails is rolled back and its patients are evaluated again one per
    transaction, so a failing patient costs only its own evaluation; there is no retry.
    """
    report = DrainReport()
    with factory() as session:
        patients = sorted(
            set(
                session.scalars(
                    select(col(MedicationRegimen.patient_id)).where(
                        col(MedicationRegimen.status) == RegimenStatus.ACTIVE
                    )
                )
            )
        )
        session.rollback()
    step = max(chunk, 1)
    for start in range(0, len(patients), step):
        ids = patients[start : start + step]
        if len(ids) > 1 and _daily_chunk(factory, ids, now, predictor):
            report.evaluated += ids
            continue
        for patient_id in ids:
            if _daily_chunk(factory, [patient_id], now, predictor):
                report.evaluated.append(patient_id)
            else:
                report.failed.append(patient_id)
    return report


def _daily_chunk(
    factory: sessionmaker[Session],
    patient_ids: list[str],
    now: datetime,
    predictor: Callable[[Session], Predictor | None],
) -> bool:
    """Evaluate patients in one transaction; False (nothing kept) if anything failed."""
    with factory() as session:
        try:
            evaluate_many(
                session,
                patient_ids=patient_ids,
                trigger="daily",
                now=now,
                predictor=predictor(session),
            )
            session.commit()
        except Exception as exc:
            session.rollback()
            what = "a chunk" if len(patient_ids) > 1 else "a patient"
            log.warning("daily evaluation failed for %s: %s", what, type(exc).__name__)
            return False
    return True
