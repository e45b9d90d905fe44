"""Fixtures for the hostile sweep of the issue-6 routes: a seeded scene (a regimen, goals, a
thread and a due visit for pa1; pb1 in the other team with the same), callers for every role
and credential kind, and the route catalogue with real ids filled in.

Every route must answer a hostile request with a 4xx problem document carrying a `code` (the
portal: an HTML page with the right status), never a 500, and never show another patient's
data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.core import clock
from app.db import session_factory
from audit.models import AuditEntry
from device_ingest.models import DeviceClass
from loops import service as loops
from loops.care import service as care
from loops.care.models import GoalKind
from loops.messages import service as messages
from loops.messages.models import SenderSide
from loops.visits import service as visits
from policies.envelope import EnvelopeRules, TitrationAction
from tests.conftest import World
from tests.portal.conftest import sign_in

UNKNOWN = "00000000-0000-4000-8000-000000000000"
PROBLEM = "application/problem+json"
ROLES = ("pa1", "pa2", "pb1", "clina", "clinb", "auditor", "mleng", "admin")


@dataclass
class Scene:
    """The world plus ids of pa1's and pb1's goals, threads and visits."""

    world: World
    ids: dict[str, str] = field(default_factory=dict)

    def pid(self, name: str) -> str:
        """A patient's id by cast name."""
        return self.world.patients[name].id


def _seed_patient(world: World, name: str, clinician: str, now: Any) -> dict[str, str]:
    s = world.session
    pid = world.patients[name].id
    user_id = world.users[clinician].id or 0
    ladder = loops.create_ladder(
        s, drug=f"lisinopril-{name}", steps=[5.0, 10.0, 20.0, 40.0], rxnorm_code="29046"
    )
    loops.start_regimen(s, patient_id=pid, ladder=ladder, step=1)
    loops.add_envelope_version(
        s,
        patient_id=pid,
        rules=EnvelopeRules(
            auto_actions=frozenset({TitrationAction.HOLD, TitrationAction.INCREASE}),
            max_dose_step=3,
        ),
        author_id=user_id,
        reason="start",
        effective_at=now - timedelta(days=30),
    )
    by_clin = care.propose_goal(
        s,
        patient_id=pid,
        kind=GoalKind.DAILY_STEPS,
        target_value=6000,
        target_systolic=None,
        target_diastolic=None,
        note="walk",
        side=care.Side.CLINICIAN,
        user_id=user_id,
        now=now,
    )
    by_patient = care.propose_goal(
        s,
        patient_id=pid,
        kind=GoalKind.SODIUM,
        target_value=2000,
        target_systolic=None,
        target_diastolic=None,
        note="",
        side=care.Side.PATIENT,
        user_id=world.users[name].id or 0,
        now=now,
    )
    thread, _ = messages.start_thread(
        s,
        patient_id=pid,
        sender_id=world.users[name].id or 0,
        side=SenderSide.PATIENT,
        subject=f"subject-of-{name}",
        body=f"body-of-{name}",
        is_question=True,
        now=now,
    )
    visit = visits.recompute(s, patient_id=pid, now=now).visit
    s.commit()
    return {
        f"{name}.goal_by_clin": by_clin.id,
        f"{name}.goal_by_patient": by_patient.id,
        f"{name}.thread": thread.id,
        f"{name}.visit": visit.id,
    }


@pytest.fixture
def scene(world: World) -> Scene:
    """pa1 (team A) and pb1 (team B) each with a regimen, an envelope, a step goal proposed by
    the clinician, a sodium goal proposed by the patient, a question thread and a due visit;
    pa2 has nothing at all."""
    now = clock.utcnow()
    ids: dict[str, str] = {}
    ids.update(_seed_patient(world, "pa1", "clina", now))
    ids.update(_seed_patient(world, "pb1", "clinb", now))
    return Scene(world, ids)


