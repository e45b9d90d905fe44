"""The in-process loop worker: drains the ingest hand-off, escalates overdue alerts, pulls a
patient's next visit forward when a crisis or low-BP alert is open, and runs the daily jobs
(evaluation, visit cadence) under job leases."""

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
from loops.care import service as care
from loops.dispatch import DrainReport, drain, evaluate_all
from loops.flows import evaluate
from loops.models import Alert, AlertStatus, PatientNotice
from loops.visits import service as visits
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


VISIT_JOB = "visit_cadence"
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


def run_visit_cadence_if_due(
    factory: sessionmaker[Session],
    *,
    now: datetime,
    hour: int,
    lease: timedelta,
    holder: str,
) -> dict[str, int] | None:
    """The daily visit recompute and care plan snapshot, once per UTC day from `hour` on, by
    whichever replica claims the day's job lease; None when it is not due or another replica
    has it."""
    if now.hour < hour:
        return None
    with factory() as session:
        run = jobs.claim(
            session,
            job=VISIT_JOB,
            period=now.date().isoformat(),
            holder=holder,
            now=now,
            lease=lease,
        )
    if run is None:
        return None
    status = JobStatus.FAILED
    details: dict[str, Any] = {}
    totals = None
    try:
        totals = recompute_visits(factory, now=now)
        # The care plan shows the envelope, doses and goals in force: version the plans
        # that changed since yesterday even if nobody opened them.
        with factory() as session:
            totals["care_plan_versions"] = len(care.snapshot_all(session=session, now=now))
            session.commit()
        status, details = JobStatus.SUCCEEDED, dict(totals)
    except Exception as exc:
        details = {"error": type(exc).__name__}
        raise
    finally:
        with factory() as session:
            jobs.finish(
                session, run=session.merge(run), status=status, now=clock.utcnow(), details=details
            )
            session.commit()
    return totals


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
    and everyone once a day from `daily_hour` (UTC); it recomputes every patient's next visit
    once a day from `visit_hour` (UTC; None: off).

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
        visit_hour: int | None = None,
    ) -> None:
        self.factory = factory
        self.interval = interval
        self.debounce = debounce
        self.daily_hour = daily_hour
        self.daily_lease = daily_lease
        self.holder = jobs.holder_name()
        self.visit_hour = visit_hour
        self._next_daily_check: datetime | None = None
        self._next_visit_check: datetime | None = None
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
        pulled = pull_forward_urgent(self.factory, now=now)
        if report.evaluated or report.failed or escalated or pulled:
            log.info(
                "loop pass: %d evaluated, %d failed, %d escalated, %d visits pulled forward",
                len(report.evaluated),
                len(report.failed),
                len(escalated),
                len(pulled),
            )
        self.daily(now)
        self.visit_cadence(now)

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

    def visit_cadence(self, now: datetime) -> None:
        """Run the daily visit recompute if it is due and no other replica has it."""
        if self.visit_hour is None:
            return
        if self._next_visit_check is not None and now < self._next_visit_check:
            return
        self._next_visit_check = now + DAILY_RECHECK
        totals = run_visit_cadence_if_due(
            self.factory, now=now, hour=self.visit_hour, lease=self.daily_lease, holder=self.holder
        )
        if totals is not None:
            log.info(
                "visit cadence: %d patients, %d changed", totals["patients"], totals["updated"]
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception as exc:  # keep serving; the next pass retries
                log.error("loop pass failed: %s", type(exc).__name__)
