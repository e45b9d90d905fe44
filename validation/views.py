"""The monitoring API: drift reports, listed, read, run on demand, and Evidently's own HTML and
JSON served back checked by hash. ML engineers run and read everything; auditors read the
summaries (aggregates only: scores, counts, device models and subgroups, never patient rows).
Every call is audited."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.core import clock
from app.core.errors import ProblemError
from validation import service
from validation.models import DriftReport

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