@dataclass
class Caller:
    """The app called as a cast member with a bearer token (or a device key, or nobody)."""

    client: TestClient
    headers: dict[str, str]

    def __call__(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request; `headers=` adds to the caller's."""
        headers = {**self.headers, **kw.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kw)


@pytest.fixture
def as_(client: TestClient, world: World) -> Callable[[str], Caller]:
    """A caller by name: a cast member, `device` (pa1's device key) or `anonymous`."""
    made: dict[str, Caller] = {}

    def get(who: str) -> Caller:
        if who not in made:
            if who == "anonymous":
                headers: dict[str, str] = {}
            elif who == "device":
                _, key = world.device("pa1", DeviceClass.VALIDATED_CUFF)
                headers = {"Authorization": f"Bearer {key}"}
            else:
                headers = world.auth(who)
            made[who] = Caller(client, headers)
        return made[who]

    return get


@pytest.fixture
def browser(app: FastAPI) -> Iterator[Callable[[str], tuple[TestClient, str]]]:
    """Signed-in portal clients (session cookie and CSRF token) by username."""
    opened: list[TestClient] = []

    def open_as(username: str) -> tuple[TestClient, str]:
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        opened.append(c)
        return c, sign_in(c, username)

    yield open_as
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture
def short(engine: Engine) -> Callable[[], Session]:
    """A short-lived session of its own (a long one would hold SQLite's writer slot)."""
    return session_factory(engine)


@pytest.fixture
def audits(engine: Engine) -> Callable[..., int]:
    """How many audit entries match (action, outcome, ...) column filters."""

    def count(**filters: Any) -> int:
        with session_factory(engine)() as s:
            q = select(func.count()).select_from(AuditEntry)
            for k, v in filters.items():
                q = q.where(getattr(AuditEntry, k) == v)
            return int(s.scalar(q) or 0)

    return count


def assert_problem(r: httpx.Response, *statuses: int) -> None:
    """A 4xx problem document with a machine-readable code (and one of `statuses` if given)."""
    assert r.status_code != 500, r.text
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if statuses:
        assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body = r.json()
    assert isinstance(body.get("code"), str), body
    assert body["code"], body
    assert body["status"] == r.status_code


@dataclass(frozen=True)
class Route:
    """One issue-6 API route with real ids: `scope` says whose it is (`me`: the caller's own
    record, `me_obj`: pa1's object under /me, `team`: pa1 through the care team, `listing`:
    across the caller's patients)."""

    method: str
    path: str
    scope: str
    body: dict[str, Any] | None = None

    @property
    def writes(self) -> bool:
        """A POST or PUT."""
        return self.method in ("POST", "PUT")


def api_routes(scene: Scene) -> list[Route]:
    """Every issue-6 API route (the list in loops/{care,visits,messages}/views.py), with a
    valid body for the writes."""
    pa1, ids = scene.pid("pa1"), scene.ids
    g, gp, t = ids["pa1.goal_by_clin"], ids["pa1.goal_by_patient"], ids["pa1.thread"]
    goal = {"kind": "daily_steps", "target_value": 7000}
    msg = {"subject": "s", "body": "b"}
    return [
        Route("GET", "/api/v1/me/goals", "me"),
        Route("POST", "/api/v1/me/goals", "me", goal),
        Route("POST", f"/api/v1/me/goals/{g}/agree", "me_obj"),
        Route("POST", f"/api/v1/me/goals/{g}/decline", "me_obj", {"reason": "r"}),
        Route("POST", f"/api/v1/me/goals/{gp}/withdraw", "me_obj", {"reason": "r"}),
        Route("POST", f"/api/v1/me/goals/{gp}/logs", "me_obj", {"day": "2026-12-01", "value": 1}),
        Route("GET", f"/api/v1/me/goals/{gp}/logs", "me_obj"),
        Route("GET", "/api/v1/me/care-plan", "me"),
        Route("GET", f"/api/v1/patients/{pa1}/goals", "team"),
        Route("POST", f"/api/v1/patients/{pa1}/goals", "team", goal),
        Route("POST", f"/api/v1/goals/{gp}/agree", "team"),
        Route("POST", f"/api/v1/goals/{gp}/decline", "team", {"reason": "r"}),
        Route("POST", f"/api/v1/goals/{g}/withdraw", "team", {"reason": "r"}),
        Route("GET", f"/api/v1/patients/{pa1}/care-plan", "team"),
        Route(
            "PUT",
            f"/api/v1/patients/{pa1}/care-plan/note",
            "team",
            {"note": "n", "change_reason": "r"},
        ),
        Route("GET", f"/api/v1/patients/{pa1}/care-plan/versions", "team"),
        Route("GET", f"/fhir/R4/CarePlan?patient={pa1}", "team"),
        Route("GET", "/api/v1/me/next-visit", "me"),
        Route("GET", f"/api/v1/patients/{pa1}/next-visit", "team"),
        Route(
            "PUT",
            f"/api/v1/patients/{pa1}/next-visit",
            "team",
            {"due_by": clock.iso(clock.utcnow() + timedelta(days=9)), "reason": "r"},
        ),
        Route("POST", f"/api/v1/patients/{pa1}/next-visit/complete", "team", {"note": "n"}),
        Route("GET", "/api/v1/visits/due", "listing"),
        Route("GET", f"/api/v1/patients/{pa1}/previsit-summary", "team"),
        Route("GET", f"/api/v1/patients/{pa1}/previsit-summary.pdf", "team"),
        Route("GET", "/api/v1/me/messages", "me"),
        Route("POST", "/api/v1/me/messages", "me", msg),
        Route("GET", f"/api/v1/me/messages/{t}", "me_obj"),
        Route("POST", f"/api/v1/me/messages/{t}", "me_obj", {"body": "b"}),
        Route("POST", f"/api/v1/me/messages/{t}/close", "me_obj"),
        Route("GET", f"/api/v1/patients/{pa1}/messages", "team"),
        Route("POST", f"/api/v1/patients/{pa1}/messages", "team", msg),
        Route("GET", "/api/v1/messages/unread", "listing"),
        Route("GET", f"/api/v1/messages/threads/{t}", "team"),
        Route("POST", f"/api/v1/messages/threads/{t}", "team", {"body": "b"}),
        Route("POST", f"/api/v1/messages/threads/{t}/close", "team"),
        Route("POST", f"/api/v1/messages/threads/{t}/reopen", "team"),
    ]


# Text of pa1's that nobody outside pa1's care may see.
PA1_SECRETS = ("subject-of-pa1", "body-of-pa1", "Givenpa1", "Familypa1", "P-PA1", "lisinopril-pa1")


def acts(engine: Engine) -> int:
    """Audit entries so far, leaving out care-plan versions (a read may write one, as an act
    of its own)."""
    with session_factory(engine)() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.action != "care_plan.version")
            )
            or 0
        )


@pytest.fixture
def data_of(world: World) -> Any:
    """Hand-built device data (readings of any device class) for the cast."""
    from tests.care.conftest import Data

    return Data(world.session, world)
