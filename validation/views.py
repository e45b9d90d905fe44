"""The monitoring API: drift reports, listed, read, run on demand, and Evidently's own HTML and
JSON served back checked by hash. ML engineers run and read everything; auditors read the
summaries (aggregates only: scores, counts, device models and subgroups, never patient rows).
Also the scheduled jobs and their runs (`jobs_router`). Every call is audited."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.core import clock
from app.core.config import Settings
from app.core.errors import ProblemError
from audit import service as audit
from validation import jobs, scheduler, service
from validation.models import DriftReport, JobRun

router = APIRouter(prefix="/api/v1/monitoring", tags=["monitoring"])
_ID = Annotated[int, Path(ge=1, le=2**31 - 1)]
PREFIX = "/api/v1/monitoring/drift-reports"

# Evidently's page is self-contained with inline scripts. It is served under its own policy:
# scripts may run, but in a sandbox with an opaque origin (no cookies, no storage, no requests
# anywhere), framed only by our own pages.
EVIDENTLY_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; connect-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox allow-scripts"
)


def evidently_headers(filename: str) -> dict[str, str]:
    """Headers for serving a stored Evidently page (also used by the portal)."""
    return {
        "content-security-policy": EVIDENTLY_CSP,
        "x-frame-options": "SAMEORIGIN",
        "content-disposition": f'inline; filename="{filename}"',
    }


class DriftBrief(BaseModel):
    """One report in a listing."""

    id: int
    created_at: str
    created_by: str
    window_start: str
    window_end: str
    status: str
    headline: str
    model_version: str | None
    reference: str
    feature_set: str
    reference_rows: int
    current_rows: int
    drifted_features: int
    has_html: bool


class DriftPage(BaseModel):
    """A page of reports, newest first; pass `next_before` as `before` for the next page."""

    items: list[DriftBrief]
    next_before: int | None


class DriftDetail(DriftBrief):
    """One report with its full summary and links to Evidently's files."""

    summary: dict[str, Any]
    links: dict[str, str]


class DriftRun(BaseModel):
    """Run a report now over the last `window_days` days."""

    window_days: int = Field(default=7, ge=1, le=90)


def brief(report: DriftReport) -> DriftBrief:
    """The listing form of a report."""
    return DriftBrief(
        id=report.id or 0,
        created_at=clock.iso(report.created_at),
        created_by=report.created_by,
        window_start=clock.iso(report.window_start),
        window_end=clock.iso(report.window_end),
        status=report.status,
        headline=report.headline,
        model_version=report.model_version,
        reference=report.reference,
        feature_set=report.feature_set,
        reference_rows=report.reference_rows,
        current_rows=report.current_rows,
        drifted_features=report.drifted_features,
        has_html=report.html_path is not None,
    )


def detail(report: DriftReport) -> DriftDetail:
    """The full form of a report."""
    links = {"self": f"{PREFIX}/{report.id}"}
    if report.html_path:
        links["html"] = f"{PREFIX}/{report.id}/html"
    if report.json_path:
        links["json"] = f"{PREFIX}/{report.id}/json"
    return DriftDetail(**brief(report).model_dump(), summary=report.summary, links=links)


def load(session: SessionDep, access: Access, report_id: int) -> DriftReport:
    """The report, named on the audit entry; 404 when there is none."""
    access.entry.resource_id = str(report_id)
    report = session.get(DriftReport, report_id)
    if report is None:
        raise ProblemError(404, "not_found", "no such drift report")
    return report


def file_problem(exc: service.ReportFileError) -> ProblemError:
    """The answer when a report's stored file cannot be served."""
    if exc.code == "report_file_changed":
        return ProblemError(409, exc.code, "the stored file no longer matches its recorded hash")
    return ProblemError(404, exc.code, "this report has no such file")


@router.get("/drift-reports", response_model=DriftPage)
def list_reports(
    session: SessionDep,
    access: Annotated[Access, require("drift_report", "list")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> DriftPage:
    """Drift reports, newest first."""
    reports = service.list_drift_reports(session, limit=limit, before_id=before)
    access.entry.details = {"count": len(reports)}
    session.commit()
    last = reports[-1].id if len(reports) == limit else None
    return DriftPage(items=[brief(r) for r in reports], next_before=last)


@router.post("/drift-reports", response_model=DriftDetail, status_code=201)
def run_report(
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("drift_report", "create")],
    body: DriftRun | None = None,
) -> DriftDetail:
    """Run drift monitoring now over the last `window_days` days, and keep the report."""
    days = (body or DriftRun()).window_days
    report = service.create_drift_report(
        session,
        now=clock.utcnow(),
        data_dir=settings.data_dir,
        window=timedelta(days=days),
        created_by=access.principal.actor,
    )
    access.entry.resource_id = str(report.id)
    access.entry.details = {"window_days": days, **service.drift_audit_details(report)}
    session.commit()
    return detail(report)


@router.get("/drift-reports/{report_id}", response_model=DriftDetail)
def read_report(
    report_id: _ID,
    session: SessionDep,
    access: Annotated[Access, require("drift_report", "read")],
) -> DriftDetail:
    """One report: status, findings per feature and segment, override rate, file links."""
    report = load(session, access, report_id)
    session.commit()
    return detail(report)


@router.get("/drift-reports/{report_id}/html", response_class=Response)
def report_html(
    report_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("drift_report", "detail")],
) -> Response:
    """Evidently's HTML report, sandboxed (see EVIDENTLY_CSP)."""
    report = load(session, access, report_id)
    try:
        data = service.read_report_file(report, data_dir=settings.data_dir, kind="html")
    except service.ReportFileError as exc:
        raise file_problem(exc) from exc
    access.entry.details = {"file": "html"}
    session.commit()
    return Response(
        data,
        media_type="text/html; charset=utf-8",
        headers=evidently_headers(f"drift-report-{report_id}.html"),
    )


