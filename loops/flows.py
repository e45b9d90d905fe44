"""One evaluation of the patient-AI loop, across domains: readings → features → model →
envelope routing → proposal, alerts and notices, all in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.patients.models import Patient
from audit import service as audit
from device_ingest.models import MedicationEvent, Reading, ReadingStatus
from loops import alerts as rules
from loops import service
from loops.models import (
    PROPOSAL_TRANSITIONS,
    Alert,
    AlertStatus,
    Evaluation,
    MedicationRegimen,
    PatientNotice,
    Proposal,
    ProposalStatus,
    RegimenStatus,
    SymptomReport,
    TitrationLadder,
)
from mlops.features import (
    DoseEvent,
    FeatureVector,
    PatientFacts,
    ReadingPoint,
    RegimenFacts,
    compute_features,
)
from policies.envelope import EnvelopeRules, TitrationAction
from policies.routing import Proposal as RoutingProposal
from policies.routing import Route, RoutingDecision, route

# The longest feature window (14 days) plus the adherence lookback.
HISTORY = timedelta(days=21)
# The protocol's low-BP rule counts these symptoms only.
HYPOTENSION_SYMPTOMS = frozenset({"dizziness", "fainting"})
ACTIONS = (TitrationAction.DECREASE, TitrationAction.HOLD, TitrationAction.INCREASE)
_DELTA = {TitrationAction.DECREASE: -1, TitrationAction.HOLD: 0, TitrationAction.INCREASE: 1}


@dataclass(frozen=True)
class Explanation:
    """Why the model proposed what it did: SHAP values and plain-language texts."""

    shap: dict[str, float]
    clinician_text: str
    patient_text: str


class Predictor(Protocol):
    """The model in production as the loop uses it (see mlops.serving)."""

    label: str

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (decrease, hold, increase) for one feature row."""

    def explain(
        self, x: np.ndarray, action: TitrationAction, features: FeatureVector
    ) -> Explanation:
        """SHAP values for `action` and their plain-language rendering."""


class Outcome(StrEnum):
    """What an evaluation concluded (stored on the evaluation row)."""

    NO_REGIMEN = "no_regimen"
    INSUFFICIENT_DATA = "insufficient_data"
    MODEL_UNAVAILABLE = "model_unavailable"
    HOLD = "hold"
    PROPOSAL = "proposal"


@dataclass
class EvaluationResult:
    """The evaluation row, and what it created."""

    evaluation: Evaluation
    proposal: Proposal | None = None
    alerts: list[Alert] = field(default_factory=list)
    notices: list[PatientNotice] = field(default_factory=list)
    # A crisis-level reading awaiting its re-measurement: routing treats it as an open alert,
    # so nothing is delivered automatically while the patient's state is uncertain.
    remeasure_pending: bool = False


