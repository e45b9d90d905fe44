"""Medication regimens and their titration ladders."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, String
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import UTCDateTime, new_id


class RegimenStatus(StrEnum):
    """Whether a regimen is in force."""

    ACTIVE = "active"
    STOPPED = "stopped"


class TitrationLadder(SQLModel, table=True):
    """A drug's ordered dose steps, lowest first; titration moves one step at a time."""

    __tablename__ = "titration_ladders"

    id: int | None = Field(default=None, primary_key=True)
    drug: str = Field(max_length=100)
    rxnorm_code: str = Field(default="", max_length=20)
    unit: str = Field(default="mg", max_length=16)
    frequency: str = Field(default="once daily", max_length=50)
    steps: list[float] = Field(sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class MedicationRegimen(SQLModel, table=True):
    """A patient's current position on a ladder."""

    __tablename__ = "medication_regimens"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    patient_id: str = Field(foreign_key="patients.id", index=True, max_length=36)
    ladder_id: int = Field(foreign_key="titration_ladders.id")
    current_step: int = Field(default=0, ge=0)
    status: RegimenStatus = Field(default=RegimenStatus.ACTIVE, sa_type=String(16))
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_changed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
