"""Visits: one due review per patient, set by the cadence rule or a clinician's override;
completing one computes the next. Never commits (callers commit with their audit entry)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import ColumnElement, String, case, func, select, type_coerce
from sqlalchemy.orm import Session
from sqlmodel import col

from app.db import new_id
from app.patients.models import Patient
from device_ingest.models import DeviceClass, MedicationEvent, Reading, ReadingStatus
from loops.alerts import AlertType
from loops.care.models import Goal, GoalKind, GoalStatus
from loops.messages.service import strip_controls
from loops.models import Alert, AlertStatus, MedicationRegimen, RegimenStatus
from loops.protocol import target as protocol_target
from loops.service import check_transition
from loops.visits import cadence
from loops.visits.cadence import Cadence, CadenceFacts, Reason
from loops.visits.models import VISIT_TRANSITIONS, Visit, VisitKind, VisitStatus

# Readings far enough back to count 90 controlled days, each with its 7-day window.
HISTORY = timedelta(days=cadence.STABLE_DAYS + cadence.CONTROL_WINDOW_DAYS + 3)
URGENT_TYPES = (AlertType.CRISIS, AlertType.LOW_BP)
CHUNK = 200  # patients per batch of fact queries
MAX_REASON = 1000
MAX_NOTE = 2000
# The furthest a clinician may set a review: a year (the rule's longest is six months). A
# date years out would silently take the patient off every due list.
MAX_AHEAD = timedelta(days=366)


class VisitError(ValueError):
    """A refused visit change: `code` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Recomputed:
    """What a recompute did for one patient: created the visit, updated its rule fields, or
    found them unchanged."""

    visit: Visit
    change: str  # created, updated, unchanged
    rule: Cadence


