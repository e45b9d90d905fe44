"""Small trained titration models for lifecycle and gate tests: a good champion and candidate
(plain SGD on a 60-patient simulated cohort), and deliberately worse candidates (shuffled
weights, trained on flipped labels). Built once per test run."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from mlops import dataset, registry, serving
from mlops.dp import train_baseline
from mlops.features import FEATURE_SET_VERSION
from mlops.model import TitrationModel, centred, linear_from
from mlops.models import ModelStatus, ModelVersion, SignoffRole
from mlops.training import NEVER_TOWARDS_INCREASE, never_towards_increase
from validation.models import GateResult

N_PATIENTS, DAYS, SEED = 60, 56, 7
HOLDOUT, SPLIT_SEED = 0.25, 7
_artifacts = itertools.count()


@dataclass(frozen=True)
class Trained:
    """The cohort, its holdout mask, and the models."""

    data: dataset.TrainingSet
    held: np.ndarray
    models: dict[str, TitrationModel]


def _finish(model: TitrationModel, X_cal: np.ndarray, y_cal: np.ndarray) -> TitrationModel:
    never_towards_increase(model, NEVER_TOWARDS_INCREASE)
    model.calibrate(X_cal, y_cal)
    model.metadata[serving.FEATURE_SET_KEY] = FEATURE_SET_VERSION
    return model


@lru_cache(maxsize=1)
def trained() -> Trained:
    """Champion (SGD seed 7), good candidate (seed 8), shuffled and flipped candidates."""
    data = dataset.build(n_patients=N_PATIENTS, days=DAYS, seed=SEED)
    train, held = dataset.split_by_patient(data.groups, holdout=HOLDOUT, seed=SPLIT_SEED)
    fit, cal = dataset.split_by_patient(data.groups[train], holdout=0.2, seed=SPLIT_SEED + 1)
    X, y = data.X[train][fit], data.y[train][fit]
    X_cal, y_cal = data.X[train][cal], data.y[train][cal]

    def sgd(labels: np.ndarray, seed: int) -> TitrationModel:
        result = train_baseline(
            X, labels, feature_names=data.feature_names, epochs=30, batch_size=32, lr=0.1, seed=seed
        )
        return _finish(result.model, X_cal, y_cal)

    champion, good = sgd(y, 7), sgd(y, 8)
    flipped = sgd(2 - y, 7)  # decrease <-> increase: learns to raise the dose on low BP
    perm = np.random.default_rng(0).permutation(champion.n_features)
    shuffled = TitrationModel(
        champion.feature_names,
        champion.standardizer,
        linear=linear_from(*centred(champion.weight[:, perm], champion.bias)),
        temperature=champion.temperature,
        metadata=dict(champion.metadata),
    )
    return Trained(
        data,
        held,
        {"champion": champion, "good": good, "flipped": flipped, "shuffled": shuffled},
    )


def params() -> dict[str, Any]:
    """The version parameters train_initial would record for this cohort."""
    data = trained().data
    return {
        **data.params,
        "training": {"holdout": HOLDOUT, "seed": SPLIT_SEED},
        "feature_set": FEATURE_SET_VERSION,
    }


def register(
    session: Session,
    model: TitrationModel,
    directory: Path,
    *,
    status: ModelStatus = ModelStatus.CANDIDATE,
    parent: int | None = None,
    created_by: str = "test",
) -> ModelVersion:
    """Save a model's artifact and register it (the caller commits)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"model-{next(_artifacts)}.json"
    sha = model.save(path)
    data = trained().data
    return registry.register(
        session,
        name=registry.TITRATION,
        artifact_path=path,
        artifact_sha256=sha,
        data_hash=data.data_hash,
        feature_names=model.feature_names,
        params=params(),
        metrics={},
        privacy={"epsilon": None},
        created_by=created_by,
        status=status,
        parent_version=parent,
    )


def passing_run(session: Session, version: ModelVersion, *, run_id: str = "run-1") -> None:
    """Store a validation run in which every required gate passed (no evidence files)."""
    from app.core import clock
    from mlops import lifecycle

    for gate in lifecycle.REQUIRED_GATES:
        session.add(
            GateResult(
                model_name=version.name,
                version=version.version,
                gate=gate,
                passed=True,
                run_id=run_id,
                created_by="test",
                created_at=clock.utcnow(),
            )
        )
    session.flush()


ROLES = (SignoffRole.ML_ENGINEER, SignoffRole.CLINICAL_LEAD)
