"""Regimens, ladders and safety-envelope versions; the kill switch and alerts; symptom
reports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, func, insert, select
from sqlalchemy.orm import Session
from sqlmodel import SQLModel, col

from app.core import clock
from app.db import new_id
from device_ingest.models import EvaluationRequest, OutboxStatus
from loops.alerts import AlertType, Finding, Severity, escalation_due
from loops.models import (
    ALERT_TRANSITIONS,
    Alert,
    AlertStatus,
    MedicationRegimen,
    PatientNotice,
    SymptomReport,
    SystemFlag,
    TitrationLadder,
)
from policies.envelope import EnvelopeRules
from policies.models import SafetyEnvelope

_S = TypeVar("_S", bound=StrEnum)
_M = TypeVar("_M", bound=SQLModel)


def create_ladder(
    session: Session,
    *,
    drug: str,
    steps: list[float],
    unit: str = "mg",
    rxnorm_code: str = "",
    frequency: str = "once daily",
) -> TitrationLadder:
    """Create a titration ladder; steps must rise strictly."""
    if not steps or any(b <= a for a, b in pairwise(steps)) or steps[0] <= 0:
        raise ValueError("ladder steps must be positive and strictly increasing")
    ladder = TitrationLadder(
        drug=drug, steps=steps, unit=unit, rxnorm_code=rxnorm_code, frequency=frequency
    )
    session.add(ladder)
    session.flush()
    return ladder


def start_regimen(
    session: Session, *, patient_id: str, ladder: TitrationLadder, step: int = 0
) -> MedicationRegimen:
    """Put a patient on a ladder at a step."""
    if not 0 <= step < len(ladder.steps):
        raise ValueError("step outside the ladder")
    now = clock.utcnow()  # one instant: a regimen that never changed has change == start
    regimen = MedicationRegimen(
        patient_id=patient_id,
        ladder_id=ladder.id or 0,
        current_step=step,
        started_at=now,
        last_changed_at=now,
    )
    session.add(regimen)
    session.flush()
    return regimen


def add_envelope_version(
    session: Session,
    *,
    patient_id: str,
    rules: EnvelopeRules,
    author_id: int,
    reason: str,
    effective_at: datetime | None = None,
) -> SafetyEnvelope:
    """Append a new envelope version; old versions stay as they were."""
    latest = session.scalar(
        select(func.max(col(SafetyEnvelope.version))).where(
            col(SafetyEnvelope.patient_id) == patient_id
        )
    )
    envelope = SafetyEnvelope(
        patient_id=patient_id,
        version=(latest or 0) + 1,
        rules=rules.model_dump(mode="json"),
        author_id=author_id,
        reason=reason,
        effective_at=effective_at or clock.utcnow(),
    )
    session.add(envelope)
    session.flush()
    return envelope


def envelope_in_force(
    session: Session, *, patient_id: str, at: datetime | None = None
) -> SafetyEnvelope | None:
    """The newest version already effective at `at` (now by default)."""
    return envelopes_in_force(session, [patient_id], at=at or clock.utcnow()).get(patient_id)


_NEWEST_EFFECTIVE = (
    select(
        col(SafetyEnvelope.patient_id).label("patient_id"),
        func.max(col(SafetyEnvelope.version)).label("version"),
    )
    .where(
        col(SafetyEnvelope.patient_id).in_(bindparam("ids", expanding=True)),
        col(SafetyEnvelope.effective_at) <= bindparam("at"),
    )
    .group_by(col(SafetyEnvelope.patient_id))
    .subquery()
)
# Built once: the loop runs it for every evaluation (single, or a daily chunk).
_ENVELOPES_IN_FORCE = select(SafetyEnvelope).join(
    _NEWEST_EFFECTIVE,
    and_(
        col(SafetyEnvelope.patient_id) == _NEWEST_EFFECTIVE.c.patient_id,
        col(SafetyEnvelope.version) == _NEWEST_EFFECTIVE.c.version,
    ),
)


def envelopes_in_force(
    session: Session, patient_ids: Iterable[str], *, at: datetime
) -> dict[str, SafetyEnvelope]:
    """For each patient, the newest version already effective at `at` (one query);
    patients without one are absent."""
    rows = session.scalars(_ENVELOPES_IN_FORCE, {"ids": list(patient_ids), "at": at})
    return {envelope.patient_id: envelope for envelope in rows}


# ------------------------------------------------------------------ kill switch and alerts

KILL_SWITCH = "kill_switch"


class TransitionError(ValueError):
    """A status change its workflow's transition table does not allow."""


