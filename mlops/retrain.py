"""Private retraining: snapshot -> data checks -> privacy ledger -> DP-SGD and a non-private
baseline on the same split -> a registered CANDIDATE, its ledger entry and audit entry.

The candidate waits there: validation gates, two sign-offs and a rollout decide whether it
ever serves (docs/model-lifecycle.md). What this module guarantees, and what it does not,
is in docs/privacy.md; in short:

* DP-SGD (Opacus, mlops.dp.train_dp): per-sample clipping to `max_grad_norm`, Gaussian
  noise, Poisson sampling, the noise multiplier chosen for the run's target epsilon at
  delta = 1/(10 n) (the project's ceiling, n the DP training rows), accounted by the RDP or
  PRV accountant (setting `retrain_accountant`). The epsilon recorded is the one the
  accountant reports for the steps actually taken.
* The unit of privacy: a snapshot of clinician decisions keeps at most
  `training_max_rows_per_patient` rows per patient (default 1, so a row is a patient). With
  up to k rows per patient, a patient is protected only by group privacy, (k eps,
  k e^((k-1) eps) delta), and that per-patient cost is what the ledger charges.
* Standardization uses fixed public clinical scales (`PUBLIC_SCALES`), never statistics of
  the private data, so it releases nothing. The temperature (calibration) is fitted on
  calibration patients kept out of the DP training set: one scalar that epsilon does not
  cover. Holdout metrics, label counts and the data checks are likewise released without
  noise; they concern aggregates, not the model's parameters.
* secure_mode is off: Opacus needs torchcsprng for it, which does not install here.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core.config import Settings, get_settings
from audit import service as audit
from audit.models import Outcome
from mlops import ledger, registry, serving, snapshots
from mlops.dp import max_delta, train_baseline, train_dp
from mlops.features import FEATURE_NAMES, FEATURE_SET_VERSION, NULLABLE_FEATURES
from mlops.model import Standardizer, TitrationModel, evaluate
from mlops.models import (
    ModelAlias,
    ModelStatus,
    ModelVersion,
    PrivacySpend,
    TrainingSnapshot,
)
from mlops.training import NEVER_TOWARDS_INCREASE, never_towards_increase
from validation import data_checks
from validation.drift import Status as DriftStatus
from validation.models import DriftReport

CHAMPION: Final = "champion"
_CALIBRATION_SALT: Final = "clinaiops-calibration/1"
# Advisory-lock class of retraining runs (two-key form, its own key space): one run per
# cohort at a time, so two runs cannot both pass the budget check (PostgreSQL; SQLite
# writers are serial already).
_RETRAIN_LOCK_CLASS: Final = 0x524554
SECURE_MODE_REASON: Final = (
    "Opacus secure_mode needs torchcsprng, which does not install for this Python and "
    "torch; noise and sampling use torch's seeded PRNG (not cryptographically secure), and "
    "floating-point attacks on the Gaussian noise are not mitigated"
)
NOT_COVERED: Final = (
    "calibration temperature (fitted on calibration patients outside the DP training set)",
    "holdout metrics and subgroup metrics (holdout patients)",
    "snapshot label counts, outcome counts and data-check results",
)

# Public standardization: clinically fixed centres and spreads chosen without the private
# data (home BP around the 135/85 threshold, usual day-to-day variation; binary flags at
# 0.5 +- 0.5). A missing value standardizes to the centre (mlops.model.Standardizer).
_BINARY: Final = (0.5, 0.5)
_BASE_SCALES: Final[dict[str, tuple[float, float]]] = {
    "cuff_sbp_mean_7d": (135.0, 15.0),
    "cuff_dbp_mean_7d": (80.0, 10.0),
    "cuff_sbp_mean_14d": (135.0, 15.0),
    "cuff_dbp_mean_14d": (80.0, 10.0),
    "cuff_sbp_mean_am_7d": (135.0, 15.0),
    "cuff_dbp_mean_am_7d": (80.0, 10.0),
    "cuff_sbp_mean_pm_7d": (135.0, 15.0),
    "cuff_dbp_mean_pm_7d": (80.0, 10.0),
    "cuff_sbp_mean_3d": (135.0, 15.0),
    "cuff_sbp_min_3d": (125.0, 15.0),
    "cuff_sbp_sd_14d": (8.0, 3.0),
    "cuff_sbp_slope_14d": (0.0, 1.0),
    "cuff_at_target_share_14d": (0.5, 0.35),
    "cuff_readings_7d": (14.0, 6.0),
    "cuff_days_7d": (5.0, 1.5),
    "cuffless_sbp_mean_7d": (135.0, 15.0),
    "cuffless_sbp_slope_14d": (0.0, 1.0),
    "heart_rate_mean_7d": (75.0, 10.0),
    "steps_daily_mean_7d": (7000.0, 3000.0),
    "adherence_14d": (0.85, 0.15),
    "hypotension_symptoms_3d": _BINARY,
    "symptom_reports_14d": (1.0, 1.5),
    "ladder_position": (0.5, 0.35),
    "days_since_change": (180.0, 150.0),
    "never_changed": _BINARY,
    "age_band": (2.5, 1.2),
    "sex_female": _BINARY,
    "sex_male": _BINARY,
    "diabetes": _BINARY,
    "ckd": _BINARY,
}
PUBLIC_SCALES: Final[Mapping[str, tuple[float, float]]] = _BASE_SCALES | {
    f"{n}_missing": _BINARY for n in NULLABLE_FEATURES
}
# Subgroups reported per model (and judged by the validation gates): sex, age band,
# diabetes or CKD. Age bands are those of the `age_band` feature, merged at the ends.
_AGE_GROUPS: Final[dict[str, tuple[float, ...]]] = {
    "<50": (0.0, 1.0),
    "50-59": (2.0,),
    "60-69": (3.0,),
    "70+": (4.0, 5.0),
}


def public_standardizer(names: tuple[str, ...] = FEATURE_NAMES) -> Standardizer:
    """The fixed public scales, in feature order."""
    return Standardizer(
        mean=tuple(PUBLIC_SCALES[n][0] for n in names),
        scale=tuple(PUBLIC_SCALES[n][1] for n in names),
    )


@dataclass(frozen=True)
class RetrainConfig:
    """How a retraining run trains (the privacy target and budget come from settings)."""

    epochs: int = 30
    batch_size: int = 64  # expected batch under Poisson sampling; at most the rows
    lr: float = 0.5
    max_grad_norm: float = 1.0
    calibration_share: float = 0.2  # of the training patients, for the temperature
    min_subgroup_rows: int = 10  # fewer holdout rows: the subgroup is reported, not scored


class RetrainRefused(Exception):
    """A run refused before it registered anything, and why (`code`, `detail`).

    The refusal's audit entry is queued on the session, and a snapshot built for the run is
    flushed with its checks: commit to keep them (a rollback drops both)."""

    def __init__(self, code: str, detail: str, *, status: int = 422) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class RetrainResult:
    """A registered candidate and what it cost."""

    version: ModelVersion
    snapshot: TrainingSnapshot
    spend: PrivacySpend
    parent_version: int | None
    epsilon: float  # the run's (row-level) epsilon, as the accountant reports it
    delta: float
    charged_epsilon: float  # what the ledger charged (per patient)
    spent_before: float
    spent_after: float
    budget: float


# ------------------------------------------------------------------ pure helpers


def subgroup_masks(X: np.ndarray, names: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """Row masks per subgroup: sex, age band, diabetes or CKD (from the feature values)."""
    idx = {n: j for j, n in enumerate(names)}
    female, male = X[:, idx["sex_female"]] == 1.0, X[:, idx["sex_male"]] == 1.0
    age = X[:, idx["age_band"]]
    risk = (X[:, idx["diabetes"]] == 1.0) | (X[:, idx["ckd"]] == 1.0)
    ages = {label: np.isin(age, bands) for label, bands in _AGE_GROUPS.items()}
    ages["unknown"] = np.isnan(age)
    return {
        "sex": {"female": female, "male": male, "other_or_unknown": ~female & ~male},
        "age_band": ages,
        "diabetes_or_ckd": {"yes": risk, "no": ~risk},
    }


def _json_safe(value: Any) -> Any:
    """Metrics as JSON: non-finite floats become None."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def subgroup_metrics(
    model: TitrationModel,
    X: np.ndarray,
    y: np.ndarray,
    *,
    names: tuple[str, ...] = FEATURE_NAMES,
    min_rows: int = 10,
) -> dict[str, dict[str, dict[str, Any]]]:
    """`evaluate` per subgroup; a subgroup with fewer than `min_rows` rows gets only its n."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for dimension, groups in subgroup_masks(X, names).items():
        out[dimension] = {}
        for label, mask in groups.items():
            n = int(mask.sum())
            if n == 0:
                continue
            if n < min_rows:
                out[dimension][label] = {"n": n, "insufficient": True}
            else:
                out[dimension][label] = _json_safe(evaluate(model, X[mask], y[mask]))
    return out


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """(epsilon, delta) for a group of k rows from a row-level guarantee: (k eps,
    k e^((k-1) eps) delta), delta capped at 1 (no guarantee left)."""
    if k <= 1:
        return epsilon, delta
    exponent = (k - 1) * epsilon
    group_delta = 1.0 if exponent > 700 else min(1.0, k * math.exp(exponent) * delta)
    return k * epsilon, group_delta


def thresholds_from(settings: Settings) -> data_checks.Thresholds:
    """The data checks' thresholds: sizes from settings; the holdout must hold a tenth of
    the minimum patient count (at least 2), so the holdout metrics mean something."""
    return data_checks.Thresholds(
        min_rows=settings.training_min_rows,
        min_patients=settings.training_min_patients,
        min_holdout_patients=max(2, settings.training_min_patients // 10),
    )


# ------------------------------------------------------------------ lookups


def champion(session: Session, *, name: str = registry.TITRATION) -> ModelVersion | None:
    """The version the `champion` alias names, else the newest production version."""
    alias = session.get(ModelAlias, (name, CHAMPION))
    if alias is not None:
        version = session.scalars(
            select(ModelVersion).where(
                col(ModelVersion.name) == name, col(ModelVersion.version) == alias.version
            )
        ).first()
        if version is not None:
            return version
    return registry.production(session, name=name)


def _nothing_new(
    session: Session, snapshot: TrainingSnapshot, data: snapshots.SnapshotData, data_dir: Path
) -> TrainingSnapshot | None:
    """The snapshot that last trained a version of this cohort, if it holds the same training
    rows (outcomes aside, which training does not read); else None."""
    previous = snapshots.last_trained(session, cohort=snapshot.cohort)
    if previous is None:
        return None
    if previous.content_hash == snapshot.content_hash:
        return previous
    try:
        earlier = snapshots.load(previous, data_dir=data_dir)
    except snapshots.SnapshotFileError:
        return None  # cannot tell: let the run go on (its own snapshot is intact)
    return previous if earlier.training_hash() == data.training_hash() else None


def _lock(session: Session, cohort: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:kind, hashtext(:cohort))"),
            {"kind": _RETRAIN_LOCK_CLASS, "cohort": cohort},
        )


def _audit(
    session: Session,
    entry: audit.PendingEntry | None,
    *,
    actor: str,
    actor_role: str,
    resource_id: str,
    outcome: Outcome,
    details: dict[str, Any],
) -> None:
    """Fill the caller's pending entry (an API request's) or record one (CLI, scheduler)."""
    if entry is not None:
        entry.action = "model.train"
        entry.resource_type = "model"
        entry.resource_id = resource_id
        entry.outcome = outcome
        entry.details = details
        return
    audit.record(
        session,
        actor=actor,
        actor_role=actor_role,
        action="model.train",
        resource_type="model",
        resource_id=resource_id,
        outcome=outcome,
        details=details,
    )


# ------------------------------------------------------------------ the run


def retrain(
    *,
    session: Session,
    settings: Settings,
    now: datetime,
    actor: str,
    cohort: str = "clinic",
    snapshot: TrainingSnapshot | None = None,
    target_epsilon: float | None = None,
    actor_role: str = "system",
    reason: str = "requested",
    config: RetrainConfig = RetrainConfig(),
    audit_entry: audit.PendingEntry | None = None,
) -> RetrainResult:
    """Train a DP candidate on a snapshot of `cohort` (built now unless given) and register
    it with its lineage, metrics, privacy record and ledger entry; audited as `model.train`.

    Refusals (RetrainRefused, nothing registered, nothing spent): unknown cohort, a snapshot
    of another cohort or with a changed file, failed data checks, a snapshot already trained
    on (when built here: nothing new), or a run that would pass the cohort's budget.
    Pass the API request's `audit_entry` to have it filled in rather than a second entry
    recorded. Flushes; the caller commits (after a refusal too, to keep its audit entry).
    """
    name = registry.TITRATION
    base: dict[str, Any] = {"cohort": cohort, "reason": reason[:200]}

    def refuse(code: str, detail: str, *, status: int = 422, **extra: Any) -> RetrainRefused:
        _audit(
            session,
            audit_entry,
            actor=actor,
            actor_role=actor_role,
            resource_id=name,
            outcome=Outcome.FAILURE,
            details={**base, "code": code, **extra},
        )
        return RetrainRefused(code, detail, status=status)

    try:
        source = snapshots.source_of(cohort)
    except snapshots.UnknownCohort as exc:
        raise refuse("unknown_cohort", str(exc)) from None
    epsilon_target = settings.retrain_target_epsilon if target_epsilon is None else target_epsilon
    if not (math.isfinite(epsilon_target) and epsilon_target > 0):
        raise refuse("invalid_epsilon", "the target epsilon must be finite and positive")
    _lock(session, cohort)
    thresholds = thresholds_from(settings)
    built_here = snapshot is None
    if snapshot is None:
        if source == snapshots.SOURCE_DECISIONS:
            snapshot = snapshots.build_from_decisions(
                session=session,
                now=now,
                cohort=cohort,
                actor=actor,
                data_dir=settings.data_dir,
                max_rows_per_patient=settings.training_max_rows_per_patient,
                thresholds=thresholds,
            )
        else:
            snapshot = snapshots.build_simulated(
                session=session,
                now=now,
                actor=actor,
                data_dir=settings.data_dir,
                cohort=cohort,
                thresholds=thresholds,
            )
    elif snapshot.cohort != cohort:
        raise refuse(
            "snapshot_cohort_mismatch",
            f"snapshot {snapshot.id} belongs to cohort {snapshot.cohort!r}, not {cohort!r}",
            snapshot_id=snapshot.id,
        )
    base["snapshot_id"] = snapshot.id
    try:
        data = snapshots.load(snapshot, data_dir=settings.data_dir)
    except snapshots.SnapshotFileError as exc:
        raise refuse(exc.code, exc.detail, status=409) from None
    # Checked now, with today's thresholds: a snapshot's recorded checks are those it was
    # built with, and it never changes; a reused or given one may be judged differently now.
    results = snapshots.run_checks(data, thresholds)
    if failing := data_checks.failed(results):
        raise refuse(
            "data_checks_failed",
            f"snapshot {snapshot.id} failed its data checks: {data_checks.refusal(results)}",
            failed_checks=[c.name for c in failing],
        )
    if (
        built_here
        and (earlier := _nothing_new(session, snapshot, data, settings.data_dir)) is not None
    ):
        raise refuse(
            "no_new_data",
            f"snapshot {snapshot.id} holds the same training rows as snapshot {earlier.id}, "
            "which trained the last version of this cohort; nothing new to learn from",
            status=409,
        )

    # The split: holdout patients (the snapshot's), then calibration patients among the rest.
    calibration = np.array(
        [
            snapshots.hash_fraction(g, _CALIBRATION_SALT) < config.calibration_share
            for g in data.groups.tolist()
        ],
        dtype=bool,
    )
    held = data.holdout
    fit = ~held & ~calibration
    cal = ~held & calibration
    n = int(fit.sum())
    if n < 2 or not cal.any() or not held.any():
        raise refuse(
            "too_small_to_split",
            f"{n} training rows, {int(cal.sum())} calibration rows and {int(held.sum())} "
            "holdout rows: each side needs patients",
        )
    real = source == snapshots.SOURCE_DECISIONS
    k = data.max_rows_per_patient(fit) if real else 1
    totals = ledger.totals(session, cohort=cohort)
    budget = settings.privacy_budget_epsilon
    try:
        ledger.check(spent=totals.epsilon, requested=epsilon_target * k, budget=budget)
    except ledger.BudgetExceeded as exc:
        raise refuse(
            "privacy_budget_exceeded",
            str(exc),
            spent_epsilon=exc.spent,
            requested_epsilon=exc.requested,
            budget_epsilon=exc.budget,
            excess_epsilon=exc.excess,
        ) from None

    X_fit, y_fit = data.X[fit], data.y[fit]
    delta = max_delta(n)
    batch = min(config.batch_size, n)
    # The batch sampling and the noise must not be a function of the data (a seed from the
    # snapshot's hash would make the noise reproducible by anyone who knows or guesses the
    # rows, voiding the guarantee), nor known to anyone: a fresh secret seed, never recorded.
    # The price: a run cannot be reproduced bit for bit.
    seed = secrets.randbits(62)
    standardizer = public_standardizer(data.feature_names)
    try:
        private = train_dp(
            X_fit,
            y_fit,
            feature_names=data.feature_names,
            target_epsilon=epsilon_target,
            delta=delta,
            max_grad_norm=config.max_grad_norm,
            epochs=config.epochs,
            batch_size=batch,
            lr=config.lr,
            seed=seed,
            accountant=settings.retrain_accountant,
            standardizer=standardizer,
        )
    except ValueError as exc:  # e.g. no noise multiplier reaches the target for this schedule
        raise refuse("training_failed", f"DP training refused its settings: {exc}") from None
    charged, charged_delta = group_privacy(private.epsilon, delta, k)
    if totals.epsilon + charged > budget + 1e-9:
        # The accountant may land a hair above the target (step-count rounding); the model is
        # discarded unreleased, so nothing is spent.
        raise refuse(
            "privacy_budget_exceeded",
            f"the run spent epsilon {charged:.4g}, which would take the cohort to "
            f"{totals.epsilon + charged:.4g}, above the budget of {budget:.4g}; discarded",
            spent_epsilon=totals.epsilon,
            requested_epsilon=charged,
            budget_epsilon=budget,
        )
    baseline = train_baseline(
        X_fit,
        y_fit,
        feature_names=data.feature_names,
        epochs=config.epochs,
        batch_size=batch,
        lr=config.lr,
        seed=seed,
        standardizer=standardizer,
    )
    constrained: dict[str, list[str]] = {}
    for key, result in (("dp", private), ("non_dp_baseline", baseline)):
        # As train_initial: the same constraint on both, so the baseline stays the same model.
        constrained[key] = never_towards_increase(result.model, NEVER_TOWARDS_INCREASE)
        result.model.calibrate(data.X[cal], data.y[cal])
        result.model.metadata[serving.FEATURE_SET_KEY] = FEATURE_SET_VERSION
    X_held, y_held = data.X[held], data.y[held]
    dp_metrics = _json_safe(evaluate(private.model, X_held, y_held))
    base_metrics = _json_safe(evaluate(baseline.model, X_held, y_held))
    metrics: dict[str, Any] = {
        "holdout_rows": int(held.sum()),
        "train_rows": n,
        "calibration_rows": int(cal.sum()),
        "holdout_patients": snapshot.holdout_patients,
        "temperature": private.model.temperature,
        "direction_constrained": constrained,
        "dp": dp_metrics,
        "non_dp_baseline": base_metrics,
        # What privacy cost on this split: the baseline's score minus the private model's.
        "privacy_cost": {
            m: _json_safe(base_metrics[m] - dp_metrics[m])
            if base_metrics.get(m) is not None and dp_metrics.get(m) is not None
            else None
            for m in ("accuracy", "macro_f1")
        },
        "subgroups": {
            "dp": subgroup_metrics(
                private.model,
                X_held,
                y_held,
                names=data.feature_names,
                min_rows=config.min_subgroup_rows,
            ),
            "non_dp_baseline": subgroup_metrics(
                baseline.model,
                X_held,
                y_held,
                names=data.feature_names,
                min_rows=config.min_subgroup_rows,
            ),
        },
        "label_counts": dict(snapshot.label_counts),
    }
    path, sha = _save(private.model, settings.data_dir / "models")
    parent = champion(session, name=name)
    unit = "patient" if real and k == 1 else "row"
    privacy: dict[str, Any] = {
        **private.privacy_record(),
        "privacy_unit": unit,
        "rows_per_patient_max": k if real else data.max_rows_per_patient(fit),
        "patient_epsilon": charged if real else None,
        "patient_delta": charged_delta if real else None,
        "secure_mode": False,
        "secure_mode_reason": SECURE_MODE_REASON,
        "scales": "public (mlops.retrain.PUBLIC_SCALES)",
        "not_covered": list(NOT_COVERED),
        "cohort": cohort,
        "ledger": {
            "composition": ledger.COMPOSITION,
            "budget_epsilon": budget,
            "spent_epsilon_before": totals.epsilon,
            "spent_epsilon_after": totals.epsilon + charged,
            "spent_delta_after": totals.delta + charged_delta,
        },
    }
    version = registry.register(
        session,
        name=name,
        artifact_path=path,
        artifact_sha256=sha,
        data_hash=snapshot.content_hash,
        feature_names=data.feature_names,
        params={
            "training": {
                **dataclasses.asdict(config),
                "batch_size": batch,
                "seed": "secret: drawn per run, not recorded (docs/privacy.md)",
            },
            "labels": "clinician decisions" if real else "protocol v1 (simulated, mlops.dataset)",
            "feature_set": FEATURE_SET_VERSION,
            "snapshot": {
                "id": snapshot.id,
                "content_hash": snapshot.content_hash,
                "cohort": cohort,
                "source": snapshot.source,
                "rows": snapshot.rows,
                "patients": snapshot.patients,
            },
            "split": {
                "by": "patient",
                "holdout_share": data.holdout_share,
                "calibration_share": config.calibration_share,
            },
            "reason": reason[:200],
        },
        metrics=metrics,
        privacy=privacy,
        created_by=actor,
        status=ModelStatus.CANDIDATE,
        parent_version=parent.version if parent else None,
        now=now,
        reason=f"retrained: {reason}",
    )
    spend = ledger.record(
        session,
        cohort=cohort,
        snapshot_id=snapshot.id,
        model_name=name,
        model_version=version.version,
        epsilon=charged,
        delta=charged_delta,
        accountant=private.accountant or "",
        details={
            "row_epsilon": private.epsilon,
            "row_delta": delta,
            "rows_per_patient_max": k,
            "privacy_unit": unit,
            "target_epsilon": epsilon_target,
            "noise_multiplier": private.noise_multiplier,
            "sample_rate": private.sample_rate,
            "steps": private.steps,
            "max_grad_norm": config.max_grad_norm,
            "budget_epsilon": budget,
        },
        created_by=actor,
        now=now,
    )
    _audit(
        session,
        audit_entry,
        actor=actor,
        actor_role=actor_role,
        resource_id=registry.label(version),
        outcome=Outcome.SUCCESS,
        details={
            **base,
            "version": version.version,
            "status": version.status,
            "parent_version": version.parent_version,
            "data_hash": snapshot.content_hash,
            "artifact_sha256": sha,
            "epsilon": private.epsilon,
            "delta": delta,
            "charged_epsilon": charged,
            "accountant": private.accountant,
            "spent_epsilon_after": totals.epsilon + charged,
            "budget_epsilon": budget,
            "accuracy_dp": dp_metrics.get("accuracy"),
            "accuracy_baseline": base_metrics.get("accuracy"),
        },
    )
    session.flush()
    return RetrainResult(
        version=version,
        snapshot=snapshot,
        spend=spend,
        parent_version=version.parent_version,
        epsilon=private.epsilon,
        delta=delta,
        charged_epsilon=charged,
        spent_before=totals.epsilon,
        spent_after=totals.epsilon + charged,
        budget=budget,
    )


def _save(model: TitrationModel, models_dir: Path) -> tuple[Path, str]:
    """Write the artifact under a name from its own hash (immutable: one content, one file)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f"titration-staging-{id(model)}.json"
    sha = model.save(staging)
    path = (models_dir / f"titration-{sha[:16]}.json").resolve()
    staging.replace(path)
    return path, sha


