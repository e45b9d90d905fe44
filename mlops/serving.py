"""The production model as the loop uses it: loaded by hash, checked against this code's
feature set, explained, failing safe."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session
from sqlmodel import col

from loops.flows import Explanation, Predictor, Shadow
from mlops import canary, lifecycle, registry
from mlops.explain import describe, shap_matrix, top_factors
from mlops.features import FEATURE_NAMES, FEATURE_SET_VERSION, FeatureVector
from mlops.model import ArtifactError, TitrationModel
from mlops.models import ModelAlias, ModelStatus, ModelVersion, Rollout, RolloutStatus
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


# Loaded models by (label, artifact hash): two versions may share one artifact (a retraining
# that gave the same model) and must still be told apart in what they serve.
_cache: dict[tuple[str, str], ServedModel] = {}
_lock = threading.Lock()
_IN_ROLLOUT = frozenset({ModelStatus.SHADOW, ModelStatus.CANARY})


@dataclass
class Serving(ServedModel):
    """The champion while a rollout runs, and the rollout's challenger (None: unusable).

    In shadow the challenger scores every evaluation beside the champion, logged and never
    delivered (`shadow`); in canary it serves the patients of its slice (`for_patient`).
    Implements `loops.flows.ServingPlan`, so the evaluation path groups patients by model."""

    rollout_id: int = 0
    stage: str = RolloutStatus.SHADOW
    percent: int = 0
    salt: str = ""
    challenger_version: int = 0
    challenger_label: str = ""
    challenger: ServedModel | None = None

    def for_patient(self, patient_id: str) -> ServedModel | None:
        """The model that serves this patient: the challenger in the canary slice."""
        if self.stage == RolloutStatus.CANARY and canary.in_slice(
            self.salt, patient_id, self.percent
        ):
            return self.challenger
        return self

    def serving(self, patient_id: str) -> tuple[str, Predictor | None]:
        """The label of the version serving this patient, and its model (None: unusable)."""
        if self.stage == RolloutStatus.CANARY and canary.in_slice(
            self.salt, patient_id, self.percent
        ):
            return self.challenger_label, self.challenger
        return self.label, self

    @property
    def shadow(self) -> Shadow | None:
        """The challenger scoring beside the champion, in shadow only."""
        if self.stage != RolloutStatus.SHADOW:
            return None
        return Shadow(
            self.rollout_id, self.challenger_version, self.challenger_label, self.challenger
        )


# The champion and challenger aliases with their versions, in one query: with no rollout
# running, serving costs one lookup per batch, as it did before rollouts existed.
_ALIASED = (
    select(col(ModelAlias.alias), ModelVersion)
    .join(
        ModelVersion,
        (col(ModelVersion.name) == col(ModelAlias.model_name))
        & (col(ModelVersion.version) == col(ModelAlias.version)),
    )
    .where(col(ModelAlias.model_name) == registry.TITRATION)
)
_ACTIVE_ROLLOUT = (
    select(Rollout)
    .where(
        col(Rollout.model_name) == bindparam("name"),
        col(Rollout.challenger_version) == bindparam("version"),
        col(Rollout.status).in_((RolloutStatus.SHADOW, RolloutStatus.CANARY)),
    )
    .order_by(col(Rollout.id).desc())
    .limit(1)
)


def load(version: ModelVersion) -> ServedModel | None:
    """A version ready to score (cached by artifact hash), or None when it is unusable: its
    artifact missing or failing its hash check, or trained on another feature set."""
    key = (registry.label(version), version.artifact_sha256)
    with _lock:
        served = _cache.get(key)
        if served is None:
            model, problem = _read(version)
            if model is None:
                log.error("model %s %s", key[0], problem)
                return None
            served = _cache[key] = ServedModel(key[0], model)
    return served


def artifact_problem(version: ModelVersion) -> str | None:
    """Why this version's artifact, as it is on disk now, must not serve; None if it may.

    Reads the file every time (no cache): the rollout's analysis uses it to catch an
    artifact changed after a serving process loaded it."""
    model, problem = _read(version)
    return None if model is not None else problem


def _read(version: ModelVersion) -> tuple[TitrationModel | None, str]:
    try:
        model = TitrationModel.load(Path(version.artifact_path), version.artifact_sha256)
    except (ArtifactError, OSError) as exc:
        return None, f"unusable: {type(exc).__name__}"
    problem = feature_set_problem(model)
    if problem is not None:
        return None, f"refused: {problem}"
    return model, ""


def production(session: Session) -> ServedModel | None:
    """The production titration model, or None when none is usable; while a rollout runs,
    the production model as a `Serving` that also knows the challenger.

    None makes every evaluation stop before a proposal (outcome `model_unavailable`), so a
    missing or tampered artifact, or one trained on another feature set, degrades to
    clinicians deciding, never to a bad proposal. A challenger that is unusable sends the
    patients it should serve to clinicians the same way (and the rollout's next analysis
    rolls it back).
    """
    aliased = dict(session.execute(_ALIASED).tuples().all())
    if lifecycle.CHAMPION in aliased:
        # The champion alias serves while its version is in production (lifecycle.champion).
        champion: ModelVersion | None = aliased[lifecycle.CHAMPION]
        if champion is not None and champion.status != ModelStatus.PRODUCTION:
            champion = None
    else:  # a model registered before the aliases existed
        champion = registry.production(session)
    if champion is None:
        return None
    served = load(champion)
    challenger = aliased.get(lifecycle.CHALLENGER)
    if served is None or challenger is None or challenger.status not in _IN_ROLLOUT:
        return served
    rollout = session.scalars(
        _ACTIVE_ROLLOUT, {"name": challenger.name, "version": challenger.version}
    ).first()
    if rollout is None:
        return served
    return Serving(
        served.label,
        served.model,
        rollout_id=rollout.id or 0,
        stage=rollout.status,
        percent=rollout.percent,
        salt=rollout.salt,
        challenger_version=challenger.version,
        challenger_label=registry.label(challenger),
        challenger=load(challenger),
    )


def for_patient(session: Session, patient_id: str) -> ServedModel | None:
    """The model that serves this patient now: while a canary runs, the challenger for the
    patients of its slice and the champion for the others; None when it is unusable."""
    served = production(session)
    if isinstance(served, Serving):
        return served.for_patient(patient_id)
    return served