def check_transition(table: Mapping[_S, frozenset[_S]], current: _S, new: _S) -> None:
    """Raise TransitionError unless `current -> new` is in the workflow's table."""
    if new not in table.get(current, frozenset()):
        raise TransitionError(f"{current} -> {new} is not allowed")


def kill_switch_on(session: Session) -> bool:
    """True while the admin's kill switch sends every proposal to clinicians."""
    flag = session.get(SystemFlag, KILL_SWITCH)
    return bool(flag and flag.enabled)


def set_kill_switch(
    session: Session, *, enabled: bool, reason: str, user_id: int | None
) -> SystemFlag:
    """Turn automatic delivery off (or back on) for everyone at once."""
    flag = session.get(SystemFlag, KILL_SWITCH) or SystemFlag(key=KILL_SWITCH)
    flag.enabled, flag.reason, flag.updated_by = enabled, reason, user_id
    flag.updated_at = clock.utcnow()
    session.add(flag)
    session.flush()
    return flag


_SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}


def open_alerts(session: Session, *, patient_id: str) -> list[Alert]:
    """The patient's alerts not yet resolved, most severe first."""
    return open_alerts_of(session, [patient_id])[patient_id]


_UNRESOLVED = select(Alert).where(
    col(Alert.patient_id).in_(bindparam("ids", expanding=True)),
    col(Alert.status) != AlertStatus.RESOLVED,
)


def open_alerts_of(session: Session, patient_ids: Iterable[str]) -> dict[str, list[Alert]]:
    """Each patient's alerts not yet resolved (one query), most severe first."""
    found: dict[str, list[Alert]] = {patient_id: [] for patient_id in patient_ids}
    rows = session.scalars(_UNRESOLVED, {"ids": list(found)})
    for alert in rows:
        found[alert.patient_id].append(alert)
    for alerts in found.values():
        alerts.sort(key=lambda a: (_SEVERITY_ORDER.get(a.severity, 9), a.raised_at))
    return found


def new_alert_rows(
    *, patient_id: str, found: Sequence[Finding], unresolved: Sequence[Alert], now: datetime
) -> list[dict[str, Any]]:
    """Rows for an alert per finding not already open (a finding already open is the same
    alert). Pure: the caller inserts them (`insert_returning`)."""
    existing = {a.key for a in unresolved}
    rows: list[dict[str, Any]] = []
    for finding in found:
        if finding.key in existing:
            continue
        rows.append(
            {
                "id": new_id(),
                "patient_id": patient_id,
                "type": str(finding.type),
                "severity": str(finding.severity),
                "key": finding.key,
                "status": AlertStatus.OPEN,
                "detail": finding.detail,
                "raised_at": now,
                "escalation_level": 0,
            }
        )
        existing.add(finding.key)
    return rows


def insert_returning(session: Session, model: type[_M], rows: Sequence[dict[str, Any]]) -> list[_M]:
    """Insert rows in one statement (batched by the driver) and return them as objects of
    the session, in the order given. Far cheaper than building each object first."""
    if not rows:
        return []
    stmt = _INSERTS.get(model)
    if stmt is None:  # built once per table
        stmt = _INSERTS[model] = insert(model).returning(model, sort_by_parameter_order=True)
    return list(session.scalars(stmt, list(rows)))


_INSERTS: dict[type[SQLModel], Any] = {}


def clear_alerts(
    unresolved: Sequence[Alert], *, still_found: Sequence[Finding], now: datetime
) -> list[Alert]:
    """Resolve (on the objects) alerts whose condition has cleared: data gaps at once, others
    once a clinician has acknowledged them (an unacknowledged alert waits to be seen). A
    recurrence later raises a new alert. Returns the alerts resolved."""
    keys = {f.key for f in still_found}
    cleared = []
    for alert in unresolved:
        seen = alert.status == AlertStatus.ACKNOWLEDGED
        if alert.key not in keys and (seen or alert.type == AlertType.DATA_GAP):
            check_transition(ALERT_TRANSITIONS, AlertStatus(alert.status), AlertStatus.RESOLVED)
            alert.status, alert.resolved_at = AlertStatus.RESOLVED, now
            cleared.append(alert)
    return cleared


def raise_alerts(
    session: Session, *, patient_id: str, found: Sequence[Finding], now: datetime
) -> list[Alert]:
    """Open an alert for each new finding; a finding already open is the same alert."""
    unresolved = open_alerts(session, patient_id=patient_id)
    rows = new_alert_rows(patient_id=patient_id, found=found, unresolved=unresolved, now=now)
    return insert_returning(session, Alert, rows)


