"""Job leases (exactly one replica runs each scheduled job per period) and drift reports:
run, stored with their Evidently files, listed and read back checked by hash."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core.config import Settings, get_settings
from audit import service as audit
from loops.service import check_transition
from mlops import registry, serving
from mlops.features import FEATURE_SET_VERSION
from validation import drift
from validation.drift import SegmentDrift, Thresholds
from validation.models import JOB_TRANSITIONS, DriftReport, JobRun, JobStatus

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]

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


def renew(session: Session, *, run: JobRun, holder: str, now: datetime, lease: timedelta) -> bool:
    """Extend a running run's lease while its holder still has it; False once it does not
    (finished, or taken over after a lapse). Commits at once: the lease must be visible."""
    renewed = session.execute(
        update(JobRun)
        .where(
            col(JobRun.id) == run.id,
            col(JobRun.holder) == holder,
            col(JobRun.attempts) == run.attempts,
            col(JobRun.status) == JobStatus.RUNNING,
        )
        .values(lease_until=now + lease)
    )
    session.commit()
    return getattr(renewed, "rowcount", 0) == 1


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


def latest_runs(
    session: Session, *, job: str, limit: int = 30, before_id: int | None = None
) -> list[JobRun]:
    """The most recent runs of a job, newest first (before the id `before_id`)."""
    stmt = select(JobRun).where(col(JobRun.job) == job)
    if before_id is not None:
        stmt = stmt.where(col(JobRun.id) < before_id)
    return list(session.scalars(stmt.order_by(col(JobRun.id).desc()).limit(limit)))


# ------------------------------------------------------------------------------ drift reports

DRIFT_JOB = "drift_report"
DRIFT_WINDOW = timedelta(days=7)
DRIFT_DIR = "drift_reports"  # under the data directory: reports, and the reference cache


def run_drift_job(
    *,
    session: Session,
    now: datetime,
    settings: Settings | None = None,
    window: timedelta = DRIFT_WINDOW,
    reference: pd.DataFrame | None = None,
    thresholds: Thresholds = Thresholds(),
) -> DriftReport:
    """The scheduled drift run for the window ending `now`: report stored and audited as the
    scheduler's act. Never commits (the job does, with its run record)."""
    report = create_drift_report(
        session,
        now=now,
        data_dir=(settings or get_settings()).data_dir,
        window=window,
        reference=reference,
        thresholds=thresholds,
        created_by="system:scheduler",
    )
    audit.record(
        session,
        actor="system:scheduler",
        actor_role="system",
        action="drift_report.create",
        resource_type="drift_report",
        resource_id=str(report.id),
        details=drift_audit_details(report),
    )
    return report


def drift_audit_details(report: DriftReport) -> dict[str, Any]:
    """What an audit entry says about a drift report: counts and codes, no free text."""
    return {
        "status": report.status,
        "reasons": list(report.summary.get("reasons", [])),
        "current_rows": report.current_rows,
        "drifted_features": report.drifted_features,
    }


