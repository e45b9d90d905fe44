"""Validation gates: what a candidate model must show before it may be signed off.

Each gate is a pure function of model outputs and data, returning a `Verdict` (passed, what
was measured, the threshold, and a detail naming which check failed and by how much).
`run_gates` runs them all on a candidate, stores one append-only `GateResult` per gate with
its evidence (a JSON file under the data directory, named in the row with its SHA-256), and
moves a candidate that passed every gate to `validated`. A failed gate leaves it a candidate.

The gates (thresholds are settings, `gate_*` in app/core/config.py):

- `artifact`: the artifact loads under its recorded SHA-256 and was trained on this code's
  feature set (serving would refuse it otherwise).
- `holdout_noninferiority`: on the holdout patients, the candidate's log-loss is at most the
  champion's plus a margin by the upper bound of a paired 95% bootstrap interval that
  resamples patients (rows of one patient are not independent), and its accuracy is at
  least the champion's minus a margin. Without a usable champion the comparator is the
  no-skill model (the holdout's own class frequencies).
- `calibration`: expected calibration error (10 bins) at most `gate_max_ece`.
- `subgroup_gap`: accuracy in each subgroup (sex, age band, diabetes or CKD) of at least
  `gate_min_subgroup_rows` rows is at most `gate_max_subgroup_gap` below the overall.
- `safety_directional`: raising every home blood-pressure feature together (SBP and DBP,
  7/14-day, morning/evening, 3-day mean and minimum), all else fixed, never lowers
  P(increase), over a grid of -30..+60 mmHg around every base row.
- `safety_invariance`: fields that must not matter do not. Identity and device fields
  (patient ids, pseudonyms, device model, manufacturer, firmware, serial) are not inputs at
  all (checked on the feature names; the feature function takes none of them), and
  irrelevant changes to a case's raw inputs (reading order, quarantined readings, summary
  statistics, readings at or after the evaluation time) move no probability at all. How
  far a sex swap moves the probabilities is measured and reported, not gated (DP noise
  gives every binary input a random weight of that size; docs/model-lifecycle.md).
- `safety_routing`: in a library of crisis and low-BP cases built from readings (features,
  alert rules, the candidate's proposal, and `policies.routing.route` with the demo
  envelope), no proposal is auto-deliverable.
- `safety_low_bp`: the candidate proposes no increase in any low-BP case (the case library
  and the holdout rows that meet the protocol's low-BP rule).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core.config import Settings, get_settings
from audit import service as audit
from loops import alerts as alert_rules
from loops.protocol import HYPOTENSION_SYMPTOMS, LOW_MEAN_SBP_3D, LOW_SBP_WITH_SYMPTOMS
from mlops import dataset, lifecycle, snapshots
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
from mlops.model import (
    ArtifactError,
    TitrationModel,
    accuracy,
    as_labels,
    expected_calibration_error,
    index_of,
    macro_f1,
    nll,
)
from mlops.models import ModelStatus, ModelVersion, TrainingSnapshot
from mlops.serving import feature_set_problem
from policies.envelope import TitrationAction, default_rules
from policies.routing import Proposal as RoutingProposal
from policies.routing import Route, route
from validation.models import GateResult

FloatArray = NDArray[np.float64]
_INC: Final = index_of(TitrationAction.INCREASE)
_ACTIONS: Final = (TitrationAction.DECREASE, TitrationAction.HOLD, TitrationAction.INCREASE)
_DELTA: Final = {TitrationAction.DECREASE: -1, TitrationAction.HOLD: 0, TitrationAction.INCREASE: 1}
# Home blood-pressure level features: "a higher blood pressure" moves them all together.
BP_FEATURES: Final[tuple[str, ...]] = (
    "cuff_sbp_mean_7d",
    "cuff_dbp_mean_7d",
    "cuff_sbp_mean_14d",
    "cuff_dbp_mean_14d",
    "cuff_sbp_mean_am_7d",
    "cuff_dbp_mean_am_7d",
    "cuff_sbp_mean_pm_7d",
    "cuff_dbp_mean_pm_7d",
    "cuff_sbp_mean_3d",
    "cuff_sbp_min_3d",
)
BP_SHIFTS: Final[tuple[float, ...]] = tuple(float(d) for d in range(-30, 65, 5))
# Name parts that mark an identity or device field: none may be a model input.
FORBIDDEN_INPUT_TOKENS: Final = frozenset(
    {"id", "pseudonym", "name", "mrn", "firmware", "manufacturer", "serial", "device"}
)
# Directional checks compare probabilities: float noise below this is not a violation.
_DIRECTION_TOLERANCE: Final = 1e-9
GATE_DIR: Final = "gates"
# The invariance gate perturbs every n-th case of the library (all kinds, both ladders).
PROBE_EVERY: Final = 5


# ------------------------------------------------------------------ thresholds and verdicts


@dataclass(frozen=True)
class Thresholds:
    """What each gate requires (from the settings, `gate_*`)."""

    nll_margin: float = 0.15
    accuracy_margin: float = 0.05
    max_ece: float = 0.08
    max_subgroup_gap: float = 0.10
    min_subgroup_rows: int = 30
    bootstrap: int = 1000
    seed: int = 20261206

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        """The thresholds the settings name (`gate_*`; these defaults where absent)."""
        d = cls()
        return cls(
            nll_margin=getattr(settings, "gate_nll_margin", d.nll_margin),
            accuracy_margin=getattr(settings, "gate_accuracy_margin", d.accuracy_margin),
            max_ece=getattr(settings, "gate_max_ece", d.max_ece),
            max_subgroup_gap=getattr(settings, "gate_max_subgroup_gap", d.max_subgroup_gap),
            min_subgroup_rows=getattr(settings, "gate_min_subgroup_rows", d.min_subgroup_rows),
        )


@dataclass(frozen=True)
class Verdict:
    """One gate's outcome: measured values, the thresholds, and what failed by how much."""

    gate: str
    passed: bool
    measured: dict[str, Any]
    threshold: dict[str, Any]
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _r(value: float) -> float:
    """Rounded for storage and messages (JSON has no NaN: it becomes None upstream)."""
    return round(float(value), 6)