@router.get("/drift-reports/{report_id}/json", response_class=Response)
def report_json(
    report_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("drift_report", "detail")],
) -> Response:
    """Evidently's JSON snapshot with our summary, as stored."""
    report = load(session, access, report_id)
    try:
        data = service.read_report_file(report, data_dir=settings.data_dir, kind="json")
    except service.ReportFileError as exc:
        raise file_problem(exc) from exc
    access.entry.details = {"file": "json"}
    session.commit()
    return Response(
        data,
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="drift-report-{report_id}.json"'},
    )


# ------------------------------------------------------------------------- scheduled jobs
# The jobs of validation/jobs.py and their runs (docs/scheduler.md): ML engineers, admins and
# auditors list them; ML engineers and admins start a run now. A run's details hold counts
# and codes only.

jobs_router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
_JOB = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]


class JobRunOut(BaseModel):
    """One run of a job: its period, who held it, how it ended."""

    id: int
    job: str
    period: str
    status: str  # running, succeeded, failed
    lapsed: bool  # running, but its holder stopped renewing the lease (died or hangs)
    holder: str
    attempts: int
    started_at: str
    lease_until: str
    finished_at: str | None
    details: dict[str, Any]


class JobOut(BaseModel):
    """A job, its schedule in words (None: not scheduled) and its latest run."""

    name: str
    summary: str
    schedule: str | None
    lease_seconds: int
    last_run: JobRunOut | None


class JobList(BaseModel):
    """Every job."""

    items: list[JobOut]


class JobRunPage(BaseModel):
    """A page of runs, newest first; pass `next_before` as `before` for the next page."""

    items: list[JobRunOut]
    next_before: int | None


def run_out(run: JobRun, now: datetime) -> JobRunOut:
    """The API form of a run."""
    return JobRunOut(
        id=run.id or 0,
        job=run.job,
        period=run.period,
        status=run.status,
        lapsed=scheduler.lapsed(run, now),
        holder=run.holder,
        attempts=run.attempts,
        started_at=clock.iso(run.started_at),
        lease_until=clock.iso(run.lease_until),
        finished_at=clock.iso(run.finished_at) if run.finished_at else None,
        details=run.details,
    )


def _job(settings: Settings, access: Access, name: str) -> jobs.Job:
    access.entry.resource_id = name
    job = jobs.registry(settings).get(name)
    if job is None:
        raise ProblemError(404, "not_found", "no such job")
    return job


@jobs_router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("job", "list")],
) -> JobList:
    """Every job with its schedule and latest run."""
    now = clock.utcnow()
    items = []
    for name, job in jobs.registry(settings).items():
        last = service.latest_runs(session, job=name, limit=1)
        items.append(
            JobOut(
                name=name,
                summary=job.summary,
                schedule=job.schedule.describe() if job.schedule else None,
                lease_seconds=int(job.lease.total_seconds()),
                last_run=run_out(last[0], now) if last else None,
            )
        )
    access.entry.details = {"count": len(items)}
    session.commit()
    return JobList(items=items)


@jobs_router.get("/{name}/runs", response_model=JobRunPage)
def list_job_runs(
    name: _JOB,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("job", "list", audit_as="job_run.list")],
    limit: Annotated[int, Query(ge=1, le=100)] = 30,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> JobRunPage:
    """A job's runs, newest first."""
    _job(settings, access, name)
    runs = service.latest_runs(session, job=name, limit=limit, before_id=before)
    access.entry.details = {"count": len(runs)}
    session.commit()
    now = clock.utcnow()
    last = runs[-1].id if len(runs) == limit else None
    return JobRunPage(items=[run_out(r, now) for r in runs], next_before=last)


@jobs_router.post("/{name}/run", response_model=JobRunOut, status_code=202)
def run_job_now(
    name: _JOB,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("job", "run", read_first=True)],
) -> JobRunOut:
    """Start a run of the job now, under its lease for a manual period; it runs in the
    background (202): follow it in the job's runs. 409 while another run of it is live."""
    job = _job(settings, access, name)
    # The run claims its lease in sessions of its own: on SQLite this request's transaction
    # must not hold the writer slot meanwhile.
    audit.end_read(session)
    factory = request.app.state.session_factory
    now = clock.utcnow()
    holder = service.holder_name()
    claimed = scheduler.start(factory, job, period=jobs.manual_period(now), now=now, holder=holder)
    if isinstance(claimed, scheduler.RunResult):
        raise ProblemError(409, "job_busy", f"a run of this job is in progress ({claimed.reason})")
    access.entry.details = {"period": claimed.period, "run_id": claimed.id}
    session.commit()
    threading.Thread(
        target=scheduler.execute,
        args=(factory, job, claimed),
        kwargs={"settings": settings, "now": now, "holder": holder},
        name=f"clinaiops-job-{name}",
        daemon=True,
    ).start()
    return run_out(claimed, now)
