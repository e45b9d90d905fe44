"""Messages between patients and their care teams over HTTP (patient API under /api/v1/me,
care-team API under /api/v1).

Thread routes find the patient through the thread, so a thread outside the caller's scope
answers 404 exactly as an unknown one does. Audit entries name threads and messages by id
and carry lengths and counts, never a subject or a body.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import AfterValidator, BaseModel
from pydantic_core import PydanticCustomError
from sqlalchemy.orm import Session

from app.api.deps import Access, SessionDep, require
from app.auth.principal import Principal
from app.core import clock
from app.core.errors import ProblemError
from loops.messages import service
from loops.messages.models import Message, MessageThread, SenderSide, ThreadStatus

router = APIRouter(prefix="/api/v1", tags=["patient-clinician loop"])
_ID = Annotated[str, Path(max_length=36)]
_LIMIT = Annotated[int, Query(ge=1, le=100)]
_CURSOR = Annotated[str | None, Query(max_length=200)]
_BEFORE = Annotated[int | None, Query(ge=1, le=service.MAX_ID)]


def _own_patient(session: Session, request: Request, principal: Principal) -> str | None:
    return principal.patient_id


def _thread_patient(session: Session, request: Request, principal: Principal) -> str | None:
    thread = session.get(MessageThread, request.path_params.get("thread_id", ""))
    return None if thread is None else thread.patient_id


def _my_thread_patient(session: Session, request: Request, principal: Principal) -> str | None:
    # The /me routes are the patient's own: anyone else resolves to no patient (404).
    return None if principal.patient_id is None else _thread_patient(session, request, principal)


# ------------------------------------------------------------------------- schemas


def _checked(clean: Callable[[str], str]) -> Callable[[str], str]:
    """A text rule as a schema check whose error says what is wrong, typed by its code."""

    def check(value: str) -> str:
        try:
            return clean(value)
        except service.MessageInvalid as exc:
            raise PydanticCustomError(exc.code, exc.message) from exc

    return check


Subject = Annotated[str, AfterValidator(_checked(service.clean_subject))]
Body = Annotated[str, AfterValidator(_checked(service.clean_body))]


class NewThread(BaseModel):
    """A care team's new conversation with a patient."""

    subject: Subject
    body: Body


class PatientNewThread(NewThread):
    """A patient's new conversation; `is_question` keeps it for the next visit."""

    is_question: bool = False


class NewMessage(BaseModel):
    """A reply."""

    body: Body


class MessageRead(BaseModel):
    """One message; `read_at` is when the other side first read it."""

    id: int
    sender_side: SenderSide
    sender_name: str
    body: str
    sent_at: datetime
    read_at: datetime | None


class ThreadRead(BaseModel):
    """A thread as lists show it; `unread` counts the other side's messages the caller's side
    has not read."""

    id: str
    patient_id: str
    subject: str
    is_question: bool
    status: ThreadStatus
    started_by: SenderSide
    created_at: datetime
    last_message_at: datetime
    message_count: int
    unread: int


class CareThreadRead(ThreadRead):
    """A thread as the care team's lists show it, with the patient's name."""

    patient_name: str
    patient_pseudonym: str


class ThreadList(BaseModel):
    """One page of threads, the cursor of the next page, and how many threads in the whole
    list have unread messages."""

    threads: list[ThreadRead]
    next_cursor: str | None
    unread_threads: int


class CareThreadList(BaseModel):
    """One page of a care team's threads."""

    threads: list[CareThreadRead]
    next_cursor: str | None
    unread_threads: int


class ThreadDetail(ThreadRead):
    """An opened thread: its messages oldest first; `older_cursor` pages back (`before=`)."""

    messages: list[MessageRead]
    older_cursor: int | None


def _thread(s: service.ThreadSummary) -> ThreadRead:
    t = s.thread
    return ThreadRead(
        id=t.id,
        patient_id=t.patient_id,
        subject=t.subject,
        is_question=t.is_question,
        status=ThreadStatus(t.status),
        started_by=s.started_by,
        created_at=t.created_at,
        last_message_at=t.last_message_at,
        message_count=s.messages,
        unread=s.unread,
    )


