"""Portal pages: visit cadence, due reviews and pre-visit summaries. Registered on the portal
router when imported.

The due list spans the clinician's care-team patients; a patient's pre-visit summary page
carries the override and completion forms. The PDF of a summary is served by the API
(`/api/v1/patients/{id}/previsit-summary.pdf`, which a signed-in browser reaches with its
session cookie) and rendered here from the same template as the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time
from typing import Annotated, Any

from fastapi import Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape
from sqlalchemy.orm import Session

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.core import clock
from app.core.config import Settings
from app.portal import drafts
from app.portal.web import HERE, page_context, portal_page, refuse, render, router, templates
from audit import service as audit
from loops.care import service as care
from loops.visits import flows, service
from loops.visits.cadence import Cadence
from loops.visits.models import Visit, VisitKind
from reports.pdf import render_pdf

_ID = Annotated[str, Path(max_length=36)]
DUE_WINDOWS = (7, 14, 30, 90)
_NOTICES = {
    "overridden": "The next review's date is set; the schedule's own date is shown beside it.",
    "completed": "The review is recorded as done; the next one is scheduled below.",
}
DECISION_LABELS = {
    "delivered": "delivered within the envelope",
    "approved": "approved",
    "modified": "modified",
    "rejected": "rejected",
    "pending_review": "waiting for review",
}


# ------------------------------------------------------------------ trend chart


def trend_svg(
    weeks: Sequence[flows.WeekMean], target: tuple[float, float], *, width: int = 460
) -> Markup:
    """Weekly home means as a small inline SVG (systolic and diastolic lines, the target as
    dashed lines); drawn on the server so the page and the PDF need no JavaScript."""
    points = [w for w in weeks if w.systolic is not None and w.diastolic is not None]
    height, left, right, top, bottom = 200, 40, 26, 10, 26
    if not points:
        return Markup("")
    values = [v for w in points for v in (w.systolic or 0.0, w.diastolic or 0.0)] + list(target)
    lo = min(60.0, (min(values) // 10) * 10)
    hi = max(160.0, (max(values) // 10 + 1) * 10)
    span_x = max(len(weeks) - 1, 1)

    def x(i: int) -> float:
        return left + (width - left - right) * (i / span_x if len(weeks) > 1 else 0.5)

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - lo) / (hi - lo))

    index = {w.start: i for i, w in enumerate(weeks)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="trend" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" '
        f'aria-label="Weekly home blood pressure means against the target">'
    ]
    tick = lo
    while tick <= hi:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'stroke="#e3e7ec" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="#5b6775">{tick:.0f}</text>'
        )
        tick += 20
    for value in target:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'stroke="#2e7d4f" stroke-width="1.2" stroke-dasharray="5 4"/>'
        )
    for attr, colour in (("systolic", "#b3261e"), ("diastolic", "#0b5cad")):
        coords = " ".join(
            f"{x(index[w.start]):.1f},{y(float(getattr(w, attr))):.1f}" for w in points
        )
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        for w in points:
            parts.append(
                f'<circle cx="{x(index[w.start]):.1f}" cy="{y(float(getattr(w, attr))):.1f}" '
                f'r="3" fill="{colour}"/>'
            )
    step = max(1, len(weeks) // 6)
    for i, w in enumerate(weeks):
        if i % step == 0 or i == len(weeks) - 1:
            anchor = "end" if i == len(weeks) - 1 and len(weeks) > 1 else "middle"
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - 8}" text-anchor="{anchor}" font-size="11" '
                f'fill="#5b6775">{escape(w.start.strftime("%d %b"))}</text>'
            )
    parts.append("</svg>")
    # Safe: every interpolated value above is a formatted number or an escaped date label.
    return Markup("".join(parts))  # noqa: S704


def _context(summary: flows.PrevisitSummary, rule: Cadence | None) -> dict[str, Any]:
    return {
        "s": summary,
        "visit": summary.visit,
        "rule": rule,
        "trend": trend_svg(summary.weeks, summary.target),
        "reason_text": service.reason_text,
        "decision_labels": DECISION_LABELS,
    }


def previsit_html(summary: flows.PrevisitSummary, *, generated_by: str, for_pdf: bool) -> str:
    """The summary as a standalone printable document (the PDF's source)."""
    template = templates.env.get_template("previsit_pdf.html")
    return template.render(**_context(summary, None), generated_by=generated_by, for_pdf=for_pdf)


def previsit_pdf(summary: flows.PrevisitSummary, *, generated_by: str) -> bytes:
    """The summary as PDF bytes."""
    return render_pdf(
        previsit_html(summary, generated_by=generated_by, for_pdf=True),
        base_url=HERE / "static",
    )


# ------------------------------------------------------------------ due list


@router.get("/visits/due", response_class=HTMLResponse)
@portal_page
def due_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("visit", "list", listing=True, audit_as="visit.due_list")],
    within: Annotated[int | None, Query(ge=0, le=3660)] = None,
) -> Response:
    """Due reviews of the care team's patients, soonest (and overdue) first."""
    now = clock.utcnow()
    rows = service.due_list(
        session, patient_filter=access.patient_filter(), now=now, within_days=within, limit=200
    )
    access.entry.details = {
        "within_days": within,
        "count": len(rows),
        "patient_ids": [r.patient.id for r in rows],
    }
    session.commit()
    return render(
        request,
        "visits_due.html",
        page_context(
            request,
            access,
            settings,
            "panel",
            rows=rows,
            within=within,
            windows=DUE_WINDOWS,
            reason_text=service.reason_text,
        ),
    )


