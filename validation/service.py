"""Job leases: exactly one replica runs each scheduled job per period."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from audit import service as audit
from loops.service import check_transition
from validation.models import JOB_TRANSITIONS, JobRun, JobStatus

# Failed runs are tried again on later passes, up to this many attempts in one period.
MAX_ATTEMPTS = 3


def holder_name() -> str:
    """This process, as named on the runs it holds."""
    return f"{socket.gethostname()}:{os.getpid()}"[:100]


def _audit(session: Session, run: JobRun, action: str, details: Mapping[str, Any]) -> None:
    audit.record(
        session,
        actor="system:scheduler",
        actor_role="system",
        action=action,
        resource_type="job_run",
        resource_id=f"{run.job}/{run.period}",
        details={"holder": run.holder, "attempt": run.attempts, **details},
    )


def claim(
    session: Session,
    *,
    job: str,
    period: str,
    holder: str,
    now: datetime,
    lease: timedelta,
) -> JobRun | None:
    """Take the run of `job` for `period`, or None if another holder has it or it is done.

    Commits the claim at once (the lease must be visible to other replicas before the work
    starts), with its audit entry.
    """
    run = JobRun(
        job=job,
        period=period,
        status=JobStatus.RUNNING,
        holder=holder,
        started_at=now,
        lease_until=now + lease,
    )
    session.add(run)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        return _take_over(session, job=job, period=period, holder=holder, now=now, lease=lease)
    _audit(session, run, "job.start", {})
    session.commit()
    return run


def _take_over(
    session: Session, *, job: str, period: str, holder: str, now: datetime, lease: timedelta
) -> JobRun | None:
    existing = session.scalars(
        select(JobRun).where(col(JobRun.job) == job, col(JobRun.period) == period)
    ).one()
    lapsed = existing.status == JobStatus.RUNNING and existing.lease_until < now
    retry = existing.status == JobStatus.FAILED and existing.attempts < MAX_ATTEMPTS
    if not (lapsed or retry):
        session.rollback()
        return None
    check_transition(JOB_TRANSITIONS, JobStatus(existing.status), JobStatus.RUNNING)
    # Compare-and-set on what we read: of two replicas taking over, one wins.
    taken = session.execute(
        update(JobRun)
        .where(
            col(JobRun.id) == existing.id,
            col(JobRun.status) == existing.status,
            col(JobRun.attempts) == existing.attempts,
        )
        .values(
            status=JobStatus.RUNNING,
            holder=holder,
            attempts=existing.attempts + 1,
            started_at=now,
            lease_until=now + lease,
            finished_at=None,
        )
    )
    if getattr(taken, "rowcount", 0) != 1:
        session.rollback()
        return None
    session.refresh(existing)
    _audit(session, existing, "job.start", {"took_over": "lapsed" if lapsed else "retry"})
    session.commit()
    return existing


def finish(
    session: Session,
    *,
    run: JobRun,
    status: JobStatus,
    now: datetime,
    details: Mapping[str, Any],
) -> JobRun:
    """Record how a run ended (succeeded or failed), audited; the caller commits."""
    check_transition(JOB_TRANSITIONS, JobStatus(run.status), status)
    run.status = status
    run.finished_at = now
    run.details = dict(details)
    session.add(run)
    _audit(session, run, "job.finish", {"status": str(status), **details})
    return run


def latest_runs(session: Session, *, job: str, limit: int = 30) -> list[JobRun]:
    """The most recent runs of a job, newest first."""
    return list(
        session.scalars(
            select(JobRun)
            .where(col(JobRun.job) == job)
            .order_by(col(JobRun.id).desc())
            .limit(limit)
        )
    )
