"""Hostile input to every issue-6 API route, sent by callers who may use it: bodies of the
wrong shape or type, numbers out of range, text with control characters, markup and SQL, dates
out of range, malformed ids and paging parameters. Never a 500: a 4xx problem document with a
code, nothing changed by a refused act, and each request audited exactly once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from loops.care.models import CarePlanVersion, Goal
from loops.messages.models import Message, MessageThread
from loops.visits.models import Visit
from tests.hostile.conftest import Caller, Scene, acts, api_routes, assert_problem

# Routes whose body is required, as (caller, method, path key); path keys are filled in below.
BODY_ROUTES = [
    ("pa1", "POST", "/api/v1/me/goals"),
    ("pa1", "POST", "/api/v1/me/goals/{gp}/logs"),
    ("clina", "POST", "/api/v1/patients/{pa1}/goals"),
    ("clina", "PUT", "/api/v1/patients/{pa1}/care-plan/note"),
    ("clina", "PUT", "/api/v1/patients/{pa1}/next-visit"),
    ("clina", "POST", "/api/v1/patients/{pa1}/next-visit/complete"),
    ("pa1", "POST", "/api/v1/me/messages"),
    ("pa1", "POST", "/api/v1/me/messages/{t}"),
    ("clina", "POST", "/api/v1/patients/{pa1}/messages"),
    ("clina", "POST", "/api/v1/messages/threads/{t}"),
]
# Routes whose body is optional (absent means no reason).
OPTIONAL_BODY_ROUTES = [
    ("pa1", "POST", "/api/v1/me/goals/{g}/decline"),
    ("pa1", "POST", "/api/v1/me/goals/{gp}/withdraw"),
    ("clina", "POST", "/api/v1/goals/{gp}/decline"),
    ("clina", "POST", "/api/v1/goals/{g}/withdraw"),
]
JSON = "application/json"
BAD_BODIES = [
    pytest.param(None, None, id="missing"),
    pytest.param(b"", JSON, id="empty"),
    pytest.param(b"[]", JSON, id="empty-array"),
    pytest.param(b'[{"kind": "daily_steps", "target_value": 7000, "body": "b"}]', JSON, id="array"),
    pytest.param(b"null", JSON, id="null"),
    pytest.param(b"42", JSON, id="number"),
    pytest.param(b'"text"', JSON, id="string"),
    pytest.param(b'{"note": ', JSON, id="truncated-json"),
    pytest.param(b'{"body": "\xff\xfe\xfd", "note": "\xc3\x28"}', JSON, id="invalid-utf8"),
    pytest.param(b"\x00\x01\x02", JSON, id="binary"),
    pytest.param(b"kind=daily_steps&body=b", "application/x-www-form-urlencoded", id="form"),
    pytest.param(b'{"body": "b", "note": "n"}', "text/plain", id="text-plain"),
    pytest.param(b'{"body": "b", "note": "n"}', "application/xml", id="xml-type"),
]


def fill(path: str, scene: Scene) -> str:
    """A path key with pa1's ids."""
    ids = scene.ids
    return path.format(
        pa1=scene.pid("pa1"),
        g=ids["pa1.goal_by_clin"],
        gp=ids["pa1.goal_by_patient"],
        t=ids["pa1.thread"],
    )


def snapshot(short: Callable[[], Session], pid: str) -> tuple[Any, ...]:
    """pa1's goals, plan versions, threads, messages and visits."""
    with short() as s:
        return (
            sorted(
                s.execute(
                    select(Goal.id, Goal.status, Goal.note).where(col(Goal.patient_id) == pid)
                ).tuples()
            ),
            sorted(
                s.scalars(
                    select(CarePlanVersion.version).where(col(CarePlanVersion.patient_id) == pid)
                )
            ),
            sorted(
                s.execute(
                    select(MessageThread.id, MessageThread.status).where(
                        col(MessageThread.patient_id) == pid
                    )
                ).tuples()
            ),
            sorted(s.scalars(select(Message.id).where(col(Message.patient_id) == pid))),
            sorted(
                s.execute(
                    select(Visit.id, Visit.status, Visit.override_due_by).where(
                        col(Visit.patient_id) == pid
                    )
                ).tuples()
            ),
        )


