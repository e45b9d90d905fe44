"""Every issue-6 API route as every role that has no business with pa1's data: refused with a
problem document carrying a code, nothing of pa1's in the answer, nothing changed, and each
refusal audited exactly once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from loops.care.models import CarePlanVersion, Goal, GoalLog
from loops.messages.models import Message, MessageThread
from loops.visits.models import Visit
from tests.hostile.conftest import (
    PA1_SECRETS,
    Caller,
    Scene,
    acts,
    api_routes,
    assert_problem,
)

# Who is an outsider to which kind of route (see conftest.Route).
OUTSIDERS: dict[str, tuple[str, ...]] = {
    "me": ("clina", "clinb", "auditor", "mleng", "admin", "device", "anonymous"),
    "me_obj": ("pa2", "pb1", "clina", "clinb", "auditor", "mleng", "admin", "device", "anonymous"),
    "team": ("pa2", "pb1", "clinb", "auditor", "mleng", "admin", "device", "anonymous"),
    "listing": ("pa1", "auditor", "mleng", "admin", "device", "anonymous"),
}
EXPECTED = {"anonymous": {401}, "device": {403}, "auditor": {403}, "mleng": {403}, "admin": {403}}


def pa1_state(short: Callable[[], Session], pid: str) -> tuple[Any, ...]:
    """Everything of pa1's the issue-6 routes could change."""
    with short() as s:
        return (
            sorted(
                s.execute(
                    select(Goal.id, Goal.status, Goal.close_reason).where(
                        col(Goal.patient_id) == pid
                    )
                ).tuples()
            ),
            s.scalar(
                select(func.count()).select_from(GoalLog).where(col(GoalLog.patient_id) == pid)
            ),
            s.scalar(
                select(func.count())
                .select_from(CarePlanVersion)
                .where(col(CarePlanVersion.patient_id) == pid)
            ),
            sorted(
                s.execute(
                    select(MessageThread.id, MessageThread.status).where(
                        col(MessageThread.patient_id) == pid
                    )
                ).tuples()
            ),
            sorted(
                s.execute(
                    select(Message.id, Message.read_at).where(col(Message.patient_id) == pid)
                ).tuples()
            ),
            sorted(
                s.execute(
                    select(Visit.id, Visit.status, Visit.due_by, Visit.override_due_by).where(
                        col(Visit.patient_id) == pid
                    )
                ).tuples()
            ),
        )


@pytest.mark.parametrize(
    "who",
    ["pa2", "pb1", "clinb", "clina", "pa1", "auditor", "mleng", "admin", "device", "anonymous"],
)
def test_route_when_caller_is_outsider_is_refused_audited_once_and_leaks_nothing(
    scene: Scene,
    as_: Callable[[str], Caller],
    short: Callable[[], Session],
    engine: Engine,
    who: str,
) -> None:
    caller = as_(who)
    before = pa1_state(short, scene.pid("pa1"))
    tried = 0
    for route in api_routes(scene):
        if who not in OUTSIDERS[route.scope]:
            continue
        tried += 1
        n = acts(engine)
        r = caller(route.method, route.path, json=route.body or {})
        assert_problem(r, *EXPECTED.get(who, {403, 404}))
        assert not any(secret in r.text for secret in PA1_SECRETS), (who, route, r.text)
        assert acts(engine) == n + 1, (who, route.method, route.path)
    assert tried
    assert pa1_state(short, scene.pid("pa1")) == before


@pytest.mark.parametrize("path", ["/api/v1/visits/due", "/api/v1/messages/unread"])
def test_listing_when_other_team_lists_shows_none_of_pa1(
    scene: Scene, as_: Callable[[str], Caller], path: str
) -> None:
    as_("pa1")("POST", f"/api/v1/me/messages/{scene.ids['pa1.thread']}", json={"body": "more"})
    mine = as_("clina")("GET", path)
    theirs = as_("clinb")("GET", path)
    assert mine.status_code == theirs.status_code == 200
    assert "P-PA1" in mine.text  # the listing does show pa1 to pa1's own team
    assert not any(secret in theirs.text for secret in PA1_SECRETS), theirs.text


@pytest.mark.parametrize("who", ["pa1", "clina"])
def test_route_when_insider_calls_never_fails_and_audits_once(
    scene: Scene, as_: Callable[[str], Caller], engine: Engine, who: str
) -> None:
    caller = as_(who)
    for route in api_routes(scene):
        n = acts(engine)
        r = caller(route.method, route.path, json=route.body or {})
        assert r.status_code < 500, (route, r.text)
        if r.status_code >= 400:
            assert_problem(r)
        assert acts(engine) == n + 1, (who, route.method, route.path, r.status_code)


@pytest.mark.parametrize("who", ["pa1", "clina"])
def test_api_write_when_cookie_session_sends_no_csrf_is_403(
    scene: Scene,
    browser: Callable[[str], tuple[Any, str]],
    short: Callable[[], Session],
    engine: Engine,
    who: str,
) -> None:
    c, csrf = browser(who)
    before = pa1_state(short, scene.pid("pa1"))
    for route in api_routes(scene):
        if not route.writes:
            continue
        for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": csrf[:-1]}):
            n = acts(engine)
            r = c.request(route.method, route.path, json=route.body or {}, headers=headers)
            assert_problem(r, 403)
            assert r.json()["code"] == "csrf_failed"
            assert acts(engine) == n + 1
    assert pa1_state(short, scene.pid("pa1")) == before
    # With the session's token the same cookie acts (one write is enough to show it).
    ok = c.post(
        f"/api/v1/messages/threads/{scene.ids['pa1.thread']}",
        json={"body": "with token"},
        headers={"X-CSRF-Token": csrf},
    )
    assert ok.status_code == 201, ok.text
