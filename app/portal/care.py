"""Portal pages: shared goals and the care plan. Registered on the portal router when imported.

`/portal/patients/{patient_id}/care` shows the patient's goals with their progress, the forms
to propose, agree, decline and withdraw, the care plan in plain language and (for the care
team) the note editor; `/care/history` lists the plan's versions. Both the care team and the
patient (on their own record) use the page; each sees the acts open to their side. Every
form works without JavaScript. A refused act (a conflict, invalid input) is rolled back, its
audit entry committed alone with the refusal's code, and the page shown again with the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.api.deps import Access, SessionDep, SettingsDep, require
from app.core import clock
from app.core.config import Settings
from app.patients.models import Patient
from app.portal import drafts
from app.portal.web import portal_page, refuse, render
from app.portal.web import router as router
from audit import service as audit
from loops.care import service
from loops.care.models import CarePlanVersion, Goal, GoalKind, GoalStatus
from loops.care.plain import KIND_LABELS
from loops.care.progress import Progress

_ID = Annotated[str, Path(max_length=36)]
HISTORY_PAGE = 50
CLOSED_SHOWN = 10
NOTICES = {
    "proposed": "Goal proposed. It is in force once the other side agrees.",
    "agreed": "Goal agreed: it is now part of the care plan.",
    "declined": "Goal declined.",
    "withdrawn": "Goal withdrawn.",
    "note": "Care plan note saved.",
    "unchanged": "Nothing changed: the care plan stays at the same version.",
}
# What the propose form asks for each kind (label, unit, min, max, step).
KIND_FIELDS: dict[str, tuple[str, str, float, float, float]] = {
    GoalKind.DAILY_STEPS: ("Steps a day, at least", "steps", 500, 50_000, 100),
    GoalKind.ADHERENCE: ("Share of doses taken, at least", "0.5 to 1", 0.5, 1, 0.05),
    GoalKind.SODIUM: ("Sodium a day, at most", "mg", 500, 6_000, 100),
    GoalKind.SLEEP: ("Sleep a night, at least", "hours", 4, 12, 0.5),
}


@dataclass(frozen=True)
class GoalView:
    """A goal as the page shows it to the signed-in side."""

    goal: Goal
    text: str
    label: str
    progress: Progress | None
    waiting_for: str | None
    can_agree: bool
    can_decline: bool
    can_withdraw: bool


def _views(goals: list[Goal], found: Mapping[str, Progress], side: service.Side) -> list[GoalView]:
    out = []
    for g in goals:
        waiting = service.waiting_for(g)
        proposed = g.status == GoalStatus.PROPOSED
        mine = g.proposed_by_role == side
        out.append(
            GoalView(
                goal=g,
                text=service.goal_text(g),
                label=KIND_LABELS[GoalKind(g.kind)],
                progress=found.get(g.id),
                waiting_for=None if waiting is None else waiting.value,
                can_agree=proposed and not mine,
                can_decline=proposed and not mine,
                can_withdraw=(proposed and mine) or g.status == GoalStatus.AGREED,
            )
        )
    return out


def _care_page(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    patient_id: str,
    *,
    notice: str = "",
    error: str = "",
    error_goal: str = "",
    propose_form: Mapping[str, Any] | None = None,
    note_form: Mapping[str, Any] | None = None,
    status: int = 200,
) -> Response:
    """Read the goals, progress and plan (writing a plan version if it changed), audit what
    was shown, commit, and render."""
    now = clock.utcnow()
    patient = session.get(Patient, patient_id)
    state = service.ensure_plan(
        session,
        patient_id=patient_id,
        now=now,
        actor=access.principal.actor,
        actor_role=access.principal.role,
    )
    goals = service.list_goals(session, patient_id=patient_id, include_closed=True)
    open_goals = [g for g in goals if g.status in service.OPEN]
    closed = [g for g in goals if g.status not in service.OPEN][:CLOSED_SHOWN]
    found = service.goal_progress(session, patient_id=patient_id, goals=open_goals, now=now)
    side = service.side_of(access.principal.role)
    shown = {"version": state.version.version, "created": state.created, "goals": len(goals)}
    if access.entry.written:  # after a refusal: the page is a read of its own
        audit.record(
            session,
            actor=access.principal.actor,
            actor_role=access.principal.role,
            action="care_plan.read",
            resource_type="care_plan",
            resource_id=patient_id,
            patient_id=patient_id,
            details=shown,
        )
    else:
        access.entry.details = {**access.entry.details, **shown}
    session.commit()
    content = state.version.content
    note_values = dict(note_form or {})
    return render(
        request,
        "care.html",
        {
            "principal": access.principal,
            "user_id": int(access.principal.id),
            "idle_minutes": settings.session_idle_minutes,
            "nav": "panel",
            "now": now,
            "path": request.url.path,
            "patient": patient,
            "patient_id": patient_id,
            "side": side.value,
            "is_clinician": side is service.Side.CLINICIAN,
            "goals": _views(open_goals, found, side),
            "closed": _views(closed, {}, side),
            "plan": state.version,
            "content": content,
            "kinds": [(k.value, KIND_LABELS[k]) for k in GoalKind],
            "kind_fields": KIND_FIELDS,
            "form": dict(propose_form or {}),
            "note_text": note_values.get("note", content.get("note", "")),
            "note_reason": note_values.get("change_reason", ""),
            "notice": notice,
            "error": error,
            "error_goal": error_goal,
        },
        status=status,
    )


@router.get("/patients/{patient_id}/care", response_class=HTMLResponse)
@portal_page
def care_page(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("care_plan", "read", patient_param="patient_id", audit_as="care_plan.read"),
    ],
    notice: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    """Goals with progress, the forms for each side, the care plan in plain language."""
    access.entry.resource_type = "care_plan"
    draft = drafts.take(request, access.principal.id)
    form = draft if draft.get("form") == "propose" else None
    note = draft if draft.get("form") == "note" else None
    return _care_page(
        request,
        session,
        access,
        settings,
        patient_id,
        notice=NOTICES.get(notice, ""),
        propose_form=form,
        note_form=note,
    )


def _see_other(patient_id: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"/portal/patients/{patient_id}/care?notice={notice}", status_code=303)


def _number(raw: str, name: str) -> float | None:
    text = raw.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise service.CareInvalid("invalid_target", f"{name} must be a number", name) from exc
    if value != value or value in (float("inf"), float("-inf")):
        raise service.CareInvalid("invalid_target", f"{name} must be a number", name)
    return value


@router.post("/patients/{patient_id}/care/goals")
@portal_page
def propose_goal(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access, require("goal", "write", patient_param="patient_id", audit_as="goal.propose")
    ],
    kind: Annotated[str, Form(max_length=32)],
    target_systolic: Annotated[str, Form(max_length=16)] = "",
    target_diastolic: Annotated[str, Form(max_length=16)] = "",
    target_value: Annotated[str, Form(max_length=16)] = "",
    note: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Propose a goal from the page; the other side agrees or declines it."""
    entered = {
        "kind": kind,
        "target_systolic": target_systolic,
        "target_diastolic": target_diastolic,
        "target_value": target_value,
        "note": note,
    }
    side = service.side_of(access.principal.role)
    try:
        if kind not in {k.value for k in GoalKind}:
            raise service.CareInvalid("invalid_kind", "choose what the goal is about", "kind")
        goal_kind = GoalKind(kind)
        is_bp = goal_kind is GoalKind.BLOOD_PRESSURE
        goal = service.propose_goal(
            session,
            patient_id=patient_id,
            kind=goal_kind,
            # The form has every field; only the kind's own fields count.
            target_value=None if is_bp else _number(target_value, "target_value"),
            target_systolic=_number(target_systolic, "target_systolic") if is_bp else None,
            target_diastolic=_number(target_diastolic, "target_diastolic") if is_bp else None,
            note=note,
            side=side,
            user_id=int(access.principal.id),
            now=clock.utcnow(),
        )
    except service.CareError as exc:
        refuse(session, access, exc.code)
        return _care_page(
            request,
            session,
            access,
            settings,
            patient_id,
            error=exc.message,
            propose_form=entered,
            status=exc.status,
        )
    access.entry.resource_type, access.entry.resource_id = "goal", goal.id
    access.entry.details = {"kind": goal.kind, "side": side.value}
    session.commit()
    return _see_other(patient_id, "proposed")


