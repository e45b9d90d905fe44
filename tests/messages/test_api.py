"""The messaging API: threads started by either side, replies, read markers, closing and
reopening, validation, paging, and the patient's content-free notice."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from loops.messages.models import Message
from loops.messages.service import MESSAGE_WAITING, MESSAGE_WAITING_TEXT
from loops.models import PatientNotice
from tests.conftest import FrozenClock, World
from tests.messages.conftest import Api


def _notices(short: Callable[[], Session], world: World, patient: str) -> list[PatientNotice]:
    with short() as s:
        return list(
            s.scalars(
                select(PatientNotice)
                .where(
                    col(PatientNotice.patient_id) == world.patients[patient].id,
                    col(PatientNotice.kind) == MESSAGE_WAITING,
                )
                .order_by(col(PatientNotice.id))
            )
        )


def test_patient_thread_when_care_team_replies_is_answered_both_ways(
    api: Api, colleague: str
) -> None:
    started = api.patient_start("pa1", "Dose timing", "Morning or evening?", is_question=True)
    assert started["started_by"] == "patient"
    assert started["is_question"] is True
    assert started["status"] == "open"
    assert [m["body"] for m in started["messages"]] == ["Morning or evening?"]
    tid = started["id"]

    # Any clinician of the care team answers for the team.
    r = api.post(colleague, f"/api/v1/messages/threads/{tid}", {"body": "Evening is fine."})
    assert r.status_code == 201, r.text
    assert r.json()["sender_side"] == "care_team"
    assert r.json()["sender_name"] == "Dr. Second Colleague"
    r = api.post("pa1", f"/api/v1/me/messages/{tid}", {"body": "Thank you!"})
    assert r.status_code == 201, r.text

    detail = api.get("clina", f"/api/v1/messages/threads/{tid}").json()
    assert [(m["sender_side"], m["body"]) for m in detail["messages"]] == [
        ("patient", "Morning or evening?"),
        ("care_team", "Evening is fine."),
        ("patient", "Thank you!"),
    ]
    assert detail["message_count"] == 3


def test_care_team_thread_when_started_lists_for_patient_with_unread_count(
    api: Api, world: World
) -> None:
    started = api.care_start("clina", "pa1", "Your readings", "Mornings look better.")
    assert started["started_by"] == "care_team"
    assert started["is_question"] is False
    listed = api.get("pa1", "/api/v1/me/messages").json()
    assert listed["unread_threads"] == 1
    [thread] = listed["threads"]
    assert thread["id"] == started["id"]
    assert thread["unread"] == 1
    assert thread["subject"] == "Your readings"
    care = api.get("clina", f"/api/v1/patients/{world.patients['pa1'].id}/messages").json()
    assert care["threads"][0]["unread"] == 0  # its own message is not unread for the team
    assert care["threads"][0]["patient_name"] == "Givenpa1 Familypa1"


def test_open_thread_when_read_marks_only_other_sides_messages(
    api: Api, world: World, short: Callable[[], Session]
) -> None:
    tid = api.patient_start("pa1")["id"]
    api.post("clina", f"/api/v1/messages/threads/{tid}", {"body": "Noted."})

    opened = api.get("pa1", f"/api/v1/me/messages/{tid}").json()
    assert opened["unread"] == 0
    own, theirs = opened["messages"]
    assert own["read_at"] is None  # the care team has not opened it yet
    assert theirs["read_at"] is not None
    with short() as s:
        rows = {m.sender_side: m for m in s.scalars(select(Message))}
    assert rows["care_team"].read_by == world.users["pa1"].id
    assert rows["patient"].read_at is None

    api.get("clina", f"/api/v1/messages/threads/{tid}")
    with short() as s:
        patient_msg = s.scalars(select(Message).where(col(Message.sender_side) == "patient")).one()
    assert patient_msg.read_by == world.users["clina"].id
    assert api.get("pa1", f"/api/v1/me/messages/{tid}").json()["messages"][0]["read_at"]


def test_unread_list_when_colleague_reads_clears_for_whole_team(api: Api, colleague: str) -> None:
    tid = api.patient_start("pa1")["id"]
    listed = api.get("clina", "/api/v1/messages/unread").json()
    assert [t["id"] for t in listed["threads"]] == [tid]
    assert listed["threads"][0]["unread"] == 1
    api.get(colleague, f"/api/v1/messages/threads/{tid}")
    assert api.get("clina", "/api/v1/messages/unread").json() == {
        "threads": [],
        "next_cursor": None,
        "unread_threads": 0,
    }


def test_reply_when_thread_closed_is_409_until_reopened(api: Api) -> None:
    tid = api.patient_start("pa1")["id"]
    r = api.post("pa1", f"/api/v1/me/messages/{tid}/close")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "closed"

    for who, path in (
        ("pa1", f"/api/v1/me/messages/{tid}"),
        ("clina", f"/api/v1/messages/threads/{tid}"),
    ):
        r = api.post(who, path, {"body": "one more thing"})
        assert r.status_code == 409
        assert r.json()["code"] == "thread_closed"

    again = api.post("clina", f"/api/v1/messages/threads/{tid}/close")
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_transition"
    assert api.post("clina", f"/api/v1/messages/threads/{tid}/reopen").json()["status"] == "open"
    assert api.post("pa1", f"/api/v1/me/messages/{tid}", {"body": "ok"}).status_code == 201
    assert api.post("clina", f"/api/v1/messages/threads/{tid}/reopen").status_code == 409


def test_reopen_when_patient_asks_is_refused(api: Api) -> None:
    tid = api.patient_start("pa1")["id"]
    api.post("pa1", f"/api/v1/me/messages/{tid}/close")
    # A patient reaches their own thread through the care team's route too, as the patient.
    r = api.post("pa1", f"/api/v1/messages/threads/{tid}/reopen")
    assert r.status_code == 403
    assert r.json()["code"] == "care_team_only"


def test_new_thread_when_text_invalid_is_422_and_stores_nothing(
    api: Api, world: World, short: Callable[[], Session]
) -> None:
    pid = world.patients["pa1"].id
    cases = [
        {"subject": "", "body": "x"},
        {"subject": "   ", "body": "x"},
        {"subject": "\x00\x07\x1b", "body": "x"},
        {"subject": "s" * 201, "body": "x"},
        {"subject": "ok", "body": ""},
        {"subject": "ok", "body": " \n\t \x00 "},
        {"subject": "ok", "body": "b" * 5001},
        {"subject": "ok"},
        {"subject": 5, "body": "x"},
    ]
    for body in cases:
        r = api.post("pa1", "/api/v1/me/messages", body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["code"] == "validation_error"
        r = api.post("clina", f"/api/v1/patients/{pid}/messages", body)
        assert r.status_code == 422, (body, r.text)
    with short() as s:
        assert s.scalars(select(Message)).first() is None


def test_reply_when_body_empty_after_strip_is_422(api: Api) -> None:
    tid = api.patient_start("pa1")["id"]
    r = api.post("clina", f"/api/v1/messages/threads/{tid}", {"body": "\u0085\r\n  "})
    assert r.status_code == 422
    assert r.json()["errors"] == [
        {"path": "body/body", "message": "body must not be empty", "type": "empty"}
    ]


def test_new_thread_when_both_fields_bad_names_each(api: Api) -> None:
    r = api.post("pa1", "/api/v1/me/messages", {"subject": " ", "body": "b" * 5001})
    assert r.status_code == 422
    assert r.json()["errors"] == [
        {"path": "body/subject", "message": "subject must not be empty", "type": "empty"},
        {
            "path": "body/body",
            "message": "body must be at most 5000 characters",
            "type": "too_long",
        },
    ]


def test_new_thread_when_limits_reached_exactly_keeps_text_verbatim(api: Api) -> None:
    head = "Line one\n\tindented <b>not bold</b> & ünïcode 🙂"
    body = head + "x" * (5000 - len(head))
    subject = "s" * 200
    started = api.patient_start("pa1", subject, body)
    assert started["subject"] == subject
    assert started["messages"][0]["body"] == body


def test_new_thread_when_controls_sent_stores_them_stripped(api: Api) -> None:
    started = api.patient_start("pa1", "  Two\nlines\x00 ", "Hello\x00\x1b[31m world\r\nbye ")
    assert started["subject"] == "Two lines"
    assert started["messages"][0]["body"] == "Hello[31m world\nbye"


def test_new_thread_when_lone_surrogate_sent_stores_text_without_it(api: Api) -> None:
    # JSON may carry an unpaired surrogate escape; no database column stores one.
    r = api.post_raw("pa1", "/api/v1/me/messages", b'{"subject": "a\\ud800b", "body": "c\\udfffd"}')
    assert r.status_code == 201, r.text
    assert r.json()["subject"] == "ab"
    assert r.json()["messages"][0]["body"] == "cd"


def test_care_team_thread_when_is_question_sent_is_not_a_question(api: Api, world: World) -> None:
    pid = world.patients["pa1"].id
    r = api.post(
        "clina",
        f"/api/v1/patients/{pid}/messages",
        {"subject": "s", "body": "b", "is_question": True},
    )
    assert r.status_code == 201
    assert r.json()["is_question"] is False


def test_patient_list_when_more_than_a_page_follows_cursor_newest_first(
    api: Api, rewound: FrozenClock
) -> None:
    ids = []
    for i in range(5):
        ids.append(api.patient_start("pa1", f"subject {i}")["id"])
        rewound.advance(minutes=1)
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.get("pa1", "/api/v1/me/messages", **params).json()
        seen += [t["id"] for t in page["threads"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_list_when_cursor_is_garbage_is_422(api: Api) -> None:
    for bad in ("nonsense", "!!!", "bm90LWEtZGF0ZXxhYmM"):
        r = api.get("pa1", "/api/v1/me/messages", cursor=bad)
        assert r.status_code == 422
        assert r.json()["code"] == "invalid_cursor"


def test_list_when_reply_arrives_moves_thread_to_top(api: Api, rewound: FrozenClock) -> None:
    first = api.patient_start("pa1", "first")["id"]
    rewound.advance(minutes=1)
    second = api.patient_start("pa1", "second")["id"]
    rewound.advance(minutes=1)
    api.post("clina", f"/api/v1/messages/threads/{first}", {"body": "answer"})
    order = [t["id"] for t in api.get("pa1", "/api/v1/me/messages").json()["threads"]]
    assert order == [first, second]


def test_open_thread_when_long_pages_back_with_older_cursor(api: Api, rewound: FrozenClock) -> None:
    tid = api.patient_start("pa1", "long", "m0")["id"]
    for i in range(1, 5):
        rewound.advance(seconds=1)
        api.post("clina" if i % 2 else "pa1", f"/api/v1/messages/threads/{tid}", {"body": f"m{i}"})
    latest = api.get("pa1", f"/api/v1/me/messages/{tid}", limit=2).json()
    assert [m["body"] for m in latest["messages"]] == ["m3", "m4"]
    assert latest["unread"] == 1  # m1 (care team) is not shown yet, so not read
    older = api.get(
        "pa1", f"/api/v1/me/messages/{tid}", limit=2, before=latest["older_cursor"]
    ).json()
    assert [m["body"] for m in older["messages"]] == ["m1", "m2"]
    assert older["unread"] == 0
    rest = api.get("pa1", f"/api/v1/me/messages/{tid}", limit=2, before=older["older_cursor"])
    assert [m["body"] for m in rest.json()["messages"]] == ["m0"]
    assert rest.json()["older_cursor"] is None


def test_care_team_message_when_several_arrive_keeps_one_open_notice(
    api: Api, world: World, short: Callable[[], Session], rewound: FrozenClock
) -> None:
    tid = api.care_start("clina", "pa1")["id"]
    api.post("clina", f"/api/v1/messages/threads/{tid}", {"body": "and another"})
    api.care_start("clina", "pa1", "Second topic")
    notices = _notices(short, world, "pa1")
    assert len(notices) == 1
    assert notices[0].text == MESSAGE_WAITING_TEXT
    assert notices[0].read_at is None
    # The patient's app sees it beside their alerts.
    shown = api.get("pa1", "/api/v1/me/alerts").json()["notices"]
    assert [n["text"] for n in shown] == [MESSAGE_WAITING_TEXT]


def test_notice_when_every_message_read_is_settled_and_next_message_opens_one(
    api: Api, world: World, short: Callable[[], Session], rewound: FrozenClock
) -> None:
    one = api.care_start("clina", "pa1", "one")["id"]
    two = api.care_start("clina", "pa1", "two")["id"]
    api.get("pa1", f"/api/v1/me/messages/{one}")
    assert _notices(short, world, "pa1")[0].read_at is None  # thread two still unread
    rewound.advance(minutes=2)
    api.get("pa1", f"/api/v1/me/messages/{two}")
    [settled] = _notices(short, world, "pa1")
    assert settled.read_at == rewound.now

    rewound.advance(minutes=2)
    api.post("clina", f"/api/v1/messages/threads/{one}", {"body": "one more"})
    notices = _notices(short, world, "pa1")
    assert len(notices) == 2
    assert notices[1].read_at is None
    assert notices[1].created_at == rewound.now


def test_patient_message_when_sent_creates_no_patient_notice(
    api: Api, world: World, short: Callable[[], Session]
) -> None:
    api.patient_start("pa1")
    assert _notices(short, world, "pa1") == []


def test_open_thread_when_clinician_reads_does_not_settle_patient_notice(
    api: Api, world: World, short: Callable[[], Session]
) -> None:
    tid = api.care_start("clina", "pa1")["id"]
    api.get("clina", f"/api/v1/messages/threads/{tid}")
    assert _notices(short, world, "pa1")[0].read_at is None


def test_thread_times_when_sent_use_the_clock(api: Api, rewound: FrozenClock) -> None:
    started = api.patient_start("pa1")
    rewound.advance(minutes=3)
    reply = api.post("clina", f"/api/v1/messages/threads/{started['id']}", {"body": "hi"})
    assert reply.json()["sent_at"].startswith((rewound.now).strftime("%Y-%m-%dT%H:%M:%S"))
    listed = api.get("pa1", "/api/v1/me/messages").json()["threads"][0]
    assert listed["last_message_at"] == reply.json()["sent_at"]
    assert listed["created_at"] == started["created_at"]
    assert listed["created_at"] != listed["last_message_at"]
