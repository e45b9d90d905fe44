"""Patients and the care teams that give clinicians their scope."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import UTCDateTime, new_id


class Sex(StrEnum):
    """Administrative sex, as FHIR's AdministrativeGender."""

    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class Patient(SQLModel, table=True):
    """A person under continuous monitoring; `pseudonym` is what auditors and ML see."""

    __tablename__ = "patients"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    pseudonym: str = Field(max_length=32, unique=True, index=True)
    given_name: str = Field(max_length=100)
    family_name: str = Field(max_length=100)
    birth_date: date
    sex: Sex = Field(sa_type=String(16))
    has_diabetes: bool = Field(default=False)
    has_ckd: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CareTeam(SQLModel, table=True):
    """A group of clinicians responsible for a set of patients."""

    __tablename__ = "care_teams"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CareTeamMember(SQLModel, table=True):
    """A clinician's membership of a care team."""

    __tablename__ = "care_team_members"

    care_team_id: int = Field(foreign_key="care_teams.id", primary_key=True)
    user_id: int = Field(foreign_key="users.id", primary_key=True, index=True)
    added_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CareTeamPatient(SQLModel, table=True):
    """A patient's assignment to a care team."""

    __tablename__ = "care_team_patients"

    care_team_id: int = Field(foreign_key="care_teams.id", primary_key=True)
    patient_id: str = Field(foreign_key="patients.id", primary_key=True, index=True, max_length=36)
    added_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