def _goal_act(
    request: Request,
    session: Session,
    access: Access,
    settings: Settings,
    patient_id: str,
    goal_id: str,
    act: Literal["agree", "decline", "withdraw"],
    reason: str,
) -> Response:
    side = service.side_of(access.principal.role)
    user_id = int(access.principal.id)
    now = clock.utcnow()
    access.entry.resource_type, access.entry.resource_id = "goal", goal_id
    try:
        change = service.act_on_goal(
            session,
            act=act,
            goal_id=goal_id,
            patient_id=patient_id,
            side=side,
            user_id=user_id,
            reason=reason,
            now=now,
            actor=access.principal.actor,
            actor_role=access.principal.role,
        )
    except service.CareNotFound as exc:
        # Another patient's goal, or none: the same page as an out-of-scope patient.
        refuse(session, access, exc.code)
        return render(
            request,
            "error.html",
            {"principal": None, "title": "Not found", "code": exc.code, "detail": exc.message},
            status=404,
        )
    except service.CareError as exc:
        refuse(session, access, exc.code)
        return _care_page(
            request,
            session,
            access,
            settings,
            patient_id,
            error=exc.message,
            error_goal=goal_id,
            status=exc.status,
        )
    access.entry.details = {
        "kind": change.goal.kind,
        "status": change.goal.status,
        "side": side.value,
        "superseded": change.superseded.id if change.superseded else None,
        "plan_version": change.plan.version.version if change.plan else None,
    }
    session.commit()
    return _see_other(patient_id, {"agree": "agreed", "decline": "declined"}.get(act, "withdrawn"))


