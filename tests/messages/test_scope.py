"""Who reaches which conversation (OWASP API1): a patient only their own, a clinician only
their care teams' patients', other roles none; out of scope answers as unknown does (404)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit.models import AuditEntry
from loops.messages.models import Message, MessageThread
from tests.conftest import World
from tests.messages.conftest import Api

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def _thread_routes(tid: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/api/v1/me/messages/{tid}"),
        ("POST", f"/api/v1/me/messages/{tid}"),
        ("POST", f"/api/v1/me/messages/{tid}/close"),
        ("GET", f"/api/v1/messages/threads/{tid}"),
        ("POST", f"/api/v1/messages/threads/{tid}"),
        ("POST", f"/api/v1/messages/threads/{tid}/close"),
        ("POST", f"/api/v1/messages/threads/{tid}/reopen"),
    ]


def _call(api: Api, who: str, method: str, path: str) -> int:
    if method == "GET":
        return api.get(who, path).status_code
    return api.post(who, path, {"body": "intruding"}).status_code


def _counts(short: Callable[[], Session]) -> tuple[int, int]:
    with short() as s:
        return (
            int(s.scalar(select(func.count()).select_from(Message)) or 0),
            int(s.scalar(select(func.count()).select_from(MessageThread)) or 0),
        )


@pytest.mark.parametrize("intruder", ["pa2", "pb1", "clinb"])
def test_thread_when_outside_caller_scope_is_404_and_unchanged(
    api: Api, short: Callable[[], Session], intruder: str
) -> None:
    tid = api.patient_start("pa1")["id"]
    api.post("pa1", f"/api/v1/me/messages/{tid}/close")
    before = _counts(short)
    for method, path in _thread_routes(tid):
        assert _call(api, intruder, method, path) == 404, (intruder, method, path)
    assert _counts(short) == before
    with short() as s:
        assert s.scalars(select(Message.read_at)).all() == [None]  # nobody read it
        assert s.scalars(select(MessageThread.status)).all() == ["closed"]


def test_thread_when_unknown_is_404_for_patient_and_clinician(api: Api) -> None:
    for who in ("pa1", "clina"):
        for method, path in _thread_routes(UNKNOWN):
            assert _call(api, who, method, path) == 404, (who, method, path)


@pytest.mark.parametrize("role", ["auditor", "mleng", "admin"])
def test_messages_when_other_role_calls_is_403(api: Api, world: World, role: str) -> None:
    tid = api.patient_start("pa1")["id"]
    pid = world.patients["pa1"].id
    routes = [
        *_thread_routes(tid),
        ("GET", "/api/v1/me/messages"),
        ("POST", "/api/v1/me/messages"),
        ("GET", f"/api/v1/patients/{pid}/messages"),
        ("POST", f"/api/v1/patients/{pid}/messages"),
        ("GET", "/api/v1/messages/unread"),
    ]
    for method, path in routes:
        assert _call(api, role, method, path) == 403, (role, method, path)


def test_messages_when_device_key_used_is_403(api: Api, world: World) -> None:
    tid = api.patient_start("pa1")["id"]
    _, key = world.device("pa1")
    headers = {"Authorization": f"Bearer {key}"}
    for path in ("/api/v1/me/messages", f"/api/v1/me/messages/{tid}"):
        r = api.client.get(path, headers=headers)
        assert r.status_code == 403
        assert r.json()["code"] == "device_key_not_allowed"
    r = api.client.post("/api/v1/me/messages", headers=headers, json={"subject": "s", "body": "b"})
    assert r.status_code == 403


def test_patient_messages_when_clinician_of_other_team_is_404(api: Api, world: World) -> None:
    pid = world.patients["pa1"].id
    assert api.get("clinb", f"/api/v1/patients/{pid}/messages").status_code == 404
    r = api.post("clinb", f"/api/v1/patients/{pid}/messages", {"subject": "s", "body": "b"})
    assert r.status_code == 404


def test_me_routes_when_clinician_calls_are_404(api: Api) -> None:
    tid = api.patient_start("pa1")["id"]
    assert api.get("clina", "/api/v1/me/messages").status_code == 404
    assert api.get("clina", f"/api/v1/me/messages/{tid}").status_code == 404
    r = api.post("clina", f"/api/v1/me/messages/{tid}", {"body": "x"})
    assert r.status_code == 404


def test_patient_list_when_others_have_threads_shows_only_own(api: Api) -> None:
    mine = api.patient_start("pa1")["id"]
    api.patient_start("pa2")
    api.patient_start("pb1")
    api.care_start("clinb", "pb2")
    listed = api.get("pa1", "/api/v1/me/messages").json()
    assert [t["id"] for t in listed["threads"]] == [mine]
    assert listed["unread_threads"] == 0


def test_unread_list_when_two_teams_lists_only_own_team(api: Api, world: World) -> None:
    a1 = api.patient_start("pa1")["id"]
    a2 = api.patient_start("pa2")["id"]
    b1 = api.patient_start("pb1")["id"]
    team_a = api.get("clina", "/api/v1/messages/unread").json()
    assert {t["id"] for t in team_a["threads"]} == {a1, a2}
    assert team_a["unread_threads"] == 2
    team_b = api.get("clinb", "/api/v1/messages/unread").json()
    assert [t["id"] for t in team_b["threads"]] == [b1]
    assert team_b["threads"][0]["patient_pseudonym"] == world.patients["pb1"].pseudonym


def test_unread_list_when_paged_follows_cursor(api: Api) -> None:
    made = {api.patient_start("pa1", f"s{i}")["id"] for i in range(3)}
    first = api.get("clina", "/api/v1/messages/unread", limit=2).json()
    assert len(first["threads"]) == 2
    assert first["unread_threads"] == 3
    rest = api.get("clina", "/api/v1/messages/unread", limit=2, cursor=first["next_cursor"])
    got = {t["id"] for t in first["threads"] + rest.json()["threads"]}
    assert got == made
    assert rest.json()["next_cursor"] is None


def test_refusals_when_out_of_scope_are_audited_as_denied(
    api: Api, audit_rows: Callable[..., list[AuditEntry]]
) -> None:
    tid = api.patient_start("pa1")["id"]
    api.get("pa2", f"/api/v1/me/messages/{tid}")
    api.post("clinb", f"/api/v1/messages/threads/{tid}", {"body": "x"})
    api.get("auditor", "/api/v1/messages/unread")
    denied = [(e.action, e.outcome) for e in audit_rows("message.") if e.outcome == "denied"]
    assert denied == [
        ("message.read", "denied"),
        ("message.send", "denied"),
        ("message.list", "denied"),
    ]
