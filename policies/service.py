"""The enforcement point: every data access is decided here, by role and patient relation."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

import casbin
from sqlalchemy import ColumnElement, false, or_, select, true
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.principal import Principal, PrincipalKind
from app.patients.models import CareTeamMember, CareTeamPatient, Patient
from policies import scopes

POLICY_DIR = Path(__file__).parent


class Relation(StrEnum):
    """How a caller relates to a patient."""

    SELF = "self"
    CARE_TEAM = "care_team"
    NONE = "none"
    NOT_APPLICABLE = "-"


@lru_cache(maxsize=1)
def enforcer() -> casbin.Enforcer:
    """The casbin enforcer loaded from the model and policy files."""
    return casbin.Enforcer(str(POLICY_DIR / "model.conf"), str(POLICY_DIR / "policy.csv"))


@lru_cache(maxsize=4096)
def _enforce(role: str, resource: str, action: str, relation: str) -> bool:
    # casbin evaluates its matcher expression afresh on every call; a decision depends only
    # on these four strings and the policy files, which are read once per process.
    return bool(enforcer().enforce(role, resource, action, relation))


@dataclass(frozen=True)
class Decision:
    """The outcome of one access check: allowed, or the status and code to answer with."""

    allowed: bool
    relation: Relation
    status: int = 200
    code: str = "ok"
    reason: str = ""


def relation_to_patient(session: Session, principal: Principal, patient_id: str) -> Relation:
    """Self, care team or none; an unknown patient id is simply `none`."""
    if principal.patient_id is not None and principal.patient_id == patient_id:
        return Relation.SELF
    if principal.kind is PrincipalKind.USER and principal.role == "clinician":
        hit = session.execute(
            select(col(CareTeamPatient.patient_id))
            .join(
                CareTeamMember,
                col(CareTeamMember.care_team_id) == col(CareTeamPatient.care_team_id),
            )
            .where(
                col(CareTeamPatient.patient_id) == patient_id,
                col(CareTeamMember.user_id) == int(principal.id),
            )
            .limit(1)
        ).first()
        if hit is not None:
            return Relation.CARE_TEAM
    return Relation.NONE


def _role_may_ever(role: str, resource: str, action: str) -> bool:
    return bool(enforcer().get_filtered_policy(0, role, resource, action))


def decide(
    session: Session,
    *,
    principal: Principal,
    resource: str,
    action: str,
    patient_id: str | None = None,
    listing: bool = False,
) -> Decision:
    """Decide one access. Out-of-scope patients answer 404, so existence does not leak.

    With `listing`, the act spans patients: it is allowed when the role may act under any
    relation, and the caller must narrow its query with `patient_filter`.
    """
    rel = (
        Relation.NOT_APPLICABLE
        if patient_id is None
        else relation_to_patient(session, principal, patient_id)
    )
    if (
        not scopes.permits(principal.scopes, resource, action)
        and principal.kind is PrincipalKind.USER
    ):
        return Decision(
            False,
            rel,
            403,
            "insufficient_scope",
            f"token scopes do not cover {action} on {resource}",
        )
    if _enforce(principal.role, resource, action, str(rel)):
        return Decision(True, rel)
    if listing and patient_id is None and allowed_relations(principal.role, resource, action):
        # A listing spans patients: allowed here, narrowed by patient_filter() in the query.
        return Decision(True, rel)
    if patient_id is not None and _role_may_ever(principal.role, resource, action):
        return Decision(False, rel, 404, "not_found", "no such patient in your scope")
    return Decision(False, rel, 403, "forbidden", f"role may not {action} {resource}")


def allowed_relations(role: str, resource: str, action: str) -> frozenset[str]:
    """The relations under which `role` may act on `resource` (from the policy file)."""
    return frozenset(p[3] for p in enforcer().get_filtered_policy(0, role, resource, action))


def patient_filter(principal: Principal, resource: str, action: str) -> ColumnElement[bool]:
    """A WHERE clause on Patient.id limiting a listing to the caller's scope."""
    rels = allowed_relations(principal.role, resource, action)
    if "*" in rels:
        return true()
    clauses: list[ColumnElement[bool]] = []
    if Relation.SELF in rels and principal.patient_id is not None:
        clauses.append(col(Patient.id) == principal.patient_id)
    if Relation.CARE_TEAM in rels and principal.kind is PrincipalKind.USER:
        team_patients = (
            select(col(CareTeamPatient.patient_id))
            .join(
                CareTeamMember,
                col(CareTeamMember.care_team_id) == col(CareTeamPatient.care_team_id),
            )
            .where(col(CareTeamMember.user_id) == int(principal.id))
        )
        clauses.append(col(Patient.id).in_(team_patients))
    if not clauses:
        return false()
    if len(clauses) == 1:
        return clauses[0]
    return or_(*clauses)
