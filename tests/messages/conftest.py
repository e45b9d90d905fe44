"""Fixtures for the messaging tests: an API client speaking for each cast member, and a
second clinician on team A."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth import service as auth_service
from app.auth.models import Role
from app.db import session_factory
from app.patients import service as patients
from audit.models import AuditEntry
from tests.conftest import PASSWORD, FrozenClock, World

# Content that must never leave the conversation: found anywhere else, it is a leak.
SECRET = "Secret-dizzy-after-the-new-pill-7Q"


@dataclass
class Api:
    """The messaging API, called as a cast member (`pa1`, `clina`, ...)."""

    client: TestClient
    world: World

    def get(self, who: str, path: str, **params: Any) -> httpx.Response:
        """GET as `who`."""
        return self.client.get(path, headers=self.world.auth(who), params=params)

    def post(self, who: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """POST JSON as `who`."""
        return self.client.post(path, headers=self.world.auth(who), json=body or {})

    def post_raw(self, who: str, path: str, content: bytes) -> httpx.Response:
        """POST a JSON document given as bytes (e.g. with escapes no Python str encodes)."""
        headers = self.world.auth(who) | {"Content-Type": "application/json"}
        return self.client.post(path, headers=headers, content=content)

    def patient_start(
        self,
        who: str,
        subject: str = "Question about my dose",
        body: str = "Should I take it in the morning?",
        *,
        is_question: bool = False,
    ) -> dict[str, Any]:
        """A patient starts a thread; returns the created thread."""
        r = self.post(
            who,
            "/api/v1/me/messages",
            {"subject": subject, "body": body, "is_question": is_question},
        )
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    def care_start(
        self,
        who: str,
        patient: str,
        subject: str = "Your readings",
        body: str = "Your mornings look better this week.",
    ) -> dict[str, Any]:
        """A clinician starts a thread with a patient (by cast name)."""
        pid = self.world.patients[patient].id
        r = self.post(who, f"/api/v1/patients/{pid}/messages", {"subject": subject, "body": body})
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out


@pytest.fixture
def rewound(frozen_clock: FrozenClock) -> FrozenClock:
    """The frozen clock, 10 minutes back: a test may move it forward up to 10 minutes and
    still mint tokens that the wall clock accepts (PyJWT checks `iat` against it)."""
    frozen_clock.now -= timedelta(minutes=10)
    return frozen_clock


@pytest.fixture
def api(client: TestClient, world: World) -> Api:
    """The messaging API on the standard world."""
    return Api(client, world)


@pytest.fixture
def colleague(world: World) -> str:
    """A second clinician on team A (`clina2`)."""
    user = auth_service.create_user(
        world.session,
        username="clina2",
        password=PASSWORD,
        full_name="Dr. Second Colleague",
        role=Role.CLINICIAN,
        settings=world.settings,
    )
    patients.add_member(world.session, team=world.teams["A"], user=user)
    world.session.commit()
    world.users["clina2"] = user
    return "clina2"


@pytest.fixture
def audit_rows(engine: Engine) -> Callable[..., list[AuditEntry]]:
    """Audit entries whose action starts with a prefix, oldest first, in a session of their own."""

    def rows(prefix: str = "") -> list[AuditEntry]:
        with session_factory(engine)() as session:
            return list(
                session.scalars(
                    select(AuditEntry)
                    .where(col(AuditEntry.action).startswith(prefix))
                    .order_by(col(AuditEntry.seq))
                )
            )

    return rows


@pytest.fixture
def short(engine: Engine) -> Callable[[], Session]:
    """A short-lived session (SQLite: a long one would hold the writer slot)."""
    return session_factory(engine)
