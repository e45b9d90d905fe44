"""The issue-6 portal pages under attack: markup and script in every free-text field shown
escaped (page and PDF), forms without or with a wrong CSRF token refused with an HTML page and
nothing changed, another team's patient and malformed ids answered as unknown, and hostile
query parameters never a 500."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from io import BytesIO

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.core import clock
from tests.hostile.conftest import Caller, Scene, acts
from tests.hostile.test_access import pa1_state

XSS = "<script>alert('x')</script><img src=x onerror=alert(1)>"
ESCAPED = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"


def _plant(scene: Scene, as_: Callable[[str], Caller]) -> None:
    """Markup in every free-text field of pa1's goals, plan, visit and messages."""
    pid = scene.pid("pa1")
    pa1, clina = as_("pa1"), as_("clina")
    assert (
        pa1(
            "POST", "/api/v1/me/goals", json={"kind": "sleep", "target_value": 7, "note": XSS}
        ).status_code
        == 201
    )
    gid = scene.ids["pa1.goal_by_clin"]
    assert pa1("POST", f"/api/v1/me/goals/{gid}/decline", json={"reason": XSS}).status_code == 200
    note = {"note": XSS, "change_reason": XSS}
    assert clina("PUT", f"/api/v1/patients/{pid}/care-plan/note", json=note).status_code == 200
    question = {"subject": XSS, "body": XSS, "is_question": True}
    assert pa1("POST", "/api/v1/me/messages", json=question).status_code == 201
    assert (
        clina(
            "POST", f"/api/v1/messages/threads/{scene.ids['pa1.thread']}", json={"body": XSS}
        ).status_code
        == 201
    )
    when = clock.iso(clock.utcnow() + timedelta(days=4))
    assert (
        clina(
            "PUT", f"/api/v1/patients/{pid}/next-visit", json={"due_by": when, "reason": XSS}
        ).status_code
        == 200
    )


@pytest.mark.parametrize("who", ["clina", "pa1"])
def test_pages_when_free_text_holds_markup_show_it_escaped(
    scene: Scene,
    as_: Callable[[str], Caller],
    browser: Callable[[str], tuple[TestClient, str]],
    who: str,
) -> None:
    _plant(scene, as_)
    pid = scene.pid("pa1")
    c, _ = browser(who)
    pages = [
        f"/portal/patients/{pid}/care",
        f"/portal/patients/{pid}/care/history",
        f"/portal/patients/{pid}/messages",
        f"/portal/messages/{scene.ids['pa1.thread']}",
    ]
    if who == "clina":
        pages += ["/portal/messages", "/portal/visits/due", f"/portal/patients/{pid}/previsit"]
    for page in pages:
        r = c.get(page)
        assert r.status_code == 200, (page, r.status_code)
        assert "<script>alert(" not in r.text, page
        assert "<img src=x" not in r.text, page
        if page.endswith(("/care", "/messages", "/previsit")) or "/messages/" in page:
            assert ESCAPED in r.text or "&lt;script&gt;" in r.text, page


def test_previsit_pdf_when_free_text_holds_markup_prints_it_as_text(
    scene: Scene, as_: Callable[[str], Caller]
) -> None:
    _plant(scene, as_)
    r = as_("clina")("GET", f"/api/v1/patients/{scene.pid('pa1')}/previsit-summary.pdf")
    assert r.status_code == 200
    text = "".join(page.extract_text() for page in PdfReader(BytesIO(r.content)).pages)
    assert "<script>alert(" in text.replace("\n", "")  # shown as the characters typed


def _forms(scene: Scene) -> list[tuple[str, dict[str, str]]]:
    pid, ids = scene.pid("pa1"), scene.ids
    base = f"/portal/patients/{pid}"
    return [
        (f"{base}/care/goals", {"kind": "daily_steps", "target_value": "9000"}),
        (f"{base}/care/goals/{ids['pa1.goal_by_clin']}/agree", {}),
        (f"{base}/care/goals/{ids['pa1.goal_by_clin']}/decline", {"reason": "r"}),
        (f"{base}/care/goals/{ids['pa1.goal_by_patient']}/withdraw", {"reason": "r"}),
        (f"{base}/care/note", {"note": "n", "change_reason": "r"}),
        (f"{base}/next-visit/override", {"due_date": "2027-01-02", "kind": "call", "reason": "r"}),
        (f"{base}/next-visit/complete", {"note": "n"}),
        (f"/portal/messages/{ids['pa1.thread']}", {"body": "b"}),
        (f"/portal/messages/{ids['pa1.thread']}/close", {}),
        (f"/portal/messages/{ids['pa1.thread']}/reopen", {}),
        (f"{base}/messages", {"subject": "s", "body": "b"}),
    ]


