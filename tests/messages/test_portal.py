"""The portal's messaging pages over a signed-in session (TestClient): inbox order, the
thread page marking read, replying, closing and reopening, starting a conversation, the
unread badge, CSRF, escaping, and care-team scope."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import AuditEntry
from loops.messages.models import Message, MessageThread
from tests.conftest import PASSWORD, FrozenClock, World
from tests.messages.conftest import SECRET, Api
from tests.portal.conftest import csrf_of, sign_in

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _badge(html: str) -> int:
    match = re.search(r'data-unread-threads="(\d+)"', html)
    return int(match.group(1)) if match else 0


def _form(csrf: str, **fields: str) -> dict[str, str]:
    return {"csrf_token": csrf, **fields}


def test_inbox_when_threads_exist_lists_unread_patient_messages_first(
    api: Api, client: TestClient, rewound: FrozenClock
) -> None:
    read = api.patient_start("pa1", "Already read")["id"]
    api.get("clina", f"/api/v1/messages/threads/{read}")
    rewound.advance(minutes=1)
    ours = api.care_start("clina", "pa2", "Team started")["id"]
    rewound.advance(minutes=1)
    unread = api.patient_start("pa2", "Waiting for us")["id"]
    rewound.advance(minutes=1)
    api.post("pa1", f"/api/v1/me/messages/{read}", {"body": "and again"})  # newest, unread
    api.patient_start("pb1", "Other team")
    sign_in(client, "clina")
    page = client.get("/portal/messages")
    assert page.status_code == 200
    order = re.findall(r'data-thread="([^"]+)"', page.text)
    assert order == [read, unread, ours]
    assert "Other team" not in page.text
    assert _badge(page.text) == 2


def test_thread_page_when_opened_marks_patient_messages_read_and_clears_badge(
    api: Api, client: TestClient, short: Callable[[], Session], world: World
) -> None:
    tid = api.patient_start("pa1", "Swollen ankles", "Since Monday.", is_question=True)["id"]
    sign_in(client, "clina")
    assert _badge(client.get("/portal/").text) == 1
    page = client.get(f"/portal/messages/{tid}")
    assert page.status_code == 200
    assert "Since Monday." in page.text
    assert "question for the next visit" in page.text
    assert _badge(page.text) == 0
    with short() as s:
        assert s.scalars(select(Message.read_by)).one() == world.users["clina"].id


def test_reply_form_when_posted_sends_and_redirects(
    api: Api, client: TestClient, short: Callable[[], Session]
) -> None:
    tid = api.patient_start("pa1")["id"]
    csrf = sign_in(client, "clina")
    r = client.post(
        f"/portal/messages/{tid}",
        data=_form(csrf, body="Take it in the evening."),
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"/portal/messages/{tid}?notice=sent"
    page = client.get(r.headers["location"])
    assert "Message sent." in page.text
    assert "Take it in the evening." in page.text
    listed = api.get("pa1", "/api/v1/me/messages").json()
    assert listed["threads"][0]["unread"] == 1


def test_reply_form_when_empty_shows_error_and_keeps_nothing(
    api: Api, client: TestClient, short: Callable[[], Session]
) -> None:
    tid = api.patient_start("pa1")["id"]
    csrf = sign_in(client, "clina")
    r = client.post(f"/portal/messages/{tid}", data=_form(csrf, body=" \x00 \n"))
    assert r.status_code == 422
    assert "Not done: body must not be empty" in r.text
    too_long = "x" * 5001
    r = client.post(f"/portal/messages/{tid}", data=_form(csrf, body=too_long))
    assert r.status_code == 422
    assert too_long in r.text  # kept in the form to shorten
    with short() as s:
        assert len(s.scalars(select(Message)).all()) == 1


def test_thread_when_closed_hides_reply_and_refuses_post_with_409(
    api: Api, client: TestClient
) -> None:
    tid = api.patient_start("pa1")["id"]
    csrf = sign_in(client, "clina")
    r = client.post(f"/portal/messages/{tid}/close", data=_form(csrf), follow_redirects=False)
    assert r.status_code == 303
    page = client.get(r.headers["location"])
    assert "Conversation closed." in page.text
    assert 'name="body"' not in page.text
    assert "Reopen conversation" in page.text
    r = client.post(f"/portal/messages/{tid}", data=_form(csrf, body="late"))
    assert r.status_code == 409
    assert "this conversation is closed" in r.text
    again = client.post(f"/portal/messages/{tid}/close", data=_form(csrf))
    assert again.status_code == 409
    r = client.post(f"/portal/messages/{tid}/reopen", data=_form(csrf), follow_redirects=False)
    assert r.status_code == 303
    assert 'name="body"' in client.get(r.headers["location"]).text


def test_patient_page_when_form_posted_starts_thread(
    api: Api, client: TestClient, world: World, short: Callable[[], Session]
) -> None:
    pid = world.patients["pa1"].id
    csrf = sign_in(client, "clina")
    page = client.get(f"/portal/patients/{pid}/messages")
    assert page.status_code == 200
    assert "No conversations with this patient yet." in page.text
    r = client.post(
        f"/portal/patients/{pid}/messages",
        data=_form(csrf, subject="Lab results", body="All normal."),
        follow_redirects=False,
    )
    assert r.status_code == 303
    with short() as s:
        thread = s.scalars(select(MessageThread)).one()
    assert r.headers["location"] == f"/portal/messages/{thread.id}?notice=started"
    assert "Lab results" in client.get(f"/portal/patients/{pid}/messages").text
    assert api.get("pa1", "/api/v1/me/messages").json()["unread_threads"] == 1


def test_patient_page_when_subject_missing_shows_form_again_with_422(
    client: TestClient, world: World, short: Callable[[], Session]
) -> None:
    pid = world.patients["pa1"].id
    csrf = sign_in(client, "clina")
    r = client.post(
        f"/portal/patients/{pid}/messages", data=_form(csrf, subject="  ", body="kept text")
    )
    assert r.status_code == 422
    assert "Not sent: subject must not be empty" in r.text
    assert "kept text" in r.text
    with short() as s:
        assert s.scalars(select(MessageThread)).first() is None


def test_pages_when_message_holds_markup_escape_it(
    api: Api, client: TestClient, world: World
) -> None:
    tid = api.patient_start("pa1", XSS, f"{XSS}\n{SECRET}")["id"]
    sign_in(client, "clina")
    pages = [
        client.get("/portal/messages").text,
        client.get(f"/portal/messages/{tid}").text,
        client.get(f"/portal/patients/{world.patients['pa1'].id}/messages").text,
    ]
    for html in pages:
        assert "<script>alert" not in html
        assert "<img src=x" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_forms_when_csrf_missing_or_wrong_are_refused(
    api: Api, client: TestClient, world: World, short: Callable[[], Session]
) -> None:
    tid = api.patient_start("pa1")["id"]
    sign_in(client, "clina")
    pid = world.patients["pa1"].id
    for path, data in (
        (f"/portal/messages/{tid}", {"body": "x"}),
        (f"/portal/messages/{tid}/close", {}),
        (f"/portal/patients/{pid}/messages", {"subject": "s", "body": "b"}),
    ):
        for token in ({}, {"csrf_token": "wrong"}):
            r = client.post(path, data=data | token)
            assert r.status_code == 403, (path, token)
    with short() as s:
        assert len(s.scalars(select(Message)).all()) == 1
        assert s.scalars(select(MessageThread.status)).one() == "open"


@pytest.mark.parametrize("who", ["clinb", "pa2"])
def test_pages_when_outside_care_team_are_404(
    api: Api, client: TestClient, world: World, who: str
) -> None:
    tid = api.patient_start("pa1")["id"]
    csrf = sign_in(client, who)
    pid = world.patients["pa1"].id
    assert client.get(f"/portal/messages/{tid}").status_code == 404
    assert client.get(f"/portal/patients/{pid}/messages").status_code == 404
    assert client.post(f"/portal/messages/{tid}", data=_form(csrf, body="x")).status_code == 404
    r = client.post(f"/portal/messages/{tid}/close", data=_form(csrf))
    assert r.status_code == 404


@pytest.mark.parametrize("who", ["auditor", "mleng", "admin", "pa1"])
def test_inbox_when_role_may_not_list_is_403_and_home_has_no_badge(
    api: Api, client: TestClient, who: str
) -> None:
    api.patient_start("pa1")
    sign_in(client, who)
    home = client.get("/portal/")
    assert home.status_code == 200
    assert "/portal/messages" not in home.text
    assert client.get("/portal/messages").status_code == 403


def test_badge_when_other_teams_patients_write_counts_only_own(
    api: Api, client: TestClient
) -> None:
    api.patient_start("pb1")
    api.patient_start("pb2")
    api.patient_start("pa1")
    sign_in(client, "clina")
    assert _badge(client.get("/portal/").text) == 1


def test_thread_page_when_viewed_is_audited_without_content(
    api: Api, client: TestClient, audit_rows: Callable[..., list[AuditEntry]]
) -> None:
    tid = api.patient_start("pa1", "Private subject", SECRET)["id"]
    csrf = sign_in(client, "clina")
    client.get(f"/portal/messages/{tid}")
    sent = client.post(
        f"/portal/messages/{tid}", data=_form(csrf, body=f"{SECRET} reply"), follow_redirects=False
    )
    assert sent.status_code == 303
    client.post(f"/portal/messages/{tid}", data=_form(csrf, body=""))
    entries = [
        (e.action, e.outcome, e.resource_id)
        for e in audit_rows("message.")
        if e.actor_role == "clinician"
    ]
    assert entries == [
        ("message.read", "success", tid),
        ("message.send", "success", tid),
        ("message.send", "failure", tid),
        ("message.read", "success", tid),  # the page shown again with the error
    ]
    for e in audit_rows("message."):
        assert SECRET not in e.details
        assert "Private subject" not in e.details


def test_older_link_when_thread_is_long_pages_back(
    api: Api, client: TestClient, rewound: FrozenClock
) -> None:
    tid = api.patient_start("pa1", "long", "first message")["id"]
    for i in range(100):
        api.post("clina", f"/api/v1/messages/threads/{tid}", {"body": f"reply {i}"})
    sign_in(client, "clina")
    page = client.get(f"/portal/messages/{tid}").text
    assert "first message" not in page
    older = re.search(r'href="\?before=(\d+)"', page)
    assert older
    assert "first message" in client.get(f"/portal/messages/{tid}?before={older.group(1)}").text


def test_login_page_when_signed_out_renders_without_badge_query(client: TestClient) -> None:
    page = client.get("/portal/login")
    assert page.status_code == 200
    assert "data-unread-threads" not in page.text


def test_csrf_of_page_when_signed_in_is_present(client: TestClient, api: Api) -> None:
    tid = api.patient_start("pa1")["id"]
    sign_in(client, "clina")
    assert csrf_of(client.get(f"/portal/messages/{tid}").text)


def test_reply_when_session_ended_is_kept_across_sign_in(
    api: Api,
    client: TestClient,
    world: World,
    frozen_clock: FrozenClock,
    short: Callable[[], Session],
) -> None:
    tid = api.patient_start("pa1")["id"]
    csrf = sign_in(client, "clina")
    page = f"/portal/messages/{tid}"
    frozen_clock.advance(minutes=world.settings.session_idle_minutes, seconds=5)
    r = client.post(
        page,
        data=_form(csrf, body="Written before the break.", return_to=page),
        follow_redirects=False,
    )
    assert r.status_code == 401
    kept = re.search(r'name="draft" value="([^"]+)"', r.text)
    assert kept
    login = client.post(
        "/portal/login",
        data={
            "username": "clina",
            "password": PASSWORD,
            "csrf_token": csrf_of(r.text),
            "draft": kept.group(1),
        },
        follow_redirects=False,
    )
    assert login.headers["location"] == page
    restored = client.get(page).text
    assert ">Written before the break.</textarea>" in restored
    with short() as s:
        assert len(s.scalars(select(Message)).all()) == 1  # nothing was sent