def _care_thread(s: service.ThreadSummary) -> CareThreadRead:
    return CareThreadRead(
        **_thread(s).model_dump(),
        patient_name=f"{s.patient.given_name} {s.patient.family_name}",
        patient_pseudonym=s.patient.pseudonym,
    )


def _message(m: Message, sender_name: str) -> MessageRead:
    return MessageRead(
        id=m.id or 0,
        sender_side=SenderSide(m.sender_side),
        sender_name=sender_name,
        body=m.body,
        sent_at=m.sent_at,
        read_at=m.read_at,
    )


def _detail(view: service.ThreadView) -> ThreadDetail:
    return ThreadDetail(
        **_thread(view.summary).model_dump(),
        messages=[_message(s.message, s.sender_name) for s in view.messages],
        older_cursor=view.older_cursor,
    )


def _cursor(token: str | None) -> service.Cursor | None:
    if not token:
        return None
    try:
        return service.decode_cursor(token)
    except ValueError as exc:
        raise ProblemError(422, "invalid_cursor", "use a next_cursor from a list") from exc


def _invalid(exc: service.MessageInvalid) -> ProblemError:
    """The same answer as a request the schema refuses."""
    return ProblemError(
        422,
        "validation_error",
        "the request is not valid",
        extra={"errors": [{"path": f"body/{exc.field}", "message": exc.message, "type": exc.code}]},
    )


# ------------------------------------------------------------------------- acts


def _list(
    session: Session,
    access: Access,
    *,
    side: SenderSide,
    limit: int,
    cursor: str | None,
    patient_id: str | None = None,
    unread_only: bool = False,
) -> service.ThreadPage:
    scope = None if patient_id is not None else access.patient_filter()
    page = service.list_threads(
        session,
        side=side,
        scope=scope,
        patient_id=patient_id,
        unread_only=unread_only,
        limit=limit,
        cursor=_cursor(cursor),
    )
    access.entry.resource_type = "message_thread"
    access.entry.details = {
        "count": len(page.items),
        "patient_ids": sorted({s.thread.patient_id for s in page.items}),
    }
    return page


def _open(
    session: Session, access: Access, thread_id: str, *, limit: int, before: int | None
) -> ThreadDetail:
    side = service.side_of(access.principal)
    view = service.open_thread(
        session,
        thread_id=thread_id,
        side=side,
        reader_id=int(access.principal.id),
        now=clock.utcnow(),
        limit=limit,
        before=before,
    )
    if view is None:  # resolved a moment ago: only a concurrent deletion could get here
        raise ProblemError(404, "not_found", "no such conversation")
    access.entry.resource_type, access.entry.resource_id = "message_thread", thread_id
    access.entry.details = {
        "thread_id": thread_id,
        "shown": len(view.messages),
        "marked_read": view.marked_read,
    }
    session.commit()
    return _detail(view)


def _start(
    session: Session, access: Access, patient_id: str, body: NewThread, *, is_question: bool
) -> ThreadDetail:
    side = service.side_of(access.principal)
    try:
        thread, message = service.start_thread(
            session,
            patient_id=patient_id,
            sender_id=int(access.principal.id),
            side=side,
            subject=body.subject,
            body=body.body,
            is_question=is_question,
            now=clock.utcnow(),
        )
    except service.MessageInvalid as exc:
        raise _invalid(exc) from exc
    access.entry.resource_type, access.entry.resource_id = "message_thread", thread.id
    access.entry.details = {
        "thread_id": thread.id,
        "message_id": message.id,
        "length": len(message.body),
        "new_thread": True,
        "is_question": thread.is_question,
        "side": str(side),
    }
    found = service.summary(session, thread_id=thread.id, side=side)
    assert found is not None
    session.commit()
    return ThreadDetail(
        **_thread(found).model_dump(),
        messages=[_message(message, access.principal.full_name or "")],
        older_cursor=None,
    )


