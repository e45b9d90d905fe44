"""Portal pages for drift monitoring: the list of reports, one report's findings, Evidently's
page in a sandboxed frame, and a button to run a report now.

Registered on the portal router (`app.portal.web.router`) when imported. ML engineers see and
run everything; auditors see the summaries only (the policy's `detail` action guards
Evidently's page). Every view is audited through `require()`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.core import clock
from app.core.config import Settings
from app.portal.web import portal_page, render, router
from policies import service as policy
from validation import service
from validation.drift import DIMENSIONS
from validation.views import evidently_headers, file_problem, load

_ID = Annotated[int, Path(ge=1, le=2**31 - 1)]
PAGE = 30
STATUS_BADGES = {"ok": "ok", "alert": "bad", "insufficient_data": "warn", "no_reference": "warn"}


def _context(request: Request, access: Access, settings: Settings, **extra: Any) -> dict[str, Any]:
    role = access.principal.role
    return {
        "principal": access.principal,
        "idle_minutes": settings.session_idle_minutes,
        "nav": "drift",
        "now": clock.utcnow(),
        "path": request.url.path,
        "badges": STATUS_BADGES,
        "may_run": bool(policy.allowed_relations(role, "drift_report", "create")),
        "may_detail": bool(policy.allowed_relations(role, "drift_report", "detail")),
        **extra,
    }


@router.get("/monitoring/drift", response_class=HTMLResponse)
@portal_page
def drift_list_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("drift_report", "list")],
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> Response:
    """Drift reports, newest first, with their status and headline."""
    reports = service.list_drift_reports(session, limit=PAGE, before_id=before)
    access.entry.details = {"count": len(reports)}
    session.commit()
    more = reports[-1].id if len(reports) == PAGE else None
    return render(
        request,
        "drift_list.html",
        _context(request, access, settings, reports=reports, more=more),
    )


@router.post("/monitoring/drift")
@portal_page
def drift_run(
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("drift_report", "create")],
    window_days: Annotated[int, Form(ge=1, le=90)] = 7,
) -> Response:
    """Run a drift report now and show it."""
    report = service.create_drift_report(
        session,
        now=clock.utcnow(),
        data_dir=settings.data_dir,
        window=timedelta(days=window_days),
        created_by=access.principal.actor,
    )
    access.entry.resource_id = str(report.id)
    access.entry.details = {"window_days": window_days, **service.drift_audit_details(report)}
    session.commit()
    return RedirectResponse(f"/portal/monitoring/drift/{report.id}", status_code=303)


@router.get("/monitoring/drift/{report_id}", response_class=HTMLResponse)
@portal_page
def drift_report_page(
    report_id: _ID,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("drift_report", "read")],
) -> Response:
    """One report: what moved, by how much, with which test, for which device model or
    subgroup; the override rate; Evidently's page below for those who may see it."""
    report = load(session, access, report_id)
    session.commit()
    summary = report.summary
    segments = sorted(
        summary.get("segments", []),
        key=lambda s: (
            DIMENSIONS.index(s["dimension"]) if s["dimension"] in DIMENSIONS else 99,
            s["value"],
        ),
    )
    return render(
        request,
        "drift_report.html",
        _context(
            request,
            access,
            settings,
            report=report,
            summary=summary,
            drifted=[f for f in summary.get("features", []) if f.get("drifted")],
            segments=segments,
        ),
    )


@router.get("/monitoring/drift/{report_id}/evidently", response_class=HTMLResponse)
@portal_page
def drift_evidently_page(
    report_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("drift_report", "detail")],
) -> Response:
    """Evidently's page for the report's frame: sandboxed, framed only by the portal."""
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