@pytest.mark.parametrize(("content", "ctype"), BAD_BODIES)
def test_write_when_body_is_malformed_is_4xx_problem_and_changes_nothing(
    scene: Scene,
    as_: Callable[[str], Caller],
    short: Callable[[], Session],
    engine: Engine,
    content: bytes | None,
    ctype: str | None,
) -> None:
    before = snapshot(short, scene.pid("pa1"))
    for who, method, path in BODY_ROUTES:
        kw: dict[str, Any] = {}
        if content is not None:
            kw = {"content": content, "headers": {"content-type": ctype}}
        n = acts(engine)
        r = as_(who)(method, fill(path, scene), **kw)
        assert_problem(r, 400, 415, 422)
        # Never twice (see test_write_when_body_fails_schema_is_audited_once for the rest).
        assert acts(engine) <= n + 1, (method, path)
    assert snapshot(short, scene.pid("pa1")) == before


NOT_JSON = [
    pytest.param(b'{"kind": ', id="truncated"),
    pytest.param(b'{"kind": "sleep", "note": "\xff\xfe"}', id="invalid-utf8"),
    pytest.param(b'{"kind": "sleep", "target_value": NaN}', id="nan"),
]


@pytest.mark.parametrize("content", NOT_JSON)
@pytest.mark.parametrize("who", ["pa1", "pb1", "clina", "anonymous"])
def test_write_when_body_is_not_json_is_authenticated_and_audited_once(
    scene: Scene, as_: Callable[[str], Caller], engine: Engine, who: str, content: bytes
) -> None:
    # Access is decided before the body is read: a stranger 401, a clinician (no record of
    # their own) 404; then a body that is not UTF-8 is 400, one that is not JSON 422.
    unreadable = 400 if content == NOT_JSON[1].values[0] else 422
    expected = {"anonymous": 401, "clina": 404}.get(who, unreadable)
    n = acts(engine)
    r = as_(who)("POST", "/api/v1/me/goals", content=content, headers={"content-type": JSON})
    assert_problem(r, expected)
    assert acts(engine) == n + 1


@pytest.mark.parametrize("content", NOT_JSON)
def test_team_write_when_body_is_not_json_and_patient_is_not_theirs_is_404(
    scene: Scene, as_: Callable[[str], Caller], engine: Engine, content: bytes
) -> None:
    n = acts(engine)
    r = as_("clinb")(
        "POST",
        f"/api/v1/patients/{scene.pid('pa1')}/goals",
        content=content,
        headers={"content-type": JSON},
    )
    assert_problem(r, 404)
    assert acts(engine) == n + 1


def test_write_when_body_is_not_utf8_and_caller_is_allowed_is_audited_as_failed(
    scene: Scene, as_: Callable[[str], Caller], audits: Callable[..., int]
) -> None:
    r = as_("pa1")(
        "POST", "/api/v1/me/goals", content=NOT_JSON[1].values[0], headers={"content-type": JSON}
    )
    assert_problem(r, 400)
    assert audits(action="goal.propose", outcome="failure") == 1


def test_write_when_body_fails_schema_is_audited_once(
    scene: Scene, as_: Callable[[str], Caller], engine: Engine
) -> None:
    n = acts(engine)
    r = as_("pa1")("POST", "/api/v1/me/goals", json={"kind": "fitness", "target_value": 1})
    assert_problem(r, 422)
    assert acts(engine) == n + 1


@pytest.mark.parametrize(
    ("content", "ctype"),
    [b for b in BAD_BODIES[2:] if b.values[1] == JSON and b.values[0] != b"null"],
)
def test_goal_act_when_optional_body_is_malformed_is_4xx_problem(
    scene: Scene,
    as_: Callable[[str], Caller],
    short: Callable[[], Session],
    content: bytes,
    ctype: str,
) -> None:
    before = snapshot(short, scene.pid("pa1"))
    for who, method, path in OPTIONAL_BODY_ROUTES:
        r = as_(who)(method, fill(path, scene), content=content, headers={"content-type": ctype})
        assert_problem(r, 400, 415, 422)
    assert snapshot(short, scene.pid("pa1")) == before