def create_drift_report(
    session: Session,
    *,
    now: datetime,
    data_dir: Path,
    window: timedelta = DRIFT_WINDOW,
    reference: pd.DataFrame | None = None,
    thresholds: Thresholds = Thresholds(),
    created_by: str,
) -> DriftReport:
    """Compare the window [now - window, now) with the training reference (or `reference`),
    write Evidently's HTML and JSON under `data_dir`, and add the report row. The caller
    audits and commits."""
    # Imported here: pandas, Evidently and the loop's readers are for this job only.
    from validation import monitoring

    if window <= timedelta(0):
        raise ValueError("the window must be positive")
    start = now - window
    version = registry.production(session)
    served = serving.production(session)
    reference_id, reference_error = "", None
    if reference is not None:
        reference_id = "supplied:" + _frame_sha256(reference)
    elif version is None:
        reference_error = "no production model"
    else:
        try:
            reference = monitoring.reference_frame(
                version,
                cache_dir=data_dir / DRIFT_DIR / "reference",
                session=session,
                data_dir=data_dir,
            )
            reference_id = f"training:{version.data_hash}"
        except monitoring.ReferenceUnavailable as exc:
            reference_error = str(exc)
    current = monitoring.current_frame(session, start=start, end=now)
    frame = current.frame
    analysis = None
    if reference is not None:
        if served is not None:
            # Both scored with regimen histories drawn from the reference: the outputs
            # move with the patients' measured features, not the clinic's titration pace.
            frame = monitoring.with_predictions(frame, served, regimen_from=reference)
            reference = monitoring.with_predictions(reference, served, regimen_from=reference)
        analysis = monitoring.analyse(frame, reference, thresholds=thresholds)
    over_now = monitoring.override_counts(session, start=start, end=now)
    over_before = monitoring.override_counts(session, start=start - window, end=start)
    override = drift.override_signal(
        current_overridden=over_now[0],
        current_decided=over_now[1],
        previous_overridden=over_before[0],
        previous_decided=over_before[1],
        thresholds=thresholds,
    )
    features = analysis.drifted_features if analysis else []
    predictions = analysis.drifted_predictions if analysis else []
    attributions = analysis.attributions if analysis else []
    outcome = drift.verdict(
        reference_available=reference is not None,
        n_current=len(frame),
        drifted_features=[c.column for c in features],
        attributions=attributions,
        drifted_predictions=[c.column for c in predictions],
        override=override,
        thresholds=thresholds,
    )
    summary: dict[str, Any] = {
        "window": {"start": start.isoformat(), "end": now.isoformat(), "days": window.days},
        "reasons": [str(r) for r in outcome.reasons],
        "thresholds": asdict(thresholds),
        "reference": {
            "id": reference_id or None,
            "rows": 0 if reference is None else len(reference),
            "error": reference_error,
        },
        "current": {
            "rows": len(frame),
            "evaluated_patients": current.evaluated_patients,
            "recorded_predictions": current.recorded,
        },
        "features": [c.as_dict() for c in analysis.features] if analysis else [],
        # Regimen history (drift.PROCESS_FEATURES): reported, never alerting.
        "process": [c.as_dict() for c in analysis.process] if analysis else [],
        "skipped": dict(analysis.skipped) if analysis else {},
        "predictions": [c.as_dict() for c in analysis.predictions] if analysis else [],
        "segments": [_segment_summary(s) for s in analysis.segments] if analysis else [],
        "attributions": [a.as_dict() for a in attributions],
        "explained": list(analysis.explained) if analysis else [],
        # Drifted in a segment, but as much in its siblings: the whole window moved.
        "shared": list(analysis.shared) if analysis else [],
        "override": override.as_dict(),
    }
    text = drift.headline(
        outcome.status,
        drifted_features=features,
        attributions=attributions,
        override=override,
        drifted_predictions=predictions,
        n_current=len(frame),
        min_rows=thresholds.min_rows,
        reference_error=reference_error,
    )
    report = DriftReport(
        created_at=now,
        created_by=created_by,
        window_start=start,
        window_end=now,
        status=str(outcome.status),
        headline=text[:1000],
        model_version=registry.label(version) if version else None,
        reference=(reference_id or "none")[:100],
        feature_set=FEATURE_SET_VERSION,
        reference_rows=0 if reference is None else len(reference),
        current_rows=len(frame),
        drifted_features=len(features),
        summary=summary,
    )
    if analysis is not None:
        _write_files(report, data_dir, analysis.html, {"summary": summary, **analysis.evidently})
    session.add(report)
    session.flush()
    return report


def _segment_summary(segment: SegmentDrift) -> dict[str, Any]:
    return {
        "dimension": segment.dimension,
        "value": segment.value,
        "n_current": segment.n_current,
        "n_reference": segment.n_reference,
        "reference_scope": segment.reference_scope,
        "tested": len(segment.columns),
        "drifted": [c.as_dict() for c in segment.drifted_columns],
    }


def _frame_sha256(frame: pd.DataFrame) -> str:
    from pandas.util import hash_pandas_object  # type: ignore[import-untyped]

    hashed = hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.sha256("\n".join(map(str, frame.columns)).encode())
    digest.update(hashed.tobytes())
    return digest.hexdigest()


def _write_files(
    report: DriftReport, data_dir: Path, html: str | None, document: dict[str, Any]
) -> None:
    """Write the report's files (new names, never overwritten) and record them on the row."""
    folder = data_dir / DRIFT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{report.window_end:%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"
    payload = json.dumps(document, default=str, sort_keys=True).encode()
    report.json_path, report.json_sha256 = _write_new(folder / f"{stem}.json", payload, data_dir)
    if html is not None:
        report.html_path, report.html_sha256 = _write_new(
            folder / f"{stem}.html", html.encode(), data_dir
        )


def _write_new(path: Path, data: bytes, data_dir: Path) -> tuple[str, str]:
    with path.open("xb") as handle:  # "x": fail rather than replace another report's file
        handle.write(data)
    return path.relative_to(data_dir).as_posix(), hashlib.sha256(data).hexdigest()


class ReportFileError(Exception):
    """A report's file is missing or no longer matches its recorded hash."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def read_report_file(report: DriftReport, *, data_dir: Path, kind: str) -> bytes:
    """The report's stored `html` or `json` file, checked against its recorded SHA-256."""
    relative, sha = (
        (report.html_path, report.html_sha256)
        if kind == "html"
        else (report.json_path, report.json_sha256)
    )
    if not relative or not sha:
        raise ReportFileError("report_file_absent")
    path = (data_dir / relative).resolve()
    if not path.is_relative_to((data_dir / DRIFT_DIR).resolve()):
        raise ReportFileError("report_file_absent")  # a row never points outside its folder
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReportFileError("report_file_missing") from exc
    if hashlib.sha256(data).hexdigest() != sha:
        raise ReportFileError("report_file_changed")
    return data


def list_drift_reports(
    session: Session, *, limit: int = 20, before_id: int | None = None
) -> list[DriftReport]:
    """Drift reports, newest first, `limit` at a time (before the id `before_id`)."""
    stmt = select(DriftReport).order_by(col(DriftReport.id).desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(col(DriftReport.id) < before_id)
    return list(session.scalars(stmt))