def retrain_due(
    *, session: Session, now: datetime, settings: Settings | None = None, cohort: str = "clinic"
) -> str | None:
    """Why a retraining of the clinic's model is due, or None: an open drift alert (the
    newest drift report alerts and is newer than the last snapshot) with at least one new
    decision to learn from, or at least `retrain_min_new_decisions` new decisions since the
    last snapshot. Without new decisions a retraining would only rebuild the same snapshot."""
    settings = settings or get_settings()
    last = snapshots.latest(session, cohort=cohort)
    since = None if last is None else (last.window_end or last.created_at)
    new = snapshots.decisions_since(session, since=since, now=now)
    report = session.scalars(
        select(DriftReport)
        .where(col(DriftReport.created_at) <= now)
        .order_by(col(DriftReport.created_at).desc(), col(DriftReport.id).desc())
        .limit(1)
    ).first()
    alert_open = (
        report is not None
        and report.status == DriftStatus.ALERT
        and (last is None or report.created_at > last.created_at)
    )
    where = "since the last snapshot" if last is not None else "so far"
    if alert_open and new > 0:
        assert report is not None
        return f"open drift alert (drift report {report.id}); {new} new decisions {where}"
    if new >= settings.retrain_min_new_decisions:
        return (
            f"{new} new clinician decisions {where} "
            f"(retrain at {settings.retrain_min_new_decisions})"
        )
    return None


def quiet_secure_rng_warning() -> None:
    """For the CLI: Opacus warns on every run that secure_mode is off, which is deliberate
    and recorded in every privacy record; say it once instead."""
    warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
