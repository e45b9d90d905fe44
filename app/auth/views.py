"""Token issue, the caller's identity, and user administration."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Path, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlmodel import col

from app.api.deps import MAX_ID, NO_NUL, Access, SessionDep, SettingsDep, public_route, require
from app.auth import service
from app.auth.models import Role, User
from app.auth.security import create_access_token
from app.core.errors import ProblemError
from audit import service as audit
from audit.models import Outcome
from policies import scopes

router = APIRouter(prefix="/api/v1", tags=["auth"])


class TokenResponse(BaseModel):
    """OAuth2 bearer token response."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    scope: str


_LOGIN_FAILURES = {
    service.LoginOutcome.BAD_CREDENTIALS: (401, "invalid username or password"),
    service.LoginOutcome.THROTTLED: (429, "too many failed attempts; wait before retrying"),
    service.LoginOutcome.LOCKED: (423, "account temporarily locked after repeated failures"),
}


@router.post("/auth/token", response_model=TokenResponse)
@public_route
def issue_token(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    scope: Annotated[str, Form(max_length=1000)] = "",
    grant_type: Annotated[str, Form(pattern="^password$")] = "password",
) -> TokenResponse:
    """OAuth2 password grant: a short-lived JWT with SMART-style scopes."""
    result = service.authenticate(session, username=username, password=password, settings=settings)
    if result.outcome is not service.LoginOutcome.OK or result.user is None:
        status, detail = _LOGIN_FAILURES[result.outcome]
        headers = {"Retry-After": str(result.retry_after)} if result.retry_after else {}
        # The failure count and the denial's audit entry commit together.
        audit.record(
            session,
            actor="anonymous",
            actor_role="anonymous",
            action="auth.login",
            resource_type="user",
            resource_id=str(result.user.id) if result.user else None,
            outcome=Outcome.DENIED,
            details={"code": str(result.outcome)},
        )
        session.commit()
        raise ProblemError(status, str(result.outcome), detail, headers=headers)
    user = result.user
    granted = scopes.grant(user.role, scope or None)
    issued = create_access_token(
        user_id=user.id or 0, role=user.role, scopes=granted, settings=settings
    )
    audit.record(
        session,
        actor=f"user:{user.id}",
        actor_role=user.role,
        action="auth.login",
        resource_type="user",
        resource_id=str(user.id),
        details={"method": "password", "scope": " ".join(sorted(granted))},
    )
    session.commit()
    return TokenResponse(
        access_token=issued.token,
        expires_in=issued.expires_in,
        scope=" ".join(sorted(issued.scopes)),
    )


class MeResponse(BaseModel):
    """The signed-in caller."""

    user_id: int
    username: str
    full_name: str
    role: str
    patient_id: str | None
    scopes: list[str]


@router.get("/me", response_model=MeResponse)
def read_me(session: SessionDep, access: Annotated[Access, require("me", "read")]) -> MeResponse:
    """Who am I: user id, role, and the patient id for a patient."""
    p = access.principal
    access.entry.patient_id = p.patient_id
    session.commit()
    return MeResponse(
        user_id=int(p.id),
        username=p.username or "",
        full_name=p.full_name or "",
        role=p.role,
        patient_id=p.patient_id,
        scopes=sorted(p.scopes),
    )


class UserCreate(BaseModel):
    """A new user account."""

    username: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    password: str = Field(min_length=1, max_length=256)
    full_name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    role: Role
    patient_id: str | None = Field(default=None, max_length=36)
    is_clinical_lead: bool = False


class UserRead(BaseModel):
    """A user account as administrators see it (never the password hash)."""

    id: int
    username: str
    full_name: str
    role: Role
    is_active: bool
    patient_id: str | None
    is_clinical_lead: bool


def _user_read(user: User) -> UserRead:
    return UserRead(
        id=user.id or 0,
        username=user.username,
        full_name=user.full_name,
        role=user.role,
        is_active=user.is_active,
        patient_id=user.patient_id,
        is_clinical_lead=user.is_clinical_lead,
    )


@router.post("/admin/users", response_model=UserRead, status_code=201)
def create_user(
    body: UserCreate,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("user", "manage", audit_as="user.create")],
) -> UserRead:
    """Create a user account."""
    try:
        user = service.create_user(
            session,
            username=body.username,
            password=body.password,
            full_name=body.full_name,
            role=body.role,
            settings=settings,
            patient_id=body.patient_id,
            is_clinical_lead=body.is_clinical_lead,
        )
    except service.UserError as exc:
        conflict = exc.code in {"username_taken", "patient_linked"}
        raise ProblemError(409 if conflict else 422, exc.code, str(exc)) from exc
    access.entry.resource_id = str(user.id)
    access.entry.details = {"role": str(user.role)}
    session.commit()
    return _user_read(user)


@router.get("/admin/users", response_model=list[UserRead])
def list_users(
    session: SessionDep, access: Annotated[Access, require("user", "manage", audit_as="user.list")]
) -> list[UserRead]:
    """List user accounts."""
    users = session.scalars(select(User).order_by(col(User.id))).all()
    access.entry.details = {"count": len(users)}
    session.commit()
    return [_user_read(u) for u in users]


@router.post("/admin/users/{user_id}/disable", response_model=UserRead)
def disable_user(
    user_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    session: SessionDep,
    access: Annotated[Access, require("user", "manage", audit_as="user.disable")],
) -> UserRead:
    """Disable a user: their tokens and sessions stop working at once."""
    user = session.get(User, user_id)
    if user is None:
        raise ProblemError(404, "not_found", "no such user")
    service.disable_user(session, user=user)
    access.entry.resource_id = str(user_id)
    session.commit()
    return _user_read(user)
