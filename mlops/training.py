"""Train and register the first titration model (version 1) on protocol-labelled data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy.orm import Session

from mlops import dataset, registry, serving
from mlops.dp import train_baseline, train_dp, train_sklearn_baseline
from mlops.features import FEATURE_SET_VERSION
from mlops.model import CLASSES, TitrationModel, centred, evaluate, index_of, linear_from
from mlops.models import ModelStatus, ModelVersion
from policies.envelope import TitrationAction

# Features that must never raise the probability of an increase: a report of dizziness or
# fainting argues for less drug, never more. DP noise on a rare 0/1 feature (its z-score is
# large when set) can give it any sign; see `never_towards_increase`.
NEVER_TOWARDS_INCREASE: Final = ("hypotension_symptoms_3d",)


@dataclass(frozen=True)
class InitialTraining:
    """How to build and train version 1."""

    n_patients: int = 200
    days: int = 84
    seed: int = 7
    target_epsilon: float = 3.0
    max_grad_norm: float = 1.0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.5
    holdout: float = 0.25


def never_towards_increase(model: TitrationModel, names: Sequence[str]) -> list[str]:
    """Constrain the model, in place, so that none of `names` raises P(increase); returns the
    features whose weights had to change.

    For each feature the increase weight is lowered to the smallest other class's weight
    (then re-centred, which moves no probability). With w_inc <= w_k for every class k,
    dP(inc)/dx = P(inc) (w_inc - sum_k P(k) w_k) / scale <= 0 everywhere: the probability
    of an increase never rises with the feature. Post-processing of a DP model costs no
    privacy; the temperature is fitted afterwards, on the constrained model.
    """
    weight, bias = model.weight, model.bias
    inc = index_of(TitrationAction.INCREASE)
    changed = []
    for name in names:
        i = model.feature_names.index(name)
        floor = min(weight[k, i] for k in range(len(CLASSES)) if k != inc)
        if weight[inc, i] > floor:
            weight[inc, i] = floor
            changed.append(name)
    if changed:
        model.linear = linear_from(*centred(weight, bias))
    model.metadata["never_towards_increase"] = ",".join(names)
    return changed


def train_initial(
    session: Session,
    *,
    models_dir: Path,
    created_by: str,
    config: InitialTraining = InitialTraining(),
) -> ModelVersion:
    """Simulate, label, train with DP (plus baselines), and register as production v1."""
    data = dataset.build(n_patients=config.n_patients, days=config.days, seed=config.seed)
    train, held = dataset.split_by_patient(data.groups, holdout=config.holdout, seed=config.seed)
    # A further patient-level split of the training side fits the calibration temperature.
    fit, cal = dataset.split_by_patient(data.groups[train], holdout=0.2, seed=config.seed + 1)
    X, y = data.X[train][fit], data.y[train][fit]
    delta = 1.0 / (10 * len(y))  # the project's rule: delta at most 1/(10 n)
    private = train_dp(
        X,
        y,
        feature_names=data.feature_names,
        target_epsilon=config.target_epsilon,
        delta=delta,
        max_grad_norm=config.max_grad_norm,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
    )
    baseline = train_baseline(
        X,
        y,
        feature_names=data.feature_names,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
    )
    sklearn = train_sklearn_baseline(X, y, feature_names=data.feature_names)
    X_cal, y_cal = data.X[train][cal], data.y[train][cal]
    constrained: dict[str, list[str]] = {}
    for key, result in (
        ("dp", private),
        ("non_dp_baseline", baseline),
        ("sklearn_baseline", sklearn),
    ):
        # The same constraint on all three: the baselines stay the same model without DP.
        constrained[key] = never_towards_increase(result.model, NEVER_TOWARDS_INCREASE)
        result.model.calibrate(X_cal, y_cal)
        # Serving refuses a model whose artifact does not name this feature set.
        result.model.metadata[serving.FEATURE_SET_KEY] = FEATURE_SET_VERSION
    metrics: dict[str, Any] = {
        "holdout_rows": int(held.sum()),
        "train_rows": int(fit.sum()),
        "calibration_rows": int(cal.sum()),
        "temperature": private.model.temperature,
        # Which models' weights the direction constraint changed (see never_towards_increase).
        "direction_constrained": constrained,
        "dp": evaluate(private.model, data.X[held], data.y[held]),
        "non_dp_baseline": evaluate(baseline.model, data.X[held], data.y[held]),
        "sklearn_baseline": evaluate(sklearn.model, data.X[held], data.y[held]),
    }
    models_dir.mkdir(parents=True, exist_ok=True)
    path = (models_dir / f"titration-{data.data_hash[:12]}.json").resolve()
    sha = private.model.save(path)
    privacy = {
        **private.privacy_record(),
        # One row per patient-week: the guarantee covers a row, not a whole patient.
        "privacy_unit": "row",
        "secure_mode": False,
    }
    return registry.register(
        session,
        name=registry.TITRATION,
        artifact_path=path,
        artifact_sha256=sha,
        data_hash=data.data_hash,
        feature_names=data.feature_names,
        params={
            **data.params,
            "training": config.__dict__,
            "labels": "protocol v1",
            "feature_set": FEATURE_SET_VERSION,
        },
        metrics=metrics,
        privacy=privacy,
        created_by=created_by,
        status=ModelStatus.PRODUCTION,
    )