# ------------------------------------------------------------------ pre-visit summary


def _summary_page(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    patient_id: str,
    *,
    notice: str = "",
    error: str = "",
    form: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    now = clock.utcnow()
    done = service.recompute(session, patient_id=patient_id, now=now)
    summary = flows.summary(session, patient_id=patient_id, now=now)
    if summary is None:
        session.rollback()
        from app.core.errors import ProblemError

        raise ProblemError(404, "not_found", "no such patient")
    visit: Visit = done.visit
    names = care.user_names(session, [visit.overridden_by])
    details = {
        "period_start": clock.iso(summary.start),
        "readings": summary.readings,
        "visit_id": visit.id,
    }
    if access.entry.written:
        audit.record(
            session,
            actor=access.principal.actor,
            actor_role=access.principal.role,
            action="previsit_summary.read",
            resource_type="previsit_summary",
            resource_id=patient_id,
            patient_id=patient_id,
            details=details,
        )
    else:
        access.entry.details = {**access.entry.details, **details}
    session.commit()
    due = visit.override_due_by or visit.due_by
    default_date = (due if due >= now else now).date().isoformat()
    return render(
        request,
        "previsit.html",
        page_context(
            request,
            access,
            settings,
            "panel",
            **_context(summary, done.rule),
            overridden_by=names.get(visit.overridden_by) if visit.overridden_by else None,
            notice=_NOTICES.get(notice, ""),
            error=error,
            form=form or {"due_date": default_date, "kind": visit.kind, "reason": ""},
            kinds=[k.value for k in VisitKind],
            generated_by=access.principal.full_name or access.principal.actor,
            for_pdf=False,
        ),
        status=status,
    )


@router.get("/patients/{patient_id}/previsit", response_class=HTMLResponse)
@portal_page
def previsit_page(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require(
            "previsit_summary",
            "read",
            patient_param="patient_id",
            audit_as="previsit_summary.read",
        ),
    ],
    notice: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    """One patient's pre-visit summary (printable), with the next review and its forms."""
    draft = drafts.take(request, access.principal.id)
    form = {k: str(draft.get(k, "")) for k in ("due_date", "kind", "reason")} if draft else None
    return _summary_page(request, session, access, settings, patient_id, notice=notice, form=form)


def _see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


@router.post("/patients/{patient_id}/next-visit/override")
@portal_page
def override_form(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("visit", "write", patient_param="patient_id", audit_as="visit.override"),
    ],
    due_date: Annotated[str, Form(max_length=10)] = "",
    kind: Annotated[str, Form(max_length=8)] = "visit",
    reason: Annotated[str, Form(max_length=service.MAX_REASON)] = "",
) -> Response:
    """Set the next review's date and kind, with a reason (required)."""
    entered = {"due_date": due_date, "kind": kind, "reason": reason}
    now = clock.utcnow()
    try:
        try:
            day = datetime.fromisoformat(due_date).date()
        except ValueError as exc:
            raise service.VisitError("invalid_date", "give the date as YYYY-MM-DD") from exc
        # A date means the end of that day (UTC): today is still a valid choice.
        due_by = datetime.combine(day, time(23, 59), tzinfo=UTC)
        visit = service.override(
            session,
            patient_id=patient_id,
            due_by=due_by,
            kind=kind,
            reason=reason,
            user_id=int(access.principal.id),
            now=now,
        )
    except service.VisitError as exc:
        refuse(session, access, exc.code)
        return _summary_page(
            request,
            session,
            access,
            settings,
            patient_id,
            error=exc.message,
            form=entered,
            status=exc.status,
        )
    access.entry.resource_type, access.entry.resource_id = "visit", visit.id
    access.entry.details = {
        "visit_id": visit.id,
        "kind": visit.kind,
        "due_by": clock.iso(due_by),
        "overridden": True,
    }
    session.commit()
    return _see_other(f"/portal/patients/{patient_id}/previsit?notice=overridden")


@router.post("/patients/{patient_id}/next-visit/complete")
@portal_page
def complete_form(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("visit", "write", patient_param="patient_id", audit_as="visit.complete"),
    ],
    note: Annotated[str, Form(max_length=service.MAX_NOTE)] = "",
    visit_id: Annotated[str, Form(max_length=36)] = "",
) -> Response:
    """Record that the due review took place, with an outcome note; the next is computed.
    The form names the visit it was shown for, so sending it twice completes one visit."""
    now = clock.utcnow()
    try:
        done, nxt = service.complete(
            session,
            patient_id=patient_id,
            user_id=int(access.principal.id),
            note=note,
            now=now,
            visit_id=visit_id or None,
        )
    except service.VisitError as exc:
        refuse(session, access, exc.code)
        return _summary_page(
            request, session, access, settings, patient_id, error=exc.message, status=exc.status
        )
    access.entry.resource_type, access.entry.resource_id = "visit", done.id
    access.entry.details = {
        "visit_id": done.id,
        "note": bool(done.outcome_note),
        "next_visit_id": nxt.id,
        "next_kind": nxt.kind,
        "next_due_by": clock.iso(nxt.due_by),
        "next_reasons": list(nxt.reasons),
    }
    session.commit()
    return _see_other(f"/portal/patients/{patient_id}/previsit?notice=completed")