# (caller, method, path, valid body, free-text fields)
TEXT_ROUTES = [
    ("pa1", "POST", "/api/v1/me/goals", {"kind": "sleep", "target_value": 7}, ("note",)),
    (
        "clina",
        "POST",
        "/api/v1/patients/{pa1}/goals",
        {"kind": "sleep", "target_value": 8},
        ("note",),
    ),
    ("pa1", "POST", "/api/v1/me/goals/{g}/decline", {}, ("reason",)),
    ("pa1", "POST", "/api/v1/me/goals/{gp}/withdraw", {}, ("reason",)),
    ("clina", "PUT", "/api/v1/patients/{pa1}/care-plan/note", {}, ("note", "change_reason")),
    ("clina", "PUT", "/api/v1/patients/{pa1}/next-visit", {"kind": "call"}, ("reason",)),
    ("clina", "POST", "/api/v1/patients/{pa1}/next-visit/complete", {}, ("note",)),
    ("pa1", "POST", "/api/v1/me/messages", {}, ("subject", "body")),
    ("clina", "POST", "/api/v1/messages/threads/{t}", {}, ("body",)),
]
TEXTS = [
    pytest.param("nul\x00in the middle\x00", id="nul"),
    pytest.param("bell\x07 escape\x1b[31m del\x7f", id="controls"),
    pytest.param("<script>alert('x')</script><img src=x onerror=alert(1)>", id="html"),
    pytest.param("'; DROP TABLE goals; -- \" OR 1=1", id="sql"),
    pytest.param("rtl \u202e override, emoji \U0001f44d, zero-width \u200b", id="unicode"),
]


def _valid(route_body: dict[str, Any], fields: tuple[str, ...], text: str) -> dict[str, Any]:
    body = dict(route_body)
    if "reason" in fields and "kind" in body:  # the override needs a date
        body["due_by"] = clock.iso(clock.utcnow() + timedelta(days=10))
    return {**body, **dict.fromkeys(fields, text)}


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize(
    ("who", "method", "path", "body", "fields"), TEXT_ROUTES, ids=lambda v: str(v)[:30]
)
def test_free_text_when_hostile_is_stored_without_controls_or_refused(
    scene: Scene,
    as_: Callable[[str], Caller],
    who: str,
    method: str,
    path: str,
    body: dict[str, Any],
    fields: tuple[str, ...],
    text: str,
) -> None:
    r = as_(who)(method, fill(path, scene), json=_valid(body, fields, text))
    assert r.status_code < 300, r.text
    for control in ("\\u0000", "\\u0007", "\\u001b"):
        assert control not in r.text


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "fields"), TEXT_ROUTES, ids=lambda v: str(v)[:30]
)
def test_free_text_when_100k_chars_is_422(
    scene: Scene,
    as_: Callable[[str], Caller],
    short: Callable[[], Session],
    who: str,
    method: str,
    path: str,
    body: dict[str, Any],
    fields: tuple[str, ...],
) -> None:
    before = snapshot(short, scene.pid("pa1"))
    for name in fields:
        payload = _valid(body, fields, "ok") | {name: "x" * 100_000}
        r = as_(who)(method, fill(path, scene), json=payload)
        assert_problem(r, 422)
    assert snapshot(short, scene.pid("pa1")) == before


