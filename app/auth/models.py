"""Users, roles, login throttling state and portal sessions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import UTCDateTime


class Role(StrEnum):
    """The roles the policy files grant permissions to."""

    ADMIN = "admin"
    CLINICIAN = "clinician"
    PATIENT = "patient"
    AUDITOR = "auditor"
    ML_ENGINEER = "ml_engineer"


class User(SQLModel, table=True):
    """A person who signs in: staff, auditors, or a patient (linked to their record)."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64, unique=True, index=True)
    full_name: str = Field(max_length=200)
    role: Role = Field(sa_type=String(32))
    password_hash: str = Field(max_length=255)
    is_active: bool = Field(default=True)
    # Clinical lead: may give the clinical sign-off on model promotion (a later issue).
    is_clinical_lead: bool = Field(default=False)
    patient_id: str | None = Field(
        default=None, foreign_key="patients.id", unique=True, max_length=36
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class LoginAttempt(SQLModel, table=True):
    """Failed-login state per username, known or not, so lockout reveals no account."""

    __tablename__ = "login_attempts"

    username: str = Field(primary_key=True, max_length=64)
    failures: int = Field(default=0)
    last_failure_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)


class WebSession(SQLModel, table=True):
    """A portal cookie session; only the token's hash is stored."""

    __tablename__ = "web_sessions"

    id: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", index=True)
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
