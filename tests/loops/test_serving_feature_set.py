"""Serving refuses a model trained on another feature set: no proposal, clinicians decide."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from app.core import clock
from loops.flows import Outcome, evaluate
from loops.models import MedicationRegimen, Proposal
from mlops import registry, serving
from mlops.features import FEATURE_NAMES, FEATURE_SET_VERSION
from mlops.model import Standardizer, TitrationModel, centred, linear_from
from mlops.models import ModelStatus
from mlops.training import InitialTraining, train_initial
from tests.conftest import World

OLD_NAMES = tuple(
    n for n in FEATURE_NAMES if n not in {"hypotension_symptoms_3d", "symptom_reports_14d"}
)


def _model(names: tuple[str, ...], metadata: dict[str, str | int | float | bool]) -> TitrationModel:
    """A model that proposes an increase for high home SBP (made-up weights)."""
    weight = np.zeros((3, len(names)))
    weight[:, names.index("cuff_sbp_mean_7d")] = (-1.0, 0.0, 1.0)
    weight, bias = centred(weight, np.zeros(3))
    mean = np.zeros(len(names))
    mean[names.index("cuff_sbp_mean_7d")] = 135.0
    return TitrationModel(
        names,
        Standardizer(tuple(mean.tolist()), (10.0,) * len(names)),
        linear=linear_from(weight, bias),
        metadata=metadata,
    )


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each test loads its own artifacts: nothing from another test's process cache.
    monkeypatch.setattr(serving, "_cache", {})


@pytest.fixture
def put_in_production(db: Session, tmp_path: Path) -> Callable[[TitrationModel], None]:
    """Save a model's artifact and register it as the production model."""

    def put(model: TitrationModel) -> None:
        path = tmp_path / f"model-{len(list(tmp_path.glob('model-*')))}.json"
        sha = model.save(path)
        registry.register(
            db,
            name=registry.TITRATION,
            artifact_path=path,
            artifact_sha256=sha,
            data_hash="0" * 64,
            feature_names=model.feature_names,
            params={},
            metrics={},
            privacy={},
            created_by="test",
            status=ModelStatus.PRODUCTION,
        )
        db.commit()

    return put


@pytest.mark.parametrize(
    ("names", "metadata", "problem"),
    [
        (FEATURE_NAMES, {"feature_set": FEATURE_SET_VERSION}, None),
        (FEATURE_NAMES, {}, "trained on feature set unrecorded, serving clinaiops-features/2"),
        (
            OLD_NAMES,
            {"feature_set": "clinaiops-features/1"},
            "trained on feature set clinaiops-features/1, serving clinaiops-features/2",
        ),
        (
            tuple(reversed(FEATURE_NAMES)),
            {"feature_set": FEATURE_SET_VERSION},
            "feature names differ from this code's",
        ),
        (OLD_NAMES, {"feature_set": FEATURE_SET_VERSION}, "feature names differ from this code's"),
    ],
)
def test_feature_set_problem_names_the_mismatch(
    names: tuple[str, ...], metadata: dict[str, str | int | float | bool], problem: str | None
) -> None:
    assert serving.feature_set_problem(_model(names, metadata)) == problem


def test_serving_when_model_matches_the_feature_set_serves_it(
    db: Session, put_in_production: Callable[[TitrationModel], None]
) -> None:
    put_in_production(_model(FEATURE_NAMES, {"feature_set": FEATURE_SET_VERSION}))
    served = serving.production(db)
    assert served is not None
    assert served.label == "titration:v1"


def test_serving_when_model_trained_on_another_feature_set_refuses_it_and_no_proposal(
    db: Session,
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
    put_in_production: Callable[[TitrationModel], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pid, _ = patient
    readings(160, 95, days=7, per_day=2)  # well above target: a usable model would propose
    put_in_production(_model(OLD_NAMES, {"feature_set": "clinaiops-features/1"}))

    served = serving.production(db)

    assert served is None
    assert "titration:v1 refused: trained on feature set clinaiops-features/1" in caplog.text
    result = evaluate(db, patient_id=pid, trigger="daily", now=clock.utcnow(), predictor=served)
    db.commit()
    assert result.evaluation.outcome == Outcome.MODEL_UNAVAILABLE
    assert result.proposal is None
    assert db.query(Proposal).count() == 0
    # Serving the current feature set again (a newer production version) resumes proposals.
    put_in_production(_model(FEATURE_NAMES, {"feature_set": FEATURE_SET_VERSION}))
    served = serving.production(db)
    assert served is not None
    result = evaluate(db, patient_id=pid, trigger="daily", now=clock.utcnow(), predictor=served)
    assert result.evaluation.outcome == Outcome.PROPOSAL
    assert result.proposal is not None
    assert result.proposal.model_version == "titration:v2"


def test_train_initial_records_the_feature_set_in_artifact_and_registry(
    db: Session, tmp_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        version = train_initial(
            db,
            models_dir=tmp_path / "models",
            created_by="test",
            config=InitialTraining(n_patients=40, days=42, epochs=3),
        )
    db.commit()
    artifact = json.loads(Path(version.artifact_path).read_text())
    assert artifact["metadata"]["feature_set"] == FEATURE_SET_VERSION
    assert artifact["feature_names"] == list(FEATURE_NAMES)
    assert version.params["feature_set"] == FEATURE_SET_VERSION
    assert serving.production(db) is not None