def _history(
    session: Session, patient_id: str, now: datetime
) -> tuple[
    list[ReadingPoint],
    list[DoseEvent],
    list[rules.DoseEvent],
    list[rules.CuffReading],
    list[datetime],
]:
    since = now - HISTORY
    rows = session.execute(
        select(
            col(Reading.effective_start),
            col(Reading.effective_precision),
            col(Reading.kind),
            col(Reading.device_class),
            col(Reading.systolic),
            col(Reading.diastolic),
            col(Reading.value),
            col(Reading.statistic),
            col(Reading.status),
        ).where(
            col(Reading.patient_id) == patient_id,
            col(Reading.effective_start) >= since,
            col(Reading.effective_start) <= now,
        )
    ).all()
    points, cuff = [], []
    for when, precision, kind, dclass, sbp, dbp, value, statistic, status in rows:
        if precision in {"year", "month", "day"}:
            continue  # no time of day: cannot sit in a local day or a morning/evening half
        quarantined = status != ReadingStatus.ACCEPTED
        points.append(
            ReadingPoint(
                time=when,
                kind=kind,
                device_class=dclass,
                systolic=sbp,
                diastolic=dbp,
                value=value,
                statistic=statistic,
                quarantined=quarantined,
            )
        )
        if (
            kind == "blood_pressure"
            and dclass == "validated_cuff"
            and not quarantined
            and statistic is None
            and sbp is not None
            and dbp is not None
        ):
            cuff.append(rules.CuffReading(when, sbp, dbp))
    events = session.execute(
        select(col(MedicationEvent.effective_start), col(MedicationEvent.taken)).where(
            col(MedicationEvent.patient_id) == patient_id,
            col(MedicationEvent.effective_start) >= since,
            col(MedicationEvent.effective_start) <= now,
        )
    ).all()
    doses = [DoseEvent(time=t, taken=bool(k)) for t, k in events]
    alert_doses = [rules.DoseEvent(t, bool(k)) for t, k in events]
    # The protocol's low-BP rule counts hypotension symptoms only, not a cough or a note.
    symptoms = [
        when
        for when, reported in session.execute(
            select(col(SymptomReport.reported_at), col(SymptomReport.symptoms)).where(
                col(SymptomReport.patient_id) == patient_id,
                col(SymptomReport.reported_at) >= now - timedelta(days=3),
            )
        )
        if set(reported or []) & HYPOTENSION_SYMPTOMS
    ]
    return points, doses, alert_doses, cuff, symptoms


def _alerts(
    session: Session,
    patient: Patient,
    cuff: list[rules.CuffReading],
    doses: list[rules.DoseEvent],
    symptoms: list[datetime],
    now: datetime,
    result: EvaluationResult,
) -> None:
    found, check = rules.findings(
        patient.id,
        readings=cuff,
        doses=doses,
        symptom_times=symptoms,
        monitored_since=patient.created_at,
        now=now,
    )
    result.alerts = service.raise_alerts(session, patient_id=patient.id, found=found, now=now)
    service.resolve_cleared(session, patient_id=patient.id, still_found=found, now=now)
    result.remeasure_pending = check.status is rules.CrisisStatus.REMEASURE
    if check.status is rules.CrisisStatus.REMEASURE and check.trigger and check.due:
        asked = session.scalars(
            select(col(PatientNotice.id)).where(
                col(PatientNotice.patient_id) == patient.id,
                col(PatientNotice.kind) == "remeasure_now",
                col(PatientNotice.due_at) == check.due,
            )
        ).first()
        if asked is None:
            t = check.trigger
            result.notices.append(
                service.notify(
                    session,
                    patient_id=patient.id,
                    kind="remeasure_now",
                    due_at=check.due,
                    text=(
                        f"Your reading of {t.systolic:.0f}/{t.diastolic:.0f} is very high. Sit "
                        "quietly and measure again now. If it stays this high, or you have chest "
                        "pain, shortness of breath, weakness or vision changes, call emergency "
                        "services."
                    ),
                )
            )


def _active_regimen(
    session: Session, patient_id: str
) -> tuple[MedicationRegimen, TitrationLadder] | None:
    regimen = session.scalars(
        select(MedicationRegimen)
        .where(
            col(MedicationRegimen.patient_id) == patient_id,
            col(MedicationRegimen.status) == RegimenStatus.ACTIVE,
        )
        .order_by(col(MedicationRegimen.started_at).desc())
    ).first()
    if regimen is None:
        return None
    ladder = session.get(TitrationLadder, regimen.ladder_id)
    return (regimen, ladder) if ladder is not None else None


def auto_changes_30d(session: Session, *, patient_id: str, now: datetime) -> int:
    """Dose changes delivered automatically in the last 30 days."""
    return len(
        session.scalars(
            select(col(Proposal.id)).where(
                col(Proposal.patient_id) == patient_id,
                col(Proposal.status) == ProposalStatus.DELIVERED,
                col(Proposal.action) != TitrationAction.HOLD,
                col(Proposal.created_at) >= now - timedelta(days=30),
            )
        ).all()
    )


