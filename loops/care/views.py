"""Shared goals and the care plan over HTTP (patient API under /api/v1/me, care-team API under
/api/v1). The care plan is JSON, or a FHIR R4 CarePlan with `Accept: application/fhir+json`
or `?format=fhir`; `fhir_router` adds the FHIR search `GET /fhir/R4/CarePlan?patient=`.

Every route declares `require()`. Patient routes act on the caller's own record; care-team
routes find the patient through the path (the patient id, or the goal's patient), so an
unknown goal and another team's goal both answer 404. Each act commits its audit entry with
the act; a care-plan version written on the way adds its own `care_plan.version` entry.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.api.deps import Access, SessionDep, query_patient, require
from app.auth.principal import Principal
from app.core import clock
from app.core.errors import ProblemError
from loops.care import service
from loops.care.fhir import care_plan_resource
from loops.care.models import CarePlanVersion, Goal, GoalKind, GoalLog
from loops.care.progress import Progress

router = APIRouter(prefix="/api/v1", tags=["patient-clinician loop"])
fhir_router = APIRouter(prefix="/fhir/R4", tags=["fhir"])
FHIR_JSON = "application/fhir+json"
_ID = Annotated[str, Path(max_length=36)]


def _own_patient(session: Session, request: Request, principal: Principal) -> str | None:
    return principal.patient_id


def _goal_patient(session: Session, request: Request, principal: Principal) -> str | None:
    return service.goal_patient(session, request.path_params.get("goal_id", ""))


def _problem(exc: service.CareError) -> ProblemError:
    extra = {"field": exc.field} if exc.field else None
    return ProblemError(exc.status, exc.code, exc.message, extra=extra)


# ---------------------------------------------------------------------------- models


class ProgressRead(BaseModel):
    """How a goal is going, from the data (see docs/goals-and-care-plans.md)."""

    value: float | None = Field(description="BP: mean systolic; adherence: share 0-1")
    value_diastolic: float | None
    target: float | None
    target_diastolic: float | None
    met: bool | None = Field(description="None: not enough data yet")
    days_with_data: int
    window_days: int
    count: int
    days_28: int
    days_meeting_28: int | None
    share_meeting_28: float | None
    sentence: str


def _round(value: float | None, places: int) -> float | None:
    return None if value is None else round(value, places)


def progress_read(p: Progress) -> ProgressRead:
    """Progress for the API: means to a tenth, shares to four places."""
    places = 4 if p.kind is GoalKind.ADHERENCE else 1
    share = p.share_meeting_28
    return ProgressRead(
        value=_round(p.value, places),
        value_diastolic=_round(p.value_diastolic, 1),
        target=p.target,
        target_diastolic=p.target_diastolic,
        met=p.met,
        days_with_data=p.days_with_data,
        window_days=p.window_days,
        count=p.count,
        days_28=p.days_28,
        days_meeting_28=p.days_meeting_28,
        share_meeting_28=_round(share, 4),
        sentence=p.sentence,
    )


class GoalRead(BaseModel):
    """A shared goal as both sides see it."""

    id: str
    kind: GoalKind
    status: str
    text: str
    target_value: float | None
    target_systolic: float | None
    target_diastolic: float | None
    note: str
    proposed_by: Literal["patient", "clinician"]
    proposed_at: datetime
    patient_agreed_at: datetime | None
    clinician_agreed_at: datetime | None
    waiting_for: Literal["patient", "clinician"] | None
    closed_at: datetime | None
    close_reason: str
    supersedes_id: str | None
    progress: ProgressRead | None


def goal_read(goal: Goal, progress: Progress | None = None) -> GoalRead:
    """A goal for the API."""
    waiting = service.waiting_for(goal)
    return GoalRead(
        id=goal.id,
        kind=GoalKind(goal.kind),
        status=goal.status,
        text=service.goal_text(goal),
        target_value=goal.target_value,
        target_systolic=goal.target_systolic,
        target_diastolic=goal.target_diastolic,
        note=goal.note,
        proposed_by="patient" if goal.proposed_by_role == "patient" else "clinician",
        proposed_at=goal.proposed_at,
        patient_agreed_at=goal.patient_agreed_at,
        clinician_agreed_at=goal.clinician_agreed_at,
        waiting_for=None if waiting is None else waiting.value,
        closed_at=goal.closed_at,
        close_reason=goal.close_reason,
        supersedes_id=goal.supersedes_id,
        progress=progress_read(progress) if progress is not None else None,
    )


class GoalIn(BaseModel):
    """A proposed goal: `target_value` for steps, adherence (0.5-1), sodium (mg/day at most)
    and sleep (hours a night at least); `target_systolic`/`target_diastolic` for BP."""

    kind: GoalKind
    target_value: float | None = Field(default=None, allow_inf_nan=False)
    target_systolic: float | None = Field(default=None, allow_inf_nan=False)
    target_diastolic: float | None = Field(default=None, allow_inf_nan=False)
    note: str = Field(default="", max_length=1000)


class GoalActIn(BaseModel):
    """Why a goal is declined or withdrawn (optional; shown to both sides)."""

    reason: str = Field(default="", max_length=500)


class GoalLogIn(BaseModel):
    """The patient's figure for one day: sodium in mg, or sleep in hours."""

    day: date
    value: float = Field(allow_inf_nan=False)


