"""What every portal page shares: the templates, the sign-in page and page rendering."""

from __future__ import annotations

import hmac
import importlib.metadata
import secrets
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from app.api.deps import SESSION_COOKIE, Access
from app.auth.models import WebSession
from app.auth.security import session_token_hash
from app.core import clock
from app.core.config import Settings
from app.core.errors import ProblemError
from app.db import READONLY_OPTION
from app.portal import drafts
from audit import service as audit
from audit.models import Outcome

HERE = FsPath(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
LOGIN_CSRF_COOKIE = "clinaiops_login_csrf"
DRAFT_MESSAGE = (
    "Your session ended before the form was sent, so nothing was done. Sign in again to "
    "return to the form: what you entered is kept, except passwords and confirmations."
)


def _utc(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """A stored time as UTC text ('' for none); naive values are UTC already."""
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime(fmt)


def _duration(value: timedelta | float | None) -> str:
    """A duration for people: '3 d 4 h', '5 h 12 min', '7 min'."""
    if value is None:
        return ""
    total = int(value.total_seconds() if isinstance(value, timedelta) else value)
    sign = "-" if total < 0 else ""
    total = abs(total)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{sign}{days} d {hours} h"
    if hours:
        return f"{sign}{hours} h {minutes} min"
    return f"{sign}{minutes} min"


templates.env.filters["utc"] = _utc
templates.env.globals["plotly_version"] = importlib.metadata.version("plotly")
templates.env.filters["duration"] = _duration


def safe_next(target: str) -> str:
    """A local portal path to go to after sign-in (never another site)."""
    return drafts.safe_portal_path(target)


def login_page(
    request: Request,
    *,
    username: str = "",
    next: str = "/portal/",
    message: str = "",
    status: int = 200,
    draft: str = "",
) -> Response:
    """The sign-in form with a fresh double-submit CSRF token (and a kept form, if any)."""
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {
            "principal": None,
            "login_csrf": token,
            "next": safe_next(next),
            "message": message,
            "username": username,
            "draft": draft,
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


def sign_in_again(request: Request, draft: str) -> Response:
    """The sign-in page for a form posted after the session ended, carrying the form."""
    return login_page(request, message=DRAFT_MESSAGE, status=401, draft=draft)


def page_context(
    request: Request, access: Access, settings: Settings, nav: str, **context: Any
) -> dict[str, Any]:
    """What every signed-in page's template needs (the layout's nav, idle guard, user)."""
    return {
        "principal": access.principal,
        "user_id": int(access.principal.id),
        "idle_minutes": settings.session_idle_minutes,
        "nav": nav,
        "now": clock.utcnow(),
        "path": request.url.path,
        **context,
    }


def refuse(session: Session, access: Access, code: str) -> None:
    """Undo the act's work and commit its audit entry alone, as a failure with the code."""
    session.rollback()
    access.entry.outcome = Outcome.FAILURE
    access.entry.details = {**access.entry.details, "code": code}
    audit.requeue(session, access.entry)
    session.commit()


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
) -> Response:
    """A portal page; a kept form used by it is forgotten."""
    response = templates.TemplateResponse(request, name, dict(context), status_code=status)
    drafts.forget(request, response)
    return response


def _error_page(request: Request, exc: ProblemError) -> Response:
    titles = {403: "Not allowed", 404: "Not found", 409: "Conflict"}
    return templates.TemplateResponse(
        request,
        "error.html",
        {
            "principal": None,
            "title": titles.get(exc.status, "Error"),
            "code": exc.code,
            "detail": exc.detail,
        },
        status_code=exc.status,
    )


async def _resume(request: Request) -> Response:
    """Keep a form the idle guard interrupted: nothing is acted on, whatever the session."""
    form = await request.form()
    to, fields = drafts.kept_fields(form)
    to = drafts.safe_portal_path(to)
    user_id = drafts.session_user(request)
    token = (
        None
        if user_id is None
        else drafts.encode(
            request.app.state.settings.secret_key, user_id=user_id, to=to, fields=fields
        )
    )
    if token is None or user_id is None:
        return RedirectResponse(to, status_code=303)
    with request.app.state.session_factory() as session:
        session.connection(execution_options={READONLY_OPTION: True})  # no writer slot
        cookie = request.cookies.get(SESSION_COOKIE, "")
        web = session.get(WebSession, session_token_hash(cookie))
        alive = web is not None and web.revoked_at is None
        csrf_ok = web is not None and hmac.compare_digest(
            str(form.get("csrf_token", "")), web.csrf_token
        )
    if not alive:
        return sign_in_again(request, token)
    response = RedirectResponse(to, status_code=303)
    if csrf_ok:
        response.set_cookie(
            drafts.DRAFT_COOKIE,
            token,
            max_age=drafts.DRAFT_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.app.state.settings.cookie_secure,
            path="/portal",
        )
    return response


PAGE_MARK = "__clinaiops_portal_page__"
_F = TypeVar("_F", bound=Callable[..., Any])


def portal_page(func: _F) -> _F:
    """Mark a route as a page for people (see `PortalRoute`)."""
    setattr(func, PAGE_MARK, True)
    return func


class PortalRoute(APIRoute):
    """On routes marked `portal_page`: a form posted after the session ended is kept across a
    new sign-in, and a refusal by `require()` is an HTML page rather than a problem document.
    Other routes (sign-in, sign-out) behave as anywhere else."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler with the portal's answers to ended sessions and refusals."""
        handler = super().get_route_handler()
        if not getattr(self.endpoint, PAGE_MARK, False):
            return handler

        async def portal_handler(request: Request) -> Response:
            if request.method == "POST" and _is_form(request):
                form = await request.form()
                if form.get("_resume"):
                    return await _resume(request)
            try:
                return await handler(request)
            except ProblemError as exc:
                entry = getattr(request.state, "audit_entry", None)
                if entry is not None and not entry.written:
                    raise  # failed after access was granted: get_session audits the failure
                if exc.status == 401 and request.method == "POST":
                    kept = await _kept_after_401(request)
                    if kept is not None:
                        return sign_in_again(request, kept)
                    raise
                if exc.status in (403, 404):
                    return _error_page(request, exc)
                raise

        return portal_handler


def _is_form(request: Request) -> bool:
    ctype = request.headers.get("content-type", "")
    return ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))


async def _kept_after_401(request: Request) -> str | None:
    if not _is_form(request):
        return None
    user_id = drafts.session_user(request)
    if user_id is None:
        return None
    to, fields = drafts.kept_fields(await request.form())
    return drafts.encode(
        request.app.state.settings.secret_key,
        user_id=user_id,
        to=drafts.safe_portal_path(to),
        fields=fields,
    )


# The portal's one router (listed in app.main.ROUTERS); the review pages add theirs to it.
router = APIRouter(prefix="/portal", include_in_schema=False, route_class=PortalRoute)