@pytest.mark.parametrize("text", ["", "   ", "\x00", "\x00\x01 \x02", "\n\t"])
@pytest.mark.parametrize(
    ("who", "method", "path", "body", "field"),
    [
        ("clina", "PUT", "/api/v1/patients/{pa1}/care-plan/note", {"note": "n"}, "change_reason"),
        ("clina", "PUT", "/api/v1/patients/{pa1}/next-visit", {"kind": "visit"}, "reason"),
        ("pa1", "POST", "/api/v1/me/messages", {"subject": "s"}, "body"),
        ("pa1", "POST", "/api/v1/me/messages", {"body": "b"}, "subject"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_required_text_when_only_blanks_or_controls_is_422(
    scene: Scene,
    as_: Callable[[str], Caller],
    short: Callable[[], Session],
    who: str,
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
    text: str,
) -> None:
    before = snapshot(short, scene.pid("pa1"))
    payload = {**body, field: text}
    if field == "reason":
        payload["due_by"] = clock.iso(clock.utcnow() + timedelta(days=3))
    r = as_(who)(method, fill(path, scene), json=payload)
    assert_problem(r, 422)
    assert snapshot(short, scene.pid("pa1")) == before


NUMBERS = [
    pytest.param(b"1e400", id="overflow"),
    pytest.param(b"NaN", id="nan"),
    pytest.param(b"Infinity", id="inf"),
    pytest.param(b"-Infinity", id="neg-inf"),
    pytest.param(b"-1", id="negative"),
    pytest.param(b"0", id="zero"),
    pytest.param(b"1e308", id="huge"),
    pytest.param(b"100000000000000000000000000000000000000", id="huge-int"),
    pytest.param(b'"12abc"', id="not-a-number"),
    pytest.param(b'{"v": 1}', id="object"),
]


@pytest.mark.parametrize("number", NUMBERS)
def test_number_when_out_of_range_is_4xx_problem(
    scene: Scene,
    as_: Callable[[str], Caller],
    short: Callable[[], Session],
    number: bytes,
) -> None:
    before = snapshot(short, scene.pid("pa1"))
    n = number
    cases = [
        ("pa1", "POST", "/api/v1/me/goals", b'{"kind": "daily_steps", "target_value": %s}' % n),
        ("pa1", "POST", "/api/v1/me/goals", b'{"kind": "adherence", "target_value": %s}' % n),
        (
            "clina",
            "POST",
            "/api/v1/patients/{pa1}/goals",
            b'{"kind": "blood_pressure", "target_systolic": %s, "target_diastolic": 80}' % n,
        ),
        (
            "clina",
            "POST",
            "/api/v1/patients/{pa1}/goals",
            b'{"kind": "blood_pressure", "target_systolic": 130, "target_diastolic": %s}' % n,
        ),
        ("pa1", "POST", "/api/v1/me/goals/{gp}/logs", b'{"day": "2026-12-01", "value": %s}' % n),
        (
            "clina",
            "PUT",
            "/api/v1/patients/{pa1}/care-plan/note",
            b'{"note": "n", "change_reason": "r", "expected_version": %s}' % n,
        ),
    ]
    for who, method, path, content in cases:
        if number == b"0" and (b"logs" in path.encode() or b"note" in path.encode()):
            continue  # a log of 0 mg is data; version 0 is right while the plan has none
        r = as_(who)(method, fill(path, scene), content=content, headers={"content-type": JSON})
        assert_problem(r, 409, 422)
    assert snapshot(short, scene.pid("pa1")) == before


def test_goal_log_when_value_negative_is_422(scene: Scene, as_: Callable[[str], Caller]) -> None:
    r = as_("pa1")(
        "POST",
        fill("/api/v1/me/goals/{gp}/logs", scene),
        json={"day": clock.utcnow().date().isoformat(), "value": -1},
    )
    assert_problem(r, 422)
    assert r.json()["code"] == "invalid_value"


DATES = [
    pytest.param("0001-01-01T00:00:00Z", "date_in_past", id="year-1"),
    pytest.param("1970-01-01T00:00:00Z", "date_in_past", id="epoch"),
    pytest.param("9999-12-31T23:59:59Z", "date_too_far", id="year-9999"),
    pytest.param("9999-12-31T23:59:59-14:00", "invalid_date", id="beyond-utc"),
    pytest.param("0001-01-01T00:00:00+14:00", "invalid_date", id="before-utc"),
    pytest.param("2027-02-30T00:00:00Z", "validation_error", id="feb-30"),
    pytest.param("2027-01-01T25:00:00Z", "validation_error", id="hour-25"),
    pytest.param("tomorrow", "validation_error", id="word"),
    pytest.param("", "validation_error", id="empty"),
    pytest.param(1e20, "validation_error", id="float-seconds"),
    pytest.param(99999999999, "date_in_past", id="unix-milliseconds-1973"),
    pytest.param([2027, 1, 1], "validation_error", id="array"),
]


@pytest.mark.parametrize(("due_by", "code"), DATES)
def test_override_when_date_is_out_of_range_or_malformed_is_422(
    scene: Scene,
    as_: Callable[[str], Caller],
    short: Callable[[], Session],
    engine: Engine,
    due_by: Any,
    code: str,
) -> None:
    before = snapshot(short, scene.pid("pa1"))
    n = acts(engine)
    r = as_("clina")(
        "PUT",
        fill("/api/v1/patients/{pa1}/next-visit", scene),
        json={"due_by": due_by, "reason": "r"},
    )
    assert_problem(r, 422)
    assert r.json()["code"] == code
    assert acts(engine) == n + 1
    assert snapshot(short, scene.pid("pa1")) == before


@pytest.mark.parametrize(
    ("ahead", "suffix"),
    [
        pytest.param(timedelta(days=2), "", id="naive-means-utc"),
        pytest.param(timedelta(days=365), "+05:30", id="offset"),
        pytest.param(timedelta(hours=1), "Z", id="in-an-hour"),
    ],
)
def test_override_when_date_is_naive_or_offset_is_kept_in_utc(
    scene: Scene, as_: Callable[[str], Caller], ahead: timedelta, suffix: str
) -> None:
    when = (clock.utcnow() + ahead).replace(microsecond=0)
    r = as_("clina")(
        "PUT",
        fill("/api/v1/patients/{pa1}/next-visit", scene),
        json={"due_by": when.replace(tzinfo=None).isoformat() + suffix, "reason": "r"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["due_by"].endswith("Z")


@pytest.mark.parametrize(
    ("day", "code"),
    [
        ("0001-01-01", "day_too_old"),
        ("9999-12-31", "day_in_future"),
        ("2026-02-30", "validation_error"),
        ("2026-13-01", "validation_error"),
        ("", "validation_error"),
        ("2026-12-01T10:00:00", "validation_error"),
        ("yesterday", "validation_error"),
    ],
)
def test_goal_log_when_day_is_out_of_range_or_malformed_is_422(
    scene: Scene, as_: Callable[[str], Caller], day: str, code: str
) -> None:
    r = as_("pa1")(
        "POST", fill("/api/v1/me/goals/{gp}/logs", scene), json={"day": day, "value": 1500}
    )
    assert_problem(r, 422)
    assert r.json()["code"] == code


BAD_IDS = [
    pytest.param("not-a-uuid", id="word"),
    pytest.param("00000000-0000-4000-8000-000000000000", id="unknown-uuid"),
    pytest.param("a" * 37, id="37-chars"),
    pytest.param("a" * 1000, id="1000-chars"),
    pytest.param("..%2F..%2Fetc%2Fpasswd", id="traversal"),
    pytest.param("%27%20OR%201%3D1%20--", id="sql"),
    pytest.param("%3Cscript%3E", id="markup"),
    pytest.param("%00", id="nul"),
]


@pytest.mark.parametrize("caller", ["insider", "anonymous", "auditor"])
@pytest.mark.parametrize("bad", BAD_IDS)
def test_route_when_id_is_malformed_is_404_or_422_problem(
    scene: Scene, as_: Callable[[str], Caller], engine: Engine, bad: str, caller: str
) -> None:
    ids = scene.ids
    real = {
        scene.pid("pa1"),
        ids["pa1.goal_by_clin"],
        ids["pa1.goal_by_patient"],
        ids["pa1.thread"],
    }
    for route in api_routes(scene):
        hit = next((i for i in real if i in route.path), None)
        if hit is None:
            continue
        who = "pa1" if route.path.startswith("/api/v1/me/") else "clina"
        path = route.path.replace(hit, bad)
        n = acts(engine)
        r = as_(who if caller == "insider" else caller)(route.method, path, json=route.body or {})
        assert_problem(
            r, *{"insider": (404, 422), "anonymous": (401, 404), "auditor": (403, 404)}[caller]
        )
        assert "P-PA1" not in r.text
        # A path no route matches is answered by the router, before any act.
        assert acts(engine) in (n, n + 1)


def test_fhir_search_when_patient_is_malformed_is_404(
    scene: Scene, as_: Callable[[str], Caller]
) -> None:
    for bad in ("a" * 1000, "Patient/" + "a" * 37, "Patient/", "%00", scene.pid("pb1")):
        r = as_("clina")("GET", f"/fhir/R4/CarePlan?patient={bad}")
        assert_problem(r, 404)


PAGING = [
    (
        "clina",
        "/api/v1/patients/{pa1}/care-plan/versions",
        "limit",
        ["0", "-1", "101", "1e3", "99999999999999999999"],
    ),
    (
        "clina",
        "/api/v1/patients/{pa1}/care-plan/versions",
        "offset",
        ["-1", "100001", "99999999999999999999", "x"],
    ),
    ("clina", "/api/v1/visits/due", "within_days", ["-1", "3661", "99999999999999999999", "NaN"]),
    ("clina", "/api/v1/visits/due", "limit", ["0", "501", "-5"]),
    ("pa1", "/api/v1/me/messages", "limit", ["0", "101", "-1", "99999999999999999999"]),
    ("clina", "/api/v1/messages/unread", "limit", ["0", "101"]),
    ("clina", "/api/v1/patients/{pa1}/messages", "cursor", ["A" * 201]),
    ("pa1", "/api/v1/me/messages/{t}", "before", ["0", "-1", str(2**63), "1" + "0" * 30, "x"]),
    ("clina", "/api/v1/messages/threads/{t}", "before", ["0", str(2**63), "1" + "0" * 30]),
    ("clina", "/api/v1/messages/threads/{t}", "limit", ["0", "201"]),
    ("pa1", "/api/v1/me/goals", "include_closed", ["maybe", "2"]),
    ("pa1", "/api/v1/me/care-plan", "format", ["xml", "FHIR", ""]),
]


@pytest.mark.parametrize(("who", "path", "param", "values"), PAGING, ids=lambda v: str(v)[:24])
def test_paging_when_out_of_range_is_422_problem(
    scene: Scene, as_: Callable[[str], Caller], who: str, path: str, param: str, values: list[str]
) -> None:
    for value in values:
        r = as_(who)("GET", fill(path, scene), params={param: value})
        assert_problem(r, 422)


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("%00%ff", id="binary"),
        pytest.param("not-base64!!", id="not-base64"),
        pytest.param("A" * 199, id="long"),
        pytest.param("MjAyNi0wMS0wMQ", id="no-thread"),  # "2026-01-01"
        pytest.param("MjAyNi0wMS0wMVQwMDowMDowMHxhYmM", id="naive-time"),
        # Aware times with no UTC equivalent (year 9999 at -14:00, year 1 at +14:00).
        pytest.param("OTk5OS0xMi0zMVQyMzo1OTo1OS0xNDowMHxhYmM", id="beyond-utc"),
        pytest.param("MDAwMS0wMS0wMVQwMDowMDowMCsxNDowMHxhYmM", id="before-utc"),
    ],
)
@pytest.mark.parametrize(
    ("who", "path"),
    [
        ("pa1", "/api/v1/me/messages"),
        ("clina", "/api/v1/patients/{pa1}/messages"),
        ("clina", "/api/v1/messages/unread"),
    ],
)
def test_list_when_cursor_is_garbage_is_422_invalid_cursor(
    scene: Scene, as_: Callable[[str], Caller], who: str, path: str, cursor: str
) -> None:
    r = as_(who)("GET", fill(path, scene) + f"?cursor={cursor}")
    assert_problem(r, 422)
    assert r.json()["code"] == "invalid_cursor"


@pytest.mark.parametrize("before", [2**63 - 1, 10**12])
def test_thread_when_before_is_past_every_id_shows_the_latest(
    scene: Scene, as_: Callable[[str], Caller], before: int
) -> None:
    r = as_("clina")("GET", fill("/api/v1/messages/threads/{t}", scene), params={"before": before})
    assert r.status_code == 200, r.text
    assert [m["body"] for m in r.json()["messages"]] == ["body-of-pa1"]
