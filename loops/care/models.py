"""Shared goals (proposed by one side, agreed by both), self-reported goal logs, and the
versioned care plan."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import BigId, UTCDateTime, new_id


class GoalKind(StrEnum):
    """What a goal is about; each kind has its own target fields and progress measure."""

    BLOOD_PRESSURE = "blood_pressure"  # target_systolic / target_diastolic (home, mmHg)
    DAILY_STEPS = "daily_steps"  # target_value: steps per day
    ADHERENCE = "adherence"  # target_value: share of doses taken, 0-1
    SODIUM = "sodium"  # target_value: mg per day at most (self-reported)
    SLEEP = "sleep"  # target_value: hours per night at least (self-reported)


class GoalStatus(StrEnum):
    """A goal is proposed by one side and in force once both have agreed."""

    PROPOSED = "proposed"
    AGREED = "agreed"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"
    SUPERSEDED = "superseded"


GOAL_TRANSITIONS: dict[GoalStatus, frozenset[GoalStatus]] = {
    GoalStatus.PROPOSED: frozenset({GoalStatus.AGREED, GoalStatus.DECLINED, GoalStatus.WITHDRAWN}),
    GoalStatus.AGREED: frozenset({GoalStatus.SUPERSEDED, GoalStatus.WITHDRAWN}),
    GoalStatus.DECLINED: frozenset(),
    GoalStatus.WITHDRAWN: frozenset(),
    GoalStatus.SUPERSEDED: frozenset(),
}


class Goal(SQLModel, table=True):
    """One shared goal of a patient; agreed when both the patient and a clinician accept it."""

    __tablename__ = "goals"
    __table_args__ = (Index("ix_goals_patient_status", "patient_id", "status"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    kind: str = Field(max_length=32)  # a GoalKind
    status: str = Field(default=GoalStatus.PROPOSED, max_length=16)  # a GoalStatus
    target_value: float | None = None
    target_systolic: float | None = None
    target_diastolic: float | None = None
    note: str = Field(default="", max_length=1000)
    proposed_by: int = Field(foreign_key="users.id")
    proposed_by_role: str = Field(max_length=16)  # patient or clinician
    proposed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    patient_agreed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    clinician_agreed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    clinician_agreed_by: int | None = Field(default=None, foreign_key="users.id")
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    closed_by: int | None = Field(default=None, foreign_key="users.id")
    close_reason: str = Field(default="", max_length=500)
    supersedes_id: str | None = Field(default=None, max_length=36)


class GoalLog(SQLModel, table=True):
    """A patient's own daily figure for a goal no device measures (sodium, sleep)."""

    __tablename__ = "goal_logs"
    __table_args__ = (UniqueConstraint("goal_id", "day", name="uq_goal_logs_goal_day"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    goal_id: str = Field(foreign_key="goals.id", max_length=36)
    patient_id: str = Field(foreign_key="patients.id", max_length=36, index=True)
    day: date
    value: float
    logged_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CarePlanVersion(SQLModel, table=True):
    """One version of a patient's care plan: a snapshot of its content, never updated."""

    __tablename__ = "care_plan_versions"
    __table_args__ = (
        UniqueConstraint("patient_id", "version", name="uq_care_plan_versions_patient_version"),
    )

    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    version: int
    content: dict[str, Any] = Field(sa_type=JSON)
    content_hash: str = Field(max_length=64)
    note: str = Field(default="", max_length=2000)  # the clinician's plan in their own words
    change_reason: str = Field(default="", max_length=500)
    created_by: int | None = Field(default=None, foreign_key="users.id")  # None: the system
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
