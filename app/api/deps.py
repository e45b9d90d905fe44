"""FastAPI dependencies: the session, the caller, and the one authorization dependency."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth import service as auth_service
from app.auth.models import User
from app.auth.principal import AuthMethod, Principal, PrincipalKind
from app.auth.security import TokenInvalid, decode_access_token, parse_device_key
from app.core.config import Settings
from app.core.errors import STATUS_CODES, ProblemError
from app.db import READONLY_OPTION
from audit import service as audit
from audit.models import Outcome
from device_ingest import service as devices
from policies import service as policy
from policies.scopes import ROLE_SCOPES

SESSION_COOKIE = "clinaiops_session"
CSRF_HEADER = "x-csrf-token"
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def get_settings_dep(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; routes commit, anything left uncommitted rolls back.

    A granted act that then fails (a conflict, a validation error) is still an act: its
    audit entry is written with outcome `failure` once the act's own work is rolled back.
    """
    with request.app.state.session_factory() as session:
        try:
            yield session
        except Exception as exc:
            session.rollback()
            entry: audit.PendingEntry | None = getattr(request.state, "audit_entry", None)
            if entry is not None and not entry.written:
                code = _failure_code(exc)
                audit.record(
                    session,
                    actor=entry.actor,
                    actor_role=entry.actor_role,
                    action=entry.action,
                    resource_type=entry.resource_type,
                    resource_id=entry.resource_id,
                    patient_id=entry.patient_id,
                    outcome=Outcome.FAILURE,
                    details={"code": code},
                )
                session.commit()
            raise


SessionDep = Annotated[Session, Depends(get_session)]


def _failure_code(exc: Exception) -> str:
    """The same machine-readable code the client is answered with."""
    if isinstance(exc, ProblemError):
        return exc.code
    if isinstance(exc, RequestValidationError):
        return "validation_error"
    if isinstance(exc, StarletteHTTPException):
        return STATUS_CODES.get(exc.status_code, "error")
    return "internal_error"


class Audience(StrEnum):
    """Which credentials a route accepts: people's tokens or device keys, never both."""

    USER = "user"
    DEVICE = "device"


def audit_denial(
    request: Request,
    session: Session,
    *,
    principal: Principal | None,
    action: str,
    resource_type: str,
    code: str,
    patient_id: str | None = None,
    resource_id: str | None = None,
) -> None:
    """Abandon the request's work and commit the denial's audit entry in its place.

    The same session is reused: a second connection would wait on the write lock this
    request's own transaction holds (SQLite takes it at BEGIN IMMEDIATE).
    """
    session.rollback()
    audit.record(
        session,
        actor=principal.actor if principal else "anonymous",
        actor_role=principal.role if principal else "anonymous",
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        patient_id=patient_id,
        outcome=Outcome.DENIED,
        details={"code": code, "method": request.method, "path": request.url.path},
    )
    session.commit()


def _deny_auth(
    request: Request,
    session: Session,
    code: str,
    detail: str,
    *,
    status: int = 401,
    principal: Principal | None = None,
) -> ProblemError:
    audit_denial(
        request,
        session,
        principal=principal,
        action="auth.denied",
        resource_type="request",
        code=code,
    )
    # RFC 6750: no error attribute when the request carried no credentials at all.
    challenge = "Bearer" if code == "unauthenticated" else 'Bearer error="invalid_token"'
    headers = {"WWW-Authenticate": challenge} if status == 401 else {}
    return ProblemError(status, code, detail, headers=headers)


def _bearer(request: Request, session: Session) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _deny_auth(
            request, session, "unauthenticated", "use an Authorization: Bearer credential"
        )
    return value.strip()


def _user_principal(
    request: Request, session: Session, settings: Settings, token: str
) -> Principal:
    try:
        claims = decode_access_token(token, settings)
    except TokenInvalid as exc:
        raise _deny_auth(request, session, exc.code, str(exc)) from exc
    user = session.get(User, int(claims["sub"])) if str(claims["sub"]).isdigit() else None
    if user is None or not user.is_active:
        raise _deny_auth(request, session, "account_disabled", "this account is disabled")
    if claims.get("role") != user.role:
        raise _deny_auth(request, session, "token_invalid", "the token's role no longer applies")
    return Principal(
        PrincipalKind.USER,
        str(user.id),
        str(user.role),
        AuthMethod.BEARER,
        username=user.username,
        full_name=user.full_name,
        patient_id=user.patient_id,
        scopes=frozenset(str(claims.get("scope", "")).split()),
    )


