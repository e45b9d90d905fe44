"""The pre-visit summary: `gather` reads the facts across domains (readings, doses,
proposals and decisions, envelopes, alerts, questions, symptoms, goals, the visit), and the
pure `shape` turns them into the figures the page and the PDF show.

The period runs from the last completed visit (or 90 days back when there is none) to now.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.patients.models import Patient
from device_ingest.models import DeviceClass, MedicationEvent, Reading, ReadingStatus
from loops.alerts import LOW_MEAN_SBP_3D
from loops.care import service as care
from loops.messages.models import Message, MessageThread
from loops.models import (
    Alert,
    AlertStatus,
    MedicationRegimen,
    Proposal,
    ProposalStatus,
    SymptomReport,
    TitrationLadder,
)
from loops.protocol import target as protocol_target
from loops.review.models import Decision
from loops.visits import service as visits
from loops.visits.cadence import CONTROL_WINDOW_DAYS, below_target
from loops.visits.models import Visit
from policies.models import SafetyEnvelope

DEFAULT_PERIOD = timedelta(days=90)
LOW_SBP = LOW_MEAN_SBP_3D  # a day whose mean SBP is below this is out of range (too low)
MAX_ROWS = 50  # rows per list on one page; the counts cover everything


# ------------------------------------------------------------------ facts


@dataclass(frozen=True)
class ChangeFact:
    """A proposal's outcome in the period: delivered by itself, or decided by a clinician."""

    time: datetime
    outcome: str  # delivered, approved, modified, rejected, pending_review
    action: str  # increase, decrease, hold
    drug: str
    unit: str
    from_dose: float
    proposed_dose: float
    to_dose: float  # what the patient was left on (the clinician's dose if modified)
    by: str | None  # the signer, for decisions
    reason: str | None  # the decision's reason code


@dataclass(frozen=True)
class EnvelopeFact:
    """A new envelope version in the period."""

    time: datetime
    version: int
    author: str
    reason: str


@dataclass(frozen=True)
class AlertFact:
    """An alert raised in the period (or still open)."""

    type: str
    severity: str
    status: str
    raised_at: datetime
    acknowledged_at: datetime | None


@dataclass(frozen=True)
class QuestionFact:
    """A question the patient asked for the visit, with its first message."""

    subject: str
    asked_at: datetime
    status: str
    first_message: str


@dataclass(frozen=True)
class SymptomFact:
    """A symptom report."""

    time: datetime
    symptoms: tuple[str, ...]
    note: str


@dataclass(frozen=True)
class GoalFact:
    """An agreed goal with its progress in plain words."""

    kind: str
    text: str
    progress: str
    met: bool | None


@dataclass(frozen=True)
class SummaryFacts:
    """Everything the summary is made from (built by `gather`, or by hand in tests)."""

    patient: Patient
    now: datetime
    start: datetime
    last_visit_at: datetime | None
    target: tuple[float, float]
    target_from_goal: bool
    readings: Sequence[tuple[datetime, float, float]]  # validated cuff, accepted, period
    doses: Sequence[tuple[datetime, bool]]
    changes: Sequence[ChangeFact] = ()
    envelopes: Sequence[EnvelopeFact] = ()
    alerts: Sequence[AlertFact] = ()
    questions: Sequence[QuestionFact] = ()
    symptoms: Sequence[SymptomFact] = ()
    goals: Sequence[GoalFact] = ()
    visit: Visit | None = None
    last_visit_note: str = ""


# ------------------------------------------------------------------ summary


@dataclass(frozen=True)
class WeekMean:
    """A week's validated-cuff home mean."""

    start: date
    end: date  # inclusive
    systolic: float | None
    diastolic: float | None
    readings: int