def _reply(session: Session, access: Access, thread_id: str, body: NewMessage) -> MessageRead:
    side = service.side_of(access.principal)
    access.entry.resource_type, access.entry.resource_id = "message_thread", thread_id
    try:
        message = service.reply(
            session,
            thread_id=thread_id,
            sender_id=int(access.principal.id),
            side=side,
            body=body.body,
            now=clock.utcnow(),
        )
    except service.MessageInvalid as exc:
        raise _invalid(exc) from exc
    except service.MessageConflict as exc:
        raise ProblemError(409, exc.code, exc.message) from exc
    except LookupError as exc:
        raise ProblemError(404, "not_found", "no such conversation") from exc
    access.entry.details = {
        "thread_id": thread_id,
        "message_id": message.id,
        "length": len(message.body),
        "new_thread": False,
        "side": str(side),
    }
    session.commit()
    return _message(message, access.principal.full_name or "")


def _set_status(
    session: Session, access: Access, thread_id: str, status: ThreadStatus
) -> ThreadRead:
    side = service.side_of(access.principal)
    access.entry.resource_type, access.entry.resource_id = "message_thread", thread_id
    try:
        service.set_status(session, thread_id=thread_id, status=status, side=side)
    except service.MessageConflict as exc:
        raise ProblemError(409, exc.code, exc.message) from exc
    except service.MessageForbidden as exc:
        raise ProblemError(403, exc.code, exc.message) from exc
    except LookupError as exc:
        raise ProblemError(404, "not_found", "no such conversation") from exc
    access.entry.details = {"thread_id": thread_id, "status": str(status)}
    found = service.summary(session, thread_id=thread_id, side=side)
    assert found is not None
    session.commit()
    return _thread(found)


# ------------------------------------------------------------------ the patient's


@router.get("/me/messages", response_model=ThreadList)
def my_threads(
    session: SessionDep,
    access: Annotated[
        Access, require("message", "read", patient_from=_own_patient, audit_as="message.list")
    ],
    limit: _LIMIT = 20,
    cursor: _CURSOR = None,
) -> ThreadList:
    """The patient's conversations with their care team, newest first, with unread counts."""
    assert access.patient_id is not None
    page = _list(
        session,
        access,
        side=SenderSide.PATIENT,
        limit=limit,
        cursor=cursor,
        patient_id=access.patient_id,
    )
    unread = service.unread_thread_count(
        session, side=SenderSide.PATIENT, patient_id=access.patient_id
    )
    access.entry.details["unread_threads"] = unread
    session.commit()
    return ThreadList(
        threads=[_thread(s) for s in page.items],
        next_cursor=page.next_cursor,
        unread_threads=unread,
    )


@router.post("/me/messages", response_model=ThreadDetail, status_code=201)
def my_new_thread(
    body: PatientNewThread,
    session: SessionDep,
    access: Annotated[
        Access, require("message", "send", patient_from=_own_patient, audit_as="message.send")
    ],
) -> ThreadDetail:
    """Start a conversation with the care team (any of its clinicians may answer)."""
    assert access.patient_id is not None
    return _start(session, access, access.patient_id, body, is_question=body.is_question)


@router.get("/me/messages/{thread_id}", response_model=ThreadDetail)
def my_thread(
    thread_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access,
        require("message", "read", patient_from=_my_thread_patient, audit_as="message.read"),
    ],
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    before: _BEFORE = None,
) -> ThreadDetail:
    """One of the patient's conversations; the care team's messages shown are marked read."""
    return _open(session, access, thread_id, limit=limit, before=before)


@router.post("/me/messages/{thread_id}", response_model=MessageRead, status_code=201)
def my_reply(
    thread_id: _ID,
    body: NewMessage,
    session: SessionDep,
    access: Annotated[
        Access,
        require("message", "send", patient_from=_my_thread_patient, audit_as="message.send"),
    ],
) -> MessageRead:
    """Reply in one of the patient's open conversations."""
    return _reply(session, access, thread_id, body)


