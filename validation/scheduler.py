"""APScheduler 3 fires the jobs of `validation/jobs.py`; database leases make each firing run
once across every process that schedules them (docs/scheduler.md).

APScheduler 3 cannot share a job store between schedulers, so each process keeps its own
in-memory store and fires every job on the same UTC grid; a firing then claims its job's
period in `job_runs` (validation.service.claim: unique job and period). One process wins
and runs the body; the others find the period held or done and skip it. The winner renews
its lease while the body runs; if it dies, the lease lapses and a later firing of the same
period (a daily job's re-checks) takes the run over.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor  # type: ignore[import-untyped]
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from app.core import clock
from app.core.config import Settings
from app.db import READONLY_OPTION
from validation import service
from validation.jobs import EPOCH, MANUAL, Job, JobContext, JobFailed
from validation.models import JobRun, JobStatus

log = logging.getLogger("clinaiops.scheduler")

# How a firing or a manual run ended.
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"  # done, held, busy or out of attempts: nothing ran
LOST = "lost"  # the body ran but the lease had passed to another holder: nothing committed
RECENT = 3  # runs of each kind (scheduled, manual) looked at for a live run of the job


@dataclass(frozen=True)
class RunResult:
    """What one firing or manual run did."""

    job: str
    period: str
    status: str
    reason: str = ""  # skipped: done, held, busy, exhausted; failed: the error code
    run_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    holder: str | None = None  # skipped as held or busy: who holds it


def lapsed(run: JobRun, now: datetime) -> bool:
    """A running run whose holder stopped renewing its lease (it died or hangs)."""
    return run.status == JobStatus.RUNNING and run.lease_until < now


def _recent(session: Session, job: str) -> list[JobRun]:
    """The job's latest scheduled and manual runs, by period (the unique index's order)."""
    scheduled = (
        select(JobRun)
        .where(col(JobRun.job) == job, col(JobRun.period) < MANUAL)
        .order_by(col(JobRun.period).desc())
        .limit(RECENT)
    )
    manual = (
        select(JobRun)
        .where(col(JobRun.job) == job, col(JobRun.period) >= MANUAL)
        .order_by(col(JobRun.period).desc())
        .limit(RECENT)
    )
    return [*session.scalars(scheduled), *session.scalars(manual)]


def _precheck(
    factory: sessionmaker[Session], job: Job, period: str, now: datetime
) -> tuple[RunResult | None, list[int]]:
    """Skip without writing when the period is done or held, or another run of the job is
    live (runs of one job never overlap); also name the job's lapsed runs of other periods."""
    with factory() as session:
        # Reads only: on SQLite a read-only transaction does not take the writer slot.
        session.connection(execution_options={READONLY_OPTION: True})
        own = session.scalars(
            select(JobRun).where(col(JobRun.job) == job.name, col(JobRun.period) == period)
        ).first()
        others = [r for r in _recent(session, job.name) if r.period != period]
        reason = ""
        if own is not None:
            if own.status == JobStatus.SUCCEEDED:
                reason = "done"
            elif own.status == JobStatus.RUNNING and not lapsed(own, now):
                reason = "held"
            elif own.status == JobStatus.FAILED and own.attempts >= service.MAX_ATTEMPTS:
                reason = "exhausted"
        skipped: RunResult | None = None
        if own is not None and reason:
            skipped = RunResult(job.name, period, SKIPPED, reason, own.id, holder=own.holder)
        else:
            live = [r for r in others if r.status == JobStatus.RUNNING and not lapsed(r, now)]
            skipped = (
                RunResult(job.name, period, SKIPPED, "busy", live[0].id, holder=live[0].holder)
                if live
                else None
            )
        stale = [r.id for r in others if r.id is not None and lapsed(r, now)]
        session.rollback()
    return skipped, ([] if skipped else stale)


