"""Patients in the caller's scope, patient registration and care teams."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from app.api.deps import MAX_DB_INT, MAX_ID, NO_NUL, Access, SessionDep, require
from app.auth.models import User
from app.core.errors import ProblemError
from app.patients import service
from app.patients.models import CareTeam, Patient, Sex

router = APIRouter(prefix="/api/v1", tags=["patients"])


class PatientRead(BaseModel):
    """A patient record as the care team and the patient see it."""

    id: str
    pseudonym: str
    given_name: str
    family_name: str
    birth_date: date
    sex: Sex
    has_diabetes: bool
    has_ckd: bool
    care_teams: list[str]


def _read(session: SessionDep, patient: Patient) -> PatientRead:
    return PatientRead(
        id=patient.id,
        pseudonym=patient.pseudonym,
        given_name=patient.given_name,
        family_name=patient.family_name,
        birth_date=patient.birth_date,
        sex=patient.sex,
        has_diabetes=patient.has_diabetes,
        has_ckd=patient.has_ckd,
        care_teams=service.care_team_names(session, patient_id=patient.id),
    )


@router.get("/patients", response_model=list[PatientRead])
def list_patients(
    session: SessionDep,
    access: Annotated[Access, require("patient", "list", listing=True)],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
) -> list[PatientRead]:
    """Patients in the caller's scope: own record, or the care teams' patients."""
    patients = service.list_patients(
        session, where=access.patient_filter(), limit=limit, offset=offset
    )
    access.entry.details = {"count": len(patients), "patient_ids": [p.id for p in patients]}
    result = [_read(session, p) for p in patients]
    session.commit()
    return result


@router.get("/patients/{patient_id}", response_model=PatientRead)
def read_patient(
    patient_id: Annotated[str, Path(max_length=36)],
    session: SessionDep,
    access: Annotated[Access, require("patient", "read", patient_param="patient_id")],
) -> PatientRead:
    """One patient in the caller's scope; anyone else's id answers 404."""
    patient = session.get(Patient, patient_id)
    if patient is None:  # in scope by policy but gone: same answer as out of scope
        raise ProblemError(404, "not_found", "no such patient in your scope")
    result = _read(session, patient)
    session.commit()
    return result


class PatientCreate(BaseModel):
    """A patient registration."""

    pseudonym: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")
    given_name: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    family_name: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    birth_date: date
    sex: Sex
    has_diabetes: bool = False
    has_ckd: bool = False
    care_team_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class Created(BaseModel):
    """The id of a created resource."""

    id: str


@router.post("/admin/patients", response_model=Created, status_code=201)
def register_patient(
    body: PatientCreate,
    session: SessionDep,
    access: Annotated[
        Access, require("patient_registration", "create", audit_as="patient.register")
    ],
) -> Created:
    """Register a patient (and optionally assign a care team)."""
    team = session.get(CareTeam, body.care_team_id) if body.care_team_id is not None else None
    if body.care_team_id is not None and team is None:
        raise ProblemError(422, "care_team_not_found", "no such care team")
    try:
        patient = service.register_patient(
            session,
            pseudonym=body.pseudonym,
            given_name=body.given_name,
            family_name=body.family_name,
            birth_date=body.birth_date,
            sex=body.sex,
            has_diabetes=body.has_diabetes,
            has_ckd=body.has_ckd,
        )
    except service.PatientError as exc:
        raise ProblemError(409, exc.code, str(exc)) from exc
    if team is not None:
        service.add_patient(session, team=team, patient=patient)
    access.entry.resource_id = access.entry.patient_id = patient.id
    session.commit()
    return Created(id=patient.id)


class CareTeamCreate(BaseModel):
    """A new care team."""

    name: str = Field(min_length=1, max_length=100, pattern=NO_NUL)


class CareTeamRead(BaseModel):
    """A care team (names and ids only: no clinical data)."""

    id: int
    name: str


@router.post("/admin/care-teams", response_model=CareTeamRead, status_code=201)
def create_care_team(
    body: CareTeamCreate,
    session: SessionDep,
    access: Annotated[Access, require("care_team", "manage", audit_as="care_team.create")],
) -> CareTeamRead:
    """Create a care team."""
    try:
        team = service.create_care_team(session, name=body.name)
    except service.PatientError as exc:
        raise ProblemError(409, exc.code, str(exc)) from exc
    access.entry.resource_id = str(team.id)
    session.commit()
    return CareTeamRead(id=team.id or 0, name=team.name)


class MemberAdd(BaseModel):
    """Add a clinician (by user id) or a patient (by patient id) to a care team."""

    user_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    patient_id: str | None = Field(default=None, max_length=36)


@router.post("/admin/care-teams/{team_id}/members", response_model=CareTeamRead)
def add_care_team_member(
    team_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    body: MemberAdd,
    session: SessionDep,
    access: Annotated[Access, require("care_team", "manage", audit_as="care_team.add_member")],
) -> CareTeamRead:
    """Add a clinician or a patient to a care team."""
    team = session.get(CareTeam, team_id)
    if team is None:
        raise ProblemError(404, "not_found", "no such care team")
    if (body.user_id is None) == (body.patient_id is None):
        raise ProblemError(422, "one_member", "give exactly one of user_id and patient_id")
    try:
        if body.user_id is not None:
            user = session.get(User, body.user_id)
            if user is None:
                raise ProblemError(422, "user_not_found", "no such user")
            service.add_member(session, team=team, user=user)
            access.entry.details = {"user_id": body.user_id}
        else:
            patient = session.get(Patient, body.patient_id)
            if patient is None:
                raise ProblemError(422, "patient_not_found", "no such patient")
            service.add_patient(session, team=team, patient=patient)
            access.entry.patient_id = patient.id
    except service.PatientError as exc:
        raise ProblemError(422, exc.code, str(exc)) from exc
    access.entry.resource_id = str(team_id)
    session.commit()
    return CareTeamRead(id=team.id or 0, name=team.name)
