"""Evaluations of the patient-AI loop, across domains: readings → features → model →
envelope routing → proposal, alerts and notices, all in the caller's transaction.

`evaluate_many` evaluates a chunk of patients with batched work: one query per kind of fact
for the whole chunk, one model call, one batched SHAP pass and one insert per table, while
every decision stays per patient and pure (`compute_features`, the alert rules, `route`).
`evaluate` is `evaluate_many` for one patient, so the path for new readings and the daily
run are the same code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import numpy as np
from sqlalchemy import (
    BindParameter,
    CursorResult,
    Executable,
    String,
    bindparam,
    func,
    insert,
    select,
    type_coerce,
)
from sqlalchemy.orm import Session
from sqlmodel import col

from app.db import new_id
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
    SymptomPoint,
    compute_features,
    feature_matrix,
)
from mlops.models import ShadowPrediction
from policies.envelope import EnvelopeRules, TitrationAction
from policies.routing import Proposal as RoutingProposal
from policies.routing import Route, RoutingDecision, route

# The longest feature window (14 days) plus the adherence lookback.
HISTORY = timedelta(days=21)
ACTIONS = (TitrationAction.DECREASE, TitrationAction.HOLD, TitrationAction.INCREASE)
_DELTA = {TitrationAction.DECREASE: -1, TitrationAction.HOLD: 0, TitrationAction.INCREASE: 1}
log = logging.getLogger("clinaiops.loop")


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
        """Class probabilities [n, 3] (decrease, hold, increase) for feature rows x [n, d].

        A row's probabilities must not depend on the other rows, to the last bit: the daily
        run scores patients in batches and must decide exactly as a single evaluation.
        """

    def explain_many(
        self,
        x: np.ndarray,
        actions: Sequence[TitrationAction],
        features: Sequence[FeatureVector],
    ) -> list[Explanation]:
        """For each row of x [n, d], SHAP values for its action and their plain-language
        rendering (row-independent, like `predict_proba`)."""


@dataclass(frozen=True)
class Shadow:
    """A rollout's challenger scoring beside the champion: logged, never delivered."""

    rollout_id: int
    version: int
    label: str
    model: Predictor | None  # None: its artifact is unusable (every row logs the error)


@runtime_checkable
class ServingPlan(Protocol):
    """A predictor (the champion) that, while a model rollout runs, also says which model
    serves each patient and which scores in shadow (see mlops.serving.Serving)."""

    def serving(self, patient_id: str) -> tuple[str, Predictor | None]:
        """The label of the version serving this patient, and its model (None: unusable)."""

    @property
    def shadow(self) -> Shadow | None:
        """The challenger to score beside the champion, if the rollout is in shadow."""


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


@dataclass
class _History:
    """What one patient's evaluation reads of the last `HISTORY` (see `_histories`)."""

    points: list[ReadingPoint] = field(default_factory=list)
    doses: list[DoseEvent] = field(default_factory=list)
    alert_doses: list[rules.DoseEvent] = field(default_factory=list)
    cuff: list[rules.CuffReading] = field(default_factory=list)
    # Hypotension symptom reports of the last 3 days, for the low-BP alert rule.
    symptoms: list[datetime] = field(default_factory=list)
    # Every symptom report of the window, for the features.
    reports: list[SymptomPoint] = field(default_factory=list)


def _utc(value: datetime | str) -> datetime:
    """A timestamp as the driver returns it, aware in UTC: what `app.db.UTCDateTime` gives,
    in one step (naive UTC text on SQLite, an aware datetime on PostgreSQL). The history
    queries read thousands per chunk, where the type's layered processing shows."""
    if isinstance(value, str):  # naive UTC text, as UTCDateTime stores it
        return datetime.fromisoformat(value + "+00:00")  # tzinfo UTC, faster than .replace()
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


# The evaluation's statements, built once with bound parameters: building a statement and
# its cache key on every call costs more than running it, for a single evaluation above all.
def _ids() -> BindParameter[Any]:
    return bindparam("ids", expanding=True)


