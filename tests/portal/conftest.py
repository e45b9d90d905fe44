"""Fixtures for the portal tests: the review scene on the standard world, and signing in."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.auth.models import Role
from app.core import clock
from app.db import session_factory
from app.patients import service as patients
from tests.conftest import PASSWORD, World
from tests.portal.seed import ReviewCast, seed_review


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in page"
    return match.group(1)


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    page = client.get("/portal/login")
    r = client.post(
        "/portal/login",
        data={"username": username, "password": password, "csrf_token": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/portal/").text)


@dataclass
class Scene:
    """The world plus the review data: proposals and alerts of pa1, pa2 (team A), pb1 (B)."""

    world: World
    cast: ReviewCast

    def proposal(self, name: str) -> str:
        """The id of a patient's waiting proposal."""
        return self.cast.proposals[name].id

    def patient(self, name: str) -> str:
        """A patient's id."""
        return self.world.patients[name].id


@pytest.fixture
def scene(world: World) -> Scene:
    """pa1 (crisis alert, proposal waiting 30 h), pa2 (data gap), pb1, each with history."""
    cast = seed_review(
        world.session,
        patients={k: world.patients[k].id for k in ("pa1", "pa2", "pb1")},
        author_id=world.users["clina"].id or 0,
        now=clock.utcnow(),
    )
    world.session.commit()
    return Scene(world, cast)


@pytest.fixture
def colleague(world: World) -> str:
    """A second clinician on team A (username `clina2`)."""
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
    return "clina2"


T = TypeVar("T")


@pytest.fixture
def peek(engine: Engine) -> Callable[[Callable[[Session], T]], T]:
    """Run a read in a short session of its own (a long-lived one would hold SQLite's writer
    slot and stall the app's requests)."""

    def run(read: Callable[[Session], T]) -> T:
        with session_factory(engine)() as session:
            return read(session)

    return run
