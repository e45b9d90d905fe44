"""Shared goals and the versioned care plan. Functions take keyword arguments and never commit
(routes and jobs do); every care-plan version queues its own `care_plan.version` audit entry.

Goals: either side (the patient, or a clinician of the care team) proposes; the proposer's
side counts as agreeing; the other side agrees or declines. A goal is in force once both
sides agreed; agreeing a goal supersedes the goal of the same kind agreed before. While a
goal is proposed only its proposer's side may withdraw it (the other side declines); an
agreed goal may be withdrawn by either side. Status changes go through GOAL_TRANSITIONS.

The care plan is assembled from the data (active regimens and their ladders, agreed goals,
the envelope in force, the care team) plus the clinician's note. A new CarePlanVersion is
written whenever the content's hash differs from the newest version's: when the plan is
read, when a goal is agreed or withdrawn, when the note is edited, and by `snapshot_all`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.models import User
from app.core import clock
from app.patients.models import CareTeam, CareTeamMember, CareTeamPatient, Patient
from audit import service as audit
from audit.canonical import canonical_json
from device_ingest.models import MedicationEvent, Reading
from loops import service as loop_service
from loops.care import plain
from loops.care.models import (
    GOAL_TRANSITIONS,
    CarePlanVersion,
    Goal,
    GoalKind,
    GoalLog,
    GoalStatus,
)
from loops.care.progress import (
    BpPoint,
    DosePoint,
    GoalTarget,
    LogPoint,
    Progress,
    ProgressData,
    StepPoint,
    progress,
    today_of,
    window_start,
)
from loops.messages.service import strip_controls
from loops.models import MedicationRegimen, RegimenStatus, TitrationLadder
from policies.envelope import EnvelopeRules
from policies.models import SafetyEnvelope

SYSTEM_ACTOR = "system:care_plan"
CONTENT_SCHEMA = 1
# Advisory-lock class of a patient's goal changes (two-key form: its own key space).
_GOAL_LOCK_CLASS = 0x474F41
SNAPSHOT_CHUNK = 500
LOG_MAX_AGE_DAYS = 90
# A patient east of UTC may log "today" while it is still yesterday in UTC.
LOG_AHEAD = timedelta(hours=14)
OPEN = (GoalStatus.PROPOSED, GoalStatus.AGREED)
LOGGABLE = (GoalKind.SODIUM, GoalKind.SLEEP)
# (low, high) of a plausible target per kind; BP has its own pair of ranges.
TARGET_RANGES: dict[GoalKind, tuple[float, float]] = {
    GoalKind.DAILY_STEPS: (500, 50_000),
    GoalKind.ADHERENCE: (0.5, 1.0),
    GoalKind.SODIUM: (500, 6_000),
    GoalKind.SLEEP: (4, 12),
}
SBP_RANGE = (80.0, 180.0)
DBP_RANGE = (50.0, 110.0)
# What a daily log may say at all (a log outside the target range is data, not an error).
LOG_RANGES: dict[GoalKind, tuple[float, float]] = {
    GoalKind.SODIUM: (0, 20_000),
    GoalKind.SLEEP: (0, 24),
}
UNITS: dict[GoalKind, str] = {
    GoalKind.BLOOD_PRESSURE: "mmHg",
    GoalKind.DAILY_STEPS: "steps/day",
    GoalKind.ADHERENCE: "share of doses",
    GoalKind.SODIUM: "mg/day",
    GoalKind.SLEEP: "hours/night",
}


# --------------------------------------------------------------------------- errors


class CareError(Exception):
    """A refused act, with the HTTP status and machine code the caller answers with."""

    status = 400

    def __init__(self, code: str, message: str, field: str = "") -> None:
        self.code, self.message, self.field = code, message, field
        super().__init__(message)


class CareNotFound(CareError):
    """No such goal for this patient (404: out of scope looks the same)."""

    status = 404


class CareConflict(CareError):
    """The goal's or plan's state does not allow the act (409)."""

    status = 409


class CareInvalid(CareError):
    """The input makes no sense (422), e.g. a target outside the plausible range."""

    status = 422


class Side(StrEnum):
    """Who acts on a goal: the patient, or (any clinician of) the care team."""

    PATIENT = "patient"
    CLINICIAN = "clinician"


def clean_text(value: str) -> str:
    """Free text as stored: without control characters other than line breaks and tabs
    (PostgreSQL refuses NUL in text and in JSON) and without surrounding blanks."""
    return strip_controls(value, single_line=False).strip()


def side_of(role: str) -> Side:
    """The side a role acts for (only patients and clinicians act on goals)."""
    return Side.PATIENT if role == "patient" else Side.CLINICIAN


# ---------------------------------------------------------------------- goal targets


def check_target(
    kind: GoalKind,
    *,
    target_value: float | None,
    target_systolic: float | None,
    target_diastolic: float | None,
) -> None:
    """Raise CareInvalid unless the target fits the kind and lies in its plausible range."""
    if kind is GoalKind.BLOOD_PRESSURE:
        if target_value is not None:
            raise CareInvalid(
                "invalid_target",
                "a blood-pressure goal has a systolic and a diastolic target, not a single value",
                "target_value",
            )
        for name, value, (low, high) in (
            ("target_systolic", target_systolic, SBP_RANGE),
            ("target_diastolic", target_diastolic, DBP_RANGE),
        ):
            if value is None:
                raise CareInvalid("invalid_target", f"{name} is required", name)
            if not low <= value <= high:
                raise CareInvalid(
                    "invalid_target", f"{name} must be {low:g} to {high:g} mmHg", name
                )
        assert target_systolic is not None
        assert target_diastolic is not None
        if target_systolic <= target_diastolic:
            raise CareInvalid(
                "invalid_target",
                "the systolic target must be above the diastolic",
                "target_systolic",
            )
        return
    if target_systolic is not None or target_diastolic is not None:
        raise CareInvalid(
            "invalid_target", f"a {kind} goal has a single target_value", "target_systolic"
        )
    low, high = TARGET_RANGES[kind]
    if target_value is None:
        raise CareInvalid("invalid_target", "target_value is required", "target_value")
    if not low <= target_value <= high:
        raise CareInvalid(
            "invalid_target",
            f"a {kind} target must be {low:g} to {high:g} {UNITS[kind]}",
            "target_value",
        )


def target_of(goal: Goal) -> GoalTarget:
    """The goal's target as the progress rules take it."""
    return GoalTarget(
        kind=GoalKind(goal.kind),
        value=goal.target_value,
        systolic=goal.target_systolic,
        diastolic=goal.target_diastolic,
    )


