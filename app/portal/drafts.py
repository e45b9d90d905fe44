"""Keeping a form across a sign-in: a portal POST whose session has ended is not lost.

A clinician who types a note, leaves for a while and submits after the idle logoff gets the
sign-in page, not an error. The fields they posted (never a password, a CSRF token or a
signature's meaning box) travel as a signed hidden field of the sign-in form; after a
successful sign-in by the same user they are set in a short-lived signed cookie and the
browser returns to the page the form came from, which fills the form from it once.
Nothing is decided by the expired request: it never passes `require()`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Mapping
from typing import Any

from fastapi import Request, Response
from starlette.datastructures import FormData

from app.api.deps import SESSION_COOKIE
from app.auth.models import WebSession
from app.auth.security import session_token_hash
from app.db import READONLY_OPTION

DRAFT_COOKIE = "clinaiops_draft"
# Long enough to sign in again, short enough not to leave a note behind on a shared desk.
DRAFT_SECONDS = 600
# Never kept: the signature's components are given again, deliberately.
NOT_KEPT = frozenset({"password", "csrf_token", "meaning_confirmed", "return_to", "_resume"})
_MAX_VALUE = 2000
_MAX_ENCODED = 3500  # a cookie holds about 4 KiB
_CONTEXT = b"clinaiops-portal-draft-v1:"


def safe_portal_path(target: str, default: str = "/portal/") -> str:
    """A local portal path, or the default: an open redirect would hand the session away."""
    ok = target.startswith("/portal") and not target.startswith("//") and "\\" not in target
    return target if ok else default


def _sign(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), _CONTEXT + payload, hashlib.sha256).hexdigest()


def encode(secret: str, *, user_id: int, to: str, fields: Mapping[str, Any]) -> str | None:
    """A signed, compact draft; None if it would not fit in a cookie."""
    body = {"u": user_id, "to": to, "x": int(time.time()) + DRAFT_SECONDS, "f": dict(fields)}
    raw = zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 9)
    payload = base64.urlsafe_b64encode(raw).rstrip(b"=")
    token = f"{payload.decode()}.{_sign(secret, payload)}"
    return token if len(token) <= _MAX_ENCODED else None


def decode(secret: str, token: str) -> dict[str, Any] | None:
    """The draft if its signature holds and it has not expired; else None."""
    payload, _, sig = token.partition(".")
    if not payload or not hmac.compare_digest(sig, _sign(secret, payload.encode())):
        return None
    try:
        raw = zlib.decompress(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        body = json.loads(raw)
    except (ValueError, zlib.error):
        return None
    if not isinstance(body, dict) or int(body.get("x", 0)) < time.time():
        return None
    if not isinstance(body.get("f"), dict) or not isinstance(body.get("u"), int):
        return None
    return body


def kept_fields(form: FormData) -> tuple[str, dict[str, Any]]:
    """The page to return to and the form's fields worth keeping (lists for repeated names)."""
    to = form.get("return_to")
    fields: dict[str, Any] = {}
    for key in form:
        if key in NOT_KEPT or "password" in key:
            continue
        values = [v[:_MAX_VALUE] for v in form.getlist(key) if isinstance(v, str)]
        if values:
            fields[key] = values if len(values) > 1 else values[0]
    return (to if isinstance(to, str) else ""), fields


def session_user(request: Request) -> int | None:
    """The user of the session cookie sent, ended or not (None without one)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    with request.app.state.session_factory() as session:
        session.connection(execution_options={READONLY_OPTION: True})  # no writer slot
        web = session.get(WebSession, session_token_hash(cookie))
        return None if web is None else web.user_id


def take(request: Request, user_id: str) -> dict[str, Any]:
    """The draft saved for this page and user, if any (the caller's response deletes it)."""
    token = request.cookies.get(DRAFT_COOKIE)
    if not token:
        return {}
    body = decode(request.app.state.settings.secret_key, token)
    if body is None or str(body["u"]) != user_id or body.get("to") != request.url.path:
        return {}
    request.state.draft_taken = True
    fields: dict[str, Any] = body["f"]
    return fields


def forget(request: Request, response: Response) -> None:
    """Delete the draft cookie once a page has used it."""
    if getattr(request.state, "draft_taken", False):
        response.delete_cookie(DRAFT_COOKIE, path="/portal")
