"""Scheduled job runs (one row per job and period, claimed under a lease) and drift reports."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
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


class DriftReport(SQLModel, table=True):
    """One drift run: the window, what it found (summary), and Evidently's files.

    The summary holds aggregates only (test scores, row counts, segment names such as a device
    model or an age band): no patient rows and no identifiers. The Evidently HTML and JSON are
    files under the data directory (`html_path`, `json_path`, relative to it), named in the
    row with their SHA-256 so a changed file is detected when served."""

    __tablename__ = "drift_reports"
    __table_args__ = (Index("ix_drift_reports_created", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    created_by: str = Field(max_length=100)
    window_start: datetime = Field(sa_type=UTCDateTime)
    window_end: datetime = Field(sa_type=UTCDateTime)
    status: str = Field(max_length=32)
    headline: str = Field(max_length=1000)
    model_version: str | None = Field(default=None, max_length=64)
    reference: str = Field(max_length=100)  # "training:<data hash>" or "supplied:<sha256>"
    feature_set: str = Field(max_length=64)
    reference_rows: int = 0
    current_rows: int = 0
    drifted_features: int = 0
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    html_path: str | None = Field(default=None, max_length=300)
    html_sha256: str | None = Field(default=None, max_length=64)
    json_path: str | None = Field(default=None, max_length=300)
    json_sha256: str | None = Field(default=None, max_length=64)


class GateResult(SQLModel, table=True):
    """One validation gate's verdict on a model version, with its evidence; never updated."""

    __tablename__ = "gate_results"
    __table_args__ = (Index("ix_gate_results_model", "model_name", "version", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=64)
    version: int
    gate: str = Field(max_length=64)  # e.g. holdout_noninferiority, calibration, subgroups
    passed: bool
    champion_version: int | None = None
    measured: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    threshold: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    detail: str = Field(default="", max_length=2000)  # which check failed and by how much
    evidence_path: str | None = Field(default=None, max_length=300)
    evidence_sha256: str | None = Field(default=None, max_length=64)
    run_id: str = Field(max_length=36)  # the gates of one validation run share it
    created_by: str = Field(max_length=100)
    created_at: datetime = Field(sa_type=UTCDateTime)