def _reap(factory: sessionmaker[Session], run_ids: list[int], now: datetime) -> None:
    """Record lapsed runs of past periods as failed: their holder died, and no firing will
    come back to their period."""
    for run_id in run_ids:
        with factory() as session:
            run = session.scalars(
                select(JobRun).where(col(JobRun.id) == run_id).with_for_update()
            ).first()
            if run is None or not lapsed(run, now):
                session.rollback()
                continue
            service.finish(
                session,
                run=run,
                status=JobStatus.FAILED,
                now=now,
                details={"error": "lease_lapsed", "holder": run.holder},
            )
            session.commit()
            log.warning("job %s %s: lease lapsed (holder %s)", run.job, run.period, run.holder)


class _Heartbeat:
    """Renews a run's lease every third of its length until stopped."""

    def __init__(self, factory: sessionmaker[Session], run: JobRun, holder: str, job: Job) -> None:
        self.factory, self.run, self.holder, self.job = factory, run, holder, job
        self.lost = False
        self._stop = threading.Event()
        self._every = max(job.lease.total_seconds() / 3, 0.1)
        self._thread = threading.Thread(
            target=self._beat, name=f"clinaiops-lease-{job.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        """Renew no more (the run is ending)."""
        self._stop.set()

    def stop(self) -> None:
        """Renew no more, and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=self._every + 1)

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            try:
                with self.factory() as session:
                    kept = service.renew(
                        session,
                        run=self.run,
                        holder=self.holder,
                        now=clock.utcnow(),
                        lease=self.job.lease,
                    )
            except Exception as exc:  # the next beat tries again; the lease has slack
                log.warning("job %s: lease renewal failed: %s", self.job.name, type(exc).__name__)
                continue
            if not kept and not self._stop.is_set():
                self.lost = True
                log.warning("job %s %s: lease lost", self.job.name, self.run.period)
                return


def start(
    factory: sessionmaker[Session], job: Job, *, period: str, now: datetime, holder: str
) -> JobRun | RunResult:
    """Claim `job`'s run for `period`: the claimed run, or why it was skipped."""
    skipped, lapsed_ids = _precheck(factory, job, period, now)
    if skipped is not None:
        return skipped
    if lapsed_ids:
        _reap(factory, lapsed_ids, now)
    with factory() as session:
        run = service.claim(
            session, job=job.name, period=period, holder=holder, now=now, lease=job.lease
        )
    if run is None:  # another process claimed it between the check and the claim
        return RunResult(job.name, period, SKIPPED, "held")
    return run


def execute(
    factory: sessionmaker[Session],
    job: Job,
    run: JobRun,
    *,
    settings: Settings,
    now: datetime,
    holder: str,
) -> RunResult:
    """Run the body of a claimed run and record how it ended, under a renewed lease."""
    beat = _Heartbeat(factory, run, holder, job)
    beat.start()
    try:
        with factory() as session:
            try:
                details = dict(job.run(JobContext(factory, session, now, run.period, settings)))
            except JobFailed as exc:
                details = {**exc.details, "error": exc.code}
                log.error("job %s %s failed: %s", job.name, run.period, exc.code)
            except Exception as exc:
                details = {"error": type(exc).__name__}
                # The type only: messages may quote statement parameters (patient data).
                log.error("job %s %s failed: %s", job.name, run.period, type(exc).__name__)
                log.debug("job %s traceback", job.name, exc_info=True)
            else:
                # The body's uncommitted work commits with the run's record.
                return _record_end(session, beat, job, run, JobStatus.SUCCEEDED, details)
        # A failed body's work (and the audit entries it queued) goes with its session.
        with factory() as session:
            return _record_end(session, beat, job, run, JobStatus.FAILED, details)
    finally:
        beat.stop()


def _record_end(
    session: Session,
    beat: _Heartbeat,
    job: Job,
    run: JobRun,
    status: JobStatus,
    details: dict[str, Any],
) -> RunResult:
    mine = session.scalars(select(JobRun).where(col(JobRun.id) == run.id).with_for_update()).one()
    if (mine.holder, mine.attempts, mine.status) != (beat.holder, run.attempts, JobStatus.RUNNING):
        # Our lease lapsed and another holder took the run over: it decides.
        session.rollback()
        log.warning("job %s %s: lease lost to %s", job.name, run.period, mine.holder)
        return RunResult(job.name, run.period, LOST, "lease_lost", run.id, details)
    beat.halt()
    service.finish(session, run=mine, status=status, now=clock.utcnow(), details=details)
    session.commit()
    ended = SUCCEEDED if status == JobStatus.SUCCEEDED else FAILED
    return RunResult(job.name, run.period, ended, str(details.get("error", "")), run.id, details)


