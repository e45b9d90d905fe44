"""The model registry's tables: versions with lineage, immutable artifacts, privacy."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import UTCDateTime


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
