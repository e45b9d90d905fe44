"""Drain the ingest hand-off: evaluate each patient with new readings, once per burst."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from device_ingest.models import EvaluationRequest, OutboxStatus
from loops.flows import Predictor, evaluate
from loops.models import MedicationRegimen, RegimenStatus

log = logging.getLogger("clinaiops.loop")
MAX_ATTEMPTS = 5


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


def _claim(session: Session, patient_id: str, now: datetime) -> list[EvaluationRequest]:
    stmt = select(EvaluationRequest).where(
        col(EvaluationRequest.patient_id) == patient_id,
        col(EvaluationRequest.status) == OutboxStatus.PENDING,
        col(EvaluationRequest.available_at) <= now,
    )
    if session.get_bind().dialect.name == "postgresql":
        # Several replicas may drain at once: each request is taken by one of them.
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.scalars(stmt))


def drain(
    factory: sessionmaker[Session],
    *,
    now: datetime,
    predictor: Callable[[Session], Predictor | None],
    debounce: timedelta = timedelta(seconds=30),
    limit: int = 100,
    as_of: datetime | None = None,
) -> DrainReport:
    """Evaluate due patients, each in its own transaction with its audit entry.

    `as_of` evaluates at another time than the outbox is read at (simulated time).
    """
    report = DrainReport()
    with factory() as session:
        patients = due_patients(session, now=now, debounce=debounce, limit=limit)
        session.rollback()
    for patient_id in patients:
        with factory() as session:
            claimed = _claim(session, patient_id, now)
            if not claimed:
                continue  # another replica took them
            try:
                evaluate(
                    session,
                    patient_id=patient_id,
                    trigger="new_readings",
                    now=as_of or now,
                    predictor=predictor(session),
                )
                for request in claimed:
                    request.status, request.processed_at = OutboxStatus.DONE, now
                    request.attempts += 1
                session.commit()
                report.evaluated.append(patient_id)
            except Exception as exc:
                session.rollback()
                log.warning("evaluation failed for a patient: %s", type(exc).__name__)
                _record_failure(factory, patient_id, now, type(exc).__name__)
                report.failed.append(patient_id)
    return report


def _record_failure(
    factory: sessionmaker[Session], patient_id: str, now: datetime, error: str
) -> None:
    with factory() as session:
        for request in _claim(session, patient_id, now):
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
) -> DrainReport:
    """The daily run: every patient on an active regimen, each in its own transaction."""
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
    for patient_id in patients:
        with factory() as session:
            try:
                evaluate(
                    session,
                    patient_id=patient_id,
                    trigger="daily",
                    now=now,
                    predictor=predictor(session),
                )
                session.commit()
                report.evaluated.append(patient_id)
            except Exception as exc:
                session.rollback()
                log.warning("daily evaluation failed for a patient: %s", type(exc).__name__)
                report.failed.append(patient_id)
    return report