def _not_run(gate: str, why: str) -> Verdict:
    return Verdict(gate, False, {}, {}, f"not run: {why}")


# ------------------------------------------------------------------ pure gates


def artifact_verdict(*, load_error: str | None, feature_problem: str | None) -> Verdict:
    """The artifact gate: loaded under its hash, trained on this code's feature set."""
    if load_error is not None:
        return Verdict("artifact", False, {"loaded": False}, {"hash": "must match"}, load_error)
    if feature_problem is not None:
        return Verdict(
            "artifact",
            False,
            {"loaded": True, "feature_set_ok": False},
            {"feature_set": "this code's"},
            f"serving would refuse it: {feature_problem}",
        )
    return Verdict(
        "artifact",
        True,
        {"loaded": True, "feature_set_ok": True},
        {"hash": "must match", "feature_set": "this code's"},
        "artifact hash and feature set match",
    )


def _patient_index(groups: np.ndarray) -> tuple[NDArray[np.int64], int]:
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    index = np.asarray(inverse, dtype=np.int64).reshape(-1)
    return index, int(index.max()) + 1 if index.size else 0


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, groups: np.ndarray, *, resamples: int, seed: int
) -> tuple[float, float, float]:
    """Mean of (a - b) per row, with a 95% interval from resampling patients (pure).

    Rows of one patient move together: each resample draws patients with replacement and
    weighs each patient's rows by how often it was drawn."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    index, n_patients = _patient_index(groups)
    if diff.size == 0:
        raise ValueError("no rows to compare")
    sums = np.bincount(index, weights=diff, minlength=n_patients)
    counts = np.bincount(index, minlength=n_patients).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=resamples)
    means = (draws @ sums) / np.maximum(draws @ counts, 1.0)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(diff.mean()), float(low), float(high)


def _row_nll(proba: np.ndarray, y: np.ndarray) -> FloatArray:
    pr = np.asarray(proba, dtype=np.float64)
    picked = np.clip(pr[np.arange(y.size), y], 1e-15, 1.0)
    return np.asarray(-np.log(picked), dtype=np.float64)


def no_skill_proba(y: np.ndarray, n_classes: int = 3) -> FloatArray:
    """Every row gets the class frequencies of `y` (floored): the no-skill comparator."""
    labels = np.asarray(y, dtype=np.int64)
    freq = np.bincount(labels, minlength=n_classes).astype(np.float64) / max(labels.size, 1)
    freq = np.clip(freq, 1e-6, None)
    freq /= freq.sum()
    return np.tile(freq, (labels.size, 1))


def noninferiority(
    candidate: np.ndarray,
    comparator: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    t: Thresholds,
    *,
    comparator_name: str,
) -> Verdict:
    """Holdout log-loss (the primary endpoint, by its bootstrap bound) and accuracy (by its
    point estimate) of the candidate against the comparator, on the same rows."""
    labels = as_labels(np.asarray(y), np.asarray(candidate).shape[0])
    c_loss, k_loss = _row_nll(candidate, labels), _row_nll(comparator, labels)
    c_hit = (np.argmax(candidate, axis=1) == labels).astype(np.float64)
    k_hit = (np.argmax(comparator, axis=1) == labels).astype(np.float64)
    d_nll, _, nll_high = paired_bootstrap(
        c_loss, k_loss, groups, resamples=t.bootstrap, seed=t.seed
    )
    d_acc, acc_low, _ = paired_bootstrap(
        c_hit, k_hit, groups, resamples=t.bootstrap, seed=t.seed + 1
    )
    c_pred, k_pred = np.argmax(candidate, axis=1), np.argmax(comparator, axis=1)
    measured = {
        "comparator": comparator_name,
        "rows": int(labels.size),
        "patients": _patient_index(groups)[1],
        "candidate": {
            "nll": _r(nll(candidate, labels)),
            "accuracy": _r(accuracy(labels, c_pred)),
            "macro_f1": _r(macro_f1(labels, c_pred)),
        },
        "comparator_metrics": {
            "nll": _r(nll(comparator, labels)),
            "accuracy": _r(accuracy(labels, k_pred)),
            "macro_f1": _r(macro_f1(labels, k_pred)),
        },
        "nll_difference": _r(d_nll),
        "nll_difference_upper_95": _r(nll_high),
        "accuracy_difference": _r(d_acc),
        "accuracy_difference_lower_95": _r(acc_low),
    }
    threshold = {
        "nll_difference_upper_95_at_most": t.nll_margin,
        "accuracy_difference_at_least": -t.accuracy_margin,
        "bootstrap_resamples": t.bootstrap,
    }
    failed = []
    if not nll_high <= t.nll_margin:
        failed.append(
            f"log-loss: the upper 95% bound of (candidate - {comparator_name}) is "
            f"{nll_high:.4f} nats, above the margin {t.nll_margin:.4f} by "
            f"{nll_high - t.nll_margin:.4f}"
        )
    if not d_acc >= -t.accuracy_margin:
        failed.append(
            f"accuracy: (candidate - {comparator_name}) is {d_acc:.4f}, below "
            f"-{t.accuracy_margin:.4f} by {-t.accuracy_margin - d_acc:.4f}"
        )
    detail = "; ".join(failed) or (
        f"non-inferior to {comparator_name}: log-loss difference {d_nll:+.4f} "
        f"(upper 95% {nll_high:+.4f}), accuracy difference {d_acc:+.4f} (lower 95% {acc_low:+.4f})"
    )
    return Verdict("holdout_noninferiority", not failed, measured, threshold, detail)


def calibration(proba: np.ndarray, y: np.ndarray, t: Thresholds) -> Verdict:
    """Expected calibration error (10 bins, max-probability confidence) against the limit."""
    ece = expected_calibration_error(proba, y)
    passed = ece <= t.max_ece
    detail = (
        f"ECE {ece:.4f} within {t.max_ece:.4f}"
        if passed
        else f"ECE {ece:.4f} above the limit {t.max_ece:.4f} by {ece - t.max_ece:.4f}"
    )
    return Verdict(
        "calibration",
        passed,
        {"ece": _r(ece), "rows": int(np.asarray(y).size), "bins": 10},
        {"ece_at_most": t.max_ece},
        detail,
    )


def subgroup_masks(X: np.ndarray, names: Sequence[str]) -> dict[str, NDArray[np.bool_]]:
    """Rows per subgroup: sex, age band (<60, 60-69, 70+) and diabetes or CKD (pure)."""
    arr = np.asarray(X, dtype=np.float64)

    def column(name: str) -> FloatArray:
        return np.asarray(arr[:, list(names).index(name)], dtype=np.float64)

    age = column("age_band")  # bands: 2 is 50-59, 3 is 60-69, 4 and 5 are 70 and over
    comorbid = (column("diabetes") >= 0.5) | (column("ckd") >= 0.5)
    return {
        "sex:female": column("sex_female") >= 0.5,
        "sex:male": column("sex_male") >= 0.5,
        "age:<60": age <= 2,
        "age:60-69": age == 3,
        "age:70+": age >= 4,
        "diabetes_or_ckd:yes": comorbid,
        "diabetes_or_ckd:no": ~comorbid,
    }


def subgroup_gap(
    proba: np.ndarray, y: np.ndarray, masks: Mapping[str, np.ndarray], t: Thresholds
) -> Verdict:
    """Each large-enough subgroup's accuracy at most `max_subgroup_gap` below the overall."""
    labels = np.asarray(y, dtype=np.int64)
    pred = np.argmax(proba, axis=1)
    overall = accuracy(labels, pred)
    groups: dict[str, dict[str, Any]] = {}
    failed = []
    for group, mask in masks.items():
        rows = int(np.sum(mask))
        if rows < t.min_subgroup_rows:
            groups[group] = {"rows": rows, "assessed": False}
            continue
        acc = accuracy(labels[mask], pred[mask])
        gap = overall - acc
        groups[group] = {"rows": rows, "assessed": True, "accuracy": _r(acc), "gap": _r(gap)}
        if gap > t.max_subgroup_gap:
            failed.append(
                f"{group}: accuracy {acc:.4f} is {gap:.4f} below the overall {overall:.4f}, "
                f"beyond the limit {t.max_subgroup_gap:.4f} by {gap - t.max_subgroup_gap:.4f}"
            )
    assessed = [g for g in groups.values() if g["assessed"]]
    worst = max((g["gap"] for g in assessed), default=0.0)
    detail = "; ".join(failed) or (
        f"largest gap {worst:.4f} within {t.max_subgroup_gap:.4f} "
        f"({len(assessed)} of {len(groups)} subgroups large enough to assess)"
    )
    return Verdict(
        "subgroup_gap",
        not failed,
        {"overall_accuracy": _r(overall), "largest_gap": _r(worst), "subgroups": groups},
        {"gap_at_most": t.max_subgroup_gap, "min_rows": t.min_subgroup_rows},
        detail,
    )