def resolve_cleared(
    session: Session, *, patient_id: str, still_found: Sequence[Finding], now: datetime
) -> list[Alert]:
    """Resolve the patient's alerts whose condition has cleared (see `clear_alerts`)."""
    cleared = clear_alerts(
        open_alerts(session, patient_id=patient_id), still_found=still_found, now=now
    )
    session.add_all(cleared)
    session.flush()
    return cleared


def acknowledge(session: Session, *, alert: Alert, user_id: int, note: str, now: datetime) -> Alert:
    """Record that a clinician has seen the alert (the time is kept for reports)."""
    check_transition(ALERT_TRANSITIONS, AlertStatus(alert.status), AlertStatus.ACKNOWLEDGED)
    alert.status = AlertStatus.ACKNOWLEDGED
    alert.acknowledged_at, alert.acknowledged_by, alert.acknowledgement_note = now, user_id, note
    session.add(alert)
    session.flush()
    return alert


def escalate_due(session: Session, *, now: datetime) -> list[Alert]:
    """Escalate every open alert left unacknowledged past its severity's limit."""
    escalated = []
    for alert in session.scalars(select(Alert).where(col(Alert.status) == AlertStatus.OPEN)):
        if escalation_due(
            Severity(alert.severity),
            raised_at=alert.raised_at,
            last_escalated_at=alert.last_escalated_at,
            acknowledged=False,
            now=now,
        ):
            alert.escalation_level += 1
            alert.last_escalated_at = now
            session.add(alert)
            escalated.append(alert)
    session.flush()
    return escalated


def notify(
    session: Session, *, patient_id: str, kind: str, text: str, due_at: datetime | None = None
) -> PatientNotice:
    """Tell the patient something through their app."""
    notice = PatientNotice(patient_id=patient_id, kind=kind, text=text, due_at=due_at)
    session.add(notice)
    session.flush()
    return notice


# ------------------------------------------------------------------ symptom reports

# The codes a patient may report; the protocol's low-BP rule counts dizziness and fainting.
SYMPTOMS = ("dizziness", "headache", "swelling", "cough", "fatigue", "fainting", "other")
# How far back a report may be dated (the feature windows reach 14 days), and how far ahead
# a phone's clock may run.
SYMPTOM_MAX_AGE = timedelta(days=14)
SYMPTOM_CLOCK_SKEW = timedelta(minutes=5)
SYMPTOM_EVALUATION = "symptom_report"  # the outbox reason, and the evaluation's trigger


def symptom_time_problem(reported_at: datetime, *, now: datetime) -> str | None:
    """Why a report cannot be dated `reported_at` (None: it can). Pure."""
    if reported_at > now + SYMPTOM_CLOCK_SKEW:
        return "must not be in the future"
    if reported_at < now - SYMPTOM_MAX_AGE:
        return f"must be within the last {SYMPTOM_MAX_AGE.days} days"
    return None


def report_symptoms(
    session: Session,
    *,
    patient_id: str,
    symptoms: Sequence[str],
    note: str,
    reported_at: datetime,
    now: datetime,
    proposal_id: str | None = None,
) -> SymptomReport:
    """Store a symptom report and hand the patient to the loop for an evaluation, through
    the ingest's durable outbox (committed with the report, evaluated by the worker), so a
    dizziness report with a low reading raises the low-BP alert without waiting for the
    next reading. Symptom codes are checked; the note is stored verbatim."""
    unknown = sorted(set(symptoms) - set(SYMPTOMS))
    if unknown:
        raise ValueError(f"unknown symptom codes: {unknown}")
    report = SymptomReport(
        patient_id=patient_id,
        reported_at=reported_at,
        symptoms=list(dict.fromkeys(symptoms)),  # each code once, in the order given
        note=note,
        proposal_id=proposal_id,
    )
    session.add(report)
    session.add(
        EvaluationRequest(
            patient_id=patient_id,
            reason=SYMPTOM_EVALUATION,
            status=OutboxStatus.PENDING,
            created_at=now,
            available_at=now,
        )
    )
    session.flush()
    return report


def symptom_reports(
    session: Session, *, patient_id: str, first: date, last: date, limit: int = 200
) -> list[SymptomReport]:
    """The patient's reports dated on UTC days `first`..`last` (inclusive), newest first."""
    start = datetime.combine(first, time(), UTC)
    end = datetime.combine(last + timedelta(days=1), time(), UTC)
    return list(
        session.scalars(
            select(SymptomReport)
            .where(
                col(SymptomReport.patient_id) == patient_id,
                col(SymptomReport.reported_at) >= start,
                col(SymptomReport.reported_at) < end,
            )
            .order_by(col(SymptomReport.reported_at).desc(), col(SymptomReport.id).desc())
            .limit(limit)
        )
    )
