"""Patient records and care teams."""

from __future__ import annotations

from datetime import date

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.models import Role, User
from app.patients.models import CareTeam, CareTeamMember, CareTeamPatient, Patient, Sex


class PatientError(ValueError):
    """A patient or care-team request that cannot be carried out; `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def list_patients(
    session: Session, *, where: ColumnElement[bool], limit: int = 100, offset: int = 0
) -> list[Patient]:
    """Patients matching a scope filter, by pseudonym."""
    stmt = select(Patient).where(where).order_by(Patient.pseudonym).limit(limit).offset(offset)
    return list(session.scalars(stmt))


def care_team_names(session: Session, *, patient_id: str) -> list[str]:
    """Names of the care teams a patient belongs to."""
    stmt = (
        select(col(CareTeam.name))
        .join(CareTeamPatient, col(CareTeamPatient.care_team_id) == col(CareTeam.id))
        .where(col(CareTeamPatient.patient_id) == patient_id)
        .order_by(CareTeam.name)
    )
    return list(session.scalars(stmt))


def register_patient(
    session: Session,
    *,
    pseudonym: str,
    given_name: str,
    family_name: str,
    birth_date: date,
    sex: Sex,
    has_diabetes: bool = False,
    has_ckd: bool = False,
) -> Patient:
    """Create a patient record."""
    if session.scalars(select(col(Patient.id)).where(col(Patient.pseudonym) == pseudonym)).first():
        raise PatientError("pseudonym_taken", f"pseudonym {pseudonym} exists")
    patient = Patient(
        pseudonym=pseudonym,
        given_name=given_name,
        family_name=family_name,
        birth_date=birth_date,
        sex=sex,
        has_diabetes=has_diabetes,
        has_ckd=has_ckd,
    )
    session.add(patient)
    session.flush()
    return patient


def create_care_team(session: Session, *, name: str) -> CareTeam:
    """Create a care team."""
    if session.scalars(select(col(CareTeam.id)).where(col(CareTeam.name) == name)).first():
        raise PatientError("care_team_exists", f"care team {name} exists")
    team = CareTeam(name=name)
    session.add(team)
    session.flush()
    return team


def add_member(session: Session, *, team: CareTeam, user: User) -> None:
    """Put a clinician on a care team (idempotent)."""
    if user.role != Role.CLINICIAN:
        raise PatientError("not_a_clinician", "only clinicians join care teams")
    if session.get(CareTeamMember, (team.id, user.id)) is None:
        session.add(CareTeamMember(care_team_id=team.id or 0, user_id=user.id or 0))
        session.flush()


def add_patient(session: Session, *, team: CareTeam, patient: Patient) -> None:
    """Assign a patient to a care team (idempotent)."""
    if session.get(CareTeamPatient, (team.id, patient.id)) is None:
        session.add(CareTeamPatient(care_team_id=team.id or 0, patient_id=patient.id))
        session.flush()
