"""Safety envelopes: clinician-authored, versioned, never updated in place."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import UTCDateTime


class SafetyEnvelope(SQLModel, table=True):
    """One version of a patient's envelope; the newest effective version is in force."""

    __tablename__ = "safety_envelopes"
    __table_args__ = (UniqueConstraint("patient_id", "version", name="uq_envelope_version"),)

    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(foreign_key="patients.id", index=True, max_length=36)
    version: int = Field(ge=1)
    rules: dict[str, Any] = Field(sa_type=JSON)
    author_id: int = Field(foreign_key="users.id")
    reason: str = Field(max_length=500)
    effective_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
