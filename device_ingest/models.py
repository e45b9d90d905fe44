"""Registered patient devices and their (hashed) API keys."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import UTCDateTime, new_id


class DeviceClass(StrEnum):
    """Only validated cuffs may drive titration (2025 ACC/AHA: no cuffless BP for management)."""

    VALIDATED_CUFF = "validated_cuff"
    CUFFLESS_WEARABLE = "cuffless_wearable"
    OTHER = "other"


class Device(SQLModel, table=True):
    """A device that sends one patient's readings, authenticated by its own key."""

    __tablename__ = "devices"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    patient_id: str = Field(foreign_key="patients.id", index=True, max_length=36)
    device_class: DeviceClass = Field(sa_type=String(32))
    manufacturer: str = Field(default="", max_length=100)
    model: str = Field(default="", max_length=100)
    firmware_version: str = Field(default="", max_length=50)
    # The key's public half: looked up by prefix, verified by hash of the secret half.
    key_prefix: str = Field(max_length=24, unique=True, index=True)
    key_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: int | None = Field(default=None, foreign_key="users.id")
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