# History rows are ordered by time within each patient (the index order), so every list is
# built in the same order whichever patients share the query.
_READINGS = (
    select(
        col(Reading.patient_id),
        type_coerce(col(Reading.effective_start), String),  # raw: converted by _utc
        col(Reading.effective_precision),
        col(Reading.kind),
        col(Reading.device_class),
        col(Reading.systolic),
        col(Reading.diastolic),
        col(Reading.value),
        col(Reading.statistic),
        col(Reading.status),
    )
    .where(
        col(Reading.patient_id).in_(_ids()),
        col(Reading.effective_start) >= bindparam("since"),
        col(Reading.effective_start) <= bindparam("now"),
    )
    .order_by(col(Reading.patient_id), col(Reading.effective_start), col(Reading.id))
)
_DOSES = (
    select(
        col(MedicationEvent.patient_id),
        type_coerce(col(MedicationEvent.effective_start), String),
        col(MedicationEvent.taken),
    )
    .where(
        col(MedicationEvent.patient_id).in_(_ids()),
        col(MedicationEvent.effective_start) >= bindparam("since"),
        col(MedicationEvent.effective_start) <= bindparam("now"),
    )
    .order_by(
        col(MedicationEvent.patient_id),
        col(MedicationEvent.effective_start),
        col(MedicationEvent.id),
    )
)
_SYMPTOMS = (
    select(
        col(SymptomReport.patient_id),
        type_coerce(col(SymptomReport.reported_at), String),  # raw: converted by _utc
        col(SymptomReport.symptoms),
    )
    .where(
        col(SymptomReport.patient_id).in_(_ids()),
        col(SymptomReport.reported_at) >= bindparam("since"),
        col(SymptomReport.reported_at) <= bindparam("now"),
    )
    .order_by(col(SymptomReport.patient_id), col(SymptomReport.reported_at), col(SymptomReport.id))
)
_PATIENTS = select(
    col(Patient.id),
    col(Patient.created_at),
    col(Patient.sex),
    col(Patient.has_diabetes),
    col(Patient.has_ckd),
    col(Patient.birth_date),
).where(col(Patient.id).in_(_ids()))
_REMEASURE_ASKED = select(col(PatientNotice.patient_id), col(PatientNotice.due_at)).where(
    col(PatientNotice.patient_id).in_(_ids()),
    col(PatientNotice.kind) == "remeasure_now",
    col(PatientNotice.due_at).in_(bindparam("dues", expanding=True)),
)
_NUDGED = select(col(PatientNotice.patient_id)).where(
    col(PatientNotice.patient_id).in_(_ids()),
    col(PatientNotice.kind) == "measure",
    col(PatientNotice.created_at) >= bindparam("since"),
)
_ACTIVE_REGIMENS = (
    select(MedicationRegimen)
    .where(
        col(MedicationRegimen.patient_id).in_(_ids()),
        col(MedicationRegimen.status) == RegimenStatus.ACTIVE,
    )
    .order_by(col(MedicationRegimen.started_at).desc(), col(MedicationRegimen.id))
)
_LADDERS = select(TitrationLadder).where(col(TitrationLadder.id).in_(_ids()))
_AUTO_CHANGES = (
    select(col(Proposal.patient_id), func.count())
    .where(
        col(Proposal.patient_id).in_(_ids()),
        col(Proposal.status) == ProposalStatus.DELIVERED,
        col(Proposal.action) != TitrationAction.HOLD,
        col(Proposal.created_at) >= bindparam("since"),
    )
    .group_by(col(Proposal.patient_id))
)
_PENDING_REVIEW = select(Proposal).where(
    col(Proposal.patient_id).in_(_ids()),
    col(Proposal.status) == ProposalStatus.PENDING_REVIEW,
)


