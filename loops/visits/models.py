"""The next review of each patient, as the cadence rule or a clinician set it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, Index, text
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import UTCDateTime, new_id


class VisitKind(StrEnum):
    """A visit reviews treatment; a call is for adherence, not a dose change."""

    VISIT = "visit"
    CALL = "call"


class VisitStatus(StrEnum):
    """A review is due until it is held or cancelled."""

    DUE = "due"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


VISIT_TRANSITIONS: dict[VisitStatus, frozenset[VisitStatus]] = {
    VisitStatus.DUE: frozenset({VisitStatus.COMPLETED, VisitStatus.CANCELLED}),
    VisitStatus.COMPLETED: frozenset(),
    VisitStatus.CANCELLED: frozenset(),
}


class Visit(SQLModel, table=True):
    """A patient's review: at most one is due at a time; completed ones are the history."""

    __tablename__ = "visits"
    __table_args__ = (
        Index(
            "uq_visits_due_patient",
            "patient_id",
            unique=True,
            sqlite_where=text("status = 'due'"),
            postgresql_where=text("status = 'due'"),
        ),
        Index("ix_visits_status_due_by", "status", "due_by"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    status: str = Field(default=VisitStatus.DUE, max_length=16)  # a VisitStatus
    kind: str = Field(max_length=16)  # a VisitKind
    due_by: datetime = Field(sa_type=UTCDateTime)  # in force: the override if any, else the rule
    reasons: list[str] = Field(default_factory=list, sa_type=JSON)  # the rule's reason codes
    rule_kind: str = Field(max_length=16)
    rule_due_by: datetime = Field(sa_type=UTCDateTime)
    computed_at: datetime = Field(sa_type=UTCDateTime)
    override_due_by: datetime | None = Field(default=None, sa_type=UTCDateTime)
    override_kind: str | None = Field(default=None, max_length=16)
    override_reason: str = Field(default="", max_length=1000)
    overridden_by: int | None = Field(default=None, foreign_key="users.id")
    overridden_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    completed_by: int | None = Field(default=None, foreign_key="users.id")
    outcome_note: str = Field(default="", max_length=2000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
