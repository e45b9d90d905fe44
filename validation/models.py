"""Scheduled job runs: one row per job and period, claimed under a lease."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db import UTCDateTime


class JobStatus(StrEnum):
    """Where one run of a scheduled job stands."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# A failed run, or a running one whose lease lapsed (its process died), may be taken over.
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.RUNNING}),
    JobStatus.FAILED: frozenset({JobStatus.RUNNING}),
    JobStatus.SUCCEEDED: frozenset(),
}


class JobRun(SQLModel, table=True):
    """One run of a scheduled job for one period (e.g. the daily evaluation of 2026-11-23).

    The unique (job, period) pair is the lease: whichever replica inserts it runs the job;
    the others see it and skip. A holder that dies leaves `lease_until` to lapse.
    """

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job", "period", name="uq_job_runs_job_period"),)

    id: int | None = Field(default=None, primary_key=True)
    job: str = Field(max_length=64)
    period: str = Field(max_length=32)
    status: str = Field(max_length=16)
    holder: str = Field(max_length=100)
    attempts: int = 1
    started_at: datetime = Field(sa_type=UTCDateTime)
    lease_until: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
