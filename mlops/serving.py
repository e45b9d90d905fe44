"""The production model as the loop uses it: loaded by hash, explained, failing safe."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from loops.flows import Explanation
from mlops import registry
from mlops.explain import describe, feature_values, shap_values, top_factors
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
        """Calibrated probabilities of (decrease, hold, increase)."""
        return self.model.predict_proba(x)

    def explain(
        self, x: np.ndarray, action: TitrationAction, features: FeatureVector
    ) -> Explanation:
        """Exact SHAP values for `action`, and texts for the clinician and the patient."""
        phi = shap_values(self.model, x, action)
        factors = top_factors(phi, feature_values(self.model, x), k=3)
        return Explanation(
            shap=phi,
            clinician_text=describe(factors, action, "clinician"),
            patient_text=describe(factors, action, "patient"),
        )


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
