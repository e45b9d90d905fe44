"""Visit regressions found by the sweep: completing twice (a resent form completed the next
visit too), override dates beyond UTC's range (a 500) or years ahead (the patient fell off every
due list), and control characters in the reason and note (NUL: a 500 on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from loops.visits import service
from loops.visits.models import Visit
from tests.hostile.conftest import Caller, Scene, acts, assert_problem


def visits_of(short: Callable[[], Session], pid: str) -> list[tuple[str, str]]:
    """(id, status) of a patient's visits."""
    with short() as s:
        return sorted(
            s.execute(select(Visit.id, Visit.status).where(col(Visit.patient_id) == pid)).tuples()
        )


def test_complete_when_sent_twice_with_visit_id_completes_once(
    scene: Scene, as_: Callable[[str], Caller], short: Callable[[], Session], engine: Engine
) -> None:
    pid, vid = scene.pid("pa1"), scene.ids["pa1.visit"]
    path = f"/api/v1/patients/{pid}/next-visit/complete"
    first = as_("clina")("POST", path, json={"note": "seen", "visit_id": vid})
    assert first.status_code == 200, first.text
    n = acts(engine)
    again = as_("clina")("POST", path, json={"note": "seen", "visit_id": vid})
    assert_problem(again, 409)
    assert again.json()["code"] == "visit_changed"
    assert acts(engine) == n + 1  # the refusal, once
    statuses = [status for _, status in visits_of(short, pid)]
    assert sorted(statuses) == ["completed", "due"]


def test_complete_when_visit_id_is_unknown_is_409_and_nothing_completes(
    scene: Scene, as_: Callable[[str], Caller], short: Callable[[], Session]
) -> None:
    pid = scene.pid("pa1")
    before = visits_of(short, pid)
    r = as_("clina")(
        "POST",
        f"/api/v1/patients/{pid}/next-visit/complete",
        json={"visit_id": scene.ids["pb1.visit"]},
    )
    assert_problem(r, 409)
    assert visits_of(short, pid) == before


def test_complete_form_when_posted_twice_completes_once(
    scene: Scene, browser: Callable[[str], tuple[TestClient, str]], short: Callable[[], Session]
) -> None:
    pid = scene.pid("pa1")
    c, csrf = browser("clina")
    page = c.get(f"/portal/patients/{pid}/previsit")
    assert f'name="visit_id" value="{scene.ids["pa1.visit"]}"' in page.text
    form = {"csrf_token": csrf, "note": "seen", "visit_id": scene.ids["pa1.visit"]}
    path = f"/portal/patients/{pid}/next-visit/complete"
    assert c.post(path, data=form, follow_redirects=False).status_code == 303
    again = c.post(path, data=form, follow_redirects=False)
    assert again.status_code == 409
    assert "text/html" in again.headers["content-type"]
    assert "no longer the one due" in again.text
    assert sorted(s for _, s in visits_of(short, pid)) == ["completed", "due"]


@pytest.mark.parametrize(
    ("due", "code"),
    [
        ("9999-12-31T23:59:59-14:00", "invalid_date"),
        ("0001-01-01T00:00:00+14:00", "invalid_date"),
        ("9999-12-31T23:59:59Z", "date_too_far"),
    ],
)
def test_override_when_date_is_beyond_range_is_422(
    scene: Scene, as_: Callable[[str], Caller], due: str, code: str
) -> None:
    r = as_("clina")(
        "PUT",
        f"/api/v1/patients/{scene.pid('pa1')}/next-visit",
        json={"due_by": due, "reason": "r"},
    )
    assert_problem(r, 422)
    assert r.json()["code"] == code


def test_override_when_date_is_a_year_ahead_is_kept_and_a_day_more_refused(
    scene: Scene, as_: Callable[[str], Caller]
) -> None:
    path = f"/api/v1/patients/{scene.pid('pa1')}/next-visit"
    inside = clock.utcnow() + service.MAX_AHEAD - timedelta(minutes=5)
    ok = as_("clina")("PUT", path, json={"due_by": clock.iso(inside), "reason": "annual"})
    assert ok.status_code == 200, ok.text
    beyond = clock.utcnow() + service.MAX_AHEAD + timedelta(days=1)
    r = as_("clina")("PUT", path, json={"due_by": clock.iso(beyond), "reason": "annual"})
    assert_problem(r, 422)


@pytest.mark.parametrize("due_date", ["9999-12-31", "0001-01-01", "2027-02-30", "2027-W99", "x"])
def test_override_form_when_date_is_out_of_range_shows_the_page_again(
    scene: Scene, browser: Callable[[str], tuple[TestClient, str]], due_date: str
) -> None:
    c, csrf = browser("clina")
    r = c.post(
        f"/portal/patients/{scene.pid('pa1')}/next-visit/override",
        data={"csrf_token": csrf, "due_date": due_date, "kind": "visit", "reason": "r"},
    )
    assert r.status_code == 422
    assert "text/html" in r.headers["content-type"]


def test_override_and_complete_when_text_has_controls_store_it_clean(
    scene: Scene, as_: Callable[[str], Caller], short: Callable[[], Session]
) -> None:
    pid = scene.pid("pa1")
    when = clock.iso(clock.utcnow() + timedelta(days=5))
    r = as_("clina")(
        "PUT", f"/api/v1/patients/{pid}/next-visit", json={"due_by": when, "reason": "\x00away\x07"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["override"]["reason"] == "away"
    done = as_("clina")(
        "POST", f"/api/v1/patients/{pid}/next-visit/complete", json={"note": "ok\x00"}
    )
    assert done.status_code == 200, done.text
    with short() as s:
        row = s.scalars(select(Visit).where(col(Visit.id) == done.json()["completed"]["id"])).one()
        assert (row.override_reason, row.outcome_note) == ("away", "ok")


def test_override_when_reason_is_only_controls_is_422(
    scene: Scene, as_: Callable[[str], Caller]
) -> None:
    when = clock.iso(clock.utcnow() + timedelta(days=5))
    r = as_("clina")(
        "PUT",
        f"/api/v1/patients/{scene.pid('pa1')}/next-visit",
        json={"due_by": when, "reason": "\x00\x01"},
    )
    assert_problem(r, 422)
    assert r.json()["code"] == "reason_required"