@pytest.mark.parametrize("token", ["", "forged", "missing"])
@pytest.mark.parametrize("who", ["clina", "pa1"])
def test_form_when_csrf_token_is_missing_or_wrong_is_403_page_and_changes_nothing(
    scene: Scene,
    browser: Callable[[str], tuple[TestClient, str]],
    short: Callable[[], Session],
    engine: Engine,
    who: str,
    token: str,
) -> None:
    c, _ = browser(who)
    before = pa1_state(short, scene.pid("pa1"))
    for path, form in _forms(scene):
        data = dict(form) if token == "missing" else {**form, "csrf_token": token}
        n = acts(engine)
        r = c.post(path, data=data, follow_redirects=False)
        assert r.status_code == 403, (path, r.status_code)
        assert "text/html" in r.headers["content-type"], path
        assert acts(engine) == n + 1, path
    assert pa1_state(short, scene.pid("pa1")) == before


@pytest.mark.parametrize("who", ["clinb", "pb1", "pa2"])
def test_pages_when_patient_is_outside_scope_are_404_html_and_change_nothing(
    scene: Scene,
    browser: Callable[[str], tuple[TestClient, str]],
    short: Callable[[], Session],
    who: str,
) -> None:
    c, csrf = browser(who)
    pid = scene.pid("pa1")
    before = pa1_state(short, pid)
    gets = [
        f"/portal/patients/{pid}/care",
        f"/portal/patients/{pid}/care/history",
        f"/portal/patients/{pid}/messages",
        f"/portal/messages/{scene.ids['pa1.thread']}",
    ]
    if who == "clinb":
        gets.append(f"/portal/patients/{pid}/previsit")
    for path in gets:
        r = c.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "text/html" in r.headers["content-type"]
        assert "subject-of-pa1" not in r.text
    for path, form in _forms(scene):
        r = c.post(path, data={**form, "csrf_token": csrf}, follow_redirects=False)
        assert r.status_code in (403, 404), (path, r.status_code)
        assert "text/html" in r.headers["content-type"]
    assert pa1_state(short, pid) == before


@pytest.mark.parametrize("bad", ["not-a-uuid", "00000000-0000-4000-8000-000000000000", "%00"])
def test_pages_when_id_is_malformed_are_404_html(
    scene: Scene, browser: Callable[[str], tuple[TestClient, str]], bad: str
) -> None:
    c, _ = browser("clina")
    for path in [
        f"/portal/patients/{bad}/care",
        f"/portal/patients/{bad}/care/history",
        f"/portal/patients/{bad}/previsit",
        f"/portal/patients/{bad}/messages",
        f"/portal/messages/{bad}",
    ]:
        r = c.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "text/html" in r.headers["content-type"], path


QUERIES = [
    ("/portal/patients/{pid}/care/history", {"page": "0"}),
    ("/portal/patients/{pid}/care/history", {"page": "99999999999999999999"}),
    ("/portal/patients/{pid}/care/history", {"page": "10000"}),
    ("/portal/visits/due", {"within": "-1"}),
    ("/portal/visits/due", {"within": "3660"}),
    ("/portal/messages", {"page": "0"}),
    ("/portal/messages", {"page": "100000"}),
    ("/portal/messages/{t}", {"before": "99999999999999999999999"}),
    ("/portal/patients/{pid}/messages", {"cursor": "%00%ff"}),
    ("/portal/patients/{pid}/messages", {"cursor": "A" * 300}),
    ("/portal/patients/{pid}/care", {"notice": "<script>alert(1)</script>"}),
    ("/portal/patients/{pid}/previsit", {"notice": "x" * 33}),
]


@pytest.mark.parametrize(("path", "params"), QUERIES, ids=lambda v: str(v)[:30])
def test_page_when_query_is_hostile_is_never_a_500(
    scene: Scene,
    browser: Callable[[str], tuple[TestClient, str]],
    path: str,
    params: dict[str, str],
) -> None:
    c, _ = browser("clina")
    r = c.get(path.format(pid=scene.pid("pa1"), t=scene.ids["pa1.thread"]), params=params)
    assert r.status_code < 500, r.text
    assert "<script>alert(1)" not in r.text