def directional(
    model: TitrationModel, base: np.ndarray, *, shifts: Sequence[float] = BP_SHIFTS
) -> Verdict:
    """A higher home BP (all BP level features up together) never lowers P(increase)."""
    X = np.asarray(base, dtype=np.float64)
    cols = [model.feature_names.index(n) for n in BP_FEATURES]
    probs = np.empty((X.shape[0], len(shifts)))
    for k, delta in enumerate(shifts):
        shifted = X.copy()
        shifted[:, cols] = shifted[:, cols] + delta  # NaN (missing) stays missing
        probs[:, k] = model.predict_proba(shifted)[:, _INC]
    drops = probs[:, :-1] - probs[:, 1:]  # positive: P(increase) fell as BP rose
    worst = float(drops.max()) if drops.size else 0.0
    bad_rows = int(np.sum(drops.max(axis=1) > _DIRECTION_TOLERANCE)) if drops.size else 0
    passed = bad_rows == 0
    evidence: dict[str, Any] = {}
    if not passed:
        where = np.unravel_index(int(np.argmax(drops)), drops.shape)
        row, step = int(where[0]), int(where[1])
        evidence["worst"] = {
            "base_row": row,
            "from_shift_mmhg": shifts[step],
            "to_shift_mmhg": shifts[step + 1],
            "p_increase_before": _r(probs[row, step]),
            "p_increase_after": _r(probs[row, step + 1]),
        }
    detail = (
        f"P(increase) never falls as BP rises ({X.shape[0]} base rows x {len(shifts)} shifts)"
        if passed
        else f"P(increase) fell as BP rose in {bad_rows} of {X.shape[0]} base rows; the "
        f"largest fall is {worst:.4f} ({evidence['worst']['from_shift_mmhg']:+.0f} -> "
        f"{evidence['worst']['to_shift_mmhg']:+.0f} mmHg), allowed 0"
    )
    return Verdict(
        "safety_directional",
        passed,
        {
            "base_rows": int(X.shape[0]),
            "violating_rows": bad_rows,
            "largest_fall": _r(max(worst, 0)),
        },
        {"largest_fall_at_most": 0.0, "shifts_mmhg": list(shifts), "features": list(BP_FEATURES)},
        detail,
        evidence,
    )


def forbidden_inputs(names: Sequence[str]) -> list[str]:
    """Feature names that look like identity or device fields (pure)."""
    return [n for n in names if FORBIDDEN_INPUT_TOKENS & set(n.lower().split("_"))]


def sex_swap(model: TitrationModel, base: np.ndarray) -> dict[str, Any]:
    """How much swapping sex (female <-> male) moves the model's outputs (pure; reported
    with the invariance gate for the clinical sign-off, not gated: see `invariance`)."""
    X = np.asarray(base, dtype=np.float64)
    names = model.feature_names
    f, m = names.index("sex_female"), names.index("sex_male")
    swapped = X.copy()
    swapped[:, f], swapped[:, m] = X[:, m], X[:, f]  # other and unknown stay as they are
    before, after = model.predict_proba(X), model.predict_proba(swapped)
    changed = int(np.sum(np.argmax(before, axis=1) != np.argmax(after, axis=1)))
    largest = float(np.abs(after - before).max()) if X.size else 0.0
    return {"largest_change": _r(largest), "changed_proposals": changed, "rows": int(X.shape[0])}


def invariance(
    model: TitrationModel,
    original: np.ndarray,
    perturbed: Mapping[str, np.ndarray],
    *,
    sex_swap_report: Mapping[str, Any] | None = None,
) -> Verdict:
    """Fields that must not matter do not: no identity or device field is an input, and
    irrelevant changes to the raw inputs (`perturbed`: name -> the same cases' feature
    rows recomputed after the change) leave every probability exactly as it was."""
    found = forbidden_inputs(model.feature_names)
    before = model.predict_proba(np.asarray(original, dtype=np.float64))
    moved: dict[str, float] = {}
    for name, rows in perturbed.items():
        after = model.predict_proba(np.asarray(rows, dtype=np.float64))
        moved[name] = _r(float(np.abs(after - before).max()) if after.size else 0.0)
    failed = []
    if found:
        failed.append(f"identity or device fields are model inputs: {', '.join(found)}")
    for name, change in moved.items():
        if change > _DIRECTION_TOLERANCE:
            failed.append(f"{name} moved a probability by {change:.6f}, allowed 0")
    detail = "; ".join(failed) or (
        f"no identity or device inputs; {len(moved)} irrelevant changes to {before.shape[0]} "
        "cases' raw inputs moved no probability"
    )
    measured: dict[str, Any] = {
        "forbidden_inputs": found,
        "largest_change": moved,
        "cases": int(before.shape[0]),
    }
    if sex_swap_report is not None:
        measured["sex_swap_reported_not_gated"] = dict(sex_swap_report)
    return Verdict(
        "safety_invariance",
        not failed,
        measured,
        {
            "forbidden_input_tokens": sorted(FORBIDDEN_INPUT_TOKENS),
            "largest_change_at_most": 0.0,
            "perturbations": dict(PERTURBATIONS),
        },
        detail,
    )


# ------------------------------------------------------------------ the safety case library


@dataclass(frozen=True)
class CaseInputs:
    """The raw inputs of a case, as the loop hands them to the feature function."""

    readings: tuple[ReadingPoint, ...]
    doses: tuple[DoseEvent, ...]
    symptoms: tuple[SymptomPoint, ...]
    patient: PatientFacts
    regimen: RegimenFacts

    def features(self) -> FeatureVector:
        """The feature vector of these inputs at the library's evaluation time."""
        return compute_features(
            readings=self.readings,
            doses=self.doses,
            symptoms=self.symptoms,
            patient=self.patient,
            regimen=self.regimen,
            as_of=_AS_OF,
        )


@dataclass(frozen=True)
class SafetyCase:
    """A synthetic patient moment built from readings, as the loop would see it."""

    kind: str  # crisis_confirmed, crisis_not_remeasured, crisis_remeasure_pending, low_*
    inputs: CaseInputs
    features: FeatureVector
    open_alerts: int  # alerts the rules raise now, plus a pending crisis re-measurement

    @property
    def low_bp(self) -> bool:
        """True for the low-blood-pressure kinds."""
        return self.kind.startswith("low_")

    @property
    def step(self) -> int:
        """The patient's current ladder step."""
        return self.inputs.regimen.step

    @property
    def ladder_steps(self) -> int:
        """The number of steps of the patient's ladder."""
        return self.inputs.regimen.ladder_steps


SAFETY_KINDS: Final = (
    "crisis_confirmed",
    "crisis_not_remeasured",
    "crisis_remeasure_pending",
    "low_mean_sbp",
    "low_sbp_with_symptoms",
)
_AS_OF: Final = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
# Changes to a case's raw inputs that must not change what the model says. Patient ids,
# pseudonyms and device make, model or firmware cannot even reach the feature function (it
# takes none of them), and the feature-name check keeps them out of the model.
PERTURBATIONS: Final[Mapping[str, str]] = {
    "reading_order": "the same readings, doses and reports in reverse order",
    "quarantined_readings": "extreme readings added, quarantined as ingestion would",
    "descriptive_statistics": "summary values (a device's daily average) added",
    "later_readings": "readings dated at or after the evaluation time added",
}


def _case_readings(kind: str, rng: np.random.Generator) -> list[tuple[datetime, float, float]]:
    """Two validated-cuff readings a day for 14 days, then the kind's recent readings."""
    base_sbp = {"low_mean_sbp": 93.0, "low_sbp_with_symptoms": 104.0}.get(kind, 152.0)
    out = []
    for day in range(14, 0, -1):
        for hour in (7, 19):
            when = _AS_OF.replace(hour=0) - timedelta(days=day) + timedelta(hours=hour)
            sbp = base_sbp + float(rng.normal(0.0, 3.0))
            out.append((when, sbp, 0.6 * sbp + float(rng.normal(0.0, 2.0))))
    if kind == "low_sbp_with_symptoms":
        # One reading below 90 the day a dizziness report comes (the protocol's second rule).
        out.append((_AS_OF - timedelta(hours=20), 86.0, 55.0))
    if kind.startswith("crisis"):
        first = {"crisis_remeasure_pending": 2, "crisis_not_remeasured": 30}.get(kind, 20)
        out.append((_AS_OF - timedelta(minutes=first), 192.0, 112.0))
        if kind == "crisis_confirmed":
            out.append((_AS_OF - timedelta(minutes=first - 2), 188.0, 110.0))
    return out


def safety_cases() -> list[SafetyCase]:
    """The crisis and low-BP case library: every kind for both sexes, with and without
    diabetes or CKD, younger and older, on every step of a 3- and a 4-step ladder, never
    changed or changed 30 days ago (deterministic; no I/O)."""
    cases: list[SafetyCase] = []
    rng = np.random.default_rng(7)
    comorbidities = ((False, False), (True, False), (False, True))
    for kind in SAFETY_KINDS:
        for sex, (diabetes, ckd), age in itertools.product(
            ("female", "male"), comorbidities, (48, 74)
        ):
            for ladder_steps in (3, 4):
                for step, changed in itertools.product(
                    range(ladder_steps), (None, _AS_OF - timedelta(days=30))
                ):
                    regimen = RegimenFacts(
                        step=step, ladder_steps=ladder_steps, last_change=changed
                    )
                    patient = PatientFacts(sex=sex, diabetes=diabetes, ckd=ckd, age=age)
                    cases.append(_case(kind, rng, patient, regimen))
    return cases


def _case(
    kind: str, rng: np.random.Generator, patient: PatientFacts, regimen: RegimenFacts
) -> SafetyCase:
    readings = _case_readings(kind, rng)
    symptoms = (
        (SymptomPoint(_AS_OF - timedelta(hours=21), frozenset({"dizziness"})),)
        if kind == "low_sbp_with_symptoms"
        else ()
    )
    doses = tuple(DoseEvent(_AS_OF - timedelta(days=d, hours=-8), True) for d in range(21, 0, -1))
    inputs = CaseInputs(
        tuple(
            ReadingPoint(t, "blood_pressure", "validated_cuff", systolic=s, diastolic=d)
            for t, s, d in readings
        ),
        doses,
        symptoms,
        patient,
        regimen,
    )
    found, check = alert_rules.findings(
        "case",
        readings=[alert_rules.CuffReading(t, s, d) for t, s, d in readings],
        doses=[alert_rules.DoseEvent(d.time, d.taken) for d in doses],
        symptom_times=[s.time for s in symptoms if not s.symptoms.isdisjoint(HYPOTENSION_SYMPTOMS)],
        monitored_since=_AS_OF - timedelta(days=60),
        now=_AS_OF,
    )
    pending = int(check.status == alert_rules.CrisisStatus.REMEASURE)
    return SafetyCase(kind, inputs, inputs.features(), len(found) + pending)


def perturb(inputs: CaseInputs, perturbation: str) -> CaseInputs:
    """The case's raw inputs after one of the PERTURBATIONS (pure)."""
    extra: list[ReadingPoint] = []
    recent = _AS_OF - timedelta(hours=30)
    if perturbation == "reading_order":
        return replace(
            inputs,
            readings=inputs.readings[::-1],
            doses=inputs.doses[::-1],
            symptoms=inputs.symptoms[::-1],
        )
    if perturbation == "quarantined_readings":
        extra = [
            ReadingPoint(
                recent, "blood_pressure", "validated_cuff", 250.0, 150.0, quarantined=True
            ),
            ReadingPoint(recent, "blood_pressure", "validated_cuff", 60.0, 35.0, quarantined=True),
        ]
    elif perturbation == "descriptive_statistics":
        extra = [
            ReadingPoint(
                recent, "blood_pressure", "validated_cuff", 230.0, 130.0, statistic="average"
            ),
            ReadingPoint(
                recent, "blood_pressure", "validated_cuff", 70.0, 40.0, statistic="minimum"
            ),
        ]
    elif perturbation == "later_readings":
        extra = [
            ReadingPoint(_AS_OF, "blood_pressure", "validated_cuff", 240.0, 140.0),
            ReadingPoint(
                _AS_OF + timedelta(hours=2), "blood_pressure", "validated_cuff", 65.0, 40.0
            ),
        ]
    else:
        raise ValueError(f"unknown perturbation {perturbation!r}")
    return replace(inputs, readings=inputs.readings + tuple(extra))


def perturbed_matrices(cases: Sequence[SafetyCase]) -> dict[str, FloatArray]:
    """Each perturbation's feature rows for the cases, recomputed from changed raw inputs."""
    return {
        name: np.array(
            [perturb(c.inputs, name).features().values for c in cases], dtype=np.float64
        ).reshape(len(cases), len(FEATURE_NAMES))
        for name in PERTURBATIONS
    }


def safety_matrix(cases: Sequence[SafetyCase]) -> FloatArray:
    """The cases' feature vectors as a matrix in FEATURE_NAMES order."""
    return np.array([c.features.values for c in cases], dtype=np.float64).reshape(
        len(cases), len(FEATURE_NAMES)
    )


def routing_safety(proba: np.ndarray, cases: Sequence[SafetyCase]) -> Verdict:
    """No crisis or low-BP case is auto-deliverable after routing (the demo envelope)."""
    delivered: dict[str, int] = {}
    totals: dict[str, int] = {}
    for probs, case in zip(np.asarray(proba), cases, strict=True):
        best = int(np.argmax(probs))
        action = _ACTIONS[best]
        to_step = case.step + _DELTA[action]
        decision = route(
            RoutingProposal(
                action=action,
                from_step=case.step,
                to_step=to_step,
                confidence=float(probs[best]),
                ladder_steps=case.ladder_steps,
            ),
            case.features.to_evidence(auto_changes_30d=0, open_alerts=case.open_alerts),
            default_rules(case.ladder_steps),
            kill_switch=False,
        )
        totals[case.kind] = totals.get(case.kind, 0) + 1
        if decision.route is Route.AUTO_DELIVER:
            delivered[case.kind] = delivered.get(case.kind, 0) + 1
    count = sum(delivered.values())
    detail = (
        f"none of {len(cases)} crisis and low-BP cases auto-deliverable"
        if not count
        else f"{count} of {len(cases)} crisis and low-BP cases were auto-deliverable "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(delivered.items()))}), allowed 0"
    )
    return Verdict(
        "safety_routing",
        count == 0,
        {"cases": len(cases), "auto_deliverable": count, "by_kind": delivered, "totals": totals},
        {"auto_deliverable_at_most": 0, "envelope": "demo (policies.envelope.default_rules)"},
        detail,
    )


def low_bp_rows(X: np.ndarray, names: Sequence[str]) -> NDArray[np.bool_]:
    """Rows meeting the protocol's low-BP rule (3-day mean SBP below 100, or below 90 with
    dizziness or fainting reported) (pure)."""
    arr = np.asarray(X, dtype=np.float64)
    mean3 = arr[:, list(names).index("cuff_sbp_mean_3d")]
    min3 = arr[:, list(names).index("cuff_sbp_min_3d")]
    symptoms = arr[:, list(names).index("hypotension_symptoms_3d")] >= 0.5
    with np.errstate(invalid="ignore"):
        return np.asarray(
            (mean3 < LOW_MEAN_SBP_3D) | (symptoms & (min3 < LOW_SBP_WITH_SYMPTOMS)), dtype=bool
        )


def low_bp_no_increase(case_proba: np.ndarray, holdout_proba: np.ndarray) -> Verdict:
    """No increase proposed on low BP: the low-BP cases and the holdout's low-BP rows."""
    cases = np.asarray(case_proba).reshape(-1, 3)
    rows = np.asarray(holdout_proba).reshape(-1, 3)
    in_cases = int(np.sum(np.argmax(cases, axis=1) == _INC))
    in_rows = int(np.sum(np.argmax(rows, axis=1) == _INC))
    worst = max(
        float(cases[:, _INC].max()) if cases.size else 0.0,
        float(rows[:, _INC].max()) if rows.size else 0.0,
    )
    count = in_cases + in_rows
    detail = (
        f"no increase proposed in {cases.shape[0]} low-BP cases and {rows.shape[0]} low-BP "
        f"holdout rows (highest P(increase) {worst:.4f})"
        if not count
        else f"an increase was proposed on low BP in {in_cases} of {cases.shape[0]} cases and "
        f"{in_rows} of {rows.shape[0]} holdout rows, allowed 0"
    )
    return Verdict(
        "safety_low_bp",
        count == 0,
        {
            "cases": int(cases.shape[0]),
            "holdout_rows": int(rows.shape[0]),
            "increase_in_cases": in_cases,
            "increase_in_holdout_rows": in_rows,
            "highest_p_increase": _r(worst),
        },
        {"increase_proposals_at_most": 0},
        detail,
    )


# ------------------------------------------------------------------ the holdout


class HoldoutUnavailable(Exception):
    """The version's holdout split cannot be rebuilt (and so cannot be scored)."""


@dataclass(frozen=True)
class Holdout:
    """The holdout split of the version's training data: features, labels, patients."""

    X: FloatArray
    y: NDArray[np.int64]
    groups: np.ndarray
    source: str


_holdouts: OrderedDict[str, Holdout] = OrderedDict()
_holdout_lock = threading.Lock()


def holdout_for(session: Session, version: ModelVersion, *, data_dir: Path) -> Holdout:
    """The holdout patients' rows of the data the version was trained on.

    A version trained on a training snapshot (mlops/snapshots.py; its data hash is the
    snapshot's content hash) gets the snapshot's holdout split, read from its file checked by
    hash. A version trained on simulated protocol data (`models train-initial`) records the
    build parameters: the data are rebuilt, checked against the recorded data hash, and split
    by patient as training split them."""
    with _holdout_lock:
        cached = _holdouts.get(version.data_hash)
        if cached is not None:
            _holdouts.move_to_end(version.data_hash)
            return cached
    snapshot = session.scalars(
        select(TrainingSnapshot).where(col(TrainingSnapshot.content_hash) == version.data_hash)
    ).first()
    held = (
        _snapshot_holdout(snapshot, version, data_dir)
        if snapshot is not None
        else _simulated_holdout(version)
    )
    with _holdout_lock:
        _holdouts[version.data_hash] = held
        while len(_holdouts) > 4:
            _holdouts.popitem(last=False)
    return held


def _snapshot_holdout(snapshot: TrainingSnapshot, version: ModelVersion, data_dir: Path) -> Holdout:
    try:
        data = snapshots.load(snapshot, data_dir=data_dir)
    except snapshots.SnapshotFileError as exc:
        raise HoldoutUnavailable(exc.detail) from exc
    if tuple(data.feature_names) != tuple(version.feature_names):
        raise HoldoutUnavailable(f"snapshot {snapshot.id} holds other features than the model's")
    held = data.holdout
    return Holdout(
        np.asarray(data.X[held], dtype=np.float64),
        np.asarray(data.y[held], dtype=np.int64),
        np.asarray(data.groups[held]),
        f"snapshot:{snapshot.id}:{snapshot.content_hash}",
    )