def _cookie_principal(
    request: Request, session: Session, settings: Settings, cookie: str
) -> Principal:
    state, web = auth_service.resume_session(session, token=cookie, settings=settings)
    if state is not auth_service.SessionState.ACTIVE or web is None:
        if web is not None:
            session.commit()  # keep the revocation of an expired session
        raise _deny_auth(request, session, str(state), "your session has ended; sign in again")
    user = session.get(User, web.user_id)
    if user is None or not user.is_active:
        raise _deny_auth(request, session, "account_disabled", "this account is disabled")
    return Principal(
        PrincipalKind.USER,
        str(user.id),
        str(user.role),
        AuthMethod.COOKIE,
        username=user.username,
        full_name=user.full_name,
        patient_id=user.patient_id,
        scopes=ROLE_SCOPES.get(user.role, frozenset()),
        session_id=web.id,
        csrf_token=web.csrf_token,
    )


def _device_principal(request: Request, session: Session, key: str) -> Principal:
    device = devices.authenticate_key(session, key=key)
    if device is None:
        raise _deny_auth(request, session, "device_key_invalid", "unknown or revoked device key")
    return Principal(
        PrincipalKind.DEVICE,
        device.id,
        "device",
        AuthMethod.DEVICE_KEY,
        patient_id=device.patient_id,
    )


async def csrf_form_value(request: Request) -> str | None:
    """The `csrf_token` field of an HTML form post (portal forms work without JavaScript)."""
    if request.method not in _UNSAFE or SESSION_COOKIE not in request.cookies:
        return None
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return None
    value = (await request.form()).get("csrf_token")
    return value if isinstance(value, str) else None


CsrfFormDep = Annotated[str | None, Depends(csrf_form_value)]


def authenticate(
    request: Request,
    session: Session,
    settings: Settings,
    audience: Audience,
    csrf_form: str | None = None,
) -> Principal:
    """Identify the caller from a bearer token, device key or session cookie."""
    token = _bearer(request, session)
    if token is not None and parse_device_key(token) is not None:
        principal = _device_principal(request, session, token)
        if audience is not Audience.DEVICE:
            raise _deny_auth(
                request,
                session,
                "device_key_not_allowed",
                "device keys are accepted only on device endpoints",
                status=403,
                principal=principal,
            )
        return principal
    if token is not None:
        principal = _user_principal(request, session, settings, token)
    elif (cookie := request.cookies.get(SESSION_COOKIE)) is not None:
        principal = _cookie_principal(request, session, settings, cookie)
        if request.method in _UNSAFE:
            sent = request.headers.get(CSRF_HEADER) or csrf_form
            if not sent or not hmac.compare_digest(str(sent), principal.csrf_token or ""):
                raise _deny_auth(
                    request,
                    session,
                    "csrf_failed",
                    "missing or wrong CSRF token",
                    status=403,
                    principal=principal,
                )
    else:
        raise _deny_auth(request, session, "unauthenticated", "authentication required")
    if audience is Audience.DEVICE:
        raise _deny_auth(
            request,
            session,
            "device_key_required",
            "this endpoint accepts only device keys",
            status=403,
            principal=principal,
        )
    return principal


@dataclass
class Access:
    """A granted access: who, to which patient, and the audit entry this act will commit."""

    principal: Principal
    patient_id: str | None
    relation: policy.Relation
    entry: audit.PendingEntry
    resource: str
    action: str

    def patient_filter(self) -> ColumnElement[bool]:
        """WHERE clause on Patient.id limiting a listing to this caller's patients."""
        return policy.patient_filter(self.principal, self.resource, self.action)


AUTHZ_MARK = "__clinaiops_authz__"
# Takes (session, request, principal) and names the patient an act concerns.
PatientResolver = Callable[[Session, Request, Principal], str | None]
# A patient id no record has: an unresolvable object is out of every scope (404).
_UNRESOLVED = "00000000-0000-0000-0000-000000000000"
# The largest integers the database stores: a BIGINT (offsets, audit sequence numbers) and an
# INTEGER (user and care-team ids). A larger one is a 422, not an overflow while binding it or
# a PostgreSQL range error (a 500).
MAX_DB_INT = 2**63 - 1
MAX_ID = 2**31 - 1
# Text the database stores holds no NUL: PostgreSQL refuses it (a 422, not a 500).
NO_NUL = r"^[^\x00]*$"
_ID_MAX = 36  # patient ids are UUIDs (the audit log's patient_id column holds 36 characters)


