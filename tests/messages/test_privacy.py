"""What a message leaves behind outside its thread: audit entries with ids, lengths and counts
only, and a notice that says a message is waiting, never what it says."""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import AuditEntry
from loops.messages.service import MESSAGE_WAITING_TEXT
from loops.models import PatientNotice
from tests.conftest import World
from tests.messages.conftest import SECRET, Api

SUBJECT = "Subject-Kept-Private-4Z"


def _everything_audited(rows: list[AuditEntry]) -> str:
    return "\n".join(
        json.dumps([e.action, e.resource_type, e.resource_id, e.patient_id, e.outcome, e.details])
        for e in rows
    )


def _conversation(api: Api, world: World) -> str:
    """Both sides write, read, fail to write, close and reopen; returns the thread id."""
    tid = api.patient_start("pa1", SUBJECT, f"{SECRET} from the patient", is_question=True)["id"]
    api.post("clina", f"/api/v1/messages/threads/{tid}", {"body": f"{SECRET} from the team"})
    api.care_start("clina", "pa1", SUBJECT, f"{SECRET} opening a second thread")
    api.get("pa1", "/api/v1/me/messages")
    api.get("pa1", f"/api/v1/me/messages/{tid}")
    api.get("clina", f"/api/v1/messages/threads/{tid}")
    api.get("clina", "/api/v1/messages/unread")
    api.get("clina", f"/api/v1/patients/{world.patients['pa1'].id}/messages")
    api.post("clina", f"/api/v1/messages/threads/{tid}/close")
    refused = api.post("pa1", f"/api/v1/me/messages/{tid}", {"body": f"{SECRET} too late"})
    assert refused.status_code == 409
    invalid = api.post("pa1", f"/api/v1/me/messages/{tid}", {"body": f"{SECRET}" * 400})
    assert invalid.status_code == 422
    api.post("pa2", f"/api/v1/me/messages/{tid}", {"body": f"{SECRET} intruder"})
    api.post("clina", f"/api/v1/messages/threads/{tid}/reopen")
    return tid


def test_audit_trail_when_conversation_held_has_no_subject_or_body(
    api: Api, world: World, audit_rows: Callable[..., list[AuditEntry]]
) -> None:
    _conversation(api, world)
    text = _everything_audited(audit_rows())
    assert SECRET not in text
    assert SUBJECT not in text


def test_send_entry_when_message_sent_names_thread_message_and_length(
    api: Api, world: World, audit_rows: Callable[..., list[AuditEntry]]
) -> None:
    body = f"{SECRET} twelve"
    started = api.patient_start("pa1", SUBJECT, body, is_question=True)
    [entry] = audit_rows("message.send")
    assert entry.outcome == "success"
    assert entry.resource_type == "message_thread"
    assert entry.resource_id == started["id"]
    assert entry.patient_id == world.patients["pa1"].id
    assert json.loads(entry.details) == {
        "thread_id": started["id"],
        "message_id": started["messages"][0]["id"],
        "length": len(body),
        "new_thread": True,
        "is_question": True,
        "side": "patient",
    }


def test_each_act_when_done_is_audited_once_under_its_name(
    api: Api, world: World, audit_rows: Callable[..., list[AuditEntry]]
) -> None:
    tid = _conversation(api, world)
    acts = [(e.action, e.outcome, e.actor_role) for e in audit_rows("message.")]
    assert acts == [
        ("message.send", "success", "patient"),
        ("message.send", "success", "clinician"),
        ("message.send", "success", "clinician"),
        ("message.list", "success", "patient"),
        ("message.read", "success", "patient"),
        ("message.read", "success", "clinician"),
        ("message.list", "success", "clinician"),
        ("message.list", "success", "clinician"),
        ("message.close", "success", "clinician"),
        ("message.send", "failure", "patient"),
        ("message.send", "failure", "patient"),
        ("message.send", "denied", "patient"),
        ("message.reopen", "success", "clinician"),
    ]
    reads = [json.loads(e.details) for e in audit_rows("message.read")]
    assert reads[0] == {"thread_id": tid, "shown": 2, "marked_read": 1}
    failures = [json.loads(e.details) for e in audit_rows("message.send") if e.outcome == "failure"]
    assert failures == [{"code": "thread_closed"}, {"code": "validation_error"}]


def test_notices_when_care_team_writes_say_only_that_a_message_waits(
    api: Api, world: World, short: Callable[[], Session]
) -> None:
    _conversation(api, world)
    with short() as s:
        texts = [n.text for n in s.scalars(select(PatientNotice))]
    assert texts == [MESSAGE_WAITING_TEXT]
    alerts = api.get("pa1", "/api/v1/me/alerts").text
    assert SECRET not in alerts
    assert SUBJECT not in alerts
    assert MESSAGE_WAITING_TEXT in alerts


def test_list_entry_when_care_team_lists_names_patients_not_subjects(
    api: Api, world: World, audit_rows: Callable[..., list[AuditEntry]]
) -> None:
    api.patient_start("pa1", SUBJECT)
    api.patient_start("pa2", SUBJECT)
    api.get("clina", "/api/v1/messages/unread")
    [entry] = audit_rows("message.list")
    details = json.loads(entry.details)
    assert details["count"] == 2
    assert details["unread_threads"] == 2
    assert details["patient_ids"] == sorted(world.patients[k].id for k in ("pa1", "pa2"))