def _utc(value: datetime | str) -> datetime:
    """An aggregate's or a raw column's time, aware in UTC (SQLite returns naive text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ------------------------------------------------------------------ facts


def facts_for(
    session: Session, *, patient_ids: Sequence[str], now: datetime
) -> dict[str, CadenceFacts]:
    """The cadence facts of these patients: one query per kind of fact."""
    ids = list(patient_ids)
    if not ids:
        return {}
    urgent: dict[str, dict[str, datetime]] = defaultdict(dict)
    for pid, kind, raised in session.execute(
        select(col(Alert.patient_id), col(Alert.type), func.min(col(Alert.raised_at)))
        .where(
            col(Alert.patient_id).in_(ids),
            col(Alert.status) != AlertStatus.RESOLVED,
            col(Alert.type).in_([str(t) for t in URGENT_TYPES]),
        )
        .group_by(col(Alert.patient_id), col(Alert.type))
    ):
        urgent[pid][kind] = _utc(raised)
    readings: dict[str, list[tuple[datetime, float, float]]] = defaultdict(list)
    for pid, raw, sbp, dbp in session.execute(
        select(
            col(Reading.patient_id),
            type_coerce(col(Reading.effective_start), String),
            col(Reading.systolic),
            col(Reading.diastolic),
        ).where(
            col(Reading.patient_id).in_(ids),
            col(Reading.effective_start) >= now - HISTORY,
            col(Reading.effective_start) <= now,
            col(Reading.kind) == "blood_pressure",
            col(Reading.device_class) == DeviceClass.VALIDATED_CUFF,
            col(Reading.status) == ReadingStatus.ACCEPTED,
            col(Reading.statistic).is_(None),
            col(Reading.systolic).is_not(None),
            col(Reading.diastolic).is_not(None),
        )
    ):
        readings[pid].append((_utc(raw), float(sbp), float(dbp)))
    doses = {
        pid: (int(taken or 0), int(n))
        for pid, taken, n in session.execute(
            select(
                col(MedicationEvent.patient_id),
                func.sum(case((col(MedicationEvent.taken), 1), else_=0)),
                func.count(),
            )
            .where(
                col(MedicationEvent.patient_id).in_(ids),
                col(MedicationEvent.effective_start) > now - cadence.ADHERENCE_WINDOW,
                col(MedicationEvent.effective_start) <= now,
            )
            .group_by(col(MedicationEvent.patient_id))
        )
    }
    changed = {
        pid: _utc(when)
        for pid, when in session.execute(
            select(
                col(MedicationRegimen.patient_id), func.max(col(MedicationRegimen.last_changed_at))
            )
            .where(
                col(MedicationRegimen.patient_id).in_(ids),
                col(MedicationRegimen.status) == RegimenStatus.ACTIVE,
            )
            .group_by(col(MedicationRegimen.patient_id))
        )
        if when is not None
    }
    goals = bp_goals(session, patient_ids=ids)
    risk: dict[str, bool] = {}
    enrolled: dict[str, datetime] = {}
    for pid, diabetes, ckd, created in session.execute(
        select(
            col(Patient.id),
            col(Patient.has_diabetes),
            col(Patient.has_ckd),
            col(Patient.created_at),
        ).where(col(Patient.id).in_(ids))
    ):
        risk[pid] = bool(diabetes or ckd)
        enrolled[pid] = _utc(created)
    reviewed = {
        pid: _utc(when)
        for pid, when in session.execute(
            select(col(Visit.patient_id), func.max(col(Visit.completed_at)))
            .where(col(Visit.patient_id).in_(ids), col(Visit.status) == VisitStatus.COMPLETED)
            .group_by(col(Visit.patient_id))
        )
        if when is not None
    }
    out: dict[str, CadenceFacts] = {}
    for pid in ids:
        goal = goals.get(pid)
        target = goal if goal is not None else protocol_target(risk.get(pid, False))
        mine = readings.get(pid, [])
        week = [r for r in mine if r[0] > now - timedelta(days=cadence.CONTROL_WINDOW_DAYS)]
        taken, n = doses.get(pid, (0, 0))
        out[pid] = CadenceFacts(
            now=now,
            since=reviewed.get(pid) or enrolled.get(pid),
            crisis_alert_at=urgent[pid].get(AlertType.CRISIS) if pid in urgent else None,
            low_bp_alert_at=urgent[pid].get(AlertType.LOW_BP) if pid in urgent else None,
            sbp_7d=sum(r[1] for r in week) / len(week) if week else None,
            dbp_7d=sum(r[2] for r in week) / len(week) if week else None,
            readings_7d=len(week),
            days_7d=len({r[0].date() for r in week}),
            target=target,
            target_from_goal=goal is not None,
            last_change_at=changed.get(pid),
            adherence_28d=taken / n if n else None,
            controlled_days=cadence.controlled_days(mine, target=target, today=now.date()),
        )
    return out


def bp_goals(session: Session, *, patient_ids: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Each patient's agreed home BP goal (the most recently proposed agreed one), if any."""
    found: dict[str, tuple[float, float]] = {}
    rows = session.execute(
        select(
            col(Goal.patient_id),
            col(Goal.target_systolic),
            col(Goal.target_diastolic),
        )
        .where(
            col(Goal.patient_id).in_(list(patient_ids)),
            col(Goal.kind) == GoalKind.BLOOD_PRESSURE,
            col(Goal.status) == GoalStatus.AGREED,
            col(Goal.target_systolic).is_not(None),
            col(Goal.target_diastolic).is_not(None),
        )
        .order_by(col(Goal.proposed_at).desc(), col(Goal.id))
    )
    for pid, sbp, dbp in rows:
        found.setdefault(pid, (float(sbp), float(dbp)))
    return found


# ------------------------------------------------------------------ visits


def due_visit(session: Session, *, patient_id: str) -> Visit | None:
    """The patient's due visit, if any (at most one: a partial unique index)."""
    return session.scalars(
        select(Visit).where(
            col(Visit.patient_id) == patient_id, col(Visit.status) == VisitStatus.DUE
        )
    ).first()


