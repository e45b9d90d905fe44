"""The model lifecycle's tables: versions with lineage, training snapshots, the privacy
ledger, transitions and aliases, sign-offs, rollouts and shadow predictions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import BigId, UTCDateTime


class ModelStatus(StrEnum):
    """A model version's lifecycle (issue 7 adds the gates between these)."""

    CANDIDATE = "candidate"
    VALIDATED = "validated"
    SHADOW = "shadow"
    CANARY = "canary"
    PRODUCTION = "production"
    RETIRED = "retired"


class ModelVersion(SQLModel, table=True):
    """One trained model: what it was trained on, how, how well, and at what privacy cost."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    version: int = Field(ge=1)
    status: str = Field(max_length=16)
    artifact_path: str = Field(max_length=500)
    artifact_sha256: str = Field(max_length=64)
    data_hash: str = Field(max_length=64)
    code_version: str = Field(max_length=64)
    feature_names: list[str] = Field(sa_type=JSON)
    params: dict[str, Any] = Field(sa_type=JSON)
    metrics: dict[str, Any] = Field(sa_type=JSON)
    privacy: dict[str, Any] = Field(sa_type=JSON)  # epsilon, delta, accountant, noise, ...
    parent_version: int | None = None
    created_by: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# What each lifecycle state may become. A failed gate leaves a candidate where it is; a
# rollback retires the canary or production version (and restores the previous production
# version, which goes production -> production through its alias, not a transition here).
MODEL_TRANSITIONS: dict[ModelStatus, frozenset[ModelStatus]] = {
    ModelStatus.CANDIDATE: frozenset({ModelStatus.VALIDATED, ModelStatus.RETIRED}),
    ModelStatus.VALIDATED: frozenset({ModelStatus.SHADOW, ModelStatus.RETIRED}),
    ModelStatus.SHADOW: frozenset({ModelStatus.CANARY, ModelStatus.RETIRED}),
    ModelStatus.CANARY: frozenset({ModelStatus.PRODUCTION, ModelStatus.RETIRED}),
    ModelStatus.PRODUCTION: frozenset({ModelStatus.RETIRED}),
    ModelStatus.RETIRED: frozenset({ModelStatus.PRODUCTION}),  # a rollback restores one
}


class SnapshotStatus(StrEnum):
    """A training snapshot is usable only once its data checks passed."""

    VALID = "valid"
    INVALID = "invalid"


class TrainingSnapshot(SQLModel, table=True):
    """A frozen training set (features and labels), named by the hash of its content.

    The rows live in a file under the data directory (`path`, relative to it) checked by
    `file_sha256` when read; `content_hash` is the hash of the canonical rows themselves, so
    the same data gives the same id whoever builds it. The split is by patient."""

    __tablename__ = "training_snapshots"

    id: int | None = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True)
    cohort: str = Field(max_length=64)  # the privacy ledger's unit, e.g. "clinic"
    source: str = Field(max_length=32)  # "clinician_decisions", "simulated", ...
    feature_set: str = Field(max_length=64)
    rows: int
    patients: int
    train_patients: int
    holdout_patients: int
    label_counts: dict[str, int] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    status: str = Field(max_length=16)  # a SnapshotStatus
    checks: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    path: str = Field(max_length=300)
    file_sha256: str = Field(max_length=64)
    window_start: datetime | None = Field(default=None, sa_type=UTCDateTime)
    window_end: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_by: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PrivacySpend(SQLModel, table=True):
    """One training run's privacy cost against its cohort's budget; never updated."""

    __tablename__ = "privacy_ledger"
    __table_args__ = (Index("ix_privacy_ledger_cohort", "cohort"),)

    id: int | None = Field(default=None, primary_key=True)
    cohort: str = Field(max_length=64)
    snapshot_id: int | None = Field(default=None, foreign_key="training_snapshots.id")
    model_name: str = Field(max_length=64)
    model_version: int | None = None  # None until the run registers its version
    epsilon: float
    delta: float
    accountant: str = Field(max_length=16)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ModelTransition(SQLModel, table=True):
    """One lifecycle change of a model version, with who and why; the serving history."""

    __tablename__ = "model_transitions"
    __table_args__ = (Index("ix_model_transitions_model", "model_name", "version", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=64)
    version: int
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str = Field(max_length=16)
    actor: str = Field(max_length=100)
    reason: str = Field(default="", max_length=1000)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ModelAlias(SQLModel, table=True):
    """A movable name for a version: `champion` (serving) or `challenger` (in rollout)."""

    __tablename__ = "model_aliases"

    model_name: str = Field(primary_key=True, max_length=64)
    alias: str = Field(primary_key=True, max_length=32)
    version: int
    updated_by: str = Field(max_length=100)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SignoffRole(StrEnum):
    """Promotion to production needs one of each, by two different people."""

    ML_ENGINEER = "ml_engineer"
    CLINICAL_LEAD = "clinical_lead"


class ModelSignoff(SQLModel, table=True):
    """A signed approval to promote a version to production; never updated."""

    __tablename__ = "model_signoffs"
    __table_args__ = (
        UniqueConstraint("model_name", "version", "signoff_role", name="uq_model_signoffs_role"),
        UniqueConstraint("model_name", "version", "signer_id", name="uq_model_signoffs_signer"),
    )

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=64)
    version: int
    signoff_role: str = Field(max_length=16)  # a SignoffRole
    signer_id: int = Field(foreign_key="users.id")
    signer_name: str = Field(max_length=200)
    meaning: str = Field(max_length=300)
    note: str = Field(default="", max_length=1000)
    record_sha256: str = Field(max_length=64)
    signature: str = Field(max_length=200)  # Ed25519 over the record, base64
    signed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RolloutStatus(StrEnum):
    """A rollout runs until it reaches 100% (completed) or is rolled back or aborted."""

    SHADOW = "shadow"
    CANARY = "canary"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


ROLLOUT_TRANSITIONS: dict[RolloutStatus, frozenset[RolloutStatus]] = {
    RolloutStatus.SHADOW: frozenset(
        {RolloutStatus.CANARY, RolloutStatus.ABORTED, RolloutStatus.ROLLED_BACK}
    ),
    RolloutStatus.CANARY: frozenset(
        {RolloutStatus.CANARY, RolloutStatus.COMPLETED, RolloutStatus.ROLLED_BACK}
    ),
    RolloutStatus.COMPLETED: frozenset(),
    RolloutStatus.ROLLED_BACK: frozenset(),
    RolloutStatus.ABORTED: frozenset(),
}


class Rollout(SQLModel, table=True):
    """A challenger's way to production: shadow, then canary steps on a patient-hash slice."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_model_status", "model_name", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=64)
    challenger_version: int
    champion_version: int | None = None
    status: str = Field(max_length=16)  # a RolloutStatus
    percent: int = 0  # share of patients the challenger serves (canary); 0 in shadow
    step_started_at: datetime = Field(sa_type=UTCDateTime)
    dwell_seconds: int
    salt: str = Field(max_length=32)  # the patient-hash slice's salt, fixed per rollout
    started_by: str = Field(max_length=100)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    end_reason: str = Field(default="", max_length=1000)


class RolloutStep(SQLModel, table=True):
    """The live analysis at the end of one rollout step, and what it decided."""

    __tablename__ = "rollout_steps"
    __table_args__ = (Index("ix_rollout_steps_rollout", "rollout_id"),)

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollouts.id")
    stage: str = Field(max_length=16)  # shadow or canary
    percent: int
    started_at: datetime = Field(sa_type=UTCDateTime)
    analysed_at: datetime = Field(sa_type=UTCDateTime)
    analysis: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    decision: str = Field(max_length=16)  # advance, hold, rollback, complete
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class ShadowPrediction(SQLModel, table=True):
    """What the challenger would have proposed for one evaluation: logged, never delivered."""

    __tablename__ = "shadow_predictions"
    __table_args__ = (Index("ix_shadow_predictions_rollout", "rollout_id", "created_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    rollout_id: int = Field(foreign_key="rollouts.id")
    evaluation_id: int | None = None
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    challenger_version: int
    champion_action: str | None = Field(default=None, max_length=16)
    challenger_action: str | None = Field(default=None, max_length=16)
    challenger_route: str | None = Field(default=None, max_length=32)
    probabilities: list[float] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    latency_ms: float | None = None
    error: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