def evaluate(
    session: Session,
    *,
    patient_id: str,
    trigger: str,
    now: datetime,
    predictor: Predictor | None,
    tz: str = "UTC",
) -> EvaluationResult:
    """Evaluate one patient now; records everything, audits it, and never commits."""
    patient = session.get(Patient, patient_id)
    if patient is None:
        raise LookupError("no such patient")
    points, doses, alert_doses, cuff, symptoms = _history(session, patient_id, now)
    evaluation = Evaluation(
        patient_id=patient_id,
        trigger=trigger,
        as_of=now,
        outcome=Outcome.NO_REGIMEN,
        created_at=now,
    )
    result = EvaluationResult(evaluation)
    _alerts(session, patient, cuff, alert_doses, symptoms, now, result)
    found = _active_regimen(session, patient_id)
    if found is not None:
        _propose(session, patient, found, points, doses, now, predictor, tz, result)
    session.add(evaluation)
    session.flush()
    audit.record(
        session,
        actor="system:loop",
        actor_role="system",
        action="loop.evaluate",
        resource_type="evaluation",
        resource_id=str(evaluation.id),
        patient_id=patient_id,
        details={
            "trigger": trigger,
            "outcome": evaluation.outcome,
            "model_version": evaluation.model_version,
            "feature_hash": evaluation.feature_hash,
            "envelope_version": evaluation.envelope_version,
            "route": evaluation.route,
            "reasons": evaluation.reasons,
            "proposal_id": evaluation.proposal_id,
            "alerts_raised": [a.type for a in result.alerts],
        },
    )
    return result


