"""The first model's training data: a simulated cohort, labelled by the written protocol.

Features come from the same module serving uses (mlops.features), so what the model learns
from is computed exactly as what it will see. Patients follow the protocol's decisions as the
simulation runs, so the labels cover recent changes and top-of-ladder cases too. Simulated
symptom reports (`mlops.symptoms`) feed both the symptom features and the protocol's
"low SBP with symptoms" rule, read from the same feature (`hypotension_symptoms_3d`).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta

import numpy as np

from device_ingest.simulator import (
    Cohort,
    Scenario,
    SimPatient,
    SimReading,
    generate_patients,
)
from loops.protocol import PatientState, decide
from mlops.features import (
    FEATURE_NAMES,
    DoseEvent,
    FeatureVector,
    PatientFacts,
    ReadingPoint,
    RegimenFacts,
    SymptomPoint,
    compute_features,
)
from mlops.symptoms import SYMPTOM_MODEL_VERSION, day_reports
from policies.envelope import TitrationAction

ACTIONS = (TitrationAction.DECREASE, TitrationAction.HOLD, TitrationAction.INCREASE)
_DELTA = {TitrationAction.DECREASE: -1, TitrationAction.HOLD: 0, TitrationAction.INCREASE: 1}
_WINDOW = timedelta(days=22)  # features look back 14 days; adherence 14 days


@dataclass
class TrainingSet:
    """Examples (one per patient-snapshot), their protocol labels and where they came from."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray  # patient pseudonyms: splits are by patient, never by row
    feature_names: tuple[str, ...]
    params: dict[str, object]
    data_hash: str = ""
    label_reasons: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.data_hash:
            digest = hashlib.sha256()
            digest.update("\n".join(self.feature_names).encode())
            digest.update(np.ascontiguousarray(self.X, dtype=np.float64).tobytes())
            digest.update(np.ascontiguousarray(self.y, dtype=np.int64).tobytes())
            digest.update(repr(sorted(self.params.items())).encode())
            self.data_hash = digest.hexdigest()


def reading_point(reading: SimReading) -> ReadingPoint:
    """A simulated reading as the feature module sees a stored one (artifacts quarantined,
    as ingestion would)."""
    return ReadingPoint(
        time=reading.time,
        kind=str(reading.kind),
        device_class=reading.device_kind,
        systolic=reading.systolic,
        diastolic=reading.diastolic,
        value=reading.value,
        quarantined=reading.artifact,
    )


def protocol_state(features: FeatureVector, patient: SimPatient, step: int) -> PatientState:
    """What the written protocol looks at, read from the feature vector."""
    f = features.as_dict()

    def known(name: str) -> float | None:
        value = f[name]
        return None if value != value else value  # NaN: missing

    return PatientState(
        cuff_readings_per_day_7d=features.cuff_readings_per_day_7d,
        mean_sbp_7d=known("cuff_sbp_mean_7d"),
        mean_dbp_7d=known("cuff_dbp_mean_7d"),
        mean_sbp_3d=known("cuff_sbp_mean_3d"),
        min_sbp_3d=known("cuff_sbp_min_3d"),
        hypotension_symptoms=f["hypotension_symptoms_3d"] >= 0.5,
        adherence_14d=features.adherence_14d,
        days_since_last_change=features.days_since_last_change,
        step=step,
        ladder_steps=len(patient.ladder_mg),
        diabetes_or_ckd=patient.diabetes or patient.ckd,
    )


def overtreated(index: int, share: float) -> bool:
    """Whether the cohort's `index`-th patient (from 0) is one `build` makes over-treated."""
    every_nth = round(1 / share) if share > 0 else 0
    return bool(every_nth) and index % every_nth == every_nth - 1