def run_job(
    factory: sessionmaker[Session],
    job: Job,
    *,
    settings: Settings,
    now: datetime,
    period: str,
    holder: str,
) -> RunResult:
    """Claim and run `job` for `period`, unless done, held or busy elsewhere."""
    claimed = start(factory, job, period=period, now=now, holder=holder)
    if isinstance(claimed, RunResult):
        return claimed
    return execute(factory, job, claimed, settings=settings, now=now, holder=holder)


def fire(
    factory: sessionmaker[Session], job: Job, settings: Settings, holder: str
) -> RunResult | None:
    """One scheduled firing (APScheduler calls this): the run of the current period."""
    if job.schedule is None:
        return None
    now = clock.utcnow()
    if not job.schedule.due(now):
        return None
    try:
        result = run_job(
            factory,
            job,
            settings=settings,
            now=now,
            period=job.schedule.period_of(now),
            holder=holder,
        )
    except Exception as exc:  # e.g. the database is down: the next firing tries again
        log.error("job %s: firing failed: %s", job.name, type(exc).__name__)
        return None
    if result.status != SKIPPED:
        log.info("job %s %s: %s %s", job.name, result.period, result.status, result.details)
    return result


class Scheduler:
    """The jobs on an APScheduler 3 BackgroundScheduler with its in-memory store."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        jobs: dict[str, Job],
        settings: Settings,
        *,
        holder: str | None = None,
    ) -> None:
        self.holder = holder or service.holder_name()
        self.jobs = {name: job for name, job in jobs.items() if job.schedule is not None}
        self._aps = BackgroundScheduler(
            timezone=UTC,
            # A thread per job, so a long daily run delays no other job.
            executors={"default": ThreadPoolExecutor(max_workers=max(len(self.jobs), 1))},
            # One firing at a time per job and process; firings missed while the process was
            # stopped or busy collapse into one, or are dropped once past half a step (the
            # lease then skips nothing: the next firing claims the current period).
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        for job in self.jobs.values():
            assert job.schedule is not None
            step = job.schedule.every.total_seconds()
            self._aps.add_job(
                fire,
                # Every process fires on the same grid from EPOCH, so firings coincide.
                IntervalTrigger(seconds=step, start_date=EPOCH, timezone=UTC),
                args=(factory, job, settings, self.holder),
                id=job.name,
                name=job.name,
                misfire_grace_time=max(int(step / 2), 1),
            )

    def start(self) -> None:
        """Start firing (in background threads)."""
        self._aps.start()
        names = ", ".join(f"{name} ({words})" for name, words in self.described().items())
        log.info("scheduler %s started: %s", self.holder, names or "no jobs")

    def stop(self, *, wait: bool = True) -> None:
        """Stop firing; with `wait`, let running jobs finish and record their end."""
        if self._aps.running:
            self._aps.shutdown(wait=wait)
            log.info("scheduler %s stopped", self.holder)

    def described(self) -> dict[str, str]:
        """Each scheduled job's schedule in words."""
        return {n: j.schedule.describe() for n, j in self.jobs.items() if j.schedule}

    def next_runs(self) -> dict[str, datetime | None]:
        """Each job's next firing (once started)."""
        return {job.id: getattr(job, "next_run_time", None) for job in self._aps.get_jobs()}


def run_forever(scheduler: Scheduler, *, stop: threading.Event | None = None) -> None:
    """Run `scheduler` until SIGTERM or SIGINT (or `stop`), then shut down cleanly: no new
    firings, running jobs finish and record their end."""
    stop = stop or threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("scheduler: %s received, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    scheduler.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        scheduler.stop(wait=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