def _propose(
    session: Session,
    patient: Patient,
    found: tuple[MedicationRegimen, TitrationLadder],
    points: list[ReadingPoint],
    doses: list[DoseEvent],
    now: datetime,
    predictor: Predictor | None,
    tz: str,
    result: EvaluationResult,
) -> None:
    regimen, ladder = found
    evaluation = result.evaluation
    features = compute_features(
        readings=points,
        doses=doses,
        patient=PatientFacts(
            sex=str(patient.sex),
            diabetes=patient.has_diabetes,
            ckd=patient.has_ckd,
            birth_date=patient.birth_date,
        ),
        regimen=RegimenFacts(
            step=regimen.current_step,
            ladder_steps=len(ladder.steps),
            last_change=_last_change(regimen),
        ),
        as_of=now,
        tz=tz,
    )
    evaluation.feature_hash = features.hash()
    if not features.sufficient:
        evaluation.outcome = Outcome.INSUFFICIENT_DATA
        _nudge(session, patient.id, now, result)
        return
    if predictor is None:
        evaluation.outcome = Outcome.MODEL_UNAVAILABLE
        return
    x = features.to_array()[None, :]
    probs = predictor.predict_proba(x)[0]
    action = ACTIONS[int(np.argmax(probs))]
    confidence = float(probs[int(np.argmax(probs))])
    evaluation.model_version = predictor.label
    envelope = service.envelope_in_force(session, patient_id=patient.id, at=now)
    rules_in_force = EnvelopeRules.model_validate(envelope.rules) if envelope else None
    evaluation.envelope_version = envelope.version if envelope else None
    # Unacknowledged alerts block automatic delivery; once a clinician has taken an alert
    # in hand (acknowledged), the envelope decides again.
    unseen = [
        a
        for a in service.open_alerts(session, patient_id=patient.id)
        if a.status == AlertStatus.OPEN
    ]
    open_count = len(unseen) + int(result.remeasure_pending)
    evidence = features.to_evidence(
        auto_changes_30d=auto_changes_30d(session, patient_id=patient.id, now=now),
        open_alerts=open_count,
    )
    to_step = regimen.current_step + _DELTA[action]
    decision: RoutingDecision = route(
        RoutingProposal(
            action=action,
            from_step=regimen.current_step,
            to_step=to_step,
            confidence=confidence,
            ladder_steps=len(ladder.steps),
        ),
        evidence,
        rules_in_force,
        kill_switch=service.kill_switch_on(session),
    )
    evaluation.route = str(decision.route)
    evaluation.reasons = [str(r) for r in decision.reasons]
    if action is TitrationAction.HOLD:
        evaluation.outcome = Outcome.HOLD  # "keep taking it" is not worth a message each day
        _supersede_pending(session, patient.id)  # an older queued change is stale now
        return
    explanation = predictor.explain(x, action, features)
    in_ladder = 0 <= to_step < len(ladder.steps)
    delivered = decision.route is Route.AUTO_DELIVER
    proposal = Proposal(
        patient_id=patient.id,
        regimen_id=regimen.id,
        model_version=predictor.label,
        feature_hash=features.hash(),
        features=_json_features(features),
        action=str(action),
        from_step=regimen.current_step,
        to_step=to_step,
        from_dose=ladder.steps[regimen.current_step],
        to_dose=ladder.steps[to_step] if in_ladder else ladder.steps[regimen.current_step],
        probabilities={str(a): float(p) for a, p in zip(ACTIONS, probs, strict=True)},
        confidence=confidence,
        explanation={
            "shap": explanation.shap,
            "clinician_text": explanation.clinician_text,
            "patient_text": explanation.patient_text,
        },
        envelope_version=evaluation.envelope_version,
        route=str(decision.route),
        reasons=[str(r) for r in decision.reasons],
        status=ProposalStatus.DELIVERED if delivered else ProposalStatus.PENDING_REVIEW,
        created_at=now,
        delivered_at=now if delivered else None,
    )
    _supersede_pending(session, patient.id)
    session.add(proposal)
    if delivered:
        # Inside the envelope: the change is the patient's new instruction from now on.
        regimen.current_step, regimen.last_changed_at = to_step, now
        session.add(regimen)
        result.notices.append(
            service.notify(
                session,
                patient_id=patient.id,
                kind="recommendation",
                text=f"New dose: {ladder.drug} {proposal.to_dose:g} {ladder.unit} "
                f"{ladder.frequency}. {explanation.patient_text}",
            )
        )
    session.flush()
    evaluation.outcome, evaluation.proposal_id = Outcome.PROPOSAL, proposal.id
    result.proposal = proposal


def _last_change(regimen: MedicationRegimen) -> datetime | None:
    # A regimen that never moved since it started has no change to count from.
    return None if regimen.last_changed_at <= regimen.started_at else regimen.last_changed_at


def _json_features(features: FeatureVector) -> dict[str, Any]:
    return {k: (None if v != v else v) for k, v in features.as_dict().items()}  # NaN -> null


def _supersede_pending(session: Session, patient_id: str) -> None:
    for old in session.scalars(
        select(Proposal).where(
            col(Proposal.patient_id) == patient_id,
            col(Proposal.status) == ProposalStatus.PENDING_REVIEW,
        )
    ):
        service.check_transition(
            PROPOSAL_TRANSITIONS, ProposalStatus(old.status), ProposalStatus.SUPERSEDED
        )
        old.status = ProposalStatus.SUPERSEDED
        session.add(old)


def _nudge(session: Session, patient_id: str, now: datetime, result: EvaluationResult) -> None:
    since = now - timedelta(hours=24)
    recent = session.scalars(
        select(col(PatientNotice.id)).where(
            col(PatientNotice.patient_id) == patient_id,
            col(PatientNotice.kind) == "measure",
            col(PatientNotice.created_at) >= since,
        )
    ).first()
    if recent is None:  # at most one nudge a day
        result.notices.append(
            service.notify(
                session,
                patient_id=patient_id,
                kind="measure",
                text="Please measure your blood pressure with your home cuff twice in the "
                "morning and twice in the evening, so your care plan can be reviewed.",
            )
        )