def _rows(session: Session, stmt: Executable, params: dict[str, Any]) -> CursorResult[Any]:
    """Run a column query on the session's connection, in its transaction: no ORM layer per
    row (thousands of history rows per chunk). Flushes first, as the session's own execute
    would, so the query sees everything the session holds."""
    if session.autoflush:
        session.flush()  # returns at once when nothing is pending
    return session.connection().execute(stmt, params)


def _histories(session: Session, patient_ids: list[str], now: datetime) -> dict[str, _History]:
    """Readings, dose events and symptom reports of every patient: one query each."""
    found = {patient_id: _History() for patient_id in patient_ids}
    window = {"ids": patient_ids, "since": now - HISTORY, "now": now}
    for (
        patient_id,
        raw,
        precision,
        kind,
        dclass,
        sbp,
        dbp,
        value,
        statistic,
        status,
    ) in _rows(session, _READINGS, window):
        if precision in {"year", "month", "day"}:
            continue  # no time of day: cannot sit in a local day or a morning/evening half
        when = _utc(raw)
        history = found[patient_id]
        quarantined = status != ReadingStatus.ACCEPTED
        history.points.append(
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
            history.cuff.append(rules.CuffReading(when, sbp, dbp))
    for patient_id, raw, taken in _rows(session, _DOSES, window):
        when, history = _utc(raw), found[patient_id]
        history.doses.append(DoseEvent(time=when, taken=bool(taken)))
        history.alert_doses.append(rules.DoseEvent(when, bool(taken)))
    alert_since = now - timedelta(days=3)
    for patient_id, raw, reported in _rows(session, _SYMPTOMS, window):
        when, history = _utc(raw), found[patient_id]
        point = SymptomPoint(time=when, symptoms=frozenset(reported or ()))
        history.reports.append(point)
        # The protocol's low-BP rule counts hypotension symptoms only, not a cough or a note.
        if point.hypotensive and when >= alert_since:
            history.symptoms.append(when)
    return found


@dataclass(frozen=True)
class _Patient:
    """The patient facts an evaluation uses."""

    id: str
    created_at: datetime
    facts: PatientFacts


def _patients(session: Session, patient_ids: list[str]) -> dict[str, _Patient]:
    rows = _rows(session, _PATIENTS, {"ids": patient_ids})
    return {
        pid: _Patient(
            pid,
            created,
            PatientFacts(sex=str(sex), diabetes=diabetes, ckd=ckd, birth_date=birth_date),
        )
        for pid, created, sex, diabetes, ckd, birth_date in rows
    }


@dataclass
class _Case:
    """One patient's evaluation while a batch works through it: what it decided, as rows."""

    patient: _Patient
    history: _History
    # The patient's unresolved alerts, kept current as this evaluation raises and resolves.
    unresolved: list[Alert]
    evaluation: dict[str, Any]  # the `evaluations` row
    alerts: list[dict[str, Any]] = field(default_factory=list)  # new `alerts` rows
    notices: list[dict[str, Any]] = field(default_factory=list)  # new `patient_notices` rows
    proposal: dict[str, Any] | None = None  # the new `proposals` row
    remeasure_pending: bool = False
    shadow: dict[str, Any] | None = None  # the new `shadow_predictions` row (no evaluation id)


@dataclass(frozen=True)
class _OnLadder:
    """A case with an active regimen, and its features."""

    case: _Case
    regimen: MedicationRegimen
    ladder: TitrationLadder
    features: FeatureVector
    feature_hash: str


@dataclass(frozen=True)
class _Scored:
    """A case the model scored and routing decided on, waiting for its explanation."""

    on: _OnLadder
    row: int  # its row in the feature matrix
    action: TitrationAction
    probs: tuple[float, ...]
    confidence: float
    to_step: int
    decision: RoutingDecision


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
    (result,) = evaluate_many(
        session, patient_ids=[patient_id], trigger=trigger, now=now, predictor=predictor, tz=tz
    )
    return result


def evaluate_many(
    session: Session,
    *,
    patient_ids: Sequence[str],
    trigger: str,
    now: datetime,
    predictor: Predictor | None,
    tz: str = "UTC",
) -> list[EvaluationResult]:
    """Evaluate several patients now, with batched reads, model and writes; never commits.

    Each result, and everything recorded for it (rows, notices, the regimen change, one
    `loop.evaluate` audit entry per patient), is what `evaluate` would give that patient
    evaluated alone at the same `now`: an evaluation reads and writes only its own patient's
    rows, and every decision is the same per-patient code. Results are in `patient_ids`
    order, and so are the rows and audit entries. A patient may appear once.
    """
    ids = list(patient_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("a patient may appear only once in a batch")
    if not ids:
        return []
    patients = _patients(session, ids)
    if len(patients) != len(ids):
        raise LookupError("no such patient")
    histories = _histories(session, ids, now)
    unresolved = service.open_alerts_of(session, ids)
    cases = [
        _Case(
            patients[pid],
            histories[pid],
            unresolved[pid],
            {
                "patient_id": pid,
                "trigger": trigger,
                "as_of": now,
                "model_version": None,
                "model_ms": None,
                "feature_hash": None,
                "envelope_version": None,
                "outcome": Outcome.NO_REGIMEN,
                "proposal_id": None,
                "route": None,
                "reasons": [],
                "created_at": now,
            },
        )
        for pid in ids
    ]
    _alerts(session, cases, now)
    regimens = _active_regimens(session, ids)
    to_score: list[_OnLadder] = []
    to_nudge: list[_Case] = []
    for case in cases:
        found = regimens.get(case.patient.id)
        if found is None:
            continue  # only the alert rules ran
        regimen, ladder = found
        features = _features(case, regimen, ladder, now, tz)
        on = _OnLadder(case, regimen, ladder, features, features.hash())
        case.evaluation["feature_hash"] = on.feature_hash
        if not features.sufficient:
            case.evaluation["outcome"] = Outcome.INSUFFICIENT_DATA
            to_nudge.append(case)
        else:
            to_score.append(on)
    _nudge(session, to_nudge, now)
    if to_score:
        _serve(session, to_score, predictor, now)
    results = _write(session, cases)
    _audit(session, results, trigger)
    return results


def _alerts(session: Session, cases: list[_Case], now: datetime) -> None:
    """The alert rules, for every case: raise, resolve, ask for a crisis re-measurement."""
    remeasure: list[tuple[_Case, rules.CrisisCheck]] = []
    for case in cases:
        patient, history = case.patient, case.history
        found, check = rules.findings(
            patient.id,
            readings=history.cuff,
            doses=history.alert_doses,
            symptom_times=history.symptoms,
            monitored_since=patient.created_at,
            now=now,
        )
        case.alerts = service.new_alert_rows(
            patient_id=patient.id, found=found, unresolved=case.unresolved, now=now
        )
        if case.unresolved:
            service.clear_alerts(case.unresolved, still_found=found, now=now)
            case.unresolved = [a for a in case.unresolved if a.status != AlertStatus.RESOLVED]
        case.remeasure_pending = check.status is rules.CrisisStatus.REMEASURE
        if check.status is rules.CrisisStatus.REMEASURE and check.trigger and check.due:
            remeasure.append((case, check))
    if not remeasure:
        return
    asked = set(
        _rows(
            session,
            _REMEASURE_ASKED,
            {
                "ids": [case.patient.id for case, _ in remeasure],
                "dues": [check.due for _, check in remeasure],
            },
        ).tuples()
    )
    for case, check in remeasure:
        t = check.trigger
        if (case.patient.id, check.due) in asked or t is None:
            continue  # asked once per re-measurement window
        case.notices.append(
            _notice(
                case.patient.id,
                "remeasure_now",
                f"Your reading of {t.systolic:.0f}/{t.diastolic:.0f} is very high. Sit quietly "
                "and measure again now. If it stays this high, or you have chest pain, "
                "shortness of breath, weakness or vision changes, call emergency services.",
                due_at=check.due,
            )
        )


def _notice(
    patient_id: str, kind: str, text: str, *, due_at: datetime | None = None
) -> dict[str, Any]:
    # No created_at: the column's default, the wall-clock time (see docs/patient-ai-loop.md).
    return {"patient_id": patient_id, "kind": kind, "text": text, "due_at": due_at}


def _active_regimens(
    session: Session, patient_ids: list[str]
) -> dict[str, tuple[MedicationRegimen, TitrationLadder]]:
    """Each patient's newest active regimen and its ladder (patients without one absent)."""
    newest: dict[str, MedicationRegimen] = {}
    for regimen in session.scalars(_ACTIVE_REGIMENS, {"ids": patient_ids}):
        newest.setdefault(regimen.patient_id, regimen)
    if not newest:
        return {}
    ladders = {
        ladder.id: ladder
        for ladder in session.scalars(
            _LADDERS, {"ids": sorted({r.ladder_id for r in newest.values()})}
        )
    }
    return {
        patient_id: (regimen, ladders[regimen.ladder_id])
        for patient_id, regimen in newest.items()
        if regimen.ladder_id in ladders
    }


def auto_changes_30d(session: Session, *, patient_id: str, now: datetime) -> int:
    """Dose changes delivered automatically in the last 30 days."""
    return _auto_changes_30d(session, [patient_id], now).get(patient_id, 0)


def _auto_changes_30d(session: Session, patient_ids: list[str], now: datetime) -> dict[str, int]:
    rows = _rows(session, _AUTO_CHANGES, {"ids": patient_ids, "since": now - timedelta(days=30)})
    return {patient_id: int(n) for patient_id, n in rows}


def _pending_review(session: Session, patient_ids: list[str]) -> dict[str, list[Proposal]]:
    pending: dict[str, list[Proposal]] = {}
    for proposal in session.scalars(_PENDING_REVIEW, {"ids": patient_ids}):
        pending.setdefault(proposal.patient_id, []).append(proposal)
    return pending


def _features(
    case: _Case, regimen: MedicationRegimen, ladder: TitrationLadder, now: datetime, tz: str
) -> FeatureVector:
    return compute_features(
        readings=case.history.points,
        doses=case.history.doses,
        symptoms=case.history.reports,
        patient=case.patient.facts,
        regimen=RegimenFacts(
            step=regimen.current_step,
            ladder_steps=len(ladder.steps),
            last_change=_last_change(regimen),
        ),
        as_of=now,
        tz=tz,
    )


def _serve(
    session: Session, scoring: list[_OnLadder], predictor: Predictor | None, now: datetime
) -> None:
    """Score the cases with the model serving each patient: the predictor, or while a
    rollout runs (a `ServingPlan`) the model of each patient's group, one forward per group.
    Without a usable model the case stops before a proposal: clinicians decide."""
    if predictor is None:
        for on in scoring:
            on.case.evaluation["outcome"] = Outcome.MODEL_UNAVAILABLE
        return
    if not isinstance(predictor, ServingPlan):
        _score(session, scoring, predictor, now)
        return
    groups: dict[str, tuple[Predictor | None, list[_OnLadder]]] = {}
    for on in scoring:
        label, model = predictor.serving(on.case.patient.id)
        groups.setdefault(label, (model, []))[1].append(on)
    for label, (model, group) in groups.items():
        if model is None:
            # The version that should serve these patients is unusable: recorded under its
            # label, so the rollout's analysis counts the failure against it.
            _unavailable(group, label)
        else:
            _score(session, group, model, now, predictor.shadow)


def _unavailable(scoring: Sequence[_OnLadder], label: str) -> None:
    for on in scoring:
        evaluation = on.case.evaluation
        evaluation["model_version"], evaluation["outcome"] = label, Outcome.MODEL_UNAVAILABLE
        evaluation["route"], evaluation["reasons"] = None, []


def _probabilities(predictor: Predictor, x: np.ndarray) -> tuple[np.ndarray | None, str, float]:
    """The model's probabilities for x, or None and why (it raised, or answered nonsense);
    and its scoring time per row in ms."""
    started = time.perf_counter()
    error = ""
    try:
        probs = np.asarray(predictor.predict_proba(x), dtype=np.float64)
    except Exception as exc:  # any failure of a model must leave the loop running
        error = type(exc).__name__
    else:
        if probs.shape != (len(x), len(ACTIONS)):
            error = "bad_shape"
        elif not np.isfinite(probs).all():
            error = "non_finite"
    ms = (time.perf_counter() - started) * 1000.0 / max(len(x), 1)
    return (None if error else probs), error, ms


def _score(
    session: Session,
    scoring: list[_OnLadder],
    predictor: Predictor,
    now: datetime,
    shadow: Shadow | None = None,
) -> None:
    """One model forward for every case, routing for each, one batched explanation; with a
    shadow, the challenger's forward and routing too, logged for each case.

    A model that raises or answers nonsense stops these cases before a proposal (outcome
    `model_unavailable` under its label): clinicians decide, and the loop keeps running."""
    x = feature_matrix([on.features for on in scoring])
    probs, error, ms = _probabilities(predictor, x)
    if probs is None:
        log.error("model %s failed on %d evaluations: %s", predictor.label, len(scoring), error)
        _unavailable(scoring, predictor.label)
        return
    shadow_probs, shadow_error, shadow_ms = None, "", None
    if shadow is not None:
        if shadow.model is None:
            shadow_error = "artifact_unusable"
        else:
            shadow_probs, shadow_error, shadow_ms = _probabilities(shadow.model, x)
    ids = [on.case.patient.id for on in scoring]
    envelopes = service.envelopes_in_force(session, ids, at=now)
    auto_changes = _auto_changes_30d(session, ids, now)
    pending = _pending_review(session, ids)
    kill_switch = service.kill_switch_on(session)
    rules_by_text: dict[str, EnvelopeRules] = {}  # envelopes often share their rules
    proposing: list[_Scored] = []
    for row, on in enumerate(scoring):
        case, regimen, ladder, features = on.case, on.regimen, on.ladder, on.features
        evaluation = case.evaluation
        best = int(np.argmax(probs[row]))
        action, confidence = ACTIONS[best], float(probs[row][best])
        evaluation["model_version"], evaluation["model_ms"] = predictor.label, ms
        envelope = envelopes.get(case.patient.id)
        rules_in_force = _rules(envelope.rules, rules_by_text) if envelope else None
        evaluation["envelope_version"] = envelope.version if envelope else None
        # Unacknowledged alerts block automatic delivery; once a clinician has taken an alert
        # in hand (acknowledged), the envelope decides again.
        unseen = sum(1 for a in case.unresolved if a.status == AlertStatus.OPEN)
        evidence = features.to_evidence(
            auto_changes_30d=auto_changes.get(case.patient.id, 0),
            open_alerts=unseen + len(case.alerts) + int(case.remeasure_pending),
        )
        to_step = regimen.current_step + _DELTA[action]
        decision = route(
            RoutingProposal(
                action=action,
                from_step=regimen.current_step,
                to_step=to_step,
                confidence=confidence,
                ladder_steps=len(ladder.steps),
            ),
            evidence,
            rules_in_force,
            kill_switch=kill_switch,
        )
        evaluation["route"] = str(decision.route)
        evaluation["reasons"] = [str(r) for r in decision.reasons]
        if shadow is not None:
            # What the challenger would have done in the same place: the same evidence,
            # envelope and kill switch, the same routing; logged only, never delivered.
            case.shadow = _shadow_row(shadow, case, action, shadow_error, shadow_ms)
            if shadow_probs is not None:
                alt = int(np.argmax(shadow_probs[row]))
                alt_decision = route(
                    RoutingProposal(
                        action=ACTIONS[alt],
                        from_step=regimen.current_step,
                        to_step=regimen.current_step + _DELTA[ACTIONS[alt]],
                        confidence=float(shadow_probs[row][alt]),
                        ladder_steps=len(ladder.steps),
                    ),
                    evidence,
                    rules_in_force,
                    kill_switch=kill_switch,
                )
                case.shadow["challenger_action"] = str(ACTIONS[alt])
                case.shadow["challenger_route"] = str(alt_decision.route)
                case.shadow["probabilities"] = [float(p) for p in shadow_probs[row]]
        if action is TitrationAction.HOLD:
            # A hold makes any older queued change stale, as a new proposal does (below).
            _supersede(pending.get(case.patient.id, []))
            evaluation["outcome"] = Outcome.HOLD  # "keep taking it" is not worth a message
            continue
        proposing.append(
            _Scored(
                on,
                row,
                action,
                tuple(float(p) for p in probs[row]),
                confidence,
                to_step,
                decision,
            )
        )
    if not proposing:
        return
    try:
        explanations = predictor.explain_many(
            x[[s.row for s in proposing]],
            [s.action for s in proposing],
            [s.on.features for s in proposing],
        )
        if len(explanations) != len(proposing):
            raise ValueError("the model explained a different number of proposals")
    except Exception as exc:  # no explanation, no proposal: clinicians decide
        log.error("model %s failed to explain: %s", predictor.label, type(exc).__name__)
        _unavailable([s.on for s in proposing], predictor.label)
        return
    for scored, explanation in zip(proposing, explanations, strict=True):
        _supersede(pending.get(scored.on.case.patient.id, []))
        _propose(scored, explanation, predictor.label, now)


def _shadow_row(
    shadow: Shadow, case: _Case, champion_action: TitrationAction, error: str, ms: float | None
) -> dict[str, Any]:
    """A `shadow_predictions` row for one case; the challenger's answer is filled in after."""
    return {
        "rollout_id": shadow.rollout_id,
        "patient_id": case.patient.id,
        "challenger_version": shadow.version,
        "champion_action": str(champion_action),
        "challenger_action": None,
        "challenger_route": None,
        "probabilities": [],
        "latency_ms": ms,
        "error": error[:64] or None,
        "created_at": case.evaluation["created_at"],
    }


def _rules(document: dict[str, Any], known: dict[str, EnvelopeRules]) -> EnvelopeRules:
    """The envelope's rules, validated once per distinct document in a batch."""
    key = json.dumps(document, sort_keys=True)
    rules_in_force = known.get(key)
    if rules_in_force is None:
        rules_in_force = known[key] = EnvelopeRules.model_validate(document)
    return rules_in_force


def _propose(scored: _Scored, explanation: Explanation, model_version: str, now: datetime) -> None:
    on, to_step, decision = scored.on, scored.to_step, scored.decision
    case, regimen, ladder, features = on.case, on.regimen, on.ladder, on.features
    evaluation = case.evaluation
    in_ladder = 0 <= to_step < len(ladder.steps)
    delivered = decision.route is Route.AUTO_DELIVER
    to_dose = ladder.steps[to_step] if in_ladder else ladder.steps[regimen.current_step]
    proposal_id = new_id()
    case.proposal = {
        "id": proposal_id,
        "patient_id": case.patient.id,
        "regimen_id": regimen.id,
        "model_version": model_version,
        "feature_hash": on.feature_hash,
        "features": _json_features(features),
        "action": str(scored.action),
        "from_step": regimen.current_step,
        "to_step": to_step,
        "from_dose": ladder.steps[regimen.current_step],
        "to_dose": to_dose,
        "probabilities": {str(a): p for a, p in zip(ACTIONS, scored.probs, strict=True)},
        "confidence": scored.confidence,
        "explanation": {
            "shap": explanation.shap,
            "clinician_text": explanation.clinician_text,
            "patient_text": explanation.patient_text,
        },
        "envelope_version": evaluation["envelope_version"],
        "route": str(decision.route),
        "reasons": [str(r) for r in decision.reasons],
        "status": ProposalStatus.DELIVERED if delivered else ProposalStatus.PENDING_REVIEW,
        "created_at": now,
        "delivered_at": now if delivered else None,
    }
    if delivered:
        # Inside the envelope: the change is the patient's new instruction from now on.
        regimen.current_step, regimen.last_changed_at = to_step, now
        case.notices.append(
            _notice(
                case.patient.id,
                "recommendation",
                f"New dose: {ladder.drug} {to_dose:g} {ladder.unit} {ladder.frequency}. "
                f"{explanation.patient_text}",
            )
        )
    evaluation["outcome"], evaluation["proposal_id"] = Outcome.PROPOSAL, proposal_id


def _write(session: Session, cases: list[_Case]) -> list[EvaluationResult]:
    """Insert every case's new rows, one statement per table, in case order."""
    alerts = iter(service.insert_returning(session, Alert, [r for c in cases for r in c.alerts]))
    notices = iter(
        service.insert_returning(session, PatientNotice, [r for c in cases for r in c.notices])
    )
    proposals = {
        p.id: p
        for p in service.insert_returning(
            session, Proposal, [c.proposal for c in cases if c.proposal is not None]
        )
    }
    evaluations = service.insert_returning(session, Evaluation, [c.evaluation for c in cases])
    shadows = [
        {**case.shadow, "evaluation_id": evaluation.id}
        for case, evaluation in zip(cases, evaluations, strict=True)
        if case.shadow is not None
    ]
    if shadows:
        session.execute(insert(ShadowPrediction), shadows)
    return [
        EvaluationResult(
            evaluation,
            proposals[case.proposal["id"]] if case.proposal is not None else None,
            [next(alerts) for _ in case.alerts],
            [next(notices) for _ in case.notices],
            case.remeasure_pending,
        )
        for case, evaluation in zip(cases, evaluations, strict=True)
    ]


def _audit(session: Session, results: list[EvaluationResult], trigger: str) -> None:
    """Queue one `loop.evaluate` entry per evaluation, written by the caller's commit."""
    for result in results:
        evaluation = result.evaluation
        audit.record(
            session,
            actor="system:loop",
            actor_role="system",
            action="loop.evaluate",
            resource_type="evaluation",
            resource_id=str(evaluation.id),
            patient_id=evaluation.patient_id,
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


def _last_change(regimen: MedicationRegimen) -> datetime | None:
    # A regimen that never moved since it started has no change to count from.
    return None if regimen.last_changed_at <= regimen.started_at else regimen.last_changed_at


def _json_features(features: FeatureVector) -> dict[str, Any]:
    return {k: (None if v != v else v) for k, v in features.as_dict().items()}  # NaN -> null


def _supersede(pending: list[Proposal]) -> None:
    for old in pending:
        service.check_transition(
            PROPOSAL_TRANSITIONS, ProposalStatus(old.status), ProposalStatus.SUPERSEDED
        )
        old.status = ProposalStatus.SUPERSEDED


def _nudge(session: Session, cases: list[_Case], now: datetime) -> None:
    if not cases:
        return
    recent = set(
        _rows(
            session,
            _NUDGED,
            {"ids": [case.patient.id for case in cases], "since": now - timedelta(hours=24)},
        ).scalars()
    )
    for case in cases:
        if case.patient.id in recent:
            continue  # at most one nudge a day
        case.notices.append(
            _notice(
                case.patient.id,
                "measure",
                "Please measure your blood pressure with your home cuff twice in the morning "
                "and twice in the evening, so your care plan can be reviewed.",
            )
        )