@router.post("/me/messages/{thread_id}/close", response_model=ThreadRead)
def my_close(
    thread_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access,
        require("message", "send", patient_from=_my_thread_patient, audit_as="message.close"),
    ],
) -> ThreadRead:
    """Close one of the patient's conversations (the care team may reopen it)."""
    return _set_status(session, access, thread_id, ThreadStatus.CLOSED)


# ------------------------------------------------------------------ the care team's


@router.get("/patients/{patient_id}/messages", response_model=CareThreadList)
def patient_threads(
    patient_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("message", "read", patient_param="patient_id", audit_as="message.list")
    ],
    limit: _LIMIT = 20,
    cursor: _CURSOR = None,
) -> CareThreadList:
    """A patient's conversations with the care team, newest first."""
    page = _list(
        session,
        access,
        side=SenderSide.CARE_TEAM,
        limit=limit,
        cursor=cursor,
        patient_id=patient_id,
    )
    unread = service.unread_thread_count(session, side=SenderSide.CARE_TEAM, patient_id=patient_id)
    access.entry.details["unread_threads"] = unread
    session.commit()
    return CareThreadList(
        threads=[_care_thread(s) for s in page.items],
        next_cursor=page.next_cursor,
        unread_threads=unread,
    )


@router.post("/patients/{patient_id}/messages", response_model=ThreadDetail, status_code=201)
def patient_new_thread(
    patient_id: _ID,
    body: NewThread,
    session: SessionDep,
    access: Annotated[
        Access, require("message", "send", patient_param="patient_id", audit_as="message.send")
    ],
) -> ThreadDetail:
    """Start a conversation with a patient of the caller's care teams."""
    return _start(session, access, patient_id, body, is_question=False)


@router.get("/messages/unread", response_model=CareThreadList)
def unread_threads(
    session: SessionDep,
    access: Annotated[Access, require("message", "list", listing=True, audit_as="message.list")],
    limit: _LIMIT = 20,
    cursor: _CURSOR = None,
) -> CareThreadList:
    """Conversations with patient messages no one on the care team has read, across the
    caller's patients, newest first."""
    page = _list(
        session, access, side=SenderSide.CARE_TEAM, limit=limit, cursor=cursor, unread_only=True
    )
    unread = service.unread_thread_count(
        session, side=SenderSide.CARE_TEAM, scope=access.patient_filter()
    )
    access.entry.details["unread_threads"] = unread
    session.commit()
    return CareThreadList(
        threads=[_care_thread(s) for s in page.items],
        next_cursor=page.next_cursor,
        unread_threads=unread,
    )


@router.get("/messages/threads/{thread_id}", response_model=ThreadDetail)
def thread(
    thread_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("message", "read", patient_from=_thread_patient, audit_as="message.read")
    ],
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    before: _BEFORE = None,
) -> ThreadDetail:
    """A conversation; the patient's messages shown are marked read for the care team."""
    return _open(session, access, thread_id, limit=limit, before=before)


@router.post("/messages/threads/{thread_id}", response_model=MessageRead, status_code=201)
def thread_reply(
    thread_id: _ID,
    body: NewMessage,
    session: SessionDep,
    access: Annotated[
        Access, require("message", "send", patient_from=_thread_patient, audit_as="message.send")
    ],
) -> MessageRead:
    """Reply in an open conversation, for the whole care team."""
    return _reply(session, access, thread_id, body)


@router.post("/messages/threads/{thread_id}/close", response_model=ThreadRead)
def thread_close(
    thread_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access, require("message", "send", patient_from=_thread_patient, audit_as="message.close")
    ],
) -> ThreadRead:
    """Close a conversation."""
    return _set_status(session, access, thread_id, ThreadStatus.CLOSED)


@router.post("/messages/threads/{thread_id}/reopen", response_model=ThreadRead)
def thread_reopen(
    thread_id: _ID,
    session: SessionDep,
    access: Annotated[
        Access,
        require("message", "send", patient_from=_thread_patient, audit_as="message.reopen"),
    ],
) -> ThreadRead:
    """Reopen a closed conversation (care team only)."""
    return _set_status(session, access, thread_id, ThreadStatus.OPEN)