class GoalLogRead(BaseModel):
    """A stored daily log; `replaced` when it replaced that day's earlier log."""

    goal_id: str
    day: date
    value: float
    logged_at: datetime
    replaced: bool = False


def _log_read(log: GoalLog, replaced: bool = False) -> GoalLogRead:
    return GoalLogRead(
        goal_id=log.goal_id,
        day=log.day,
        value=log.value,
        logged_at=log.logged_at,
        replaced=replaced,
    )


class CarePlanRead(BaseModel):
    """The care plan in force: its version and its content."""

    patient_id: str
    version: int
    content_hash: str
    created_at: datetime
    change_reason: str
    medications: list[dict[str, Any]]
    goals: list[dict[str, Any]]
    envelope: dict[str, Any]
    care_team: list[dict[str, Any]]
    note: str


def _plan_read(version: CarePlanVersion) -> CarePlanRead:
    c = version.content
    return CarePlanRead(
        patient_id=version.patient_id,
        version=version.version,
        content_hash=version.content_hash,
        created_at=version.created_at,
        change_reason=version.change_reason,
        medications=list(c.get("medications", [])),
        goals=list(c.get("goals", [])),
        envelope=dict(c.get("envelope") or {}),
        care_team=list(c.get("care_team", [])),
        note=str(c.get("note", "")),
    )


class NoteIn(BaseModel):
    """The clinician's note, the reason for the change, and optionally the version the
    editor started from (a newer version since answers 409 stale_care_plan)."""

    note: str = Field(max_length=2000)
    change_reason: str = Field(max_length=500)
    expected_version: int | None = Field(default=None, ge=0)


class VersionRead(BaseModel):
    """One version of the care plan."""

    version: int
    content_hash: str
    created_at: datetime
    created_by: str | None = Field(description="who wrote it; None: the system")
    change_reason: str
    content: dict[str, Any]


# ------------------------------------------------------------------------- shared acts


def _list_goals(
    session: Session, access: Access, patient_id: str, include_closed: bool
) -> list[GoalRead]:
    now = clock.utcnow()
    goals = service.list_goals(session, patient_id=patient_id, include_closed=include_closed)
    found = service.goal_progress(session, patient_id=patient_id, goals=goals, now=now)
    access.entry.details = {"count": len(goals)}
    session.commit()
    return [goal_read(g, found.get(g.id)) for g in goals]


def _propose(session: Session, access: Access, patient_id: str, body: GoalIn) -> GoalRead:
    side = service.side_of(access.principal.role)
    now = clock.utcnow()
    try:
        goal = service.propose_goal(
            session,
            patient_id=patient_id,
            kind=body.kind,
            target_value=body.target_value,
            target_systolic=body.target_systolic,
            target_diastolic=body.target_diastolic,
            note=body.note,
            side=side,
            user_id=int(access.principal.id),
            now=now,
        )
    except service.CareError as exc:
        raise _problem(exc) from exc
    access.entry.resource_type, access.entry.resource_id = "goal", goal.id
    access.entry.details = {"kind": goal.kind, "side": side.value}
    found = service.goal_progress(session, patient_id=patient_id, goals=[goal], now=now)
    session.commit()
    return goal_read(goal, found.get(goal.id))


def _act(
    session: Session,
    access: Access,
    patient_id: str,
    goal_id: str,
    act: Literal["agree", "decline", "withdraw"],
    reason: str = "",
) -> GoalRead:
    side = service.side_of(access.principal.role)
    now = clock.utcnow()
    user_id = int(access.principal.id)
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
    except service.CareError as exc:
        raise _problem(exc) from exc
    access.entry.details = {
        "kind": change.goal.kind,
        "status": change.goal.status,
        "side": side.value,
        "superseded": change.superseded.id if change.superseded else None,
        "plan_version": change.plan.version.version if change.plan else None,
    }
    found = service.goal_progress(session, patient_id=patient_id, goals=[change.goal], now=now)
    session.commit()
    return goal_read(change.goal, found.get(change.goal.id))


def _wants_fhir(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "fhir"
    return FHIR_JSON in request.headers.get("accept", "")


def _care_plan(
    request: Request, session: Session, access: Access, patient_id: str, format: str | None
) -> Response:
    now = clock.utcnow()
    try:
        state = service.ensure_plan(
            session,
            patient_id=patient_id,
            now=now,
            actor=access.principal.actor,
            actor_role=access.principal.role,
        )
    except service.CareError as exc:
        raise _problem(exc) from exc
    fhir = _wants_fhir(request, format)
    access.entry.resource_type, access.entry.resource_id = "care_plan", patient_id
    access.entry.details = {
        "version": state.version.version,
        "created": state.created,
        "format": "fhir" if fhir else "json",
    }
    headers = {"ETag": f'"{state.version.content_hash}"'}
    if fhir:
        goals = service.list_goals(session, patient_id=patient_id)
        found = service.goal_progress(session, patient_id=patient_id, goals=goals, now=now)
        resource = care_plan_resource(state.version, progress=found)
        session.commit()
        return JSONResponse(resource, media_type=FHIR_JSON, headers=headers)
    session.commit()
    body = _plan_read(state.version).model_dump(mode="json")
    return JSONResponse(body, headers=headers)


_FORMAT = Annotated[Literal["json", "fhir"] | None, Query()]


# ---------------------------------------------------------------------- patient API


@router.get("/me/goals", response_model=list[GoalRead])
def my_goals(
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "read", patient_from=_own_patient, audit_as="goal.read")
    ],
    include_closed: Annotated[bool, Query()] = False,
) -> list[GoalRead]:
    """The patient's goals (proposed and agreed; closed ones too with include_closed), each
    with its progress."""
    assert access.patient_id is not None
    return _list_goals(session, access, access.patient_id, include_closed)


@router.post("/me/goals", response_model=GoalRead, status_code=201)
def propose_my_goal(
    body: GoalIn,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "write", patient_from=_own_patient, audit_as="goal.propose")
    ],
) -> GoalRead:
    """Propose a goal; it is in force once the care team agrees."""
    assert access.patient_id is not None
    return _propose(session, access, access.patient_id, body)


@router.post("/me/goals/{goal_id}/agree", response_model=GoalRead)
def agree_my_goal(
    goal_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "write", patient_from=_own_patient, audit_as="goal.agree")
    ],
) -> GoalRead:
    """Agree to a goal the care team proposed."""
    assert access.patient_id is not None
    return _act(session, access, access.patient_id, goal_id, "agree")


@router.post("/me/goals/{goal_id}/decline", response_model=GoalRead)
def decline_my_goal(
    goal_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "write", patient_from=_own_patient, audit_as="goal.decline")
    ],
    body: GoalActIn | None = None,
) -> GoalRead:
    """Decline a goal the care team proposed."""
    assert access.patient_id is not None
    reason = body.reason if body else ""
    return _act(session, access, access.patient_id, goal_id, "decline", reason)


@router.post("/me/goals/{goal_id}/withdraw", response_model=GoalRead)
def withdraw_my_goal(
    goal_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "write", patient_from=_own_patient, audit_as="goal.withdraw")
    ],
    body: GoalActIn | None = None,
) -> GoalRead:
    """Withdraw a goal you proposed, or end an agreed goal."""
    assert access.patient_id is not None
    reason = body.reason if body else ""
    return _act(session, access, access.patient_id, goal_id, "withdraw", reason)


@router.post("/me/goals/{goal_id}/logs", response_model=GoalLogRead, status_code=201)
def log_my_goal(
    goal_id: _ID,
    body: GoalLogIn,
    response: Response,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "write", patient_from=_own_patient, audit_as="goal.log")
    ],
) -> GoalLogRead:
    """Log a day's sodium (mg) or sleep (hours); a second log of a day replaces the first
    (200 with `replaced: true`)."""
    assert access.patient_id is not None
    try:
        log, replaced = service.log_goal(
            session,
            goal_id=goal_id,
            patient_id=access.patient_id,
            day=body.day,
            value=body.value,
            now=clock.utcnow(),
        )
    except service.CareError as exc:
        raise _problem(exc) from exc
    access.entry.resource_type, access.entry.resource_id = "goal", goal_id
    access.entry.details = {"day": body.day.isoformat(), "replaced": replaced}
    session.commit()
    if replaced:
        response.status_code = 200
    return _log_read(log, replaced)


@router.get("/me/goals/{goal_id}/logs", response_model=list[GoalLogRead])
def my_goal_logs(
    goal_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "read", patient_from=_own_patient, audit_as="goal.logs")
    ],
) -> list[GoalLogRead]:
    """A goal's daily logs, newest first."""
    assert access.patient_id is not None
    if service.goal_patient(session, goal_id) != access.patient_id:
        raise ProblemError(404, "not_found", "no such goal in your scope")
    logs = service.goal_logs(session, goal_id=goal_id, patient_id=access.patient_id)
    access.entry.resource_type, access.entry.resource_id = "goal", goal_id
    access.entry.details = {"count": len(logs)}
    session.commit()
    return [_log_read(log) for log in logs]


@router.get("/me/care-plan", response_model=CarePlanRead)
def my_care_plan(
    request: Request,
    session: SessionDep,
    access: Annotated[
        Access, require("care_plan", "read", patient_from=_own_patient, audit_as="care_plan.read")
    ],
    format: _FORMAT = None,
) -> Response:
    """The patient's care plan in force (JSON, or FHIR CarePlan)."""
    assert access.patient_id is not None
    return _care_plan(request, session, access, access.patient_id, format)


# -------------------------------------------------------------------- care-team API


@router.get("/patients/{patient_id}/goals", response_model=list[GoalRead])
def patient_goals(
    patient_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "read", patient_param="patient_id", audit_as="goal.read")
    ],
    include_closed: Annotated[bool, Query()] = False,
) -> list[GoalRead]:
    """A patient's goals with their progress (care team)."""
    return _list_goals(session, access, patient_id, include_closed)


@router.post("/patients/{patient_id}/goals", response_model=GoalRead, status_code=201)
def propose_patient_goal(
    patient_id: _ID,
    body: GoalIn,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "write", patient_param="patient_id", audit_as="goal.propose")
    ],
) -> GoalRead:
    """Propose a goal to a patient; it is in force once the patient agrees."""
    return _propose(session, access, patient_id, body)


def _resolved(access: Access) -> str:
    if access.patient_id is None:  # an unknown goal (require() answers 404 before this)
        raise ProblemError(404, "not_found", "no such goal in your scope")
    return access.patient_id


@router.post("/goals/{goal_id}/agree", response_model=GoalRead)
def agree_goal(
    goal_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "write", patient_from=_goal_patient, audit_as="goal.agree")
    ],
) -> GoalRead:
    """Agree to a goal the other side proposed."""
    return _act(session, access, _resolved(access), goal_id, "agree")


@router.post("/goals/{goal_id}/decline", response_model=GoalRead)
def decline_goal(
    goal_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "write", patient_from=_goal_patient, audit_as="goal.decline")
    ],
    body: GoalActIn | None = None,
) -> GoalRead:
    """Decline a goal the other side proposed."""
    return _act(session, access, _resolved(access), goal_id, "decline", body.reason if body else "")


@router.post("/goals/{goal_id}/withdraw", response_model=GoalRead)
def withdraw_goal(
    goal_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("goal", "write", patient_from=_goal_patient, audit_as="goal.withdraw")
    ],
    body: GoalActIn | None = None,
) -> GoalRead:
    """Withdraw a goal your side proposed, or end an agreed goal."""
    reason = body.reason if body else ""
    return _act(session, access, _resolved(access), goal_id, "withdraw", reason)


@router.get("/patients/{patient_id}/care-plan", response_model=CarePlanRead)
def patient_care_plan(
    patient_id: _ID,
    request: Request,
    session: SessionDep,
    access: Annotated[
        Access,
        require("care_plan", "read", patient_param="patient_id", audit_as="care_plan.read"),
    ],
    format: _FORMAT = None,
) -> Response:
    """A patient's care plan in force (JSON, or FHIR CarePlan)."""
    return _care_plan(request, session, access, patient_id, format)


@router.put("/patients/{patient_id}/care-plan/note", response_model=CarePlanRead)
def edit_note(
    patient_id: _ID,
    body: NoteIn,
    session: SessionDep,
    access: Annotated[
        Access,
        require("care_plan", "write", patient_param="patient_id", audit_as="care_plan.note"),
    ],
) -> CarePlanRead:
    """Replace the clinician's note with a reason; a new version when anything changed."""
    try:
        state = service.set_note(
            session,
            patient_id=patient_id,
            note=body.note,
            change_reason=body.change_reason,
            user_id=int(access.principal.id),
            now=clock.utcnow(),
            actor=access.principal.actor,
            actor_role=access.principal.role,
            expected_version=body.expected_version,
        )
    except service.CareError as exc:
        raise _problem(exc) from exc
    access.entry.resource_type, access.entry.resource_id = "care_plan", patient_id
    access.entry.details = {"version": state.version.version, "changed": state.created}
    session.commit()
    return _plan_read(state.version)


@router.get("/patients/{patient_id}/care-plan/versions", response_model=list[VersionRead])
def care_plan_versions(
    patient_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access,
        require("care_plan", "read", patient_param="patient_id", audit_as="care_plan.history"),
    ],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> list[VersionRead]:
    """The care plan's versions, newest first, with who wrote each and why."""
    rows = service.plan_versions(session, patient_id=patient_id, limit=limit, offset=offset)
    names = service.user_names(session, [v.created_by for v in rows])
    access.entry.resource_type, access.entry.resource_id = "care_plan", patient_id
    access.entry.details = {"count": len(rows)}
    session.commit()
    return [
        VersionRead(
            version=v.version,
            content_hash=v.content_hash,
            created_at=v.created_at,
            created_by=names.get(v.created_by) if v.created_by is not None else None,
            change_reason=v.change_reason,
            content=v.content,
        )
        for v in rows
    ]


# ------------------------------------------------------------------------------ FHIR


@fhir_router.get("/CarePlan")
def search_care_plans(
    request: Request,
    session: SessionDep,
    access: Annotated[
        Access,
        require("care_plan", "read", patient_from=query_patient, audit_as="care_plan.search"),
    ],
) -> JSONResponse:
    """The patient's care plan in force as a FHIR searchset Bundle (one entry)."""
    assert access.patient_id is not None
    now = clock.utcnow()
    try:
        state = service.ensure_plan(
            session,
            patient_id=access.patient_id,
            now=now,
            actor=access.principal.actor,
            actor_role=access.principal.role,
        )
    except service.CareError as exc:
        raise _problem(exc) from exc
    goals = service.list_goals(session, patient_id=access.patient_id)
    found = service.goal_progress(session, patient_id=access.patient_id, goals=goals, now=now)
    resource = care_plan_resource(state.version, progress=found)
    access.entry.resource_type, access.entry.resource_id = "care_plan", access.patient_id
    access.entry.details = {"version": state.version.version, "created": state.created}
    session.commit()
    entry = {
        "fullUrl": f"CarePlan/{resource['id']}",
        "resource": resource,
        "search": {"mode": "match"},
    }
    return JSONResponse(
        {"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [entry]},
        media_type=FHIR_JSON,
    )