def goal_text(goal: Goal) -> str:
    """What the goal asks for, in plain words."""
    return plain.goal_sentence(
        goal.kind,
        target_value=goal.target_value,
        target_systolic=goal.target_systolic,
        target_diastolic=goal.target_diastolic,
    )


def waiting_for(goal: Goal) -> Side | None:
    """The side whose agreement a proposed goal waits for (None when not proposed)."""
    if goal.status != GoalStatus.PROPOSED:
        return None
    return Side.CLINICIAN if goal.proposed_by_role == Side.PATIENT else Side.PATIENT


# ----------------------------------------------------------------------------- goals


def list_goals(session: Session, *, patient_id: str, include_closed: bool = False) -> list[Goal]:
    """The patient's goals: agreed first, then proposed, newest first within each; with
    `include_closed` also the declined, withdrawn and superseded ones."""
    stmt = select(Goal).where(col(Goal.patient_id) == patient_id)
    if not include_closed:
        stmt = stmt.where(col(Goal.status).in_(OPEN))
    rows = list(session.scalars(stmt.order_by(col(Goal.proposed_at).desc(), col(Goal.id))))
    order = {GoalStatus.AGREED: 0, GoalStatus.PROPOSED: 1}
    return sorted(rows, key=lambda g: order.get(GoalStatus(g.status), 2))


