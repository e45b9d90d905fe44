"""Goals and care-plan regressions found by the sweep: control characters in free text (NUL
made PostgreSQL refuse the row: a 500) are dropped before storing, on the API and the portal."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from loops.care.models import CarePlanVersion, Goal
from tests.hostile.conftest import Caller, Scene, assert_problem

HOSTILE = "  a\x00b\x07c\x1b[0m <b>d</b>\n\te  "
CLEAN = "abc[0m <b>d</b>\n\te"


def test_goal_note_when_it_has_controls_is_stored_without_them(
    scene: Scene, as_: Callable[[str], Caller], short: Callable[[], Session]
) -> None:
    r = as_("pa1")(
        "POST", "/api/v1/me/goals", json={"kind": "sleep", "target_value": 7, "note": HOSTILE}
    )
    assert r.status_code == 201, r.text
    assert r.json()["note"] == CLEAN
    with short() as s:
        assert s.scalar(select(Goal.note).where(col(Goal.id) == r.json()["id"])) == CLEAN


def test_goal_decline_reason_when_it_has_controls_is_stored_without_them(
    scene: Scene, as_: Callable[[str], Caller]
) -> None:
    gid = scene.ids["pa1.goal_by_clin"]
    r = as_("pa1")("POST", f"/api/v1/me/goals/{gid}/decline", json={"reason": HOSTILE})
    assert r.status_code == 200, r.text
    assert r.json()["close_reason"] == CLEAN


def test_care_plan_note_when_it_has_controls_is_versioned_without_them(
    scene: Scene, as_: Callable[[str], Caller], short: Callable[[], Session]
) -> None:
    pid = scene.pid("pa1")
    r = as_("clina")(
        "PUT",
        f"/api/v1/patients/{pid}/care-plan/note",
        json={"note": HOSTILE, "change_reason": "\x00why"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["note"] == CLEAN
    assert r.json()["change_reason"] == "why"
    with short() as s:
        v = s.scalars(select(CarePlanVersion).where(col(CarePlanVersion.patient_id) == pid)).one()
        assert (v.note, v.content["note"], v.change_reason) == (CLEAN, CLEAN, "why")


def test_care_plan_note_when_reason_is_only_controls_is_422(
    scene: Scene, as_: Callable[[str], Caller]
) -> None:
    r = as_("clina")(
        "PUT",
        f"/api/v1/patients/{scene.pid('pa1')}/care-plan/note",
        json={"note": "n", "change_reason": "\x00\x01 "},
    )
    assert_problem(r, 422)
    assert r.json()["code"] == "reason_required"


def test_care_page_forms_when_text_has_nul_save_it_clean(
    scene: Scene, browser: Callable[[str], tuple[TestClient, str]], short: Callable[[], Session]
) -> None:
    pid = scene.pid("pa1")
    c, csrf = browser("clina")
    base = f"/portal/patients/{pid}/care"
    form = {"csrf_token": csrf, "kind": "daily_steps", "target_value": "8000", "note": "x\x00y"}
    assert c.post(f"{base}/goals", data=form, follow_redirects=False).status_code == 303
    note = {"csrf_token": csrf, "note": "n\x00", "change_reason": "r\x00"}
    assert c.post(f"{base}/note", data=note, follow_redirects=False).status_code == 303
    decline = {"csrf_token": csrf, "reason": "\x00no"}
    gid = scene.ids["pa1.goal_by_patient"]
    assert (
        c.post(f"{base}/goals/{gid}/decline", data=decline, follow_redirects=False).status_code
        == 303
    )
    with short() as s:
        notes = set(s.scalars(select(Goal.note).where(col(Goal.patient_id) == pid)))
        assert "xy" in notes
        assert s.scalar(select(Goal.close_reason).where(col(Goal.id) == gid)) == "no"
