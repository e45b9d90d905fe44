"""Visit cadence, due reviews and pre-visit summaries over HTTP (patient API under /api/v1/me,
care-team API under /api/v1).

Reading a patient's next visit brings it up to date first (the cadence rule on today's
facts, in the same transaction as the read's audit entry), so what is shown is never a day
stale and every patient has one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.api.deps import Access, SessionDep, require
from app.auth.principal import Principal
from app.core import clock
from app.core.errors import ProblemError
from loops.care import service as care
from loops.visits import flows, service
from loops.visits.cadence import Cadence, when_text
from loops.visits.models import Visit, VisitKind

router = APIRouter(prefix="/api/v1", tags=["patient-clinician loop"])
_ID = Annotated[str, Path(max_length=36)]


def _own_patient(session: Session, request: Request, principal: Principal) -> str | None:
    return principal.patient_id


def _iso_or_none(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class NextVisit(BaseModel):
    """The next review as the patient sees it: when, how, and why in plain words."""

    kind: str  # visit or call
    due_by: datetime
    overdue: bool
    why: str
    set_by: Literal["care_team", "schedule"]
    care_team_reason: str | None  # the clinician's reason when they set the date


class ScheduleView(BaseModel):
    """What the cadence rule says (kept beside a clinician's override)."""

    kind: str
    due_by: datetime
    reasons: list[str]
    reason_texts: list[str]
    why: str
    computed_at: datetime


class OverrideView(BaseModel):
    """A clinician's date and kind, with their reason."""

    kind: str
    due_by: datetime
    reason: str
    by: str | None
    at: datetime | None


class CareTeamVisit(BaseModel):
    """A patient's due review as the care team sees it: the date in force, the rule's date
    and reasons, and any override."""

    id: str
    patient_id: str
    status: str
    kind: str
    due_by: datetime
    overdue: bool
    schedule: ScheduleView
    override: OverrideView | None


def _current(session: Session, patient_id: str, now: datetime) -> tuple[Visit, Cadence, str]:
    done = service.recompute(session, patient_id=patient_id, now=now)
    session.flush()
    return done.visit, done.rule, done.change


def _patient_view(visit: Visit, rule: Cadence, now: datetime) -> NextVisit:
    due = _iso_or_none(visit.due_by) or now
    overridden = visit.override_due_by is not None
    what = "a call" if visit.kind == VisitKind.CALL else "a visit"
    why = (
        f"Your care team set {what} for {when_text(due)}: {visit.override_reason}"
        if overridden
        else rule.why
    )
    return NextVisit(
        kind=visit.kind,
        due_by=due,
        overdue=due < now,
        why=why,
        set_by="care_team" if overridden else "schedule",
        care_team_reason=visit.override_reason if overridden else None,
    )


def _care_team_view(
    session: Session, visit: Visit, rule: Cadence | None, now: datetime
) -> CareTeamVisit:
    due = _iso_or_none(visit.due_by) or now
    names = care.user_names(session, [visit.overridden_by])
    return CareTeamVisit(
        id=visit.id,
        patient_id=visit.patient_id,
        status=visit.status,
        kind=visit.kind,
        due_by=due,
        overdue=visit.status == "due" and due < now,
        schedule=ScheduleView(
            kind=visit.rule_kind,
            due_by=_iso_or_none(visit.rule_due_by) or now,
            reasons=list(visit.reasons),
            reason_texts=[service.reason_text(r) for r in visit.reasons],
            why=rule.why if rule is not None else "",
            computed_at=_iso_or_none(visit.computed_at) or now,
        ),
        override=OverrideView(
            kind=visit.override_kind or visit.kind,
            due_by=_iso_or_none(visit.override_due_by) or due,
            reason=visit.override_reason,
            by=names.get(visit.overridden_by) if visit.overridden_by else None,
            at=_iso_or_none(visit.overridden_at),
        )
        if visit.override_due_by is not None
        else None,
    )


def _details(visit: Visit, change: str | None = None) -> dict[str, object]:
    out: dict[str, object] = {
        "visit_id": visit.id,
        "kind": visit.kind,
        "due_by": clock.iso(_iso_or_none(visit.due_by) or clock.utcnow()),
        "reasons": list(visit.reasons),
        "overridden": visit.override_due_by is not None,
    }
    if change is not None:
        out["recomputed"] = change
    return out


@router.get("/me/next-visit", response_model=NextVisit)
def my_next_visit(
    session: SessionDep,
    access: Annotated[
        Access, require("visit", "read", patient_from=_own_patient, audit_as="visit.read")
    ],
) -> NextVisit:
    """When the patient's next review is due, whether a visit or a call, and why."""
    assert access.patient_id is not None
    now = clock.utcnow()
    visit, rule, change = _current(session, access.patient_id, now)
    access.entry.resource_type, access.entry.resource_id = "visit", visit.id
    access.entry.details = _details(visit, change)
    session.commit()
    return _patient_view(visit, rule, now)


@router.get("/patients/{patient_id}/next-visit", response_model=CareTeamVisit)
def patient_next_visit(
    patient_id: _ID,
    session: SessionDep,
    access: Annotated[Access, require("visit", "read", patient_param="patient_id")],
) -> CareTeamVisit:
    """The patient's due review: the date in force, the rule's date and reasons, any override."""
    now = clock.utcnow()
    visit, rule, change = _current(session, patient_id, now)
    access.entry.resource_type, access.entry.resource_id = "visit", visit.id
    access.entry.details = _details(visit, change)
    session.commit()
    return _care_team_view(session, visit, rule, now)


class OverrideBody(BaseModel):
    """A clinician's date and kind for the next review, and why."""

    due_by: datetime
    kind: VisitKind = VisitKind.VISIT
    reason: str = Field(min_length=1, max_length=service.MAX_REASON)


def _problem(exc: service.VisitError) -> ProblemError:
    return ProblemError(exc.status, exc.code, exc.message)


@router.put("/patients/{patient_id}/next-visit", response_model=CareTeamVisit)
def override_next_visit(
    patient_id: _ID,
    body: OverrideBody,
    session: SessionDep,
    access: Annotated[
        Access,
        require("visit", "write", patient_param="patient_id", audit_as="visit.override"),
    ],
) -> CareTeamVisit:
    """Set the next review's date and kind with a reason; kept until the review is completed
    or cancelled, while the rule keeps computing its own date beside it."""
    now = clock.utcnow()
    try:
        visit = service.override(
            session,
            patient_id=patient_id,
            due_by=body.due_by,
            kind=body.kind,
            reason=body.reason,
            user_id=int(access.principal.id),
            now=now,
        )
    except service.VisitError as exc:
        raise _problem(exc) from exc
    access.entry.resource_type, access.entry.resource_id = "visit", visit.id
    # The reason is the clinician's free text: the trail keeps that one was given.
    access.entry.details = {
        **_details(visit),
        "rule_due_by": clock.iso(_iso_or_none(visit.rule_due_by) or now),
    }
    session.commit()
    return _care_team_view(
        session, visit, service.rule_now(session, patient_id=patient_id, now=now), now
    )


class CompleteBody(BaseModel):
    """The outcome of the review, in the clinician's words."""

    note: str = Field(default="", max_length=service.MAX_NOTE)
    visit_id: str | None = Field(
        default=None,
        max_length=36,
        description="the due visit meant (from GET next-visit): a retry then answers 409 "
        "visit_changed instead of completing the next visit too",
    )


class Completed(BaseModel):
    """The completed review and the next one the rule computed."""

    completed: CareTeamVisit
    next: CareTeamVisit


@router.post("/patients/{patient_id}/next-visit/complete", response_model=Completed)
def complete_next_visit(
    patient_id: _ID,
    body: CompleteBody,
    session: SessionDep,
    access: Annotated[
        Access,
        require("visit", "write", patient_param="patient_id", audit_as="visit.complete"),
    ],
) -> Completed:
    """Record that the due review took place; the next one is computed at once."""
    now = clock.utcnow()
    try:
        done, nxt = service.complete(
            session,
            patient_id=patient_id,
            user_id=int(access.principal.id),
            note=body.note,
            now=now,
            visit_id=body.visit_id,
        )
    except service.VisitError as exc:
        raise _problem(exc) from exc
    access.entry.resource_type, access.entry.resource_id = "visit", done.id
    access.entry.details = {
        "visit_id": done.id,
        "kind": done.kind,
        "note": bool(done.outcome_note),
        "next_visit_id": nxt.id,
        "next_kind": nxt.kind,
        "next_due_by": clock.iso(_iso_or_none(nxt.due_by) or now),
        "next_reasons": list(nxt.reasons),
    }
    session.commit()
    rule = service.rule_now(session, patient_id=patient_id, now=now)
    return Completed(
        completed=_care_team_view(session, done, None, now),
        next=_care_team_view(session, nxt, rule, now),
    )


class DueEntry(BaseModel):
    """A due review on the care team's list."""

    patient_id: str
    pseudonym: str
    given_name: str
    family_name: str
    visit_id: str
    kind: str
    due_by: datetime
    overdue: bool
    reasons: list[str]
    reason_texts: list[str]
    overridden: bool
    override_reason: str | None


@router.get("/visits/due", response_model=list[DueEntry])
def visits_due(
    session: SessionDep,
    access: Annotated[Access, require("visit", "list", listing=True, audit_as="visit.due_list")],
    within_days: Annotated[int | None, Query(ge=0, le=3660)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[DueEntry]:
    """Due reviews of the caller's care-team patients, soonest (and overdue) first."""
    now = clock.utcnow()
    rows = service.due_list(
        session,
        patient_filter=access.patient_filter(),
        now=now,
        within_days=within_days,
        limit=limit,
    )
    access.entry.details = {
        "within_days": within_days,
        "count": len(rows),
        "patient_ids": [r.patient.id for r in rows],
    }
    session.commit()
    return [
        DueEntry(
            patient_id=r.patient.id,
            pseudonym=r.patient.pseudonym,
            given_name=r.patient.given_name,
            family_name=r.patient.family_name,
            visit_id=r.visit.id,
            kind=r.visit.kind,
            due_by=_iso_or_none(r.visit.due_by) or now,
            overdue=r.overdue,
            reasons=list(r.visit.reasons),
            reason_texts=[service.reason_text(c) for c in r.visit.reasons],
            overridden=r.visit.override_due_by is not None,
            override_reason=r.visit.override_reason or None,
        )
        for r in rows
    ]


# ------------------------------------------------------------------ pre-visit summary


class WeekOut(BaseModel):
    """A week's validated-cuff home mean."""

    start: date
    end: date
    systolic: float | None
    diastolic: float | None
    readings: int


class ChangeOut(BaseModel):
    """A proposal's outcome in the period."""

    time: datetime
    outcome: str
    action: str
    drug: str
    unit: str
    from_dose: float
    proposed_dose: float
    to_dose: float
    by: str | None
    reason: str | None


class EnvelopeOut(BaseModel):
    """A new envelope version."""

    time: datetime
    version: int
    author: str
    reason: str


class AlertOut(BaseModel):
    """An alert of the period."""

    type: str
    severity: str
    status: str
    raised_at: datetime
    acknowledged_at: datetime | None


class QuestionOut(BaseModel):
    """A question the patient asked for the visit."""

    subject: str
    asked_at: datetime
    status: str
    first_message: str


class SymptomOut(BaseModel):
    """A symptom report."""

    time: datetime
    symptoms: list[str]
    note: str


class GoalOut(BaseModel):
    """An agreed goal and how it is going."""

    kind: str
    text: str
    progress: str
    met: bool | None


class PrevisitOut(BaseModel):
    """The pre-visit summary's figures (the portal page and the PDF show the same)."""

    patient_id: str
    pseudonym: str
    generated_at: datetime
    period_start: datetime
    period_end: datetime
    period_basis: str
    last_visit_at: datetime | None
    target_systolic: float
    target_diastolic: float
    target_from_goal: bool
    control: str
    sbp_7d: float | None
    dbp_7d: float | None
    readings_7d: int
    weekly_means: list[WeekOut]
    readings: int
    days_with_readings: int
    days_in_range: int
    time_in_range: float | None
    doses_taken: int
    doses_total: int
    adherence: float | None
    decision_counts: dict[str, int]
    changes: list[ChangeOut]
    envelope_changes: list[EnvelopeOut]
    alerts: list[AlertOut]
    alerts_raised: int
    alerts_acknowledged: int
    questions: list[QuestionOut]
    symptom_reports: list[SymptomOut]
    symptom_counts: dict[str, int]
    goals: list[GoalOut]
    next_visit: CareTeamVisit | None


def _summary(session: Session, patient_id: str, now: datetime) -> flows.PrevisitSummary:
    summary = flows.summary(session, patient_id=patient_id, now=now)
    if summary is None:
        raise ProblemError(404, "not_found", "no such patient")
    return summary


def _summary_details(s: flows.PrevisitSummary, fmt: str) -> dict[str, object]:
    return {
        "format": fmt,
        "period_start": clock.iso(s.start),
        "period_end": clock.iso(s.end),
        "readings": s.readings,
        "alerts": len(s.alerts),
        "questions": len(s.questions),
        "symptom_reports": len(s.symptoms),
    }


@router.get("/patients/{patient_id}/previsit-summary", response_model=PrevisitOut)
def previsit_summary(
    patient_id: _ID,
    session: SessionDep,
    access: Annotated[Access, require("previsit_summary", "read", patient_param="patient_id")],
) -> PrevisitOut:
    """Since the last visit (or 90 days): BP trend and control, time in range, adherence,
    changes and decisions, alerts, questions, symptoms and goal progress."""
    now = clock.utcnow()
    visit, rule, _ = _current(session, patient_id, now)
    s = _summary(session, patient_id, now)
    access.entry.details = _summary_details(s, "json")
    session.commit()
    return PrevisitOut(
        patient_id=s.patient.id,
        pseudonym=s.patient.pseudonym,
        generated_at=s.generated_at,
        period_start=s.start,
        period_end=s.end,
        period_basis=s.period_basis,
        last_visit_at=s.last_visit_at,
        target_systolic=s.target[0],
        target_diastolic=s.target[1],
        target_from_goal=s.target_from_goal,
        control=s.control,
        sbp_7d=s.sbp_7d,
        dbp_7d=s.dbp_7d,
        readings_7d=s.readings_7d,
        weekly_means=[WeekOut(**vars(w)) for w in s.weeks],
        readings=s.readings,
        days_with_readings=s.days_with_readings,
        days_in_range=s.days_in_range,
        time_in_range=s.time_in_range,
        doses_taken=s.doses_taken,
        doses_total=s.doses_total,
        adherence=s.adherence,
        decision_counts=s.decision_counts,
        changes=[ChangeOut(**vars(c)) for c in s.changes],
        envelope_changes=[EnvelopeOut(**vars(e)) for e in s.envelopes],
        alerts=[AlertOut(**vars(a)) for a in s.alerts],
        alerts_raised=s.alerts_raised,
        alerts_acknowledged=s.alerts_acknowledged,
        questions=[QuestionOut(**vars(q)) for q in s.questions],
        symptom_reports=[
            SymptomOut(time=x.time, symptoms=list(x.symptoms), note=x.note) for x in s.symptoms
        ],
        symptom_counts=s.symptom_counts,
        goals=[GoalOut(**vars(g)) for g in s.goals],
        next_visit=_care_team_view(session, visit, rule, now),
    )


@router.get("/patients/{patient_id}/previsit-summary.pdf")
def previsit_summary_pdf(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access,
        require(
            "previsit_summary",
            "read",
            patient_param="patient_id",
            audit_as="previsit_summary.read",
        ),
    ],
) -> Response:
    """The pre-visit summary as a PDF (text-extractable; period, generation time and page
    numbers in the footer)."""
    from app.portal import visits as pages

    now = clock.utcnow()
    service.recompute(session, patient_id=patient_id, now=now)
    s = _summary(session, patient_id, now)
    pdf = pages.previsit_pdf(s, generated_by=access.principal.full_name or access.principal.actor)
    access.entry.details = _summary_details(s, "pdf")
    session.commit()
    safe = "".join(ch for ch in s.patient.pseudonym if ch.isalnum() or ch in "-_")[:40]
    name = f"previsit-{safe or 'patient'}-{now:%Y%m%d}.pdf"
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )
