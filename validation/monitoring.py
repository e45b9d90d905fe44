"""Drift analysis with Evidently: the window's features against the training reference,
overall and per device model and subgroup, plus the model's outputs; and the frames it runs on.

`analyse` is computation only (no database, no files). The frame builders read the database:
`current_frame` computes each evaluated patient's features exactly as an evaluation at the
window's end would (the loop's own readers and `mlops.features.compute_features`), with the
device model that measured their blood pressure; `reference_frame` rebuilds the production
model's training data from its recorded parameters and checks it against the recorded data
hash, so the reference is the very data the model learned from.

Evidently is imported on first use: its import takes seconds and most processes never need it.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # no stubs in the project
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from device_ingest.models import Device, Reading, ReadingStatus
from device_ingest.simulator import generate_patients
from loops import flows as loop_flows
from loops.models import Evaluation, Proposal
from loops.review.models import Decision, DecisionKind
from mlops import dataset
from mlops.features import FEATURE_NAMES, RegimenFacts, compute_features
from mlops.models import ModelVersion, TrainingSnapshot
from policies.envelope import TitrationAction
from validation import drift
from validation.drift import (
    AGE_BAND,
    DEVICE_MODEL,
    DIABETES_OR_CKD,
    SEX,
    Attribution,
    ColumnDrift,
    SegmentDrift,
    Stattest,
    TestChoice,
    Thresholds,
)

PREDICTED_ACTION: Final = "predicted_action"
PREDICTION_COLUMNS: Final = (PREDICTED_ACTION, "p_decrease", "p_increase")
DEVICE_FIRMWARE: Final = "device_firmware"
# Features look back 14 days; the device that measured them is read over the same days.
DEVICE_LOOKBACK: Final = timedelta(days=14)
_CHUNK: Final = 500  # patients per read of the loop's history queries
_SCORED: Final = ("hold", "proposal")  # evaluation outcomes where the model scored
_VALUE_DRIFT: Final = "evidently:metric_v2:ValueDrift"
# The predicted action as a step on the ladder (an ordered value, see `with_predictions`).
_STEP: Final = {
    TitrationAction.DECREASE: -1.0,
    TitrationAction.HOLD: 0.0,
    TitrationAction.INCREASE: 1.0,
}


class ReferenceUnavailable(Exception):
    """The training reference cannot be rebuilt faithfully; the message says why."""


# ------------------------------------------------------------------------------ Evidently


@contextmanager
def _quiet() -> Iterator[None]:
    # Evidently and the libraries under it warn about their own internals (numpy.core,
    # pandas options); none of it concerns our data, and the test suite treats warnings as
    # errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@dataclass(frozen=True)
class _Evidently:
    Report: Any
    Dataset: Any
    DataDefinition: Any
    DataDriftPreset: Any
    ValueDrift: Any
    stattest: Any  # registry name, column type -> Evidently's StatTest
    numerical: Any
    categorical: Any


_loaded: _Evidently | None = None


def _evidently() -> _Evidently:
    global _loaded
    if _loaded is None:
        with _quiet():
            from evidently import DataDefinition, Dataset, Report  # type: ignore[import-untyped]
            from evidently.legacy.calculations.stattests.registry import get_registered_stattest  # type: ignore[import-untyped]
            from evidently.legacy.core import ColumnType  # type: ignore[import-untyped]
            from evidently.metrics import ValueDrift  # type: ignore[import-untyped]
            from evidently.presets import DataDriftPreset  # type: ignore[import-untyped]
        _loaded = _Evidently(
            Report,
            Dataset,
            DataDefinition,
            DataDriftPreset,
            ValueDrift,
            get_registered_stattest,
            ColumnType.Numerical,
            ColumnType.Categorical,
        )
    return _loaded


@dataclass(frozen=True)
class _Plan:
    """Which columns one comparison tests, with which test; the rest and why not."""

    choices: dict[str, TestChoice]
    skipped: dict[str, str]
    n_current: int
    n_reference: int


def _plan(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    columns: Sequence[str],
    *,
    min_values: int,
    alpha: float,
    thresholds: Thresholds,
) -> _Plan:
    choices: dict[str, TestChoice] = {}
    skipped: dict[str, str] = {}
    for name in columns:
        cur, ref = current[name].dropna(), reference[name].dropna()
        labels = not pd.api.types.is_numeric_dtype(current[name])
        if labels != (not pd.api.types.is_numeric_dtype(reference[name])):
            # Numbers on one side and text on the other cannot be compared; Evidently
            # would fail on the text (or test the numbers as categories).
            skipped[name] = "dtype_mismatch"
            continue
        if len(cur) < min_values or len(ref) < min_values:
            skipped[name] = "too_few_values"
            continue
        distinct = pd.concat([cur, ref], ignore_index=True).nunique()
        if distinct < 2:
            skipped[name] = "constant"
            continue
        choice = drift.choose_test(
            n_reference=len(ref),
            n_current=len(cur),
            distinct=int(distinct),
            alpha=alpha,
            thresholds=thresholds,
        )
        if labels and not choice.categorical:
            # Text labels (the predicted action) have no order: K-S and Wasserstein are
            # numerical, and Evidently raises a TypeError on a text column declared
            # numerical. Labels get its categorical tests.
            choice = (
                TestChoice(Stattest.JENSEN_SHANNON, thresholds.jensen_shannon, True)
                if choice.method == Stattest.WASSERSTEIN
                else TestChoice(Stattest.CHI_SQUARE, alpha, True)
            )
        choices[name] = choice
    return _Plan(choices, skipped, len(current), len(reference))


def _with_alpha(plan: _Plan, alpha: float) -> _Plan:
    """The plan with `alpha` as the threshold of its p-value tests."""
    choices = {
        name: TestChoice(c.method, alpha, c.categorical) if c.method in drift.P_VALUE_TESTS else c
        for name, c in plan.choices.items()
    }
    return _Plan(choices, plan.skipped, plan.n_current, plan.n_reference)


def _run(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    plan: _Plan,
    *,
    preset_columns: Sequence[str] = (),
    html: bool = False,
) -> tuple[list[ColumnDrift], dict[str, Any], str | None]:
    """Run one Evidently report over the plan's columns; `preset_columns` go through
    DataDriftPreset (its drift table and share in the HTML), the rest through ValueDrift."""
    if not plan.choices:
        return [], {"metrics": [], "tests": []}, None
    ev = _evidently()
    names = list(plan.choices)
    definition = ev.DataDefinition(
        numerical_columns=[n for n in names if not plan.choices[n].categorical],
        categorical_columns=[n for n in names if plan.choices[n].categorical],
    )
    in_preset = [n for n in names if n in set(preset_columns)]
    metrics: list[Any] = []
    if in_preset:
        metrics.append(
            ev.DataDriftPreset(
                columns=in_preset,
                per_column_method={n: str(plan.choices[n].method) for n in in_preset},
                per_column_threshold={n: plan.choices[n].threshold for n in in_preset},
            )
        )
    metrics += [
        ev.ValueDrift(
            column=n, method=str(plan.choices[n].method), threshold=plan.choices[n].threshold
        )
        for n in names
        if n not in set(in_preset)
    ]
    with _quiet():
        snapshot = ev.Report(metrics).run(
            # A plain index: Evidently reads a non-numeric one as a value axis.
            ev.Dataset.from_pandas(
                current[names].reset_index(drop=True), data_definition=definition
            ),
            ev.Dataset.from_pandas(
                reference[names].reset_index(drop=True), data_definition=definition
            ),
        )
        document: dict[str, Any] = snapshot.dict()
        page = snapshot.get_html_str(as_iframe=False) if html else None
    counts = {n: (int(reference[n].notna().sum()), int(current[n].notna().sum())) for n in names}
    results = []
    for metric in document.get("metrics", []):
        config = metric.get("config", {})
        if config.get("type") != _VALUE_DRIFT or config.get("column") not in plan.choices:
            continue
        name = config["column"]
        value = metric.get("value")
        score = float(value) if isinstance(value, int | float) else math.nan
        results.append(
            ColumnDrift(
                column=name,
                method=Stattest(config.get("method", plan.choices[name].method)),
                score=score,
                threshold=float(config.get("threshold", plan.choices[name].threshold)),
                n_reference=counts[name][0],
                n_current=counts[name][1],
            )
        )
    order = {n: i for i, n in enumerate(names)}
    results.sort(key=lambda c: order[c.column])
    return results, document, page


def _tests(current: pd.DataFrame, reference: pd.DataFrame, plan: _Plan) -> list[ColumnDrift]:
    """The plan's tests with Evidently's own test functions, without a report around them.

    A report renders a chart per column as it computes (about 0.1 s each); segments need
    only the scores, and there are many segments."""
    ev = _evidently()
    results = []
    with _quiet():
        for name, choice in plan.choices.items():
            ref, cur = reference[name].dropna(), current[name].dropna()
            kind = ev.categorical if choice.categorical else ev.numerical
            test = ev.stattest(str(choice.method), kind)
            outcome = test(ref, cur, kind, choice.threshold)
            results.append(
                ColumnDrift(
                    column=name,
                    method=choice.method,
                    score=float(outcome.drift_score),
                    threshold=choice.threshold,
                    n_reference=len(ref),
                    n_current=len(cur),
                )
            )
    return results


# ------------------------------------------------------------------------------ analysis


def segment_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Each row's segment in every dimension (device model, sex, age band, diabetes/CKD)."""
    devices = frame[DEVICE_MODEL] if DEVICE_MODEL in frame else pd.Series(None, index=frame.index)
    return pd.DataFrame(
        {
            DEVICE_MODEL: [drift.device_label(v if isinstance(v, str) else None) for v in devices],
            SEX: [
                drift.sex_label(f, m)
                for f, m in zip(frame["sex_female"], frame["sex_male"], strict=True)
            ],
            AGE_BAND: [drift.age_band_label(float(v)) for v in frame["age_band"]],
            DIABETES_OR_CKD: [
                drift.diabetes_or_ckd_label(d, k)
                for d, k in zip(frame["diabetes"], frame["ckd"], strict=True)
            ],
        },
        index=frame.index,
    )


@dataclass
class Analysis:
    """Everything one drift run found, and Evidently's own report of the overall comparison."""

    n_current: int
    n_reference: int
    features: list[ColumnDrift]
    skipped: dict[str, str]
    predictions: list[ColumnDrift]
    segments: list[SegmentDrift]
    attributions: list[Attribution]
    # Segments whose drift disappears without the rows of a stronger located segment.
    explained: list[dict[str, Any]] = field(default_factory=list)
    evidently: dict[str, Any] = field(default_factory=dict)
    html: str | None = None
    # The regimen-history features' tests (`drift.PROCESS_FEATURES`): reported, never alerting.
    process: list[ColumnDrift] = field(default_factory=list)
    # Segments whose drift its siblings share (a shift of the whole window): not located.
    shared: list[dict[str, Any]] = field(default_factory=list)

    @property
    def drifted_features(self) -> list[ColumnDrift]:
        """Features that moved across the whole window, strongest first."""
        return drift.strongest_first(self.features)

    @property
    def drifted_predictions(self) -> list[ColumnDrift]:
        """Model outputs that moved, strongest first."""
        return drift.strongest_first(self.predictions)


def analyse(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    features: Sequence[str] = FEATURE_NAMES,
    thresholds: Thresholds = Thresholds(),
    html: bool = True,
    process: Sequence[str] = drift.PROCESS_FEATURES,
) -> Analysis:
    """Compare `current` with `reference` overall and per segment, with Evidently.

    Both frames hold the feature columns, optionally `device_model` and, for prediction
    drift, the PREDICTION_COLUMNS. Nothing is tested with fewer than `min_rows` current rows.
    The `process` features are tested across all patients and reported apart (`process`):
    they raise no alert and are not tested per segment.
    """
    missing = [n for n in features if n not in current or n not in reference]
    if missing:
        raise ValueError(f"frames lack feature columns: {missing[:5]}")
    predicted = [n for n in PREDICTION_COLUMNS if n in current and n in reference]
    if len(current) < thresholds.min_rows or reference.empty:
        return Analysis(len(current), len(reference), [], {}, [], [], [])
    overall = _plan(
        current,
        reference,
        [*features, *predicted],
        min_values=thresholds.min_rows,
        alpha=thresholds.family_alpha,
        thresholds=thresholds,
    )
    overall = _with_alpha(
        overall, drift.bonferroni(thresholds.family_alpha, max(1, len(overall.choices)))
    )
    tested, document, page = _run(current, reference, overall, preset_columns=features, html=html)
    in_process = set(process)
    measured = [n for n in features if n not in in_process]
    segments = _segments(current, reference, measured, thresholds)
    candidates, shared = _beyond_siblings(
        current, reference, segments, drift.attribute(segments), thresholds
    )
    located, explained = _explain_away(current, reference, segments, candidates, thresholds)
    in_measured = set(measured)
    return Analysis(
        n_current=len(current),
        n_reference=len(reference),
        features=[c for c in tested if c.column in in_measured],
        skipped=overall.skipped,
        predictions=[c for c in tested if c.column not in in_measured | in_process],
        segments=segments,
        attributions=located,
        explained=explained,
        evidently=document,
        html=page,
        process=[c for c in tested if c.column in in_process],
        shared=shared,
    )


def _segments(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    features: Sequence[str],
    thresholds: Thresholds,
) -> list[SegmentDrift]:
    cur_labels, ref_labels = segment_labels(current), segment_labels(reference)
    plans: list[tuple[str, str, str, pd.DataFrame, pd.DataFrame, _Plan]] = []
    untested: list[SegmentDrift] = []
    for dimension in drift.DIMENSIONS:
        counts = cur_labels[dimension].value_counts()
        for value, n in sorted(counts.items()):
            if n < thresholds.min_segment_rows or value == drift.UNKNOWN:
                continue
            cur = current[cur_labels[dimension] == value]
            ref = reference[ref_labels[dimension] == value]
            scope = "segment"
            if len(ref) < thresholds.min_segment_rows:
                if dimension != DEVICE_MODEL:
                    # A subgroup differs from the whole population by what defines it (its
                    # age band, its diabetes, its lower BP target): compared with all of the
                    # reference it would always drift. Too few of it in training: untested.
                    untested.append(
                        SegmentDrift(dimension, str(value), len(cur), len(ref), "none", ())
                    )
                    continue
                # A device model training never saw (or a reference without device models):
                # its patients are compared with all of the reference.
                ref, scope = reference, "all"
            plan = _plan(
                cur,
                ref,
                features,
                min_values=thresholds.min_segment_rows,
                alpha=thresholds.family_alpha,
                thresholds=thresholds,
            )
            plans.append((dimension, str(value), scope, cur, ref, plan))
    total = sum(len(p[-1].choices) for p in plans)
    if total == 0:
        return untested
    alpha = drift.bonferroni(thresholds.family_alpha, total)
    found = []
    for dimension, value, scope, cur, ref, plan in plans:
        results = _tests(cur, ref, _with_alpha(plan, alpha))
        found.append(SegmentDrift(dimension, value, len(cur), len(ref), scope, tuple(results)))
    return found + untested


def _beyond_siblings(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    segments: Sequence[SegmentDrift],
    candidates: Sequence[Attribution],
    thresholds: Thresholds,
) -> tuple[list[Attribution], list[dict[str, Any]]]:
    """Keep a located segment only if it moved against its siblings.

    A shift shared by the whole window (a season) is tested in every segment, but a small
    segment has less power than a large one: the large one drifts "significantly", the
    small sibling does not, and the drift was located in the large one. Each side is
    therefore centred on its siblings' median (the window's on the window's, the
    reference's on the reference's) and its numerical features tested again: a shared shift
    cancels, one segment's own shift (a cuff model reading high) stays. A segment with a
    located categorical feature, or a numerical one that stays, keeps all its features (with
    their first scores: the centring adds the medians' noise and only decides); the others
    are returned apart, with the features they share with their siblings."""
    cur_labels, ref_labels = segment_labels(current), segment_labels(reference)
    scopes = {(s.dimension, s.value): s.reference_scope for s in segments}
    kept: list[Attribution] = []
    shared: list[dict[str, Any]] = []
    for candidate in candidates:
        dim, value = candidate.dimension, candidate.value
        in_cur = cur_labels[dim] == value
        sib_cur = ~in_cur & (cur_labels[dim] != drift.UNKNOWN)
        if scopes.get((dim, value)) == "segment":
            in_ref = ref_labels[dim] == value
            sib_ref = ~in_ref & (ref_labels[dim] != drift.UNKNOWN)
        else:  # compared with all of the reference: its siblings there are all of it too
            in_ref = pd.Series(True, index=reference.index)
            sib_ref = ref_labels[dim] != value
        if min(int(sib_cur.sum()), int(sib_ref.sum())) < thresholds.min_segment_rows:
            kept.append(candidate)
            continue
        numerical = {
            c.column: c
            for c in candidate.columns
            if c.method in (Stattest.KS, Stattest.WASSERSTEIN)
        }
        plan = _Plan(
            {n: TestChoice(c.method, c.threshold, False) for n, c in numerical.items()},
            {},
            int(in_cur.sum()),
            int(in_ref.sum()),
        )
        names = list(numerical)
        cur = current.loc[in_cur, names] - current.loc[sib_cur, names].median()
        ref = reference.loc[in_ref, names] - reference.loc[sib_ref, names].median()
        categorical = len(numerical) < len(candidate.columns)
        if categorical or any(c.drifted for c in _tests(cur, ref, plan)):
            kept.append(candidate)
        else:
            shared.append({"dimension": dim, "value": value, "features": sorted(numerical)})
    return kept, shared


def _explain_away(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    segments: Sequence[SegmentDrift],
    candidates: Sequence[Attribution],
    thresholds: Thresholds,
) -> tuple[list[Attribution], list[dict[str, Any]]]:
    """Keep located segments strongest first; drop one whose drift vanishes once the rows of
    the segments kept before it are left out (on both sides).

    A device model reading high moves every subgroup a little, in proportion to how many of
    its patients use that model; near a threshold some subgroups cross it and their siblings
    do not. Retesting without the stronger segment's rows tells a subgroup that drifts by
    itself from one that only carries part of another segment's drift."""
    if len(candidates) < 2:
        return list(candidates), []
    cur_labels, ref_labels = segment_labels(current), segment_labels(reference)
    scopes = {(s.dimension, s.value): s.reference_scope for s in segments}
    kept: list[Attribution] = []
    explained: list[dict[str, Any]] = []
    for candidate in candidates:
        if kept:
            cur_rows = cur_labels[candidate.dimension] == candidate.value
            ref_rows = (
                ref_labels[candidate.dimension] == candidate.value
                if scopes.get((candidate.dimension, candidate.value)) == "segment"
                else pd.Series(True, index=reference.index)
            )
            for other in kept:
                cur_rows &= cur_labels[other.dimension] != other.value
                ref_rows &= ref_labels[other.dimension] != other.value
            cur, ref = current[cur_rows], reference[ref_rows]
            still: list[ColumnDrift] = []
            if min(len(cur), len(ref)) >= thresholds.min_segment_rows:
                plan = _Plan(
                    {
                        c.column: TestChoice(
                            c.method,
                            c.threshold,
                            c.method in (Stattest.Z, Stattest.CHI_SQUARE, Stattest.JENSEN_SHANNON),
                        )
                        for c in candidate.columns
                    },
                    {},
                    len(cur),
                    len(ref),
                )
                still = [c for c in _tests(cur, ref, plan) if c.drifted]
            if not still:
                explained.append(
                    {
                        "dimension": candidate.dimension,
                        "value": candidate.value,
                        "explained_by": [f"{k.dimension}={k.value}" for k in kept],
                    }
                )
                continue
        kept.append(candidate)
    return kept, explained


# ------------------------------------------------------------------------------ predictions


def with_predictions(
    frame: pd.DataFrame,
    model: Any,
    *,
    regimen_from: pd.DataFrame | None = None,
    process: Sequence[str] = drift.PROCESS_FEATURES,
) -> pd.DataFrame:
    """The frame with the model's predicted action and probabilities added.

    The predicted action is its step on the ladder, -1 (decrease), 0 (hold) or 1 (increase):
    the actions are ordered, and as a number it gets K-S like the other few-valued ordinal
    columns. As text labels it got chi-square, whose expected counts come from the reference:
    a decrease never predicted on the reference but predicted once now scored p = 0.

    With `regimen_from` (the reference), each row is scored with the regimen-history
    (`process`) features of a row drawn from it (a fixed draw), not its own; called so on
    both sides, the outputs then differ only as the patients' measured features do. The
    regimen history is the clinic's titration pace, which differs from a training cohort's
    from the first day and moves the outputs with it (more increases for patients lower on
    their ladder): reported apart, it must not alert through the outputs either."""
    out = frame.copy()
    if frame.empty:
        for name in PREDICTION_COLUMNS:
            out[name] = pd.Series(dtype=float)
        return out
    scored = frame[list(FEATURE_NAMES)].copy()
    if regimen_from is not None and not regimen_from.empty:
        columns = [n for n in process if n in scored]
        draw = np.random.default_rng(0).integers(0, len(regimen_from), len(scored))
        scored[columns] = regimen_from[columns].to_numpy()[draw]
    probs = np.asarray(model.predict_proba(scored.to_numpy(np.float64)))
    steps = np.array([_STEP[a] for a in dataset.ACTIONS])
    out[PREDICTED_ACTION] = steps[probs.argmax(axis=1)]
    out["p_decrease"] = probs[:, 0]
    out["p_increase"] = probs[:, 2]
    return out


# ------------------------------------------------------------------------------ frames


@dataclass
class CurrentWindow:
    """The window's feature rows (one per evaluated patient) and what was recorded in it."""

    frame: pd.DataFrame
    evaluated_patients: int
    recorded: dict[str, int]  # scored evaluations by what the model concluded


def current_frame(
    session: Session, *, start: datetime, end: datetime, tz: str = "UTC"
) -> CurrentWindow:
    """One row per patient the model scored in [start, end): their features as of `end`,
    computed by the loop's own readers, with the device model of their cuff readings."""
    scored = list(
        session.execute(
            select(col(Evaluation.patient_id), col(Evaluation.outcome), col(Proposal.action))
            .outerjoin(Proposal, col(Proposal.id) == col(Evaluation.proposal_id))
            .where(
                col(Evaluation.created_at) >= start,
                col(Evaluation.created_at) < end,
                col(Evaluation.outcome).in_(_SCORED),
            )
        )
    )
    recorded = Counter(str(action) if action else str(outcome) for _, outcome, action in scored)
    patient_ids = sorted({pid for pid, _, _ in scored})
    rows: list[tuple[float, ...]] = []
    kept: list[str] = []
    for i in range(0, len(patient_ids), _CHUNK):
        ids = patient_ids[i : i + _CHUNK]
        patients = loop_flows._patients(session, ids)
        regimens = loop_flows._active_regimens(session, ids)
        histories = loop_flows._histories(session, ids, end)
        for pid in ids:
            if pid not in patients or pid not in regimens:
                continue
            regimen, ladder = regimens[pid]
            history = histories[pid]
            vector = compute_features(
                readings=history.points,
                doses=history.doses,
                symptoms=history.reports,
                patient=patients[pid].facts,
                regimen=RegimenFacts(
                    step=regimen.current_step,
                    ladder_steps=len(ladder.steps),
                    last_change=loop_flows._last_change(regimen),
                ),
                as_of=end,
                tz=tz,
            )
            if vector.sufficient:  # the model scores only with enough cuff readings
                rows.append(vector.values)
                kept.append(pid)
    # Indexed by patient id while in memory; nothing stored names a patient.
    frame = pd.DataFrame(
        rows, columns=list(FEATURE_NAMES), index=pd.Index(kept, dtype=object), dtype=np.float64
    )
    devices = _device_models(session, kept, start=end - DEVICE_LOOKBACK, end=end)
    frame[DEVICE_MODEL] = [devices.get(pid, ("", ""))[0] for pid in kept]
    frame[DEVICE_FIRMWARE] = [devices.get(pid, ("", ""))[1] for pid in kept]
    return CurrentWindow(frame, len(patient_ids), dict(sorted(recorded.items())))


def _device_models(
    session: Session, patient_ids: Sequence[str], *, start: datetime, end: datetime
) -> dict[str, tuple[str, str]]:
    """Each patient's most used validated-cuff model ("manufacturer model", as the simulator
    and the training reference name it) and firmware over [start, end)."""
    found: dict[str, tuple[int, str, str]] = {}
    for i in range(0, len(patient_ids), _CHUNK):
        ids = list(patient_ids[i : i + _CHUNK])
        stmt = (
            select(
                col(Reading.patient_id),
                col(Device.manufacturer),
                col(Reading.device_model),
                col(Reading.firmware_version),
                func.count(),
            )
            .join(Device, col(Device.id) == col(Reading.device_id))
            .where(
                col(Reading.patient_id).in_(ids),
                col(Reading.effective_start) >= start,
                col(Reading.effective_start) < end,
                col(Reading.kind) == "blood_pressure",
                col(Reading.device_class) == "validated_cuff",
                col(Reading.status) == ReadingStatus.ACCEPTED,
            )
            .group_by(
                col(Reading.patient_id),
                col(Device.manufacturer),
                col(Reading.device_model),
                col(Reading.firmware_version),
            )
        )
        for pid, maker, model, firmware, n in session.execute(stmt):
            name = drift.device_name(str(maker or ""), str(model or ""))
            best = found.get(pid)
            # Most readings wins; ties go to the alphabetically first model (deterministic).
            if best is None or (n, best[1]) > (best[0], name):
                found[pid] = (int(n), name, str(firmware or ""))
    return {pid: (model, firmware) for pid, (_, model, firmware) in found.items()}


def override_counts(session: Session, *, start: datetime, end: datetime) -> tuple[int, int]:
    """(modified + rejected, all) clinician decisions signed in [start, end)."""
    rows = session.execute(
        select(col(Decision.kind), func.count())
        .where(col(Decision.signed_at) >= start, col(Decision.signed_at) < end)
        .group_by(col(Decision.kind))
    )
    counts = {str(kind): int(n) for kind, n in rows}
    overridden = counts.get(DecisionKind.MODIFY, 0) + counts.get(DecisionKind.REJECT, 0)
    return overridden, sum(counts.values())


def reference_frame(
    version: ModelVersion,
    *,
    cache_dir: Path,
    session: Session | None = None,
    data_dir: Path | None = None,
) -> pd.DataFrame:
    """The training data of `version` as a population, one row per training patient: its
    training snapshot if it was retrained on one (read from the snapshot's file, checked by
    hash), else rebuilt from its recorded parameters and checked against its recorded data
    hash; cached by that hash (Parquet) under `cache_dir`.

    One row per patient, as the window has: a training set holds each patient at several
    times, and tests that count those rows as independent patients find drift in traits that
    never change (a handful of CKD patients, repeated eight times, is not 64 patients). The
    simulated cohort's deliberately over-treated patients (`mlops.dataset.overtreated`, a
    share set so the labels hold decreases at all, not an estimate of any population) are
    left out: the reference is the population the cohort stands for."""
    cached = cache_dir / f"reference-{_REFERENCE_FORM}-{version.data_hash}.parquet"
    if cached.exists():
        with _quiet():
            frame = pd.read_parquet(cached)
        if list(frame.columns[: len(FEATURE_NAMES)]) == list(FEATURE_NAMES):
            return frame
    if session is not None and data_dir is not None:
        snapshot = session.scalars(
            select(TrainingSnapshot).where(col(TrainingSnapshot.content_hash) == version.data_hash)
        ).first()
        if snapshot is not None:
            return _store(_snapshot_reference(snapshot, data_dir=data_dir), cached)
    params: Mapping[str, Any] = version.params
    if params.get("scenario", "None") != "None":
        raise ReferenceUnavailable("the training cohort used a scenario that cannot be rebuilt")
    try:
        n_patients, days, seed = int(params["n_patients"]), int(params["days"]), int(params["seed"])
        every = int(params.get("every", 7))
        overtreated = float(params.get("overtreated_share", 0.1))
    except (KeyError, TypeError, ValueError) as exc:
        raise ReferenceUnavailable("the model records no training-data parameters") from exc
    if tuple(version.feature_names) != FEATURE_NAMES:
        raise ReferenceUnavailable("the model was trained on another feature set")
    data = dataset.build(
        n_patients=n_patients, days=days, seed=seed, every=every, overtreated_share=overtreated
    )
    if data.data_hash != version.data_hash:
        raise ReferenceUnavailable("rebuilt training data differ from the recorded data hash")
    frame = pd.DataFrame(data.X, columns=list(data.feature_names), dtype=np.float64)
    patients = generate_patients(n_patients, seed)
    cuffs = {p.pseudonym: p.cuff_model for p in patients}
    frame[DEVICE_MODEL] = [cuffs.get(str(g), "") for g in data.groups]
    enriched = _overtreated(n_patients, seed, overtreated)
    groups = [str(g) for g in data.groups]
    return _store(_one_row_per_patient(frame, groups, leave_out=enriched), cached)


# How the reference is derived from the training data; part of the cache's file name, so a
# cache written by an earlier derivation is never read as this one's.
_REFERENCE_FORM: Final = "patients1"


def _overtreated(n_patients: int, seed: int, share: float) -> frozenset[str]:
    """The pseudonyms `mlops.dataset.build` made over-treated in this cohort."""
    return frozenset(
        p.pseudonym
        for i, p in enumerate(generate_patients(n_patients, seed))
        if dataset.overtreated(i, share)
    )


def _one_row_per_patient(
    frame: pd.DataFrame, groups: Sequence[str], *, leave_out: frozenset[str] = frozenset()
) -> pd.DataFrame:
    """One row of each patient (`groups` names each row's patient), chosen by a hash of the
    patient: a fixed choice that keeps the training set's mix of times since enrolment."""
    rows: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        if group not in leave_out:
            rows.setdefault(group, []).append(i)
    chosen = sorted(
        members[int(hashlib.sha256(group.encode()).hexdigest()[:12], 16) % len(members)]
        for group, members in rows.items()
    )
    return frame.iloc[chosen].reset_index(drop=True)


def _store(frame: pd.DataFrame, cached: Path) -> pd.DataFrame:
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".tmp")
    frame.to_parquet(partial, index=False)
    partial.replace(cached)  # atomic: a reader never sees half a file
    return frame


def _snapshot_reference(snapshot: TrainingSnapshot, *, data_dir: Path) -> pd.DataFrame:
    """A retrained model's reference: one row per patient of its training snapshot (train
    and holdout; for a simulated cohort, without its over-treated patients).

    Snapshot rows carry no device model, so the reference has none: drift is still found
    per feature and per subgroup; a device model's rows are compared with the whole
    reference (see `_segments`)."""
    from mlops import snapshots  # late: mlops.snapshots imports the validation package

    try:
        data = snapshots.load(snapshot, data_dir=data_dir)
    except snapshots.SnapshotFileError as exc:
        raise ReferenceUnavailable(f"the training snapshot cannot be read: {exc}") from exc
    if tuple(data.feature_names) != FEATURE_NAMES:
        raise ReferenceUnavailable("the model was trained on another feature set")
    frame = pd.DataFrame(data.X, columns=list(data.feature_names), dtype=np.float64)
    frame[DEVICE_MODEL] = ""
    enriched: frozenset[str] = frozenset()
    simulation = data.meta.get("simulation") if isinstance(data.meta, dict) else None
    if isinstance(simulation, dict):
        try:
            n, seed = int(simulation["n_patients"]), int(simulation["seed"])
            share = float(simulation.get("overtreated_share", 0.1))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReferenceUnavailable("the simulated snapshot records no cohort") from exc
        enriched = frozenset(snapshots.patient_group(p) for p in _overtreated(n, seed, share))
    return _one_row_per_patient(frame, [str(g) for g in data.groups], leave_out=enriched)
