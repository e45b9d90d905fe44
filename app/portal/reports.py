"""Portal pages for auditors: choose a compliance report, a period and filters; preview it;
export it as PDF, CSV or HTML (and the audit trail as the verifiable ZIP).

Registered on the portal router (`app.portal.web.router`) when imported. The preview shows
the report's own standalone HTML in a sandboxed `srcdoc` frame: no script runs in it, it has
an opaque origin, and its stylesheet cannot touch the portal's page. Every preview is audited
as `report.preview` and every download as `report.export` (as in the API: kind, format,
period, filters, the SHA-256 of the bytes).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, Response

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.core import clock
from app.core.errors import ProblemError
from app.portal.web import page_context, portal_page, refuse, render, router
from audit import keys
from audit import service as audit
from reports import catalogue, exports
from reports.models import Filters, Period, ReportFormat, ReportKind
from reports.periods import PeriodError, parse_period, previous_month
from reports.views import filtered_patient, send_export

_Text = Annotated[str | None, Query(max_length=100)]
_Kind = Annotated[str | None, Query(max_length=40)]


def _form(
    kind: str | None,
    start: str | None,
    end: str | None,
    patient_id: str | None,
    actor: str | None,
    model_version: str | None,
    cohort: str | None,
) -> dict[str, str]:
    """The form's values as typed (defaults: the last calendar month), for re-display."""
    last = previous_month(clock.utcnow())
    return {
        "kind": kind or str(ReportKind.DECISION_LOG),
        "start": (start or last.start.date().isoformat()).strip(),
        "end": (end or last.end.date().isoformat()).strip(),
        "patient_id": (patient_id or "").strip(),
        "actor": (actor or "").strip(),
        "model_version": (model_version or "").strip(),
        "cohort": (cohort or "").strip(),
    }


class _Bad(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _parse(form: dict[str, str]) -> tuple[catalogue.Entry, Period, Filters]:
    entry = catalogue.entry(form["kind"])
    if entry is None:
        raise _Bad("unknown_report", "choose a report from the list")
    try:
        period = parse_period(form["start"], form["end"], now=clock.utcnow())
    except PeriodError as exc:
        raise _Bad(exc.code, exc.detail) from exc
    if any("\x00" in value for value in form.values()):
        # PostgreSQL refuses NUL in any text it compares: say so, as for any other bad value.
        raise _Bad("invalid_text", "the filters cannot hold control characters")
    version = form["model_version"]
    if version and not (version.isdigit() and 0 < int(version) < 2**31):
        raise _Bad("bad_model_version", "the model version is a whole number such as 3")
    # Only the filters the chosen report honours are applied (and shown in its header).
    wanted = set(entry.filters)
    filters = Filters(
        patient_id=form["patient_id"] or None if "patient_id" in wanted else None,
        actor=form["actor"] or None if "actor" in wanted else None,
        model_version=int(version) if version and "model_version" in wanted else None,
        cohort=form["cohort"] or None if "cohort" in wanted else None,
    )
    return entry, period, filters


def _query(form: dict[str, str], **more: str) -> str:
    return urlencode({k: v for k, v in {**form, **more}.items() if v})


def _context(request: Request, access: Access, settings: Any, **extra: Any) -> dict[str, Any]:
    return page_context(request, access, settings, "reports", reports=catalogue.CATALOGUE, **extra)


@router.get("/reports", response_class=HTMLResponse)
@portal_page
def reports_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("report", "list")],
    kind: _Kind = None,
) -> Response:
    """Choose a report, a period (default: the last calendar month) and optional filters."""
    session.commit()
    form = _form(kind, None, None, None, None, None, None)
    return render(request, "reports.html", _context(request, access, settings, form=form))


@router.get("/reports/preview", response_class=HTMLResponse)
@portal_page
def report_preview(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require(
            "report",
            "export",
            audit_as="report.preview",
            patient_from=filtered_patient,
            read_first=True,
        ),
    ],
    kind: _Kind = None,
    start: _Text = None,
    end: _Text = None,
    patient_id: _Text = None,
    actor: _Text = None,
    model_version: _Text = None,
    cohort: _Text = None,
) -> Response:
    """The chosen report, previewed in a sandboxed frame, with its export buttons."""
    form = _form(kind, start, end, patient_id, actor, model_version, cohort)
    try:
        entry, period, filters = _parse(form)
        made = exports.report_file(
            session,
            kind=entry.kind,
            fmt=ReportFormat.HTML,
            period=period,
            filters=filters,
            generated_by=access.principal.username or access.principal.actor,
            now=clock.utcnow(),
            settings=settings,
        )
    except (_Bad, exports.ExportRefused) as exc:
        access.entry.details = {"kind": form["kind"]}
        refuse(session, access, exc.code)
        status = exc.status if isinstance(exc, exports.ExportRefused) else 422
        context = _context(request, access, settings, form=form, error=exc.detail)
        return render(request, "reports.html", context, status=status)
    audit.end_read(session)
    access.entry.details = made.details
    session.commit()
    downloads = [
        (str(fmt).upper(), f"/portal/reports/download?{_query(form, format=str(fmt))}")
        for fmt in (ReportFormat.PDF, ReportFormat.CSV, ReportFormat.HTML)
    ]
    if entry.verifiable_export:
        downloads.append(
            ("Verifiable ZIP", f"/portal/reports/download?{_query(form, format='zip')}")
        )
    context = _context(
        request,
        access,
        settings,
        form=form,
        chosen=entry,
        period=period,
        filters=filters.describe(),
        preview=made.body.decode("utf-8"),
        downloads=downloads,
    )
    return render(request, "reports.html", context)


@router.get("/reports/download")
@portal_page
def report_download(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("report", "export", patient_from=filtered_patient, read_first=True),
    ],
    kind: _Kind = None,
    start: _Text = None,
    end: _Text = None,
    patient_id: _Text = None,
    actor: _Text = None,
    model_version: _Text = None,
    cohort: _Text = None,
    fmt_name: Annotated[str, Query(alias="format", max_length=10)] = "pdf",
) -> Response:
    """The chosen report as a file (or the audit trail's verifiable ZIP), audited."""
    form = _form(kind, start, end, patient_id, actor, model_version, cohort)
    now = clock.utcnow()
    try:
        entry, period, filters = _parse(form)
        if fmt_name == "zip" and entry.verifiable_export:
            assert settings.signing_key_path is not None
            made = exports.audit_trail_zip(
                session,
                period=period,
                filters=filters,
                public_key=keys.load_signing_key(settings.signing_key_path).public_key(),
                generated_by=access.principal.username or access.principal.actor,
                now=now,
            )
        else:
            try:
                fmt = ReportFormat(fmt_name)
            except ValueError as exc:
                raise _Bad("unknown_format", "format must be pdf, csv or html") from exc
            made = exports.report_file(
                session,
                kind=entry.kind,
                fmt=fmt,
                period=period,
                filters=filters,
                generated_by=access.principal.username or access.principal.actor,
                now=now,
                settings=settings,
            )
    except _Bad as exc:
        raise ProblemError(422, exc.code, exc.detail) from exc
    return send_export(session, access, made)
