"""State edge cases: acts out of turn or twice (agree own proposal, agree twice at once, reply
to a closed thread), and patients with nothing to show (no readings, regimen, goals, visits or
messages; a cuffless-only device): always a coded 4xx or a page, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from io import BytesIO

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from audit.models import AuditEntry
from device_ingest.models import DeviceClass
from loops.care.models import Goal
from tests.care.conftest import Data
from tests.hostile.conftest import Caller, Scene, assert_problem


@pytest.mark.parametrize(
    ("who", "path", "code"),
    [
        ("pa1", "/api/v1/me/goals/{gp}/agree", "own_proposal"),
        ("clina", "/api/v1/goals/{g}/agree", "own_proposal"),
        ("pa1", "/api/v1/me/goals/{gp}/decline", "own_proposal"),
        ("clina", "/api/v1/goals/{g}/decline", "own_proposal"),
        ("pa1", "/api/v1/me/goals/{g}/withdraw", "not_proposer"),
        ("clina", "/api/v1/goals/{gp}/withdraw", "not_proposer"),
        ("pa1", "/api/v1/me/goals/{g}/logs", "not_loggable"),
    ],
)
def test_goal_act_when_out_of_turn_is_coded_4xx(
    scene: Scene, as_: Callable[[str], Caller], who: str, path: str, code: str
) -> None:
    ids = scene.ids
    body = {"day": clock.utcnow().date().isoformat(), "value": 1} if path.endswith("logs") else {}
    url = path.format(g=ids["pa1.goal_by_clin"], gp=ids["pa1.goal_by_patient"])
    r = as_(who)("POST", url, json=body)
    assert_problem(r, 409, 422)
    assert r.json()["code"] == code


def test_goal_when_agreed_twice_at_once_is_agreed_once(
    scene: Scene, as_: Callable[[str], Caller], short: Callable[[], Session]
) -> None:
    gid = scene.ids["pa1.goal_by_clin"]
    caller = as_("pa1")
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: caller("POST", f"/api/v1/me/goals/{gid}/agree"), range(4))
        )
    assert sorted(r.status_code for r in answers) == [200, 409, 409, 409]
    for r in answers:
        if r.status_code == 409:
            assert r.json()["code"] == "invalid_transition"
    with short() as s:
        agreed = s.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(col(AuditEntry.action) == "goal.agree", col(AuditEntry.outcome) == "success")
        )
        assert agreed == 1


def test_goals_of_a_kind_when_agreed_at_once_leave_one_in_force(
    scene: Scene, as_: Callable[[str], Caller], short: Callable[[], Session]
) -> None:
    pid = scene.pid("pa1")
    made = [
        as_("clina")(
            "POST", f"/api/v1/patients/{pid}/goals", json={"kind": "sleep", "target_value": v}
        )
        for v in (7, 8, 9)
    ]
    ids = [r.json()["id"] for r in made]
    caller = as_("pa1")
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda g: caller("POST", f"/api/v1/me/goals/{g}/agree"), ids))
    assert all(r.status_code < 500 for r in answers), [r.text for r in answers]
    with short() as s:
        statuses = sorted(s.scalars(select(Goal.status).where(col(Goal.id).in_(ids))))
    assert statuses.count("agreed") == 1
    assert set(statuses) <= {"agreed", "superseded", "proposed"}


def test_thread_when_closed_refuses_replies_and_a_second_close(
    scene: Scene, as_: Callable[[str], Caller]
) -> None:
    tid = scene.ids["pa1.thread"]
    assert as_("pa1")("POST", f"/api/v1/me/messages/{tid}/close").status_code == 200
    for who, path, code in [
        ("pa1", f"/api/v1/me/messages/{tid}", "thread_closed"),
        ("clina", f"/api/v1/messages/threads/{tid}", "thread_closed"),
        ("pa1", f"/api/v1/me/messages/{tid}/close", "invalid_transition"),
        ("clina", f"/api/v1/messages/threads/{tid}/close", "invalid_transition"),
        ("pa1", f"/api/v1/messages/threads/{tid}/reopen", "care_team_only"),
    ]:
        r = as_(who)("POST", path, json={"body": "late"})
        assert_problem(r, 403, 409)
        assert r.json()["code"] == code
    assert as_("clina")("POST", f"/api/v1/messages/threads/{tid}/reopen").status_code == 200
    r = as_("clina")("POST", f"/api/v1/messages/threads/{tid}/reopen")
    assert_problem(r, 409)


def test_goal_log_when_goal_is_closed_is_409(scene: Scene, as_: Callable[[str], Caller]) -> None:
    gp = scene.ids["pa1.goal_by_patient"]
    assert as_("pa1")("POST", f"/api/v1/me/goals/{gp}/withdraw").status_code == 200
    r = as_("pa1")(
        "POST",
        f"/api/v1/me/goals/{gp}/logs",
        json={"day": clock.utcnow().date().isoformat(), "value": 1},
    )
    assert_problem(r, 409)
    assert r.json()["code"] == "goal_closed"


EMPTY_READS = [
    "/api/v1/patients/{pid}/goals?include_closed=true",
    "/api/v1/patients/{pid}/care-plan",
    "/api/v1/patients/{pid}/care-plan?format=fhir",
    "/api/v1/patients/{pid}/care-plan/versions",
    "/fhir/R4/CarePlan?patient={pid}",
    "/api/v1/patients/{pid}/next-visit",
    "/api/v1/patients/{pid}/previsit-summary",
    "/api/v1/patients/{pid}/messages",
    "/api/v1/visits/due",
    "/api/v1/messages/unread",
]


@pytest.mark.parametrize("cuffless", [False, True], ids=["nothing", "cuffless-only"])
def test_reads_when_patient_has_nothing_to_show_answer_200(
    scene: Scene,
    as_: Callable[[str], Caller],
    browser: Callable[[str], tuple[TestClient, str]],
    data_of: Data,
    cuffless: bool,
) -> None:
    pid = scene.pid("pa2")
    if cuffless:
        now = clock.utcnow()
        rows = [(now - timedelta(days=d, hours=h), 150.0, 95.0) for d in range(20) for h in (1, 12)]
        data_of.bp("pa2", rows, device_class=DeviceClass.CUFFLESS_WEARABLE)
        agreed = as_("clina")(
            "POST",
            f"/api/v1/patients/{pid}/goals",
            json={"kind": "blood_pressure", "target_systolic": 130, "target_diastolic": 80},
        )
        assert (
            as_("pa2")("POST", f"/api/v1/me/goals/{agreed.json()['id']}/agree").status_code == 200
        )
    for path in EMPTY_READS:
        r = as_("clina")("GET", path.format(pid=pid))
        assert r.status_code == 200, (path, r.text)
    for path in [
        "/api/v1/me/goals",
        "/api/v1/me/care-plan",
        "/api/v1/me/next-visit",
        "/api/v1/me/messages",
    ]:
        assert as_("pa2")("GET", path).status_code == 200, path
    summary = as_("clina")("GET", f"/api/v1/patients/{pid}/previsit-summary").json()
    # Cuffless readings never count as home BP (2025 ACC/AHA): nothing to judge control by.
    assert (summary["readings"], summary["control"], summary["time_in_range"]) == (
        0,
        "no_data",
        None,
    )
    goals = as_("pa2")("GET", "/api/v1/me/goals").json()
    assert all(g["progress"]["met"] is None for g in goals)
    reason = as_("clina")("GET", f"/api/v1/patients/{pid}/next-visit").json()["schedule"]["reasons"]
    assert reason == ["insufficient_data"]


def test_previsit_pdf_when_patient_has_nothing_to_show_is_a_readable_page(
    scene: Scene, as_: Callable[[str], Caller]
) -> None:
    r = as_("clina")("GET", f"/api/v1/patients/{scene.pid('pa2')}/previsit-summary.pdf")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/pdf"
    reader = PdfReader(BytesIO(r.content))
    assert len(reader.pages) == 1
    assert "P-PA2" in reader.pages[0].extract_text()


@pytest.mark.parametrize("who", ["clina", "pa2"])
def test_pages_when_patient_has_nothing_to_show_render(
    scene: Scene, browser: Callable[[str], tuple[TestClient, str]], who: str
) -> None:
    c, _ = browser(who)
    pid = scene.pid("pa2")
    pages = [
        f"/portal/patients/{pid}/care",
        f"/portal/patients/{pid}/care/history",
        f"/portal/patients/{pid}/messages",
    ]
    if who == "clina":
        pages += [f"/portal/patients/{pid}/previsit", "/portal/visits/due", "/portal/messages"]
    for page in pages:
        r = c.get(page)
        assert r.status_code == 200, (page, r.status_code)
