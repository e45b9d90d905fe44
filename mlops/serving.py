"""The production model as the loop uses it: loaded by hash, explained, failing safe."""

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
from mlops.features import FeatureVector
from mlops.model import ArtifactError, TitrationModel
from policies.envelope import TitrationAction

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
    missing or tampered artifact degrades to clinicians deciding, never to a bad proposal.
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
            served = ServedModel(registry.label(version), model)
            _cache[version.artifact_sha256] = served
    return served
