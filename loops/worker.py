"""The in-process loop worker: drains the ingest hand-off and escalates overdue alerts."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from app.core import clock
from audit import service as audit
from loops import service
from loops.alerts import CRISIS_LOOKBACK, AlertType
from loops.dispatch import DrainReport, drain, evaluate_all
from loops.flows import evaluate
from loops.models import Alert, AlertStatus, PatientNotice
from mlops import serving
from validation import service as jobs
from validation.models import JobStatus

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


DAILY_JOB = "daily_evaluation"
DAILY_CHUNK = 25  # patients per transaction in the server's daily run (about 60 ms on SQLite)
# How often a worker that found the day's run taken looks again (for a lapsed lease).
DAILY_RECHECK = timedelta(minutes=5)


def run_daily_if_due(
    factory: sessionmaker[Session],
    *,
    now: datetime,
    hour: int,
    lease: timedelta,
    holder: str,
) -> DrainReport | None:
    """The daily evaluation of every patient, once per UTC day from `hour` on, by whichever
    replica claims the day's job lease; None when it is not due or another replica has it."""
    if now.hour < hour:
        return None
    with factory() as session:
        run = jobs.claim(
            session,
            job=DAILY_JOB,
            period=now.date().isoformat(),
            holder=holder,
            now=now,
            lease=lease,
        )
    if run is None:
        return None
    status = JobStatus.FAILED
    details: dict[str, Any] = {}
    report = None
    try:
        # Small chunks: on SQLite each chunk's transaction holds the single writer slot, and
        # devices keep sending while the daily run goes on.
        report = evaluate_all(factory, now=now, predictor=serving.production, chunk=DAILY_CHUNK)
        status = JobStatus.FAILED if report.failed and not report.evaluated else JobStatus.SUCCEEDED
        details = {"evaluated": len(report.evaluated), "failed": len(report.failed)}
    except Exception as exc:
        details = {"error": type(exc).__name__}
        raise
    finally:
        with factory() as session:
            jobs.finish(
                session, run=session.merge(run), status=status, now=clock.utcnow(), details=details
            )
            session.commit()
    return report


class LoopWorker:
    """A daemon thread that evaluates patients with new readings every `interval` seconds,
    and everyone once a day from `daily_hour` (UTC).

    Several server processes may each run one: on PostgreSQL the outbox rows are claimed
    with SKIP LOCKED, so each hand-off is evaluated once; the daily run is claimed through a
    job lease in the database, so one replica runs it.
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        interval: float,
        debounce: timedelta,
        daily_hour: int | None = None,
        daily_lease: timedelta = timedelta(hours=2),
    ) -> None:
        self.factory = factory
        self.interval = interval
        self.debounce = debounce
        self.daily_hour = daily_hour
        self.daily_lease = daily_lease
        self.holder = jobs.holder_name()
        self._next_daily_check: datetime | None = None
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
        """One pass: evaluate due patients, re-check overdue re-measure requests, escalate
        overdue alerts (audited)."""
        now = clock.utcnow()
        report = drain(self.factory, now=now, predictor=serving.production, debounce=self.debounce)
        recheck_remeasures(self.factory, now=now)
        with self.factory() as session:
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
            session.commit()
        if report.evaluated or report.failed or escalated:
            log.info(
                "loop pass: %d evaluated, %d failed, %d escalated",
                len(report.evaluated),
                len(report.failed),
                len(escalated),
            )
        self.daily(now)

    def daily(self, now: datetime) -> None:
        """Run the daily evaluation if it is due and no other replica has it."""
        if self.daily_hour is None:
            return
        if self._next_daily_check is not None and now < self._next_daily_check:
            return
        self._next_daily_check = now + DAILY_RECHECK
        report = run_daily_if_due(
            self.factory, now=now, hour=self.daily_hour, lease=self.daily_lease, holder=self.holder
        )
        if report is not None:
            log.info(
                "daily run: %d evaluated, %d failed", len(report.evaluated), len(report.failed)
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception as exc:  # keep serving; the next pass retries
                log.error("loop pass failed: %s", type(exc).__name__)