def last_completed(session: Session, *, patient_id: str) -> Visit | None:
    """The patient's most recently completed visit."""
    return session.scalars(
        select(Visit)
        .where(col(Visit.patient_id) == patient_id, col(Visit.status) == VisitStatus.COMPLETED)
        .order_by(col(Visit.completed_at).desc())
        .limit(1)
    ).first()


def _apply(visit: Visit, rule: Cadence, now: datetime) -> None:
    visit.rule_kind = rule.kind
    visit.rule_due_by = rule.due_by
    visit.reasons = [str(r) for r in rule.reasons]
    if visit.override_due_by is None:
        visit.kind = rule.kind
        visit.due_by = rule.due_by


def _recompute_one(
    session: Session, patient_id: str, facts: CadenceFacts, existing: Visit | None, now: datetime
) -> Recomputed:
    rule = cadence.next_review(facts)
    if existing is None:
        visit_id = new_id()
        _insert_if_none_due(
            session,
            {
                "id": visit_id,
                "patient_id": patient_id,
                "status": VisitStatus.DUE.value,
                "kind": rule.kind.value,
                "due_by": rule.due_by,
                "reasons": [str(r) for r in rule.reasons],
                "rule_kind": rule.kind.value,
                "rule_due_by": rule.due_by,
                "computed_at": now,
                "override_reason": "",
                "outcome_note": "",
                "created_at": now,
            },
        )
        visit = due_visit(session, patient_id=patient_id)
        if visit is None:  # pragma: no cover - the insert or a concurrent one left a row
            raise RuntimeError("no due visit after insert")
        if visit.id == visit_id:
            return Recomputed(visit, "created", rule)
        existing = visit  # another writer created it first: update that one
    existing.computed_at = now
    # Dates count from facts (cadence.py), so an unchanged patient keeps the same date.
    change = "unchanged" if _same(existing, rule) else "updated"
    _apply(existing, rule, now)
    session.add(existing)
    return Recomputed(existing, change, rule)


def _same(visit: Visit, rule: Cadence) -> bool:
    return (
        visit.rule_kind == rule.kind
        and _utc(visit.rule_due_by) == rule.due_by
        and list(visit.reasons) == [str(r) for r in rule.reasons]
    )


