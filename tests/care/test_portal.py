"""The goals and care-plan pages: both sides' forms without JavaScript, CSRF, refusals shown
on the page, scope, and the version history."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import col, select

from app.db import session_factory
from loops.care.models import Goal
from loops.models import MedicationRegimen
from tests.conftest import World
from tests.portal.conftest import sign_in


@pytest.fixture
def browser_for(app: FastAPI) -> Iterator[Callable[[str], tuple[TestClient, str]]]:
    """Signed-in portal clients (cookie and CSRF token) by username."""
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
def goals_of(engine: Engine) -> Callable[[str], list[Goal]]:
    """A patient's goals, read in a short session of its own (a long-lived one would hold
    SQLite's writer slot and stall the app's requests)."""

    def read(patient_id: str) -> list[Goal]:
        with session_factory(engine)() as s:
            return list(s.scalars(select(Goal).where(col(Goal.patient_id) == patient_id)))

    return read


def test_care_page_when_clinician_opens_shows_plan_and_forms(
    browser_for: Callable[[str], tuple[TestClient, str]],
    world: World,
    regimens: dict[str, MedicationRegimen],
    count_audit: Callable[..., int],
) -> None:
    pid = world.patients["pa1"].id
    c, _ = browser_for("clina")
    r = c.get(f"/portal/patients/{pid}/care")
    assert r.status_code == 200, r.text
    html = r.text
    assert "Goals and care plan: Familypa1, Givenpa1" in html
    assert "Lisinopril 10 mg once daily" in html
    assert "<strong>10 mg (now)</strong>" in html
    assert "The app may raise your lisinopril dose" in html
    assert "Team A" in html
    assert 'id="edit-note"' in html  # the care team edits the note
    assert 'action="/portal/patients/' + pid + '/care/goals"' in html
    assert re.search(r"data-plan-version>1<", html)
    assert f'href="/portal/patients/{pid}/care/history"' in html
    assert count_audit(action="care_plan.read", patient_id=pid) == 1


def test_goal_forms_when_both_sides_act_make_goal_agreed(
    browser_for: Callable[[str], tuple[TestClient, str]],
    world: World,
    goals_of: Callable[[str], list[Goal]],
    regimens: dict[str, MedicationRegimen],
) -> None:
    pid = world.patients["pa1"].id
    base = f"/portal/patients/{pid}/care"
    clin, clin_csrf = browser_for("clina")
    r = clin.post(
        f"{base}/goals",
        data={
            "csrf_token": clin_csrf,
            "kind": "blood_pressure",
            "target_systolic": "130",
            "target_diastolic": "80",
            "target_value": "9999",  # ignored: not the kind's field
            "note": "Home target",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == f"{base}?notice=proposed"
    page = clin.get(r.headers["location"]).text
    assert "Goal proposed." in page
    assert "waiting for the patient" in page
    [goal] = goals_of(pid)
    assert (goal.target_systolic, goal.target_value) == (130, None)

    patient, patient_csrf = browser_for("pa1")
    mine = patient.get(base).text
    assert "waiting for you" in mine
    assert 'id="edit-note"' not in mine  # patients do not edit the clinician's note
    assert f"{base}/goals/{goal.id}/agree" in mine
    r = patient.post(
        f"{base}/goals/{goal.id}/agree", data={"csrf_token": patient_csrf}, follow_redirects=False
    )
    assert r.status_code == 303
    page = patient.get(r.headers["location"]).text
    assert "Goal agreed" in page
    assert re.search(r"data-plan-version>2<", page)
    assert "Keep home blood pressure below 130/80 mmHg" in page
    assert goals_of(pid)[0].status == "agreed"


def test_goal_form_when_target_invalid_shows_error_and_keeps_input(
    browser_for: Callable[[str], tuple[TestClient, str]],
    world: World,
    goals_of: Callable[[str], list[Goal]],
    count_audit: Callable[..., int],
) -> None:
    pid = world.patients["pa1"].id
    c, csrf = browser_for("pa1")
    r = c.post(
        f"/portal/patients/{pid}/care/goals",
        data={"csrf_token": csrf, "kind": "daily_steps", "target_value": "100", "note": "walks"},
    )
    assert r.status_code == 422
    assert (
        "Not done: a daily_steps target must be 500 to 50,000" in r.text or "500 to 50000" in r.text
    )
    assert 'value="100"' in r.text  # the input is kept
    assert "walks</textarea>" in r.text
    assert goals_of(pid) == []
    assert count_audit(action="goal.propose", outcome="failure") == 1
    r = c.post(
        f"/portal/patients/{pid}/care/goals",
        data={"csrf_token": csrf, "kind": "sleep", "target_value": "lots"},
    )
    assert r.status_code == 422
    assert "target_value must be a number" in r.text


def test_goal_act_when_own_proposal_agreed_shows_conflict(
    browser_for: Callable[[str], tuple[TestClient, str]],
    world: World,
    goals_of: Callable[[str], list[Goal]],
) -> None:
    pid = world.patients["pa1"].id
    c, csrf = browser_for("clina")
    c.post(
        f"/portal/patients/{pid}/care/goals",
        data={"csrf_token": csrf, "kind": "sleep", "target_value": "7"},
    )
    [goal] = goals_of(pid)
    r = c.post(f"/portal/patients/{pid}/care/goals/{goal.id}/agree", data={"csrf_token": csrf})
    assert r.status_code == 409
    assert "the other side agrees to it" in r.text
    r = c.post(
        f"/portal/patients/{pid}/care/goals/{goal.id}/withdraw",
        data={"csrf_token": csrf, "reason": "changed my mind"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert goals_of(pid)[0].close_reason == "changed my mind"


def test_goal_act_when_goal_of_another_patient_is_404(
    browser_for: Callable[[str], tuple[TestClient, str]],
    world: World,
    goals_of: Callable[[str], list[Goal]],
) -> None:
    other = world.patients["pa2"].id
    c, csrf = browser_for("clina")
    c.post(
        f"/portal/patients/{other}/care/goals",
        data={"csrf_token": csrf, "kind": "sleep", "target_value": "7"},
    )
    [goal] = goals_of(other)
    pid = world.patients["pa1"].id
    # The path's patient is in scope, but the goal is not theirs.
    r = c.post(f"/portal/patients/{pid}/care/goals/{goal.id}/decline", data={"csrf_token": csrf})
    assert r.status_code == 404
    assert goals_of(other)[0].status == "proposed"


def test_forms_when_csrf_missing_are_refused(
    browser_for: Callable[[str], tuple[TestClient, str]],
    world: World,
    goals_of: Callable[[str], list[Goal]],
) -> None:
    pid = world.patients["pa1"].id
    c, _ = browser_for("clina")
    r = c.post(f"/portal/patients/{pid}/care/goals", data={"kind": "sleep", "target_value": "7"})
    assert r.status_code == 403
    r = c.post(f"/portal/patients/{pid}/care/note", data={"note": "x", "change_reason": "y"})
    assert r.status_code == 403
    assert goals_of(pid) == []


def test_note_form_when_saved_versions_and_when_reason_missing_is_422(
    browser_for: Callable[[str], tuple[TestClient, str]], world: World
) -> None:
    pid = world.patients["pa1"].id
    base = f"/portal/patients/{pid}/care"
    c, csrf = browser_for("clina")
    c.get(base)
    r = c.post(
        f"{base}/note",
        data={
            "csrf_token": csrf,
            "note": "Walk daily.",
            "change_reason": "",
            "expected_version": "1",
        },
    )
    assert r.status_code == 422
    assert "say why the care plan changes" in r.text
    assert "Walk daily.</textarea>" in r.text
    r = c.post(
        f"{base}/note",
        data={
            "csrf_token": csrf,
            "note": "Walk daily.",
            "change_reason": "Visit",
            "expected_version": "1",
        },
        follow_redirects=False,
    )
    assert r.headers["location"] == f"{base}?notice=note"
    page = c.get(r.headers["location"]).text
    assert "Walk daily." in page
    assert re.search(r"data-plan-version>2<", page)
    # Submitting the form loaded at version 1 again is stale now.
    r = c.post(
        f"{base}/note",
        data={"csrf_token": csrf, "note": "Other", "change_reason": "x", "expected_version": "1"},
    )
    assert r.status_code == 409
    assert "reload it" in r.text
    history = c.get(f"{base}/history")
    assert history.status_code == 200
    assert 'data-version="2"' in history.text
    assert 'data-version="1"' in history.text
    assert "Visit" in history.text
    assert "Clina" in history.text
    assert "note" in history.text


def test_note_form_when_patient_posts_is_refused(
    browser_for: Callable[[str], tuple[TestClient, str]], world: World
) -> None:
    pid = world.patients["pa1"].id
    c, csrf = browser_for("pa1")
    r = c.post(
        f"/portal/patients/{pid}/care/note",
        data={"csrf_token": csrf, "note": "mine", "change_reason": "x"},
    )
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("user", "patient", "status"),
    [
        ("clinb", "pa1", 404),
        ("pa2", "pa1", 404),
        ("auditor", "pa1", 403),
        ("mleng", "pa1", 403),
        ("pa1", "pa1", 200),
    ],
)
def test_care_pages_when_out_of_scope_are_refused(
    browser_for: Callable[[str], tuple[TestClient, str]],
    world: World,
    user: str,
    patient: str,
    status: int,
) -> None:
    pid = world.patients[patient].id
    c, _ = browser_for(user)
    assert c.get(f"/portal/patients/{pid}/care").status_code == status
    assert c.get(f"/portal/patients/{pid}/care/history").status_code == status


def test_care_page_when_signed_out_redirects_to_sign_in(client: TestClient, world: World) -> None:
    pid = world.patients["pa1"].id
    r = client.get(f"/portal/patients/{pid}/care", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/portal/login?next=")


def test_history_page_when_plan_never_opened_shows_no_versions(
    browser_for: Callable[[str], tuple[TestClient, str]], world: World
) -> None:
    # A patient whose plan nobody has read yet has no version: the page says so, no error.
    pid = world.patients["pb1"].id
    c, _ = browser_for("clinb")
    r = c.get(f"/portal/patients/{pid}/care/history")
    assert r.status_code == 200, r.text
    assert "data-plan-version" not in r.text
