"""Sign-in, throttling and lockout, user administration and portal sessions."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.models import LoginAttempt, Role, User, WebSession
from app.auth.security import hash_password, new_session_token, session_token_hash, verify_password
from app.core import clock
from app.core.config import Settings
from app.patients.models import Patient


class LoginOutcome(StrEnum):
    """Why a sign-in did or did not succeed."""

    OK = "ok"
    BAD_CREDENTIALS = "invalid_credentials"
    THROTTLED = "login_throttled"
    LOCKED = "account_locked"


@dataclass(frozen=True)
class LoginResult:
    """The outcome of one attempt; `retry_after` is set when the caller must wait."""

    outcome: LoginOutcome
    user: User | None = None
    retry_after: int | None = None


def throttle_delay(failures: int, settings: Settings) -> int:
    """Seconds to wait before the next attempt after `failures` failures (pure)."""
    if failures < settings.login_throttle_after:
        return 0
    return int(
        min(2 ** (failures - settings.login_throttle_after), settings.login_throttle_max_seconds)
    )


def _wait(until: datetime, now: datetime) -> int:
    return max(1, math.ceil((until - now).total_seconds()))


def authenticate(
    session: Session, *, username: str, password: str, settings: Settings
) -> LoginResult:
    """Check a password under throttling and lockout; records failures on the session."""
    now = clock.utcnow()
    key = username.strip().lower()[:64]
    attempt = session.get(LoginAttempt, key)
    if attempt is not None:
        if attempt.locked_until is not None and attempt.locked_until > now:
            return LoginResult(LoginOutcome.LOCKED, retry_after=_wait(attempt.locked_until, now))
        delay = throttle_delay(attempt.failures, settings)
        if delay and attempt.last_failure_at is not None:
            allowed_at = attempt.last_failure_at + timedelta(seconds=delay)
            if allowed_at > now:
                return LoginResult(LoginOutcome.THROTTLED, retry_after=_wait(allowed_at, now))
    user = session.scalars(select(User).where(col(User.username) == key)).first()
    if not verify_password(password, user.password_hash if user else None, settings):
        attempt = attempt or LoginAttempt(username=key, failures=0)
        if attempt.locked_until is not None and attempt.locked_until <= now:
            attempt.failures, attempt.locked_until = 0, None  # lock served; start afresh
        attempt.failures += 1
        attempt.last_failure_at = now
        if attempt.failures >= settings.lockout_threshold:
            attempt.locked_until = now + timedelta(minutes=settings.lockout_minutes)
        session.add(attempt)
        if attempt.locked_until is not None:
            return LoginResult(
                LoginOutcome.LOCKED, user, retry_after=_wait(attempt.locked_until, now)
            )
        return LoginResult(LoginOutcome.BAD_CREDENTIALS, user)
    assert user is not None
    if attempt is not None:
        session.delete(attempt)
    if not user.is_active:
        # Answer as for a wrong password: the caller learns nothing about the account.
        return LoginResult(LoginOutcome.BAD_CREDENTIALS, user)
    return LoginResult(LoginOutcome.OK, user)


class UserError(ValueError):
    """A user-administration request that cannot be carried out; `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def create_user(
    session: Session,
    *,
    username: str,
    password: str,
    full_name: str,
    role: Role,
    settings: Settings,
    patient_id: str | None = None,
    is_clinical_lead: bool = False,
) -> User:
    """Create a user; patients must be linked to a patient record, staff must not."""
    name = username.strip().lower()
    if (
        not name
        or len(name) > 64
        or not name.replace("_", "").replace("-", "").replace(".", "").isalnum()
    ):
        raise UserError("invalid_username", "usernames are 1-64 letters, digits, . _ -")
    if len(password) < settings.password_min_length:
        raise UserError(
            "weak_password", f"passwords need at least {settings.password_min_length} characters"
        )
    if (role is Role.PATIENT) != (patient_id is not None):
        raise UserError("patient_link", "patient users, and only they, link to a patient record")
    if session.scalars(select(col(User.id)).where(col(User.username) == name)).first() is not None:
        raise UserError("username_taken", f"user {name} exists")
    if patient_id is not None:
        if session.get(Patient, patient_id) is None:
            raise UserError("patient_not_found", "no such patient")
        linked = select(col(User.id)).where(col(User.patient_id) == patient_id)
        if session.scalars(linked).first() is not None:
            raise UserError("patient_linked", "that patient record already has a user")
    user = User(
        username=name,
        full_name=full_name,
        role=role,
        password_hash=hash_password(password, settings),
        patient_id=patient_id,
        is_clinical_lead=is_clinical_lead,
    )
    session.add(user)
    session.flush()
    return user


def disable_user(session: Session, *, user: User) -> User:
    """Disable a user at once: tokens and sessions stop working on their next use."""
    user.is_active = False
    user.disabled_at = clock.utcnow()
    for web in session.scalars(
        select(WebSession).where(
            col(WebSession.user_id) == user.id, col(WebSession.revoked_at).is_(None)
        )
    ):
        web.revoked_at = user.disabled_at
    session.add(user)
    session.flush()
    return user


def open_session(session: Session, *, user: User, settings: Settings) -> tuple[str, WebSession]:
    """Start a portal session; returns the cookie token (only its hash is stored)."""
    token, token_hash = new_session_token()
    now = clock.utcnow()
    web = WebSession(
        id=token_hash,
        user_id=user.id or 0,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(hours=settings.session_max_hours),
    )
    session.add(web)
    session.flush()
    return token, web


class SessionState(StrEnum):
    """Whether a presented session cookie is usable."""

    ACTIVE = "active"
    EXPIRED = "session_expired"
    INVALID = "session_invalid"


def resume_session(
    session: Session, *, token: str, settings: Settings
) -> tuple[SessionState, WebSession | None]:
    """Look up a cookie session, enforcing idle and absolute timeouts; touches last_seen."""
    web = session.get(WebSession, session_token_hash(token))
    if web is None or web.revoked_at is not None:
        return SessionState.INVALID, None
    now = clock.utcnow()
    idle_limit = web.last_seen_at + timedelta(minutes=settings.session_idle_minutes)
    if now > idle_limit or now > web.expires_at:
        web.revoked_at = now
        session.add(web)
        return SessionState.EXPIRED, web
    # Touch at most once a minute: a write per page view would serialise readers on SQLite.
    if now - web.last_seen_at > timedelta(seconds=60):
        web.last_seen_at = now
        session.add(web)
    return SessionState.ACTIVE, web


def close_session(session: Session, *, web: WebSession) -> None:
    """End a portal session (log out)."""
    web.revoked_at = clock.utcnow()
    session.add(web)