def _insert_if_none_due(session: Session, values: dict[str, object]) -> None:
    """Insert a due visit unless the patient already has one (the partial unique index):
    ON CONFLICT DO NOTHING, so a concurrent recompute neither fails nor needs a savepoint
    (a savepoint's release would write the request's queued audit entry early)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(Visit).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(Visit).values(**values).on_conflict_do_nothing())


def recompute(session: Session, *, patient_id: str, now: datetime) -> Recomputed:
    """Keep exactly one due visit for the patient with the cadence rule's kind, date and
    reasons (a clinician's override stays in force beside them)."""
    facts = facts_for(session, patient_ids=[patient_id], now=now)[patient_id]
    return _recompute_one(
        session, patient_id, facts, due_visit(session, patient_id=patient_id), now
    )


def recompute_many(
    session: Session, *, patient_ids: Sequence[str], now: datetime
) -> list[Recomputed]:
    """`recompute` for several patients, with batched fact queries."""
    out: list[Recomputed] = []
    for start in range(0, len(patient_ids), CHUNK):
        chunk = list(patient_ids[start : start + CHUNK])
        facts = facts_for(session, patient_ids=chunk, now=now)
        existing = {
            v.patient_id: v
            for v in session.scalars(
                select(Visit).where(
                    col(Visit.patient_id).in_(chunk), col(Visit.status) == VisitStatus.DUE
                )
            )
        }
        for pid in chunk:
            out.append(_recompute_one(session, pid, facts[pid], existing.get(pid), now))
    return out


def all_patient_ids(session: Session) -> list[str]:
    """Every patient's id, in a stable order."""
    return list(session.scalars(select(col(Patient.id)).order_by(col(Patient.id))))


def recompute_all(session: Session, *, now: datetime) -> dict[str, int]:
    """Recompute every patient's due visit; counts by what happened."""
    return counts(recompute_many(session, patient_ids=all_patient_ids(session), now=now))


def counts(results: Iterable[Recomputed]) -> dict[str, int]:
    """How many visits were created, updated and left unchanged (for the audit entry)."""
    out = {"patients": 0, "created": 0, "updated": 0, "unchanged": 0}
    for r in results:
        out["patients"] += 1
        out[r.change] += 1
    return out


def urgent_not_scheduled(session: Session, *, now: datetime) -> list[str]:
    """Patients with an open crisis or low-BP alert whose due visit (if any) is not yet set
    within 48 hours of the alert: the worker recomputes them to pull the visit forward."""
    raised = {
        pid: _utc(when)
        for pid, when in session.execute(
            select(col(Alert.patient_id), func.min(col(Alert.raised_at)))
            .where(
                col(Alert.status) != AlertStatus.RESOLVED,
                col(Alert.type).in_([str(t) for t in URGENT_TYPES]),
            )
            .group_by(col(Alert.patient_id))
        )
    }
    if not raised:
        return []
    due = {
        pid: _utc(when)
        for pid, when in session.execute(
            select(col(Visit.patient_id), col(Visit.rule_due_by)).where(
                col(Visit.patient_id).in_(list(raised)), col(Visit.status) == VisitStatus.DUE
            )
        )
    }
    return sorted(
        pid for pid, at in raised.items() if pid not in due or due[pid] > at + cadence.URGENT
    )


def override(
    session: Session,
    *,
    patient_id: str,
    due_by: datetime,
    kind: VisitKind | str,
    reason: str,
    user_id: int,
    now: datetime,
) -> Visit:
    """A clinician's date and kind, with a reason, in force until the visit is completed or
    cancelled; the rule keeps computing its own date beside it."""
    reason = clean_text(reason)
    if not reason:
        raise VisitError("reason_required", "say why the date is changed")
    if len(reason) > MAX_REASON:
        raise VisitError("reason_too_long", f"the reason is limited to {MAX_REASON} characters")
    try:
        chosen = VisitKind(kind)
    except ValueError as exc:
        raise VisitError("invalid_kind", "the kind is visit or call") from exc
    if due_by.tzinfo is None:
        due_by = due_by.replace(tzinfo=UTC)
    try:
        due_by = due_by.astimezone(UTC)
    except OverflowError as exc:  # e.g. 9999-12-31T23:59-14:00: no such time in UTC
        raise VisitError("invalid_date", "the date is out of range") from exc
    if due_by < now:
        raise VisitError("date_in_past", "the date must not be in the past")
    if due_by > now + MAX_AHEAD:
        raise VisitError(
            "date_too_far", f"the date must be at most {MAX_AHEAD.days} days from today"
        )
    visit = (
        due_visit(session, patient_id=patient_id)
        or recompute(session, patient_id=patient_id, now=now).visit
    )
    visit.override_due_by = due_by
    visit.override_kind = chosen
    visit.override_reason = reason
    visit.overridden_by = user_id
    visit.overridden_at = now
    visit.due_by = due_by
    visit.kind = chosen
    session.add(visit)
    session.flush()
    return visit


def complete(
    session: Session,
    *,
    patient_id: str,
    user_id: int,
    note: str,
    now: datetime,
    visit_id: str | None = None,
) -> tuple[Visit, Visit]:
    """Complete the due visit with an outcome note; the next one is computed at once.
    With `visit_id`, refuse (409 `visit_changed`) unless that visit is the one due."""
    visit = due_visit(session, patient_id=patient_id)
    if visit is None:
        raise VisitError("no_due_visit", "no visit is due for this patient", status=409)
    # Completing computes the next visit at once, so a resent form (a double click, a retry)
    # would otherwise complete that brand-new visit too: the caller names the one it means.
    if visit_id is not None and visit.id != visit_id:
        raise VisitError(
            "visit_changed", "that review is no longer the one due: reload the page", status=409
        )
    note = clean_text(note)
    if len(note) > MAX_NOTE:
        raise VisitError("note_too_long", f"the note is limited to {MAX_NOTE} characters")
    _transition(visit, VisitStatus.COMPLETED)
    visit.completed_at = now
    visit.completed_by = user_id
    visit.outcome_note = note
    session.add(visit)
    session.flush()  # the partial unique index frees the patient's due slot
    nxt = recompute(session, patient_id=patient_id, now=now).visit
    session.flush()
    return visit, nxt


def cancel(session: Session, *, patient_id: str, user_id: int, note: str, now: datetime) -> Visit:
    """Cancel the due visit (e.g. the patient left the programme); nothing is computed."""
    visit = due_visit(session, patient_id=patient_id)
    if visit is None:
        raise VisitError("no_due_visit", "no visit is due for this patient", status=409)
    _transition(visit, VisitStatus.CANCELLED)
    visit.completed_at = now
    visit.completed_by = user_id
    visit.outcome_note = clean_text(note)[:MAX_NOTE]
    session.add(visit)
    session.flush()
    return visit


def clean_text(value: str) -> str:
    """Free text as stored: without control characters other than line breaks and tabs
    (PostgreSQL refuses NUL in text) and without surrounding blanks."""
    return strip_controls(value, single_line=False).strip()


def _transition(visit: Visit, new: VisitStatus) -> None:
    check_transition(VISIT_TRANSITIONS, VisitStatus(visit.status), new)
    visit.status = new


# ------------------------------------------------------------------ listing


@dataclass(frozen=True)
class DueRow:
    """A due review on the care team's list."""

    visit: Visit
    patient: Patient
    overdue: bool


def due_list(
    session: Session,
    *,
    patient_filter: ColumnElement[bool],
    now: datetime,
    within_days: int | None = None,
    limit: int = 200,
) -> list[DueRow]:
    """Due reviews of the caller's patients, soonest first (overdue ones on top)."""
    stmt = (
        select(Visit, Patient)
        .join(Patient, col(Patient.id) == col(Visit.patient_id))
        .where(col(Visit.status) == VisitStatus.DUE, patient_filter)
    )
    if within_days is not None:
        stmt = stmt.where(col(Visit.due_by) <= now + timedelta(days=within_days))
    rows = session.execute(
        stmt.order_by(col(Visit.due_by), col(Patient.family_name), col(Patient.id)).limit(limit)
    ).tuples()
    return [DueRow(v, p, _utc(v.due_by) < now) for v, p in rows]


def due_by_patient(session: Session, *, patient_ids: Sequence[str]) -> dict[str, Visit]:
    """The due visit of each of these patients (one query), by patient id."""
    if not patient_ids:
        return {}
    return {
        v.patient_id: v
        for v in session.scalars(
            select(Visit).where(
                col(Visit.patient_id).in_(list(patient_ids)), col(Visit.status) == VisitStatus.DUE
            )
        )
    }


REASON_TEXTS: dict[str, str] = {
    Reason.CRISIS_ALERT: "open hypertensive crisis alert",
    Reason.LOW_BP_ALERT: "open low blood pressure alert",
    Reason.UNCONTROLLED: "home BP at or above target",
    Reason.RECENT_CHANGE: "dose change in the last 30 days",
    Reason.POOR_ADHERENCE: "adherence below 80% over 28 days",
    Reason.INSUFFICIENT_DATA: "not enough home readings",
    Reason.CONTROLLED: "controlled, not yet 90 days stable",
    Reason.CONTROLLED_STABLE: "controlled and stable for 90 days",
}


def reason_text(code: str) -> str:
    """A reason code in short words for the care team."""
    return REASON_TEXTS.get(code, code.replace("_", " "))


def rule_now(session: Session, *, patient_id: str, now: datetime) -> Cadence:
    """What the rule says right now (for the plain-language why), without writing."""
    return cadence.next_review(facts_for(session, patient_ids=[patient_id], now=now)[patient_id])


def day_of(value: datetime) -> date:
    """The UTC day of a time."""
    return _utc(value).date()
