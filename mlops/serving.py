"""The production model as the loop uses it: loaded by hash, checked against this code's
feature set, explained, failing safe."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from loops.flows import Explanation
from mlops import registry
from mlops.explain import describe, shap_matrix, top_factors
from mlops.features import FEATURE_NAMES, FEATURE_SET_VERSION, FeatureVector
from mlops.model import ArtifactError, TitrationModel
from policies.envelope import TitrationAction

# Where a trained model records the feature set it was trained on (artifact metadata).
FEATURE_SET_KEY = "feature_set"


def feature_set_problem(model: TitrationModel) -> str | None:
    """Why serving must not use a model with this code's features, or None if it may.

    A model scores a vector by position: trained on another feature set (a feature added,
    removed, reordered or redefined), it would read every value as something else and still
    return confident probabilities. So the artifact must name this code's feature-set
    version and exactly its feature names."""
    trained_on = model.metadata.get(FEATURE_SET_KEY)
    if trained_on != FEATURE_SET_VERSION:
        return f"trained on feature set {trained_on or 'unrecorded'}, serving {FEATURE_SET_VERSION}"
    if model.feature_names != FEATURE_NAMES:
        return "feature names differ from this code's"
    return None


log = logging.getLogger("clinaiops.serving")


@dataclass
class ServedModel:
    """A registered model version ready to score; implements loops.flows.Predictor."""

    label: str
    model: TitrationModel

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of (decrease, hold, increase), one row per feature row;
        each row bit-for-bit as if scored alone (`TitrationModel.row_logits`)."""
        return self.model.predict_proba_rows(x)

    def explain(
        self, x: np.ndarray, action: TitrationAction, features: FeatureVector
    ) -> Explanation:
        """Exact SHAP values for `action`, and texts for the clinician and the patient."""
        (explanation,) = self.explain_many(np.atleast_2d(x), [action], [features])
        return explanation

    def explain_many(
        self,
        x: np.ndarray,
        actions: Sequence[TitrationAction],
        features: Sequence[FeatureVector],
    ) -> list[Explanation]:
        """`explain` for each row of x, with one batched SHAP pass."""
        phi = shap_matrix(self.model, x, actions)
        names = self.model.feature_names
        explanations = []
        for values, row, action in zip(
            phi.tolist(), np.asarray(x, dtype=np.float64).tolist(), actions, strict=True
        ):
            shap = dict(zip(names, values, strict=True))
            factors = top_factors(shap, dict(zip(names, row, strict=True)), k=3)
            explanations.append(
                Explanation(
                    shap=shap,
                    clinician_text=describe(factors, action, "clinician"),
                    patient_text=describe(factors, action, "patient"),
                )
            )
        return explanations


_cache: dict[str, ServedModel] = {}
_lock = threading.Lock()


def production(session: Session) -> ServedModel | None:
    """The production titration model, or None when none is usable.

    None makes every evaluation stop before a proposal (outcome `model_unavailable`), so a
    missing or tampered artifact, or one trained on another feature set, degrades to
    clinicians deciding, never to a bad proposal.
    """
    version = registry.production(session)
    if version is None:
        return None
    with _lock:
        served = _cache.get(version.artifact_sha256)
        if served is None:
            try:
                model = TitrationModel.load(Path(version.artifact_path), version.artifact_sha256)
            except (ArtifactError, OSError) as exc:
                log.error("model %s unusable: %s", registry.label(version), type(exc).__name__)
                return None
            problem = feature_set_problem(model)
            if problem is not None:
                log.error("model %s refused: %s", registry.label(version), problem)
                return None
            served = ServedModel(registry.label(version), model)
            _cache[version.artifact_sha256] = served
    return served
