"""Medication regimens and their titration ladders."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, String, text
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import BigId, UTCDateTime, new_id


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


class ProposalStatus(StrEnum):
    """A titration proposal's life: delivered within the envelope, or reviewed."""

    DELIVERED = "delivered"  # inside the envelope: went straight to the patient
    PENDING_REVIEW = "pending_review"  # outside it: waits for a clinician
    APPROVED = "approved"
    MODIFIED = "modified"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"  # a newer evaluation replaced it before anyone decided


PROPOSAL_TRANSITIONS: dict[ProposalStatus, frozenset[ProposalStatus]] = {
    ProposalStatus.PENDING_REVIEW: frozenset(
        {
            # Delivered: an envelope edit put a queued proposal inside the new envelope.
            ProposalStatus.DELIVERED,
            ProposalStatus.APPROVED,
            ProposalStatus.MODIFIED,
            ProposalStatus.REJECTED,
            ProposalStatus.SUPERSEDED,
        }
    ),
    ProposalStatus.DELIVERED: frozenset({ProposalStatus.SUPERSEDED}),
    ProposalStatus.APPROVED: frozenset({ProposalStatus.SUPERSEDED}),
    ProposalStatus.MODIFIED: frozenset({ProposalStatus.SUPERSEDED}),
    ProposalStatus.REJECTED: frozenset(),
    ProposalStatus.SUPERSEDED: frozenset(),
}


class Proposal(SQLModel, table=True):
    """What the model proposed for a patient, why, and where it was routed."""

    __tablename__ = "proposals"
    __table_args__ = (
        Index("ix_proposals_patient_created", "patient_id", "created_at"),
        Index("ix_proposals_status", "status"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    regimen_id: str = Field(foreign_key="medication_regimens.id", max_length=36)
    model_version: str = Field(max_length=64)
    feature_hash: str = Field(max_length=64)
    features: dict[str, Any] = Field(sa_type=JSON)
    action: str = Field(max_length=16)
    from_step: int
    to_step: int
    from_dose: float
    to_dose: float
    probabilities: dict[str, float] = Field(sa_type=JSON)
    confidence: float
    explanation: dict[str, Any] = Field(sa_type=JSON)  # SHAP values and plain-language texts
    envelope_version: int | None = None
    route: str = Field(max_length=32)
    reasons: list[str] = Field(default_factory=list, sa_type=JSON)
    status: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    patient_response: str | None = Field(default=None, max_length=16)
    responded_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AlertStatus(StrEnum):
    """An alert waits for a person, is acknowledged, and is resolved."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


ALERT_TRANSITIONS: dict[AlertStatus, frozenset[AlertStatus]] = {
    AlertStatus.OPEN: frozenset({AlertStatus.ACKNOWLEDGED, AlertStatus.RESOLVED}),
    AlertStatus.ACKNOWLEDGED: frozenset({AlertStatus.RESOLVED}),
    AlertStatus.RESOLVED: frozenset(),
}


class Alert(SQLModel, table=True):
    """A condition that needs a person; one unresolved alert per patient and type."""

    __tablename__ = "alerts"
    __table_args__ = (
        # De-duplication in the database itself: a persisting condition is the same alert.
        Index(
            "uq_alerts_unresolved_key",
            "key",
            unique=True,
            sqlite_where=text("status != 'resolved'"),
            postgresql_where=text("status != 'resolved'"),
        ),
        Index("ix_alerts_patient_status", "patient_id", "status"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    type: str = Field(max_length=32)
    severity: str = Field(max_length=16)
    key: str = Field(max_length=100)
    status: str = Field(default=AlertStatus.OPEN, max_length=16)
    detail: str = Field(max_length=500)
    raised_at: datetime = Field(sa_type=UTCDateTime)
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    acknowledged_by: int | None = Field(default=None, foreign_key="users.id")
    acknowledgement_note: str | None = Field(default=None, max_length=1000)
    escalation_level: int = 0
    last_escalated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Evaluation(SQLModel, table=True):
    """One run of the loop for a patient: what it saw, and what it concluded."""

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_patient_created", "patient_id", "created_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    trigger: str = Field(max_length=32)
    as_of: datetime = Field(sa_type=UTCDateTime)
    model_version: str | None = Field(default=None, max_length=64)
    model_ms: float | None = None  # the model's scoring time, for the canary's latency check
    feature_hash: str | None = Field(default=None, max_length=64)
    envelope_version: int | None = None
    outcome: str = Field(max_length=32)
    proposal_id: str | None = Field(default=None, max_length=36)
    route: str | None = Field(default=None, max_length=32)
    reasons: list[str] = Field(default_factory=list, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PatientNotice(SQLModel, table=True):
    """Something the patient is told: measure again, a delivered change, an alert raised."""

    __tablename__ = "patient_notices"
    __table_args__ = (Index("ix_patient_notices_patient_created", "patient_id", "created_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    kind: str = Field(max_length=32)
    text: str = Field(max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    read_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SymptomReport(SQLModel, table=True):
    """Symptoms a patient reported (feeds the low-BP rule and, later, the model)."""

    __tablename__ = "symptom_reports"
    __table_args__ = (Index("ix_symptom_reports_patient_time", "patient_id", "reported_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    reported_at: datetime = Field(sa_type=UTCDateTime)
    symptoms: list[str] = Field(default_factory=list, sa_type=JSON)
    note: str = Field(default="", max_length=2000)
    proposal_id: str | None = Field(default=None, max_length=36)


class SystemFlag(SQLModel, table=True):
    """Service-wide switches, e.g. the admin's kill switch for automatic delivery."""

    __tablename__ = "system_flags"

    key: str = Field(primary_key=True, max_length=64)
    enabled: bool = False
    reason: str = Field(default="", max_length=500)
    updated_by: int | None = Field(default=None, foreign_key="users.id")
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