def require(
    resource: str,
    action: str,
    *,
    patient_param: str | None = None,
    audience: Audience = Audience.USER,
    listing: bool = False,
    audit_as: str | None = None,
    patient_from: PatientResolver | None = None,
    read_first: bool = False,
) -> Any:
    """The authorization dependency every route declares: authenticate, enforce, audit.

    The patient id, if any, is read from the path parameter `patient_param`. A `listing`
    spans patients; the route must narrow its query with `Access.patient_filter()`.
    `audit_as` names the act in the audit trail (default `<resource>.<action>`).
    `patient_from` derives the patient when it is not a path parameter (a device's patient,
    a query parameter); an object it cannot resolve is out of every scope (404).

    On success the act's audit entry is queued on the request's session; the route may
    enrich it and must commit. On denial the denial is audited and the request ends with
    401, 403 or 404.

    With `read_first` the checks run in a read-only transaction (on SQLite a snapshot that
    does not take the single writer slot); the route must end it with `audit.end_read`
    before it writes. For hot routes that do long work between checking and writing.
    """

    def dependency(
        request: Request, session: SessionDep, settings: SettingsDep, csrf_form: CsrfFormDep
    ) -> Access:
        if read_first:
            # Applies to this first transaction only; the next one is a writer again.
            session.connection(execution_options={READONLY_OPTION: True})
        principal = authenticate(request, session, settings, audience, csrf_form)
        patient_id = request.path_params.get(patient_param) if patient_param else None
        if any("\x00" in str(v) for v in request.path_params.values()):
            # No object has an id with NUL in it, and PostgreSQL refuses NUL in any text it is
            # asked to compare: resolve nothing (the path's own checks run only after this).
            patient_id = _UNRESOLVED
        elif patient_from is not None:
            patient_id = patient_from(session, request, principal) or _UNRESOLVED
        if patient_id is not None and (len(patient_id) > _ID_MAX or "\x00" in patient_id):
            # No patient has such an id, and the denial's audit row could not hold it
            # (PostgreSQL refuses an over-long value and NUL).
            patient_id = _UNRESOLVED
        decision = policy.decide(
            session,
            principal=principal,
            resource=resource,
            action=action,
            patient_id=patient_id,
            listing=listing,
        )
        if not decision.allowed:
            audit_denial(
                request,
                session,
                principal=principal,
                action=f"{resource}.{action}",
                resource_type=resource,
                code=decision.code,
                patient_id=patient_id,
            )
            raise ProblemError(decision.status, decision.code, decision.reason)
        if patient_id == _UNRESOLVED:
            patient_id = None
        entry = audit.record(
            session,
            actor=principal.actor,
            actor_role=principal.role,
            action=audit_as or f"{resource}.{action}",
            resource_type=resource,
            resource_id=patient_id,
            patient_id=patient_id,
        )
        request.state.audit_entry = entry
        return Access(principal, patient_id, decision.relation, entry, resource, action)

    setattr(dependency, AUTHZ_MARK, (resource, action, audience))
    return Depends(dependency)


def query_patient(session: Session, request: Request, principal: Principal) -> str | None:
    """Patient resolver for FHIR searches: `?patient=` (plain id or Patient/<id>), else the
    caller's own record (a patient searching their own data)."""
    asked = request.query_params.get("patient")
    return asked.removeprefix("Patient/") if asked else principal.patient_id


def _authz_call(dependant: Dependant) -> Callable[..., Access] | None:
    """The route's require() dependency, wherever it sits in the dependency tree."""
    for dep in dependant.dependencies:
        if getattr(dep.call, AUTHZ_MARK, None) is not None:
            return cast(Callable[..., Access], dep.call)
        found = _authz_call(dep)
        if found is not None:
            return found
    return None


def authorize_unread_body(request: Request, exc: Exception) -> ProblemError | None:
    """Run the route's require() for a request refused before its dependencies (a body that is
    not JSON): returns the denial (audited) to answer instead, or None once the granted act is
    audited as failed with the refusal's code."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    call = _authz_call(dependant) if isinstance(dependant, Dependant) else None
    if call is None:
        return None
    sessions = cast(Generator[Session, None, None], get_session(request))
    session = next(sessions)
    try:
        # No form to read a CSRF token from: the body is JSON, or meant to be.
        call(request, session, request.app.state.settings, None)
    except ProblemError as denial:
        sessions.close()
        return denial
    try:
        sessions.throw(exc)  # get_session records the act as failed, then re-raises
    except type(exc):
        pass
    return None


def public_route(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a route as deliberately unauthenticated (health, login); tests list them."""
    setattr(func, "__clinaiops_public__", True)  # noqa: B010
    return func