@dataclass
class PrevisitSummary:
    """The figures of a pre-visit summary."""

    patient: Patient
    generated_at: datetime
    start: datetime
    end: datetime
    period_basis: str  # since_last_visit, last_90_days
    last_visit_at: datetime | None
    last_visit_note: str
    target: tuple[float, float]
    target_from_goal: bool
    control: str  # controlled, uncontrolled, no_data
    sbp_7d: float | None
    dbp_7d: float | None
    readings_7d: int
    weeks: list[WeekMean]
    readings: int
    days_with_readings: int
    days_in_range: int
    time_in_range: float | None  # share of days with readings whose daily mean was in range
    doses_taken: int
    doses_total: int
    adherence: float | None
    decision_counts: dict[str, int]
    changes: list[ChangeFact]
    envelopes: list[EnvelopeFact]
    alerts: list[AlertFact]
    alerts_raised: int
    alerts_acknowledged: int
    questions: list[QuestionFact]
    symptoms: list[SymptomFact]
    symptom_counts: dict[str, int]
    goals: list[GoalFact]
    visit: Visit | None
    truncated: dict[str, int] = field(default_factory=dict)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _r1(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def weekly_means(
    readings: Sequence[tuple[datetime, float, float]], *, start: datetime, end: datetime
) -> list[WeekMean]:
    """Means of consecutive 7-day weeks from `start` (the last one may be shorter)."""
    weeks: list[WeekMean] = []
    first = start.date()
    last = end.date()
    k = 0
    while first + timedelta(days=7 * k) <= last:
        lo = first + timedelta(days=7 * k)
        hi = min(lo + timedelta(days=6), last)
        inside = [r for r in readings if lo <= r[0].date() <= hi]
        weeks.append(
            WeekMean(
                lo,
                hi,
                _r1(_mean([r[1] for r in inside])),
                _r1(_mean([r[2] for r in inside])),
                len(inside),
            )
        )
        k += 1
    return weeks


def in_range(sbp: float, dbp: float, target: tuple[float, float]) -> bool:
    """A daily mean in the target range: below the target, and SBP not below 100 (low)."""
    return below_target(sbp, dbp, target) and sbp >= LOW_SBP


def shape(facts: SummaryFacts) -> PrevisitSummary:
    """The summary's figures from its facts (pure)."""
    now, start = facts.now, facts.start
    readings = [r for r in facts.readings if start <= r[0] <= now]
    recent = [r for r in readings if r[0] > now - timedelta(days=CONTROL_WINDOW_DAYS)]
    sbp7 = _mean([r[1] for r in recent])
    dbp7 = _mean([r[2] for r in recent])
    if sbp7 is None or dbp7 is None:
        control = "no_data"
    else:
        control = "controlled" if below_target(sbp7, dbp7, facts.target) else "uncontrolled"
    by_day: dict[date, list[tuple[float, float]]] = defaultdict(list)
    for when, sbp, dbp in readings:
        by_day[when.date()].append((sbp, dbp))
    days_in = sum(
        1
        for values in by_day.values()
        if in_range(
            sum(v[0] for v in values) / len(values),
            sum(v[1] for v in values) / len(values),
            facts.target,
        )
    )
    doses = [d for d in facts.doses if start <= d[0] <= now]
    taken = sum(1 for d in doses if d[1])
    counts = {k: 0 for k in ("delivered", "approved", "modified", "rejected", "pending_review")}
    for c in facts.changes:
        counts[c.outcome] = counts.get(c.outcome, 0) + 1
    symptom_counts: dict[str, int] = defaultdict(int)
    for s in facts.symptoms:
        for name in s.symptoms:
            symptom_counts[name] += 1
    alerts = sorted(facts.alerts, key=lambda a: a.raised_at, reverse=True)
    raised = [a for a in alerts if a.raised_at >= start]
    changes = sorted(facts.changes, key=lambda c: c.time, reverse=True)
    envelopes = sorted(facts.envelopes, key=lambda e: e.time, reverse=True)
    questions = sorted(facts.questions, key=lambda q: q.asked_at, reverse=True)
    symptoms = sorted(facts.symptoms, key=lambda s: s.time, reverse=True)
    sizes = {
        "changes": len(changes),
        "envelopes": len(envelopes),
        "alerts": len(alerts),
        "questions": len(questions),
        "symptoms": len(symptoms),
    }
    truncated = {k: n - MAX_ROWS for k, n in sizes.items() if n > MAX_ROWS}
    return PrevisitSummary(
        patient=facts.patient,
        generated_at=now,
        start=start,
        end=now,
        period_basis="since_last_visit" if facts.last_visit_at else "last_90_days",
        last_visit_at=facts.last_visit_at,
        last_visit_note=facts.last_visit_note,
        target=facts.target,
        target_from_goal=facts.target_from_goal,
        control=control,
        sbp_7d=_r1(sbp7),
        dbp_7d=_r1(dbp7),
        readings_7d=len(recent),
        weeks=weekly_means(readings, start=start, end=now),
        readings=len(readings),
        days_with_readings=len(by_day),
        days_in_range=days_in,
        time_in_range=round(days_in / len(by_day), 3) if by_day else None,
        doses_taken=taken,
        doses_total=len(doses),
        adherence=round(taken / len(doses), 3) if doses else None,
        decision_counts=counts,
        changes=changes[:MAX_ROWS],
        envelopes=envelopes[:MAX_ROWS],
        alerts=alerts[:MAX_ROWS],
        alerts_raised=len(raised),
        alerts_acknowledged=sum(1 for a in raised if a.acknowledged_at is not None),
        questions=questions[:MAX_ROWS],
        symptoms=symptoms[:MAX_ROWS],
        symptom_counts=dict(sorted(symptom_counts.items())),
        goals=list(facts.goals),
        visit=facts.visit,
        truncated=truncated,
    )


# ------------------------------------------------------------------ gathering


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def gather(session: Session, *, patient_id: str, now: datetime) -> SummaryFacts | None:
    """The summary's facts for one patient (None: no such patient). Reads only."""
    patient = session.get(Patient, patient_id)
    if patient is None:
        return None
    last = visits.last_completed(session, patient_id=patient_id)
    last_at = _utc(last.completed_at) if last is not None and last.completed_at else None
    start = last_at if last_at is not None else now - DEFAULT_PERIOD
    goal = visits.bp_goals(session, patient_ids=[patient_id]).get(patient_id)
    target = goal or protocol_target(patient.has_diabetes or patient.has_ckd)
    readings = [
        (_utc(when), float(sbp), float(dbp))
        for when, sbp, dbp in session.execute(
            select(
                col(Reading.effective_start), col(Reading.systolic), col(Reading.diastolic)
            ).where(
                col(Reading.patient_id) == patient_id,
                col(Reading.effective_start) >= start,
                col(Reading.effective_start) <= now,
                col(Reading.kind) == "blood_pressure",
                col(Reading.device_class) == DeviceClass.VALIDATED_CUFF,
                col(Reading.status) == ReadingStatus.ACCEPTED,
                col(Reading.statistic).is_(None),
                col(Reading.systolic).is_not(None),
                col(Reading.diastolic).is_not(None),
            )
        )
    ]
    doses = [
        (_utc(when), bool(taken))
        for when, taken in session.execute(
            select(col(MedicationEvent.effective_start), col(MedicationEvent.taken)).where(
                col(MedicationEvent.patient_id) == patient_id,
                col(MedicationEvent.effective_start) >= start,
                col(MedicationEvent.effective_start) <= now,
            )
        )
    ]
    return SummaryFacts(
        patient=patient,
        now=now,
        start=start,
        last_visit_at=last_at,
        target=target,
        target_from_goal=goal is not None,
        readings=readings,
        doses=doses,
        changes=_changes(session, patient_id, start, now),
        envelopes=_envelopes(session, patient_id, start, now),
        alerts=_alerts(session, patient_id, start),
        questions=_questions(session, patient_id, start),
        symptoms=[
            SymptomFact(_utc(s.reported_at), tuple(s.symptoms or ()), s.note)
            for s in session.scalars(
                select(SymptomReport).where(
                    col(SymptomReport.patient_id) == patient_id,
                    col(SymptomReport.reported_at) >= start,
                    col(SymptomReport.reported_at) <= now,
                )
            )
        ],
        goals=_goals(session, patient_id, now),
        visit=visits.due_visit(session, patient_id=patient_id),
        last_visit_note=last.outcome_note if last is not None else "",
    )


def _changes(session: Session, pid: str, start: datetime, now: datetime) -> list[ChangeFact]:
    """Proposals of the period with what became of them: delivered by themselves, decided
    (by the decision's signing time), or still waiting."""
    rows = session.execute(
        select(Proposal, Decision, TitrationLadder)
        .outerjoin(Decision, col(Decision.proposal_id) == col(Proposal.id))
        .join(MedicationRegimen, col(MedicationRegimen.id) == col(Proposal.regimen_id))
        .join(TitrationLadder, col(TitrationLadder.id) == col(MedicationRegimen.ladder_id))
        .where(
            col(Proposal.patient_id) == pid,
            or_(
                col(Decision.signed_at) >= start,
                col(Proposal.delivered_at) >= start,
                col(Proposal.status) == ProposalStatus.PENDING_REVIEW,
            ),
        )
    ).tuples()
    out: list[ChangeFact] = []
    for p, d, ladder in rows:
        if d is not None:
            if _utc(d.signed_at) < start or _utc(d.signed_at) > now:
                continue
            out.append(
                ChangeFact(
                    _utc(d.signed_at),
                    {"approve": "approved", "modify": "modified", "reject": "rejected"}.get(
                        d.kind, d.kind
                    ),
                    p.action,
                    ladder.drug,
                    ladder.unit,
                    d.from_dose,
                    d.proposed_dose,
                    d.decided_dose if d.kind != "reject" else d.from_dose,
                    d.signer_printed_name,
                    d.reason_code,
                )
            )
        elif p.status == ProposalStatus.PENDING_REVIEW:
            out.append(
                ChangeFact(
                    _utc(p.created_at),
                    "pending_review",
                    p.action,
                    ladder.drug,
                    ladder.unit,
                    p.from_dose,
                    p.to_dose,
                    p.from_dose,  # nothing changes until a clinician decides
                    None,
                    None,
                )
            )
        elif p.delivered_at is not None and start <= _utc(p.delivered_at) <= now:
            out.append(
                ChangeFact(
                    _utc(p.delivered_at),
                    "delivered",
                    p.action,
                    ladder.drug,
                    ladder.unit,
                    p.from_dose,
                    p.to_dose,
                    p.to_dose,
                    None,
                    None,
                )
            )
    return out


def _envelopes(session: Session, pid: str, start: datetime, now: datetime) -> list[EnvelopeFact]:
    rows = list(
        session.scalars(
            select(SafetyEnvelope).where(
                col(SafetyEnvelope.patient_id) == pid,
                col(SafetyEnvelope.created_at) >= start,
                col(SafetyEnvelope.created_at) <= now,
            )
        )
    )
    names = care.user_names(session, [e.author_id for e in rows])
    return [
        EnvelopeFact(_utc(e.created_at), e.version, names.get(e.author_id, "unknown"), e.reason)
        for e in rows
    ]


def _alerts(session: Session, pid: str, start: datetime) -> list[AlertFact]:
    return [
        AlertFact(
            a.type,
            a.severity,
            a.status,
            _utc(a.raised_at),
            _utc(a.acknowledged_at) if a.acknowledged_at else None,
        )
        for a in session.scalars(
            select(Alert).where(
                col(Alert.patient_id) == pid,
                or_(col(Alert.raised_at) >= start, col(Alert.status) != AlertStatus.RESOLVED),
            )
        )
    ]


def _questions(session: Session, pid: str, start: datetime) -> list[QuestionFact]:
    threads = list(
        session.scalars(
            select(MessageThread).where(
                col(MessageThread.patient_id) == pid,
                col(MessageThread.is_question).is_(True),
                or_(col(MessageThread.created_at) >= start, col(MessageThread.status) == "open"),
            )
        )
    )
    if not threads:
        return []
    first: dict[str, str] = {}
    for thread_id, body in session.execute(
        select(col(Message.thread_id), col(Message.body))
        .where(col(Message.thread_id).in_([t.id for t in threads]))
        .order_by(col(Message.sent_at), col(Message.id))
    ):
        first.setdefault(thread_id, body)
    return [
        QuestionFact(t.subject, _utc(t.created_at), t.status, first.get(t.id, "")) for t in threads
    ]


def _goals(session: Session, pid: str, now: datetime) -> list[GoalFact]:
    return [
        GoalFact(
            goal.kind,
            care.goal_text(goal),
            progress.sentence,
            progress.met,
        )
        for goal, progress in care.agreed_progress(session, patient_id=pid, now=now)
    ]


def summary(session: Session, *, patient_id: str, now: datetime) -> PrevisitSummary | None:
    """The pre-visit summary of a patient (None: no such patient)."""
    facts = gather(session, patient_id=patient_id, now=now)
    return None if facts is None else shape(facts)