def build(
    *,
    n_patients: int,
    days: int,
    seed: int,
    every: int = 7,
    scenario: Scenario | None = None,
    overtreated_share: float = 0.1,
) -> TrainingSet:
    """Simulate `days` days and label every patient each `every` days after the second week.

    A share of patients is over-treated (a milder untreated pressure, at the top of their
    ladder) so that the protocol's low-blood-pressure rule, rare in a typical cohort, is
    represented in the labels at all.
    """
    patients = generate_patients(n_patients, seed, scenario.subgroup if scenario else None)
    patients = [
        replace(
            p,
            baseline_sbp=round(p.baseline_sbp - 30.0, 1),
            baseline_dbp=round(p.baseline_dbp - 14.0, 1),
            start_step=len(p.ladder_mg) - 1,
        )
        if overtreated(i, overtreated_share)
        else p
        for i, p in enumerate(patients)
    ]
    cohort = Cohort.from_patients(patients, seed, scenario)
    steps = {p.pseudonym: p.start_step for p in cohort.patients}
    changed: dict[str, datetime | None] = {p.pseudonym: None for p in cohort.patients}
    readings: dict[str, deque[ReadingPoint]] = {p.pseudonym: deque() for p in cohort.patients}
    doses: dict[str, deque[DoseEvent]] = {p.pseudonym: deque() for p in cohort.patients}
    symptoms: dict[str, deque[SymptomPoint]] = {p.pseudonym: deque() for p in cohort.patients}
    rows: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[str] = []
    reasons: list[str] = []
    for day in range(days):
        out = cohort.simulate_day(day, steps)
        for reading in out.readings():
            readings[reading.pseudonym].append(reading_point(reading))
        for event in out.medication_events():
            doses[event.pseudonym].append(DoseEvent(time=event.time, taken=event.taken))
        for name, report in day_reports(out, cohort.patients, seed=seed).items():
            symptoms[name].append(report.point())
        if day < 14 or day % every:
            continue
        as_of = datetime.combine(out.date + timedelta(days=1), time(), UTC)
        for patient in cohort.patients:
            name = patient.pseudonym
            _trim(readings[name], doses[name], symptoms[name], as_of - _WINDOW)
            fv = compute_features(
                readings=readings[name],
                doses=doses[name],
                symptoms=symptoms[name],
                patient=PatientFacts(
                    sex=patient.sex, diabetes=patient.diabetes, ckd=patient.ckd, age=patient.age
                ),
                regimen=RegimenFacts(
                    step=steps[name], ladder_steps=len(patient.ladder_mg), last_change=changed[name]
                ),
                as_of=as_of,
            )
            decision = decide(protocol_state(fv, patient, steps[name]))
            if decision.action is None:
                continue  # the protocol makes no proposal without enough cuff data
            rows.append(fv.to_array())
            labels.append(ACTIONS.index(decision.action))
            groups.append(name)
            reasons.append(str(decision.why))
            if decision.action is not TitrationAction.HOLD:
                steps[name] += _DELTA[decision.action]
                changed[name] = as_of
    params: dict[str, object] = {
        "n_patients": n_patients,
        "days": days,
        "seed": seed,
        "every": every,
        "scenario": repr(scenario),
        "overtreated_share": overtreated_share,
        "symptoms": SYMPTOM_MODEL_VERSION,
    }
    return TrainingSet(
        np.vstack(rows) if rows else np.empty((0, len(FEATURE_NAMES))),
        np.asarray(labels, dtype=np.int64),
        np.asarray(groups),
        FEATURE_NAMES,
        params,
        label_reasons=reasons,
    )


def _trim(
    readings: deque[ReadingPoint],
    doses: deque[DoseEvent],
    symptoms: deque[SymptomPoint],
    before: datetime,
) -> None:
    for queue in (readings, doses, symptoms):
        while queue and queue[0].time < before:
            queue.popleft()


def split_by_patient(
    groups: np.ndarray, *, holdout: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, holdout) that never put one patient on both sides."""
    patients = np.unique(groups)
    rng = np.random.default_rng(seed)
    chosen = set(
        rng.choice(patients, size=max(1, round(len(patients) * holdout)), replace=False).tolist()
    )
    held = np.array([g in chosen for g in groups])
    return ~held, held