def propose_goal(
    session: Session,
    *,
    patient_id: str,
    kind: GoalKind,
    target_value: float | None,
    target_systolic: float | None,
    target_diastolic: float | None,
    note: str,
    side: Side,
    user_id: int,
    now: datetime,
) -> Goal:
    """A new proposed goal; the proposer's side counts as having agreed."""
    check_target(
        kind,
        target_value=target_value,
        target_systolic=target_systolic,
        target_diastolic=target_diastolic,
    )
    goal = Goal(
        patient_id=patient_id,
        kind=kind,
        status=GoalStatus.PROPOSED,
        target_value=target_value,
        target_systolic=target_systolic,
        target_diastolic=target_diastolic,
        note=clean_text(note),
        proposed_by=user_id,
        proposed_by_role=side,
        proposed_at=now,
    )
    if side is Side.PATIENT:
        goal.patient_agreed_at = now
    else:
        goal.clinician_agreed_at, goal.clinician_agreed_by = now, user_id
    session.add(goal)
    session.flush()
    return goal


def goal_patient(session: Session, goal_id: str) -> str | None:
    """The patient a goal belongs to (None for an unknown goal)."""
    return session.scalar(select(col(Goal.patient_id)).where(col(Goal.id) == goal_id))


def _locked_goal(session: Session, goal_id: str, patient_id: str) -> Goal:
    # The patient's lock first, then the goal: agreements of one patient's goals queue here
    # on PostgreSQL, so two goals of a kind cannot both end up agreed (SQLite writers are
    # serial already). An advisory lock, as for envelope edits: the application role may
    # not lock `patients` rows FOR UPDATE (docs/postgresql.md).
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:kind, hashtext(:patient))"),
            {"kind": _GOAL_LOCK_CLASS, "patient": patient_id},
        )
    goal = session.scalars(
        select(Goal)
        .where(col(Goal.id) == goal_id, col(Goal.patient_id) == patient_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if goal is None:
        raise CareNotFound("not_found", "no such goal in your scope")
    return goal


def _allowed(goal: Goal, new: GoalStatus) -> None:
    try:
        loop_service.check_transition(GOAL_TRANSITIONS, GoalStatus(goal.status), new)
    except loop_service.TransitionError as exc:
        raise CareConflict(
            "invalid_transition", f"the goal is {goal.status}: it cannot become {new}"
        ) from exc


@dataclass(frozen=True)
class GoalChange:
    """What an act on a goal did: the goal, a goal it superseded, a new plan version."""

    goal: Goal
    superseded: Goal | None = None
    plan: PlanState | None = None


def agree_goal(
    session: Session,
    *,
    goal_id: str,
    patient_id: str,
    side: Side,
    user_id: int,
    now: datetime,
    actor: str,
    actor_role: str,
) -> GoalChange:
    """The other side agrees: the goal is in force, supersedes the previously agreed goal
    of its kind, and the care plan gets a new version."""
    goal = _locked_goal(session, goal_id, patient_id)
    _allowed(goal, GoalStatus.AGREED)
    if side == goal.proposed_by_role:
        raise CareConflict(
            "own_proposal", "this goal was proposed by your side: the other side agrees to it"
        )
    goal.status = GoalStatus.AGREED
    if side is Side.PATIENT:
        goal.patient_agreed_at = now
    else:
        goal.clinician_agreed_at, goal.clinician_agreed_by = now, user_id
    previous = session.scalars(
        select(Goal).where(
            col(Goal.patient_id) == patient_id,
            col(Goal.kind) == goal.kind,
            col(Goal.status) == GoalStatus.AGREED,
            col(Goal.id) != goal.id,
        )
    ).all()
    superseded = None
    for old in previous:
        _allowed(old, GoalStatus.SUPERSEDED)
        old.status = GoalStatus.SUPERSEDED
        old.closed_at, old.closed_by, old.close_reason = now, user_id, "superseded"
        session.add(old)
        superseded = old
    goal.supersedes_id = superseded.id if superseded else None
    session.add(goal)
    session.flush()
    plan = ensure_plan(
        session,
        patient_id=patient_id,
        now=now,
        actor=actor,
        actor_role=actor_role,
        trigger="goal_agreed",
        created_by=user_id,
        reason=f"Goal agreed: {plain.KIND_LABELS[GoalKind(goal.kind)].lower()}",
    )
    return GoalChange(goal, superseded, plan)


def decline_goal(
    session: Session,
    *,
    goal_id: str,
    patient_id: str,
    side: Side,
    user_id: int,
    reason: str,
    now: datetime,
) -> GoalChange:
    """The other side declines a proposed goal."""
    goal = _locked_goal(session, goal_id, patient_id)
    _allowed(goal, GoalStatus.DECLINED)
    if side == goal.proposed_by_role:
        raise CareConflict(
            "own_proposal", "this goal was proposed by your side: withdraw it instead"
        )
    goal.status = GoalStatus.DECLINED
    goal.closed_at, goal.closed_by, goal.close_reason = now, user_id, clean_text(reason)
    session.add(goal)
    session.flush()
    return GoalChange(goal)


def withdraw_goal(
    session: Session,
    *,
    goal_id: str,
    patient_id: str,
    side: Side,
    user_id: int,
    reason: str,
    now: datetime,
    actor: str,
    actor_role: str,
) -> GoalChange:
    """The proposer's side withdraws a proposed goal, or either side ends an agreed one
    (the care plan then gets a new version)."""
    goal = _locked_goal(session, goal_id, patient_id)
    was = GoalStatus(goal.status)
    _allowed(goal, GoalStatus.WITHDRAWN)
    if was is GoalStatus.PROPOSED and side != goal.proposed_by_role:
        raise CareConflict(
            "not_proposer", "only the side that proposed a goal may withdraw it: decline it"
        )
    goal.status = GoalStatus.WITHDRAWN
    goal.closed_at, goal.closed_by, goal.close_reason = now, user_id, clean_text(reason)
    session.add(goal)
    session.flush()
    plan = None
    if was is GoalStatus.AGREED:
        plan = ensure_plan(
            session,
            patient_id=patient_id,
            now=now,
            actor=actor,
            actor_role=actor_role,
            trigger="goal_withdrawn",
            created_by=user_id,
            reason=f"Goal withdrawn: {plain.KIND_LABELS[GoalKind(goal.kind)].lower()}",
        )
    return GoalChange(goal, None, plan)


GoalAct = Literal["agree", "decline", "withdraw"]


def act_on_goal(
    session: Session,
    *,
    act: GoalAct,
    goal_id: str,
    patient_id: str,
    side: Side,
    user_id: int,
    reason: str,
    now: datetime,
    actor: str,
    actor_role: str,
) -> GoalChange:
    """Agree to, decline or withdraw a goal: the one entry point of the API and the portal."""
    if act == "agree":
        return agree_goal(
            session,
            goal_id=goal_id,
            patient_id=patient_id,
            side=side,
            user_id=user_id,
            now=now,
            actor=actor,
            actor_role=actor_role,
        )
    if act == "decline":
        return decline_goal(
            session,
            goal_id=goal_id,
            patient_id=patient_id,
            side=side,
            user_id=user_id,
            reason=reason,
            now=now,
        )
    return withdraw_goal(
        session,
        goal_id=goal_id,
        patient_id=patient_id,
        side=side,
        user_id=user_id,
        reason=reason,
        now=now,
        actor=actor,
        actor_role=actor_role,
    )


def log_goal(
    session: Session,
    *,
    goal_id: str,
    patient_id: str,
    day: date,
    value: float,
    now: datetime,
) -> tuple[GoalLog, bool]:
    """The patient's figure for a day (sodium mg, sleep hours). One log per goal and day: a
    second log of the same day replaces the first (returns True as `replaced`)."""
    goal = session.scalars(
        select(Goal).where(col(Goal.id) == goal_id, col(Goal.patient_id) == patient_id)
    ).first()
    if goal is None:
        raise CareNotFound("not_found", "no such goal in your scope")
    kind = GoalKind(goal.kind)
    if kind not in LOGGABLE:
        raise CareInvalid(
            "not_loggable", f"{kind} goals are measured by devices, not logged", "goal_id"
        )
    if goal.status not in OPEN:
        raise CareConflict("goal_closed", f"the goal is {goal.status}: logs are closed")
    if day > (now + LOG_AHEAD).date():
        raise CareInvalid("day_in_future", "the day has not begun yet", "day")
    if day < today_of(now) - timedelta(days=LOG_MAX_AGE_DAYS):
        raise CareInvalid("day_too_old", f"logs go back at most {LOG_MAX_AGE_DAYS} days", "day")
    low, high = LOG_RANGES[kind]
    if not low <= value <= high:
        raise CareInvalid(
            "invalid_value", f"a {kind} log must be {low:g} to {high:g} {UNITS[kind]}", "value"
        )
    for _ in range(2):
        existing = session.scalars(
            select(GoalLog)
            .where(col(GoalLog.goal_id) == goal_id, col(GoalLog.day) == day)
            .execution_options(populate_existing=True)
        ).first()
        if existing is not None:
            existing.value, existing.logged_at = value, now
            session.add(existing)
            session.flush()
            return existing, True
        row = GoalLog(goal_id=goal_id, patient_id=patient_id, day=day, value=value, logged_at=now)
        try:
            with audit.savepoint(session):
                session.add(row)
        except IntegrityError:
            continue  # a concurrent first log of the day: replace it
        return row, False
    raise CareConflict("busy", "the log changed while saving: try again")


def goal_logs(session: Session, *, goal_id: str, patient_id: str) -> list[GoalLog]:
    """A goal's logs, newest day first."""
    return list(
        session.scalars(
            select(GoalLog)
            .where(col(GoalLog.goal_id) == goal_id, col(GoalLog.patient_id) == patient_id)
            .order_by(col(GoalLog.day).desc())
        )
    )


# -------------------------------------------------------------------------- progress


def progress_data(session: Session, *, patient_id: str, now: datetime) -> ProgressData:
    """The rows progress looks at: BP and step readings (all classes and statuses: the pure
    rules decide what counts), dose events, and the patient's logs, of the last 28 days."""
    since = window_start(now)
    bp: list[BpPoint] = []
    steps: list[StepPoint] = []
    for when, kind, dclass, status, statistic, sbp, dbp, value in session.execute(
        select(
            col(Reading.effective_start),
            col(Reading.kind),
            col(Reading.device_class),
            col(Reading.status),
            col(Reading.statistic),
            col(Reading.systolic),
            col(Reading.diastolic),
            col(Reading.value),
        ).where(
            col(Reading.patient_id) == patient_id,
            col(Reading.kind).in_(("blood_pressure", "step_count")),
            col(Reading.effective_start) >= since,
            col(Reading.effective_start) <= now,
        )
    ):
        if kind == "blood_pressure" and sbp is not None and dbp is not None:
            bp.append(BpPoint(when, sbp, dbp, dclass, status, statistic))
        elif kind == "step_count" and value is not None:
            steps.append(StepPoint(when, value, status, statistic))
    doses = [
        DosePoint(when, taken)
        for when, taken in session.execute(
            select(col(MedicationEvent.effective_start), col(MedicationEvent.taken)).where(
                col(MedicationEvent.patient_id) == patient_id,
                col(MedicationEvent.effective_start) >= since,
                col(MedicationEvent.effective_start) <= now,
            )
        )
    ]
    # A day's figure is a fact about the patient, not about one goal: the logs of every goal
    # of a kind count, the latest log of a day winning.
    latest: dict[GoalKind, dict[date, tuple[datetime, float]]] = defaultdict(dict)
    for kind, day, value, logged_at in session.execute(
        select(col(Goal.kind), col(GoalLog.day), col(GoalLog.value), col(GoalLog.logged_at))
        .join(Goal, col(Goal.id) == col(GoalLog.goal_id))
        .where(col(GoalLog.patient_id) == patient_id, col(GoalLog.day) >= since.date())
    ):
        seen = latest[GoalKind(kind)].get(day)
        if seen is None or logged_at > seen[0]:
            latest[GoalKind(kind)][day] = (logged_at, value)
    logs: dict[GoalKind, Sequence[LogPoint]] = {
        kind: [LogPoint(day, v) for day, (_, v) in sorted(days.items())]
        for kind, days in latest.items()
    }
    return ProgressData(bp=bp, steps=steps, doses=doses, logs=logs)


def goal_progress(
    session: Session, *, patient_id: str, goals: Iterable[Goal], now: datetime
) -> dict[str, Progress]:
    """Progress of the proposed and agreed goals among `goals`, by goal id."""
    open_goals = [g for g in goals if g.status in OPEN]
    if not open_goals:
        return {}
    data = progress_data(session, patient_id=patient_id, now=now)
    return {g.id: progress(target_of(g), data, now) for g in open_goals}


def agreed_progress(
    session: Session, *, patient_id: str, now: datetime
) -> list[tuple[Goal, Progress]]:
    """The agreed goals with their progress (e.g. for a pre-visit summary)."""
    goals = [g for g in list_goals(session, patient_id=patient_id) if g.status == GoalStatus.AGREED]
    found = goal_progress(session, patient_id=patient_id, goals=goals, now=now)
    return [(g, found[g.id]) for g in goals]


# ------------------------------------------------------------------------- care plan


@dataclass(frozen=True)
class Medication:
    """An active regimen on its ladder."""

    regimen_id: str
    drug: str
    rxnorm_code: str
    unit: str
    frequency: str
    steps: list[float]
    current_step: int
    started_at: datetime


@dataclass
class PlanFacts:
    """What a patient's care plan is made of, read from the database."""

    patient_id: str
    medications: list[Medication] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    envelope: SafetyEnvelope | None = None
    care_team: list[tuple[str, list[tuple[int, str]]]] = field(default_factory=list)


def gather_plans(
    session: Session, patient_ids: Sequence[str], *, now: datetime
) -> dict[str, PlanFacts]:
    """The care-plan facts of many patients, one query per kind of fact."""
    ids = list(dict.fromkeys(patient_ids))
    facts = {pid: PlanFacts(pid) for pid in ids}
    if not ids:
        return facts
    for regimen, ladder in session.execute(
        select(MedicationRegimen, TitrationLadder)
        .join(TitrationLadder, col(TitrationLadder.id) == col(MedicationRegimen.ladder_id))
        .where(
            col(MedicationRegimen.patient_id).in_(ids),
            col(MedicationRegimen.status) == RegimenStatus.ACTIVE,
        )
        .order_by(col(MedicationRegimen.started_at), col(MedicationRegimen.id))
    ).tuples():
        facts[regimen.patient_id].medications.append(
            Medication(
                regimen_id=regimen.id,
                drug=ladder.drug,
                rxnorm_code=ladder.rxnorm_code,
                unit=ladder.unit,
                frequency=ladder.frequency,
                steps=[float(s) for s in ladder.steps],
                current_step=regimen.current_step,
                started_at=regimen.started_at,
            )
        )
    for goal in session.scalars(
        select(Goal)
        .where(col(Goal.patient_id).in_(ids), col(Goal.status) == GoalStatus.AGREED)
        .order_by(col(Goal.kind), col(Goal.proposed_at), col(Goal.id))
    ):
        facts[goal.patient_id].goals.append(goal)
    for pid, envelope in loop_service.envelopes_in_force(session, ids, at=now).items():
        facts[pid].envelope = envelope
    teams: dict[int, list[tuple[int, str]]] = defaultdict(list)
    memberships = session.execute(
        select(col(CareTeamPatient.patient_id), col(CareTeam.id), col(CareTeam.name))
        .join(CareTeam, col(CareTeam.id) == col(CareTeamPatient.care_team_id))
        .where(col(CareTeamPatient.patient_id).in_(ids))
        .order_by(col(CareTeam.name))
    ).all()
    team_ids = sorted({team_id for _, team_id, _ in memberships})
    if team_ids:
        for team_id, user_id, name in session.execute(
            select(col(CareTeamMember.care_team_id), col(User.id), col(User.full_name))
            .join(User, col(User.id) == col(CareTeamMember.user_id))
            .where(col(CareTeamMember.care_team_id).in_(team_ids), col(User.is_active))
            .order_by(col(User.full_name), col(User.id))
        ):
            teams[team_id].append((user_id, name))
    for pid, team_id, team_name in memberships:
        facts[pid].care_team.append((team_name, teams.get(team_id, [])))
    return facts


def _iso(value: datetime | None) -> str | None:
    return None if value is None else clock.iso(value)


def build_content(facts: PlanFacts, note: str) -> dict[str, Any]:
    """The plan's content as stored in a version (pure; the hash is taken over it)."""
    medications = [
        {
            "regimen_id": m.regimen_id,
            "drug": m.drug,
            "rxnorm_code": m.rxnorm_code,
            "unit": m.unit,
            "frequency": m.frequency,
            "ladder": m.steps,
            "current_step": m.current_step,
            "current_dose": m.steps[m.current_step] if 0 <= m.current_step < len(m.steps) else None,
            "text": plain.medication_sentence(m.drug, m.unit, m.frequency, m.steps, m.current_step),
        }
        for m in facts.medications
    ]
    goals = [
        {
            "id": g.id,
            "kind": g.kind,
            "target_value": g.target_value,
            "target_systolic": g.target_systolic,
            "target_diastolic": g.target_diastolic,
            "note": g.note,
            "agreed_at": _iso(
                max(t for t in (g.patient_agreed_at, g.clinician_agreed_at) if t is not None)
            ),
            "text": goal_text(g),
        }
        for g in facts.goals
    ]
    # The envelope governs the newest active regimen (as the loop reads it).
    newest = max(facts.medications, key=lambda m: m.started_at, default=None)
    envelope: dict[str, Any]
    if facts.envelope is None:
        envelope = {"version": None, "rules": None, "text": plain.envelope_sentences(None)}
    else:
        rules = EnvelopeRules.model_validate(facts.envelope.rules)
        stored = rules.model_dump(mode="json")
        # A frozenset's order depends on the process's string hashing: sort it, or the same
        # rules would hash differently in another process.
        stored["auto_actions"] = sorted(str(a) for a in rules.auto_actions)
        envelope = {
            "version": facts.envelope.version,
            "rules": stored,
            "text": plain.envelope_sentences(
                rules,
                drug=newest.drug if newest else "",
                unit=newest.unit if newest else "mg",
                steps=newest.steps if newest else (),
            ),
        }
    return {
        "schema": CONTENT_SCHEMA,
        "patient_id": facts.patient_id,
        "medications": medications,
        "goals": goals,
        "envelope": envelope,
        "care_team": [
            {"team": name, "members": [{"user_id": uid, "name": n} for uid, n in members]}
            for name, members in facts.care_team
        ],
        "note": note,
    }


def content_hash(content: dict[str, Any]) -> str:
    """SHA-256 of the content's canonical JSON."""
    return hashlib.sha256(canonical_json(content)).hexdigest()


def changed_sections(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The top-level sections that differ between two contents (all of them when no old)."""
    keys = [k for k in new if k not in ("schema", "patient_id")]
    if old is None:
        return keys
    return [k for k in keys if old.get(k) != new.get(k)]


def latest_version(session: Session, *, patient_id: str) -> CarePlanVersion | None:
    """The newest version of a patient's plan."""
    return session.scalars(
        select(CarePlanVersion)
        .where(col(CarePlanVersion.patient_id) == patient_id)
        .order_by(col(CarePlanVersion.version).desc())
        .limit(1)
    ).first()


@dataclass(frozen=True)
class PlanState:
    """The plan's newest version after a check, and whether the check wrote it."""

    version: CarePlanVersion
    created: bool
    changed: list[str]


def _write_version(
    session: Session,
    *,
    facts: PlanFacts,
    now: datetime,
    actor: str,
    actor_role: str,
    trigger: str,
    created_by: int | None,
    reason: str,
    note: str | None,
    latest: CarePlanVersion | None,
    reread: bool = False,
) -> PlanState:
    """Write a version if the content changed. A concurrent writer of the same version
    number (PostgreSQL: two first reads at once) makes the insert fail inside a savepoint;
    the newest version is then read again and compared, so the loser answers, not fails."""
    pid = facts.patient_id
    for attempt in range(3):
        if attempt or reread:
            latest = latest_version(session, patient_id=pid)
        text = note if note is not None else (latest.note if latest else "")
        content = build_content(facts, text)
        digest = content_hash(content)
        if latest is not None and latest.content_hash == digest:
            return PlanState(latest, False, [])
        changed = changed_sections(latest.content if latest else None, content)
        row = CarePlanVersion(
            patient_id=pid,
            version=(latest.version if latest else 0) + 1,
            content=content,
            content_hash=digest,
            note=text,
            change_reason=reason.strip()
            or ("First version" if latest is None else f"Changed: {', '.join(changed)}"),
            created_by=created_by,
            created_at=now,
        )
        try:
            with audit.savepoint(session):
                session.add(row)
        except IntegrityError:
            continue
        audit.record(
            session,
            actor=actor,
            actor_role=actor_role,
            action="care_plan.version",
            resource_type="care_plan",
            resource_id=str(row.id),
            patient_id=pid,
            details={
                "version": row.version,
                "content_hash": digest,
                "trigger": trigger,
                "changed": changed,
            },
        )
        return PlanState(row, True, changed)
    raise CareConflict("care_plan_busy", "the care plan is being changed: try again")


def ensure_plan(
    session: Session,
    *,
    patient_id: str,
    now: datetime,
    actor: str,
    actor_role: str,
    trigger: str = "read",
    created_by: int | None = None,
    reason: str = "",
    note: str | None = None,
) -> PlanState:
    """The plan's newest version, writing (and auditing) a new one first if the content
    changed since. `note` replaces the clinician's note (None keeps it)."""
    facts = gather_plans(session, [patient_id], now=now)[patient_id]
    return _write_version(
        session,
        facts=facts,
        now=now,
        actor=actor,
        actor_role=actor_role,
        trigger=trigger,
        created_by=created_by,
        reason=reason,
        note=note,
        latest=None,
        reread=True,
    )


def set_note(
    session: Session,
    *,
    patient_id: str,
    note: str,
    change_reason: str,
    user_id: int,
    now: datetime,
    actor: str,
    actor_role: str,
    expected_version: int | None = None,
) -> PlanState:
    """Replace the clinician's note, with a reason; a new version if anything changed.
    With `expected_version`, refuse (409) when someone wrote a newer version since."""
    change_reason = clean_text(change_reason)
    if not change_reason:
        raise CareInvalid("reason_required", "say why the care plan changes", "change_reason")
    latest = latest_version(session, patient_id=patient_id)
    if expected_version is not None and (latest.version if latest else 0) != expected_version:
        raise CareConflict(
            "stale_care_plan",
            f"the care plan is at version {latest.version if latest else 0}, not "
            f"{expected_version}: reload it",
        )
    return ensure_plan(
        session,
        patient_id=patient_id,
        now=now,
        actor=actor,
        actor_role=actor_role,
        trigger="note",
        created_by=user_id,
        reason=change_reason,
        note=clean_text(note),
    )


def plan_versions(
    session: Session, *, patient_id: str, limit: int = 50, offset: int = 0
) -> list[CarePlanVersion]:
    """The plan's versions, newest first."""
    return list(
        session.scalars(
            select(CarePlanVersion)
            .where(col(CarePlanVersion.patient_id) == patient_id)
            .order_by(col(CarePlanVersion.version).desc())
            .limit(limit)
            .offset(offset)
        )
    )


def snapshot_all(*, session: Session, now: datetime) -> list[CarePlanVersion]:
    """Version every patient whose plan changed since its newest version (a patient with
    no version yet gets its first). For the daily job; the caller commits."""
    written: list[CarePlanVersion] = []
    last = ""
    while True:
        ids = list(
            session.scalars(
                select(col(Patient.id))
                .where(col(Patient.id) > last)
                .order_by(col(Patient.id))
                .limit(SNAPSHOT_CHUNK)
            )
        )
        if not ids:
            return written
        last = ids[-1]
        newest = (
            select(
                col(CarePlanVersion.patient_id).label("pid"),
                func.max(col(CarePlanVersion.version)).label("v"),
            )
            .where(col(CarePlanVersion.patient_id).in_(ids))
            .group_by(col(CarePlanVersion.patient_id))
            .subquery()
        )
        latest = {
            v.patient_id: v
            for v in session.scalars(
                select(CarePlanVersion).join(
                    newest,
                    (col(CarePlanVersion.patient_id) == newest.c.pid)
                    & (col(CarePlanVersion.version) == newest.c.v),
                )
            )
        }
        for pid, facts in gather_plans(session, ids, now=now).items():
            state = _write_version(
                session,
                facts=facts,
                now=now,
                actor=SYSTEM_ACTOR,
                actor_role="system",
                trigger="daily",
                created_by=None,
                reason="",
                note=None,
                latest=latest.get(pid),
            )
            if state.created:
                written.append(state.version)


def user_names(session: Session, ids: Iterable[int | None]) -> dict[int, str]:
    """Full names of users by id (for who wrote a version)."""
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    rows = session.execute(
        select(col(User.id), col(User.full_name)).where(col(User.id).in_(wanted))
    ).tuples()
    return {int(uid or 0): name for uid, name in rows}
