"""Shared fixtures: an isolated migrated database per test, the app, users and tokens.

Each test gets its own database: on SQLite a copy of a file migrated once per run; on
PostgreSQL (CLINAIOPS_TEST_DATABASE_URL) a database cloned from a migrated template.
Tests that use the database are marked `db` automatically; CI re-runs them on PostgreSQL.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, make_url, text
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.auth.models import Role, User
from app.auth.security import create_access_token
from app.core import clock
from app.core.config import Environment, Settings
from app.db import make_engine, session_factory
from app.main import create_app
from app.migrate import upgrade
from app.patients import service as patients
from app.patients.models import CareTeam, Patient, Sex
from audit import keys
from device_ingest import service as devices
from device_ingest.models import DeviceClass
from policies.scopes import ROLE_SCOPES

if TYPE_CHECKING:
    from playwright.sync_api import Browser

PG_ENV = "CLINAIOPS_TEST_DATABASE_URL"
PASSWORD = "correct-horse-battery"
ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT.parent / "shared" / "conformance"
_counter = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark database tests; skip PostgreSQL-only tests when no PostgreSQL URL is given."""
    pg = os.environ.get(PG_ENV)
    for item in items:
        if "engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)
        if item.get_closest_marker("postgres") and not pg:
            item.add_marker(pytest.mark.skip(reason=f"needs PostgreSQL: set {PG_ENV}"))


# Debian's Chromium: the browser tests drive it with Playwright (whose own builds are unused).
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for one test module's browser tests; closed at the module's end."""
    from playwright.sync_api import sync_playwright  # late: only browser tests need it

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def is_postgres() -> bool:
    """True when this run targets PostgreSQL."""
    return bool(os.environ.get(PG_ENV))


@pytest.fixture(scope="session")
def _template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pg = os.environ.get(PG_ENV)
    if pg:
        # Set but unreachable must fail the run, never skip: no silent green on SQLite.
        admin = make_engine(pg, pool=False)
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
        admin.dispose()
        upgrade(pg)
        yield pg
        return
    path = tmp_path_factory.mktemp("template") / "template.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    # Fold the WAL into the main file so a plain file copy is a complete database.
    eng = make_engine(url, pool=False)
    with eng.connect() as conn:
        conn.exec_driver_sql("COMMIT")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    eng.dispose()
    yield url


@pytest.fixture
def db_url(_template: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    if _template.startswith("sqlite"):
        src = Path(_template.split("///", 1)[1])
        dst = tmp_path / "test.db"
        shutil.copyfile(src, dst)
        yield f"sqlite:///{dst}"
        return
    base = make_url(_template)
    name = f"{base.database}_t{os.getpid()}_{next(_counter)}"
    admin = make_engine(
        base.set(database="postgres").render_as_string(hide_password=False), pool=False
    )
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{base.database}"'))
    yield base.set(database=name).render_as_string(hide_password=False)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on this test's database."""
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Test settings: cheap argon2, insecure cookies allowed, a per-test signing key."""
    key_path = tmp_path / "signing.pem"
    keys.create_signing_key(key_path)
    return Settings(
        environment=Environment.TEST,
        data_dir=tmp_path,
        database_url=db_url,
        signing_key_path=key_path,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
        cookie_secure=False,
        loop_worker_seconds=0,  # tests drive the loop themselves
        daily_evaluation_hour_utc=None,
    )


@pytest.fixture
def app(settings: Settings, engine: Engine) -> FastAPI:
    """The application on this test's database."""
    return create_app(settings, engine)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """An HTTP client for the app (server errors become 500 responses, not exceptions)."""
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    """A session for arranging and inspecting data; the test commits what it arranges."""
    with session_factory(engine)() as session:
        yield session


@dataclass
class World:
    """Two care teams with a clinician and two patients each, plus every other role."""

    session: Session
    settings: Settings
    users: dict[str, User]
    patients: dict[str, Patient]
    teams: dict[str, CareTeam]

    def token(self, username: str, scopes: frozenset[str] | None = None) -> str:
        """A valid bearer token for a user, without going through the login endpoint."""
        user = self.users[username]
        issued = create_access_token(
            user_id=user.id or 0,
            role=user.role,
            scopes=ROLE_SCOPES[user.role] if scopes is None else scopes,
            settings=self.settings,
        )
        return issued.token

    def auth(self, username: str) -> dict[str, str]:
        """Authorization header for a user."""
        return {"Authorization": f"Bearer {self.token(username)}"}

    def device(
        self, patient: str, device_class: DeviceClass = DeviceClass.VALIDATED_CUFF
    ) -> tuple[str, str]:
        """Register a device for a patient; returns (device_id, api_key)."""
        device, key = devices.register(
            self.session, patient_id=self.patients[patient].id, device_class=device_class
        )
        self.session.commit()
        return device.id, key


@pytest.fixture
def world(db: Session, settings: Settings) -> World:
    """The standard cast: teams A and B, clinicians, patients pa1/pa2 (A), pb1/pb2 (B)."""
    users: dict[str, User] = {}
    pts: dict[str, Patient] = {}

    def mk(username: str, role: Role, **kw: Any) -> User:
        users[username] = auth_service.create_user(
            db,
            username=username,
            password=PASSWORD,
            full_name=username.title(),
            role=role,
            settings=settings,
            **kw,
        )
        return users[username]

    teams = {
        "A": patients.create_care_team(db, name="Team A"),
        "B": patients.create_care_team(db, name="Team B"),
    }
    for team_name, team in teams.items():
        clinician = mk(f"clin{team_name.lower()}", Role.CLINICIAN)
        patients.add_member(db, team=team, user=clinician)
        for i in (1, 2):
            key = f"p{team_name.lower()}{i}"
            pts[key] = patients.register_patient(
                db,
                pseudonym=f"P-{key.upper()}",
                given_name=f"Given{key}",
                family_name=f"Family{key}",
                birth_date=date(1960, 1, i),
                sex=Sex.FEMALE,
            )
            patients.add_patient(db, team=team, patient=pts[key])
            mk(key, Role.PATIENT, patient_id=pts[key].id)
    mk("auditor", Role.AUDITOR)
    mk("mleng", Role.ML_ENGINEER)
    mk("admin", Role.ADMIN)
    db.commit()
    return World(db, settings, users, pts, teams)


class FrozenClock:
    """A controllable replacement for app.core.clock.utcnow."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        """Move time forward."""
        from datetime import timedelta

        self.now = self.now + timedelta(**delta)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    """Freeze the service's clock at the real current time; tests move it forward."""
    fc = FrozenClock(clock.utcnow())
    monkeypatch.setattr(clock, "utcnow", fc)
    return fc


@pytest.fixture
def count_audit(engine: Engine) -> Callable[..., int]:
    """Count audit entries matching column filters, in a short session of its own."""
    from audit.models import AuditEntry

    def count(**filters: Any) -> int:
        with session_factory(engine)() as session:
            q = session.query(AuditEntry)
            for k, v in filters.items():
                q = q.filter(getattr(AuditEntry, k) == v)
            return q.count()

    return count
