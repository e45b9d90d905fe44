"""The portal shell: sign-in, home and sign-out over a cookie session with CSRF tokens."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.api.deps import (
    SESSION_COOKIE,
    Access,
    SessionDep,
    SettingsDep,
    audit_denial,
    public_route,
    require,
)
from app.auth import service as auth_service
from app.auth.models import WebSession
from app.patients import service as patients
from audit import service as audit
from audit.models import Outcome
from policies import service as policy

HERE = FsPath(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(prefix="/portal", include_in_schema=False)
static = StaticFiles(directory=str(HERE / "static"))
LOGIN_CSRF_COOKIE = "clinaiops_login_csrf"

_REASONS = {
    "session_expired": "Your session ended after a period of inactivity. Please sign in again.",
    "session_invalid": "Please sign in.",
    "unauthenticated": "Please sign in.",
}


def _safe_next(target: str) -> str:
    # Only local portal paths: an open redirect would hand the session to another site.
    return target if target.startswith("/portal") and not target.startswith("//") else "/portal/"


@router.get("/login", response_class=HTMLResponse)
@public_route
def login_form(request: Request, next: str = "/portal/", reason: str = "") -> Response:
    """The sign-in page."""
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {
            "principal": None,
            "login_csrf": token,
            "next": _safe_next(next),
            "message": _REASONS.get(reason, ""),
            "username": "",
        },
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.cookie_secure,
        path="/portal",
    )
    return response


@router.post("/login", response_class=HTMLResponse)
@public_route
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    csrf_token: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=500)] = "/portal/",
) -> Response:
    """Check the password, open a session and go to the requested page."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, csrf_token):
        audit_denial(
            request,
            session,
            principal=None,
            action="auth.portal_login",
            resource_type="user",
            code="csrf_failed",
        )
        return _login_again(request, username, next, "Your sign-in form expired. Try again.", 403)
    result = auth_service.authenticate(
        session, username=username, password=password, settings=settings
    )
    if result.outcome is not auth_service.LoginOutcome.OK or result.user is None:
        audit.record(
            session,
            actor="anonymous",
            actor_role="anonymous",
            action="auth.portal_login",
            resource_type="user",
            resource_id=str(result.user.id) if result.user else None,
            outcome=Outcome.DENIED,
            details={"code": str(result.outcome)},
        )
        session.commit()
        message = {
            auth_service.LoginOutcome.THROTTLED: "Too many failed attempts. Wait and retry.",
            auth_service.LoginOutcome.LOCKED: "This account is locked for a while after "
            "repeated failures.",
        }.get(result.outcome, "Invalid username or password.")
        return _login_again(request, username, next, message, 401)
    token, _web = auth_service.open_session(session, user=result.user, settings=settings)
    audit.record(
        session,
        actor=f"user:{result.user.id}",
        actor_role=result.user.role,
        action="auth.portal_login",
        resource_type="user",
        resource_id=str(result.user.id),
        details={"method": "password"},
    )
    session.commit()
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/portal")
    return response


def _login_again(request: Request, username: str, next: str, message: str, status: int) -> Response:
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {
            "principal": None,
            "login_csrf": token,
            "next": _safe_next(next),
            "message": message,
            "username": username,
        },
        status_code=status,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.cookie_secure,
        path="/portal",
    )
    return response


@router.get("/", response_class=HTMLResponse)
def home(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("portal", "view")],
) -> Response:
    """The signed-in landing page; clinicians and patients see the patients in their scope."""
    principal = access.principal
    listing = None
    if policy.allowed_relations(principal.role, "patient", "list"):
        where = policy.patient_filter(principal, "patient", "list")
        listing = patients.list_patients(session, where=where, limit=50)
        access.entry.details = {"count": len(listing), "patient_ids": [p.id for p in listing]}
    session.commit()
    return templates.TemplateResponse(
        request,
        "home.html",
        {
            "principal": principal,
            "patients": listing,
            "idle_minutes": settings.session_idle_minutes,
        },
    )


@router.post("/logout")
def logout(
    session: SessionDep,
    access: Annotated[Access, require("portal", "view", audit_as="auth.portal_logout")],
) -> Response:
    """End the session (CSRF-checked like every unsafe portal request)."""
    sid = access.principal.session_id
    web = session.get(WebSession, sid) if sid else None
    if web is not None:
        auth_service.close_session(session, web=web)
    session.commit()
    response = RedirectResponse("/portal/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
