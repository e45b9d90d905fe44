"""Registered patient devices and their (hashed) API keys."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Float, Index, String, Text
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import BigId, UTCDateTime, new_id


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
    # Added to every reading from this device (mmHg); recorded on each reading it changed.
    calibration_systolic: float = Field(default=0.0, ge=-30, le=30)
    calibration_diastolic: float = Field(default=0.0, ge=-30, le=30)


class ReadingStatus(StrEnum):
    """Accepted readings feed the model; quarantined ones wait for a person."""

    ACCEPTED = "accepted"
    QUARANTINED = "quarantined"


class IngestBatch(SQLModel, table=True):
    """One ingest request: what arrived, from which device, and what became of it."""

    __tablename__ = "ingest_batches"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    device_id: str = Field(foreign_key="devices.id", index=True, max_length=36)
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    received_at: datetime = Field(sa_type=UTCDateTime)
    content_type: str = Field(max_length=100)
    source_format: str = Field(max_length=16)
    bundle_type: str = Field(default="", max_length=16)
    body_sha256: str = Field(max_length=64)
    body_bytes: int
    entries: int
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    rejected: int = 0
    idempotency_key: str | None = Field(default=None, max_length=200)
    request_id: str | None = Field(default=None, max_length=64)


class Reading(SQLModel, table=True):
    """One stored vital-sign reading with its provenance; never updated by ingestion."""

    __tablename__ = "readings"
    __table_args__ = (
        Index("ix_readings_patient_time", "patient_id", "effective_start"),
        Index("ix_readings_patient_status", "patient_id", "status"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    device_id: str = Field(foreign_key="devices.id", max_length=36)
    batch_id: int = Field(sa_column=Column(BigId, nullable=False, index=True))
    device_class: str = Field(max_length=32)
    device_model: str = Field(default="", max_length=100)
    firmware_version: str = Field(default="", max_length=50)
    kind: str = Field(max_length=32)
    code: str = Field(max_length=64)
    effective_start: datetime = Field(sa_type=UTCDateTime)
    effective_end: datetime | None = Field(default=None, sa_type=UTCDateTime)
    effective_precision: str = Field(max_length=16)
    effective_raw: str = Field(max_length=120)
    systolic: float | None = Field(default=None, sa_column=Column(Float))
    diastolic: float | None = Field(default=None, sa_column=Column(Float))
    value: float | None = Field(default=None, sa_column=Column(Float))
    unit: str = Field(max_length=16)
    statistic: str | None = Field(default=None, max_length=32)
    calibration_systolic: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    calibration_diastolic: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    status: str = Field(max_length=16)
    quarantine_reasons: list[str] = Field(default_factory=list, sa_type=JSON)
    source_format: str = Field(max_length=16)
    payload_sha256: str = Field(max_length=64)
    received_at: datetime = Field(sa_type=UTCDateTime)
    # sha256 of (device, code, effective time as sent, values as sent): a resend is a duplicate.
    natural_key: str = Field(max_length=64, unique=True)
    context: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class MedicationEvent(SQLModel, table=True):
    """A dose taken or missed, as the patient's device or app reported it."""

    __tablename__ = "medication_events"
    __table_args__ = (Index("ix_medication_events_patient_time", "patient_id", "effective_start"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    device_id: str = Field(foreign_key="devices.id", max_length=36)
    batch_id: int = Field(sa_column=Column(BigId, nullable=False))
    medication: str = Field(max_length=200)
    taken: bool
    reason: str | None = Field(default=None, max_length=200)
    effective_start: datetime = Field(sa_type=UTCDateTime)
    effective_precision: str = Field(max_length=16)
    effective_raw: str = Field(max_length=120)
    payload_sha256: str = Field(max_length=64)
    received_at: datetime = Field(sa_type=UTCDateTime)
    natural_key: str = Field(max_length=64, unique=True)


class IngestRejection(SQLModel, table=True):
    """Rejected input, kept with its reason: nothing a device sent is silently dropped."""

    __tablename__ = "ingest_rejections"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    device_id: str = Field(foreign_key="devices.id", index=True, max_length=36)
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    received_at: datetime = Field(sa_type=UTCDateTime)
    request_id: str | None = Field(default=None, max_length=64)
    entry_index: int | None = None  # None: the whole request was refused
    code: str = Field(max_length=64)
    path: str = Field(default="", max_length=300)
    message: str = Field(sa_column=Column(Text, nullable=False))
    payload_sha256: str = Field(max_length=64)
    payload: str = Field(sa_column=Column(Text, nullable=False))


class IdempotencyRecord(SQLModel, table=True):
    """The first answer to a request made with an Idempotency-Key, replayed on retries."""

    __tablename__ = "idempotency_keys"

    principal: str = Field(primary_key=True, max_length=100)
    key: str = Field(primary_key=True, max_length=200)
    request_sha256: str = Field(max_length=64)
    status_code: int
    content_type: str = Field(max_length=100)
    response_body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_type=UTCDateTime)


class OutboxStatus(StrEnum):
    """Where a hand-off to the patient-AI loop stands."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class EvaluationRequest(SQLModel, table=True):
    """A durable hand-off: new readings for a patient await evaluation (outbox pattern)."""

    __tablename__ = "evaluation_outbox"
    __table_args__ = (Index("ix_evaluation_outbox_pending", "status", "available_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    patient_id: str = Field(foreign_key="patients.id", index=True, max_length=36)
    batch_id: int | None = Field(default=None, sa_column=Column(BigId, nullable=True))
    reason: str = Field(max_length=32)
    status: str = Field(default=OutboxStatus.PENDING, max_length=16)
    created_at: datetime = Field(sa_type=UTCDateTime)
    available_at: datetime = Field(sa_type=UTCDateTime)
    attempts: int = 0
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=200)
