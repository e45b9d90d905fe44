"""The patient-AI loop's background work. The in-process worker drains the ingest hand-off,
re-checks overdue re-measurements and pulls a patient's next visit forward when a crisis or
low-BP alert is open; the loop's scheduled jobs (alert escalation, the daily visit recompute)
are bodies here that `validation/jobs.py` schedules under job leases."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from app.core import clock
from audit import service as audit
from loops import service
from loops.alerts import CRISIS_LOOKBACK, AlertType
from loops.dispatch import drain
from loops.flows import evaluate
from loops.models import Alert, AlertStatus, PatientNotice
from loops.visits import service as visits
from mlops import serving

log = logging.getLogger("clinaiops.loop")


def recheck_remeasures(factory: sessionmaker[Session], *, now: datetime) -> list[str]:
    """Evaluate patients whose crisis re-measurement is overdue, so a lone crisis reading
    alerts even when no further reading ever arrives."""
    with factory() as session:
        due = sorted(
            set(
                session.scalars(
                    select(col(PatientNotice.patient_id)).where(
                        col(PatientNotice.kind) == "remeasure_now",
                        col(PatientNotice.due_at) <= now,
                        col(PatientNotice.due_at) > now - CRISIS_LOOKBACK,
                    )
                )
            )
        )
        session.rollback()
    checked = []
    for patient_id in due:
        with factory() as session:
            open_crisis = session.scalars(
                select(col(Alert.id)).where(
                    col(Alert.patient_id) == patient_id,
                    col(Alert.type) == AlertType.CRISIS,
                    col(Alert.status) != AlertStatus.RESOLVED,
                )
            ).first()
            if open_crisis is None:
                evaluate(
                    session,
                    patient_id=patient_id,
                    trigger="remeasure_overdue",
                    now=now,
                    predictor=serving.production(session),
                )
                session.commit()
                checked.append(patient_id)
    return checked


VISIT_CHUNK = 200  # patients per transaction of the daily visit recompute


def recompute_visits(
    factory: sessionmaker[Session], *, now: datetime, chunk: int = VISIT_CHUNK
) -> dict[str, int]:
    """Recompute every patient's due visit, a chunk of patients per transaction, each chunk
    audited as one system act with its counts."""
    with factory() as session:
        patient_ids = visits.all_patient_ids(session)
        session.rollback()
    totals = {"patients": 0, "created": 0, "updated": 0, "unchanged": 0}
    for start in range(0, len(patient_ids), chunk):
        with factory() as session:
            done = visits.counts(
                visits.recompute_many(
                    session, patient_ids=patient_ids[start : start + chunk], now=now
                )
            )
            audit.record(
                session,
                actor="system:scheduler",
                actor_role="system",
                action="visit.recompute",
                resource_type="visit",
                details={"trigger": "daily", **done},
            )
            session.commit()
        for key, n in done.items():
            totals[key] += n
    return totals


def escalate_overdue(session: Session, *, now: datetime) -> list[Alert]:
    """Escalate every open alert left unacknowledged past its severity's limit, each audited
    as the loop's act; the caller commits."""
    escalated = service.escalate_due(session, now=now)
    for alert in escalated:
        audit.record(
            session,
            actor="system:loop",
            actor_role="system",
            action="alert.escalate",
            resource_type="alert",
            resource_id=alert.id,
            patient_id=alert.patient_id,
            details={
                "type": alert.type,
                "severity": alert.severity,
                "level": alert.escalation_level,
            },
        )
    return escalated


def pull_forward_urgent(factory: sessionmaker[Session], *, now: datetime) -> list[str]:
    """Recompute the visit of each patient with an open crisis or low-BP alert whose review
    is not yet due within 48 hours of the alert (whoever raised it: an evaluation, the daily
    run, a re-measure check), so the visit follows the alert within one worker pass."""
    with factory() as session:
        patient_ids = visits.urgent_not_scheduled(session, now=now)
        for patient_id in patient_ids:
            done = visits.recompute(session, patient_id=patient_id, now=now)
            audit.record(
                session,
                actor="system:loop",
                actor_role="system",
                action="visit.recompute",
                resource_type="visit",
                resource_id=done.visit.id,
                patient_id=patient_id,
                details={
                    "trigger": "urgent_alert",
                    "kind": done.visit.kind,
                    "due_by": clock.iso(done.visit.due_by),
                    "reasons": list(done.visit.reasons),
                },
            )
        session.commit()
    return patient_ids


class LoopWorker:
    """A daemon thread that evaluates patients with new readings every `interval` seconds,
    re-checks overdue re-measurements and pulls urgent visits forward.

    Several server processes may each run one: on PostgreSQL the outbox rows are claimed
    with SKIP LOCKED, so each hand-off is evaluated once. Daily and periodic work (the daily
    evaluation, visit cadence, alert escalation, ...) is the scheduler's (validation/jobs.py).
    """

    def __init__(
        self, factory: sessionmaker[Session], *, interval: float, debounce: timedelta
    ) -> None:
        self.factory = factory
        self.interval = interval
        self.debounce = debounce
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clinaiops-loop", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish its pass and wait for it."""
        self._stop.set()
        self._thread.join(timeout)

    def tick(self) -> None:
        """One pass: evaluate due patients, re-check overdue re-measure requests, pull the
        visits of patients with urgent alerts forward."""
        now = clock.utcnow()
        report = drain(self.factory, now=now, predictor=serving.production, debounce=self.debounce)
        recheck_remeasures(self.factory, now=now)
        pulled = pull_forward_urgent(self.factory, now=now)
        if report.evaluated or report.failed or pulled:
            log.info(
                "loop pass: %d evaluated, %d failed, %d visits pulled forward",
                len(report.evaluated),
                len(report.failed),
                len(pulled),
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception as exc:  # keep serving; the next pass retries
                log.error("loop pass failed: %s", type(exc).__name__)