def _simulated_holdout(version: ModelVersion) -> Holdout:
    params: Mapping[str, Any] = version.params
    training = params.get("training") or {}
    if params.get("scenario", "None") != "None":
        raise HoldoutUnavailable("the training cohort used a scenario that cannot be rebuilt")
    try:
        n_patients, days, seed = int(params["n_patients"]), int(params["days"]), int(params["seed"])
        every = int(params.get("every", 7))
        overtreated = float(params.get("overtreated_share", 0.1))
        share, split_seed = float(training["holdout"]), int(training["seed"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HoldoutUnavailable("the version records no training-data parameters") from exc
    data = dataset.build(
        n_patients=n_patients, days=days, seed=seed, every=every, overtreated_share=overtreated
    )
    if data.data_hash != version.data_hash:
        raise HoldoutUnavailable("rebuilt training data differ from the recorded data hash")
    _, held = dataset.split_by_patient(data.groups, holdout=share, seed=split_seed)
    return Holdout(
        np.asarray(data.X[held], dtype=np.float64),
        np.asarray(data.y[held], dtype=np.int64),
        data.groups[held],
        f"simulated:{version.data_hash}",
    )


# ------------------------------------------------------------------ the run


@dataclass(frozen=True)
class GateRun:
    """One validation run: its id, whether every gate passed, and the stored results."""

    run_id: str
    passed: bool
    results: list[GateResult]
    champion_version: int | None

    @property
    def failed(self) -> list[str]:
        """The names of the gates that failed."""
        return [r.gate for r in self.results if not r.passed]


def _load(version: ModelVersion) -> tuple[TitrationModel | None, str | None]:
    try:
        return TitrationModel.load(Path(version.artifact_path), version.artifact_sha256), None
    except ArtifactError as exc:
        return None, f"the artifact is unusable: {exc}"
    except OSError as exc:
        return None, f"the artifact cannot be read: {type(exc).__name__}"


def _comparator(
    session: Session, name: str, candidate: ModelVersion
) -> tuple[ModelVersion | None, TitrationModel | None, str]:
    """The champion to compare with, its model, and a note when it cannot be used."""
    champ = lifecycle.champion(session, name=name)
    if champ is None or champ.version == candidate.version:
        return None, None, "no champion"
    model, error = _load(champ)
    if model is None:
        return champ, None, f"champion v{champ.version} unusable ({error})"
    if feature_set_problem(model) is not None:
        return (
            champ,
            None,
            f"champion v{champ.version} not comparable ({feature_set_problem(model)})",
        )
    return champ, model, ""


def evaluate_candidate(
    model: TitrationModel,
    *,
    holdout: Holdout | None,
    holdout_problem: str,
    champion_model: TitrationModel | None,
    champion_label: str,
    champion_note: str,
    t: Thresholds,
) -> list[Verdict]:
    """Every gate but the artifact's, for a loaded candidate (no I/O)."""
    verdicts: list[Verdict] = []
    cases = safety_cases()
    case_x = safety_matrix(cases)
    if holdout is None or holdout.y.size == 0:
        why = f"no holdout: {holdout_problem or 'empty'}"
        verdicts += [
            _not_run(g, why) for g in ("holdout_noninferiority", "calibration", "subgroup_gap")
        ]
        base = case_x
        held_low = np.empty((0, 3))
    else:
        proba = model.predict_proba(holdout.X)
        if champion_model is not None:
            comparator, comparator_name = champion_model.predict_proba(holdout.X), champion_label
        else:
            comparator, comparator_name = no_skill_proba(holdout.y), "no-skill model"
        verdict = noninferiority(
            proba, comparator, holdout.y, holdout.groups, t, comparator_name=comparator_name
        )
        if champion_note:
            verdict = Verdict(
                verdict.gate,
                verdict.passed,
                {**verdict.measured, "champion_note": champion_note},
                verdict.threshold,
                f"{champion_note}: compared with the {comparator_name}; {verdict.detail}",
            )
        verdicts.append(verdict)
        verdicts.append(calibration(proba, holdout.y, t))
        verdicts.append(
            subgroup_gap(proba, holdout.y, subgroup_masks(holdout.X, model.feature_names), t)
        )
        base = np.vstack([holdout.X, case_x])
        held_low = proba[low_bp_rows(holdout.X, model.feature_names)]
    case_proba = model.predict_proba(case_x)
    low = np.array([c.low_bp for c in cases])
    verdicts.append(directional(model, base))
    probe = cases[::PROBE_EVERY]
    verdicts.append(
        invariance(
            model,
            safety_matrix(probe),
            perturbed_matrices(probe),
            sex_swap_report=sex_swap(model, base),
        )
    )
    verdicts.append(routing_safety(case_proba, cases))
    verdicts.append(low_bp_no_increase(case_proba[low], held_low))
    return verdicts


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def write_evidence(data_dir: Path, relative: Path, document: Mapping[str, Any]) -> str:
    """Write one gate's evidence file (canonical JSON) and return its SHA-256."""
    data = json.dumps(_jsonable(dict(document)), sort_keys=True, indent=1).encode() + b"\n"
    target = data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".tmp")
    partial.write_bytes(data)
    partial.replace(target)  # atomic: a reader never sees half a file
    return hashlib.sha256(data).hexdigest()


def run_gates(
    *,
    session: Session,
    name: str,
    version: int,
    actor: str,
    now: datetime,
    data_dir: Path,
    settings: Settings | None = None,
) -> GateRun:
    """Run every gate on a candidate, store the results with their evidence, and move a
    candidate that passed all of them to validated (a failure leaves it a candidate).

    Refuses a version that is not a candidate (TransitionRefused `not_candidate`)."""
    t = Thresholds.from_settings(settings or get_settings())
    found = lifecycle.get_version(session, name=name, version=version, lock=True)
    if found.status != ModelStatus.CANDIDATE:
        raise lifecycle.TransitionRefused(
            "not_candidate", f"{lifecycle.label(name, version)} is {found.status}, not a candidate"
        )
    model, load_error = _load(found)
    problem = feature_set_problem(model) if model is not None else None
    verdicts = [artifact_verdict(load_error=load_error, feature_problem=problem)]
    champ, champ_model, note = _comparator(session, name, found)
    if model is None or problem is not None:
        why = "the artifact gate failed"
        verdicts += [_not_run(g, why) for g in lifecycle.REQUIRED_GATES[1:]]
    else:
        holdout, holdout_problem = None, ""
        try:
            holdout = holdout_for(session, found, data_dir=data_dir)
        except HoldoutUnavailable as exc:
            holdout_problem = str(exc)
        verdicts += evaluate_candidate(
            model,
            holdout=holdout,
            holdout_problem=holdout_problem,
            champion_model=champ_model,
            champion_label=f"champion v{champ.version}" if champ else "no champion",
            champion_note=note,
            t=t,
        )
    run_id = str(uuid.uuid4())
    folder = Path(GATE_DIR) / f"{name}-v{version}" / run_id
    results = []
    for verdict in verdicts:
        relative = folder / f"{verdict.gate}.json"
        sha = write_evidence(
            data_dir,
            relative,
            {
                "model": lifecycle.label(name, version),
                "artifact_sha256": found.artifact_sha256,
                "run_id": run_id,
                "gate": verdict.gate,
                "passed": verdict.passed,
                "champion_version": champ.version if champ else None,
                "measured": verdict.measured,
                "threshold": verdict.threshold,
                "detail": verdict.detail,
                "evidence": verdict.evidence,
                "created_at": now.isoformat(),
            },
        )
        result = GateResult(
            model_name=name,
            version=version,
            gate=verdict.gate,
            passed=verdict.passed,
            champion_version=champ.version if champ else None,
            measured=_jsonable(verdict.measured),
            threshold=_jsonable(verdict.threshold),
            detail=verdict.detail[:2000],
            evidence_path=relative.as_posix(),
            evidence_sha256=sha,
            run_id=run_id,
            created_by=actor,
            created_at=now,
        )
        session.add(result)
        results.append(result)
    session.flush()
    passed = lifecycle.run_passed(results)
    audit.record(
        session,
        actor=actor,
        actor_role=lifecycle.actor_role(session, actor),
        action="model.gates",
        resource_type="model",
        resource_id=lifecycle.label(name, version),
        details={
            "run_id": run_id,
            "passed": passed,
            "failed": [r.gate for r in results if not r.passed],
            "champion_version": champ.version if champ else None,
        },
    )
    if passed:
        lifecycle.transition(
            session=session,
            name=name,
            version=version,
            to=ModelStatus.VALIDATED,
            actor=actor,
            reason="every validation gate passed",
            details={"run_id": run_id},
            now=now,
        )
    return GateRun(run_id, passed, results, champ.version if champ else None)


def read_evidence(result: GateResult, *, data_dir: Path) -> dict[str, Any]:
    """A gate's stored evidence, refused (ValueError) when the file no longer matches."""
    if result.evidence_path is None or result.evidence_sha256 is None:
        raise ValueError("this gate result has no evidence file")
    data = (data_dir / result.evidence_path).read_bytes()
    if hashlib.sha256(data).hexdigest() != result.evidence_sha256:
        raise ValueError("the evidence file no longer matches its recorded hash")
    loaded: dict[str, Any] = json.loads(data)
    return loaded
