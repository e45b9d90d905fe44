"""The portal shell: sign-in, home and sign-out over a cookie session with CSRF tokens.

The clinician review pages are in `app.portal.pages` and included in this router.
"""

from __future__ import annotations

import hmac
import importlib.util
import os
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

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
from app.core import clock
from app.patients import service as patients
from app.portal import care as care  # each page module registers its pages on the router
from app.portal import drafts
from app.portal import messages as messages
from app.portal import monitoring as monitoring
from app.portal import pages as pages
from app.portal import registry as registry
from app.portal import reports as reports
from app.portal import visits as visits
from app.portal.web import HERE, LOGIN_CSRF_COOKIE, login_page, safe_next, templates
from app.portal.web import router as router  # the portal's router, listed in app.main
from audit import service as audit
from audit.models import Outcome
from mlops import alerts
from policies import service as policy


# plotly.js comes from the installed Python package: no CDN (the CSP allows only 'self',
# and a clinic network may be offline), and its version moves with the dependency.
# Found without importing plotly (its Python side is not used).
def _plotly_js() -> FsPath:
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the plotly package is a dependency of the portal")
    return FsPath(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"


PLOTLY_JS = _plotly_js()
VENDOR = {"vendor/plotly.min.js": PLOTLY_JS}


# Vendored files hold no patient data and change only with the package (the page links them
# with ?v=<version>), so browsers may keep them; everything else under /portal is no-store.
VENDOR_CACHE = "public, max-age=604800, immutable"


class PortalStatic(StaticFiles):
    """The portal's own static files plus named files from installed packages."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        """Serve a vendored file by its fixed name, anything else from the static folder."""
        vendored = VENDOR.get(path.replace(os.sep, "/"))
        if vendored is not None:
            return str(vendored), os.stat(vendored)
        return super().lookup_path(path)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        """The file, cacheable if it is a vendored one."""
        response = super().file_response(full_path, stat_result, scope, status_code)
        if str(full_path) in _VENDORED:
            response.headers["cache-control"] = VENDOR_CACHE
        return response


_VENDORED = frozenset(str(path) for path in VENDOR.values())


static = PortalStatic(directory=str(HERE / "static"))

_REASONS = {
    "session_expired": "Your session ended after a period of inactivity. Please sign in again.",
    "session_invalid": "Please sign in.",
    "unauthenticated": "Please sign in.",
}


@router.get("/login", response_class=HTMLResponse)
@public_route
def login_form(request: Request, next: str = "/portal/", reason: str = "") -> Response:
    """The sign-in page."""
    return login_page(request, next=next, message=_REASONS.get(reason, ""))


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
    draft: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    """Check the password, open a session and go to the requested page (with a kept form)."""
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
        return login_page(
            request,
            username=username,
            next=next,
            message="Your sign-in form expired. Try again.",
            status=403,
            draft=draft,
        )
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
        return login_page(
            request, username=username, next=next, message=message, status=401, draft=draft
        )
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
    kept = drafts.decode(settings.secret_key, draft) if draft else None
    if kept is not None and kept["u"] == result.user.id:
        # Back to the form the ended session interrupted, filled in again.
        response = RedirectResponse(safe_next(str(kept["to"])), status_code=303)
        response.set_cookie(
            drafts.DRAFT_COOKIE,
            draft,
            max_age=drafts.DRAFT_SECONDS,
            httponly=True,
            samesite="strict",
            secure=settings.cookie_secure,
            path="/portal",
        )
    else:
        response = RedirectResponse(safe_next(next), status_code=303)
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


@router.get("/", response_class=HTMLResponse)
def home(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    access: Annotated[Access, require("portal", "view")],
) -> Response:
    """The signed-in landing page; clinicians and patients see the patients in their scope,
    and whoever may read models a banner while a model was rolled back automatically in the
    last 14 days."""
    principal = access.principal
    listing = None
    if policy.allowed_relations(principal.role, "patient", "list"):
        where = policy.patient_filter(principal, "patient", "list")
        listing = patients.list_patients(session, where=where, limit=50)
        access.entry.details = {"count": len(listing), "patient_ids": [p.id for p in listing]}
    model_alerts = None
    if policy.allowed_relations(principal.role, "model", "read"):
        model_alerts = alerts.rollbacks(session, since=clock.utcnow() - alerts.WINDOW)
    session.commit()
    return templates.TemplateResponse(
        request,
        "home.html",
        {
            "principal": principal,
            "patients": listing,
            "model_alerts": model_alerts,
            "window_days": alerts.WINDOW.days,
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