@router.post("/patients/{patient_id}/care/goals/{goal_id}/agree")
@portal_page
def agree_goal(
    request: Request,
    patient_id: _ID,
    goal_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access, require("goal", "write", patient_param="patient_id", audit_as="goal.agree")
    ],
) -> Response:
    """Agree to a goal the other side proposed."""
    return _goal_act(request, session, access, settings, patient_id, goal_id, "agree", "")


@router.post("/patients/{patient_id}/care/goals/{goal_id}/decline")
@portal_page
def decline_goal(
    request: Request,
    patient_id: _ID,
    goal_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access, require("goal", "write", patient_param="patient_id", audit_as="goal.decline")
    ],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Decline a goal the other side proposed."""
    return _goal_act(request, session, access, settings, patient_id, goal_id, "decline", reason)


@router.post("/patients/{patient_id}/care/goals/{goal_id}/withdraw")
@portal_page
def withdraw_goal(
    request: Request,
    patient_id: _ID,
    goal_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access, require("goal", "write", patient_param="patient_id", audit_as="goal.withdraw")
    ],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Withdraw a goal your side proposed, or end an agreed goal."""
    return _goal_act(request, session, access, settings, patient_id, goal_id, "withdraw", reason)


@router.post("/patients/{patient_id}/care/note")
@portal_page
def edit_note(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("care_plan", "write", patient_param="patient_id", audit_as="care_plan.note"),
    ],
    note: Annotated[str, Form(max_length=2000)] = "",
    change_reason: Annotated[str, Form(max_length=500)] = "",
    expected_version: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Save the clinician's note with a reason (a new plan version when it changed)."""
    access.entry.resource_type, access.entry.resource_id = "care_plan", patient_id
    try:
        state = service.set_note(
            session,
            patient_id=patient_id,
            note=note,
            change_reason=change_reason,
            user_id=int(access.principal.id),
            now=clock.utcnow(),
            actor=access.principal.actor,
            actor_role=access.principal.role,
            expected_version=int(expected_version) if expected_version.isdigit() else None,
        )
    except service.CareError as exc:
        refuse(session, access, exc.code)
        return _care_page(
            request,
            session,
            access,
            settings,
            patient_id,
            error=exc.message,
            note_form={"note": note, "change_reason": change_reason},
            status=exc.status,
        )
    access.entry.details = {"version": state.version.version, "changed": state.created}
    session.commit()
    return _see_other(patient_id, "note" if state.created else "unchanged")


@router.get("/patients/{patient_id}/care/history", response_class=HTMLResponse)
@portal_page
def care_history(
    request: Request,
    patient_id: _ID,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[
        Access,
        require("care_plan", "read", patient_param="patient_id", audit_as="care_plan.history"),
    ],
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
) -> Response:
    """Every version of the care plan, newest first: who, when, why and what changed."""
    rows = service.plan_versions(
        session, patient_id=patient_id, limit=HISTORY_PAGE + 1, offset=(page - 1) * HISTORY_PAGE
    )
    more = len(rows) > HISTORY_PAGE
    rows = rows[:HISTORY_PAGE]
    # What changed from the version before each (the one after it in this list, or the next
    # page's first, which is fetched as the extra row).
    older: list[CarePlanVersion | None] = [*rows[1:], None] if rows else []
    if more:
        extra = service.plan_versions(
            session, patient_id=patient_id, limit=1, offset=page * HISTORY_PAGE
        )
        older[-1] = extra[0] if extra else None
    changes = [
        service.changed_sections(o.content if o else None, v.content)
        for v, o in zip(rows, older, strict=True)
    ]
    names = service.user_names(session, [v.created_by for v in rows])
    patient = session.get(Patient, patient_id)
    access.entry.resource_type, access.entry.resource_id = "care_plan", patient_id
    access.entry.details = {"count": len(rows), "page": page}
    session.commit()
    return render(
        request,
        "care_history.html",
        {
            "principal": access.principal,
            "user_id": int(access.principal.id),
            "idle_minutes": settings.session_idle_minutes,
            "nav": "panel",
            "now": clock.utcnow(),
            "path": request.url.path,
            "patient": patient,
            "patient_id": patient_id,
            "versions": list(zip(rows, changes, strict=True)),
            "names": names,
            "page": page,
            "more": more,
        },
    )
