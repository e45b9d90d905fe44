"""Messages between a patient and their care team: threads, replies, read markers, closing,
and the content-free notice that tells a patient a message is waiting.

Functions take keyword arguments and never commit (routes do). Text rules (`clean_subject`,
`clean_body`), the side of a caller and the list cursor are pure functions.
"""

from __future__ import annotations

import base64
import binascii
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    and_,
    case,
    exists,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.models import User
from app.auth.principal import Principal
from app.patients.models import Patient
from loops import service as loop_service
from loops.messages.models import (
    THREAD_TRANSITIONS,
    Message,
    MessageThread,
    SenderSide,
    ThreadStatus,
)
from loops.models import PatientNotice

SUBJECT_MAX = 200
BODY_MAX = 5000
# Message ids are 64-bit: a larger `before` cannot name one, and the database driver fails on
# it (SQLite: "Python int too large to convert"; PostgreSQL: bigint out of range).
MAX_ID = 2**63 - 1
# The patient's notice says that something is waiting, never what: message content may be
# read over a shoulder on a lock screen, and notices are listed with the patient's alerts.
MESSAGE_WAITING = "message_waiting"
MESSAGE_WAITING_TEXT = "You have a new message from your care team."
_KEPT_CONTROLS = frozenset("\n\t")


class MessageInvalid(ValueError):
    """Text that cannot be sent (422); `field` names it, `code` says why."""

    def __init__(self, field: str, code: str, message: str) -> None:
        self.field, self.code, self.message = field, code, message
        super().__init__(message)


class MessageConflict(Exception):
    """The thread's state forbids the act (409): `thread_closed` or `invalid_transition`."""

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message
        super().__init__(message)


class MessageForbidden(Exception):
    """The caller's side may not do this (403), e.g. a patient reopening a thread."""

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message
        super().__init__(message)


# ------------------------------------------------------------------------ pure rules


def strip_controls(value: str, *, single_line: bool) -> str:
    """The text without control characters (tabs and newlines kept unless `single_line`,
    where they become spaces) and without lone surrogates, which no database stores."""
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    out = []
    for ch in text:
        if ch in _KEPT_CONTROLS:
            out.append(" " if single_line else ch)
        elif unicodedata.category(ch) not in ("Cc", "Cs"):
            out.append(ch)
    return "".join(out)


def _clean(value: str, *, field: str, limit: int, single_line: bool) -> str:
    text = strip_controls(value, single_line=single_line).strip()
    if not text:
        raise MessageInvalid(field, "empty", f"{field} must not be empty")
    if len(text) > limit:
        raise MessageInvalid(field, "too_long", f"{field} must be at most {limit} characters")
    return text


def clean_subject(value: str) -> str:
    """A thread's subject as stored: one line, 1-200 characters, otherwise verbatim."""
    return _clean(value, field="subject", limit=SUBJECT_MAX, single_line=True)


def clean_body(value: str) -> str:
    """A message's body as stored: 1-5,000 characters with line breaks, otherwise verbatim."""
    return _clean(value, field="body", limit=BODY_MAX, single_line=False)


def side_of(principal: Principal) -> SenderSide:
    """Which side of the conversation a caller writes and reads for."""
    return SenderSide.PATIENT if principal.role == "patient" else SenderSide.CARE_TEAM


def other_side(side: SenderSide) -> SenderSide:
    """The side whose messages this side reads."""
    return SenderSide.CARE_TEAM if side is SenderSide.PATIENT else SenderSide.PATIENT


@dataclass(frozen=True)
class Cursor:
    """A position in a thread list ordered newest first: the last row shown."""

    last_message_at: datetime
    thread_id: str


def encode_cursor(cursor: Cursor) -> str:
    """An opaque, URL-safe cursor."""
    raw = f"{cursor.last_message_at.isoformat()}|{cursor.thread_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    """The position a cursor names; ValueError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        when, _, thread_id = raw.partition("|")
        at = datetime.fromisoformat(when)
        # In UTC now: an edited cursor such as year 9999 at -14:00 has no UTC time, and would
        # otherwise overflow only when the database driver converts it.
        at = at.astimezone(UTC) if at.tzinfo is not None else at
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise ValueError("not a cursor") from exc
    if at.tzinfo is None or not thread_id or len(thread_id) > 36:
        raise ValueError("not a cursor")
    return Cursor(at, thread_id)


# ------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ThreadSummary:
    """A thread as lists show it, from one reader side's point of view."""

    thread: MessageThread
    patient: Patient
    started_by: SenderSide
    messages: int
    unread: int  # messages of the other side this side has not read


@dataclass(frozen=True)
class ThreadPage:
    """One page of a thread list and the cursor of the next, if any."""

    items: list[ThreadSummary]
    next_cursor: str | None


@dataclass(frozen=True)
class ShownMessage:
    """A message with its sender's printed name."""

    message: Message
    sender_name: str


@dataclass(frozen=True)
class ThreadView:
    """An opened thread: its summary after marking, the messages shown (oldest first),
    the cursor of older ones and how many were marked read by this opening."""

    summary: ThreadSummary
    messages: list[ShownMessage]
    older_cursor: int | None
    marked: frozenset[int]  # ids of the messages this opening marked read

    @property
    def marked_read(self) -> int:
        """How many messages this opening marked read."""
        return len(self.marked)


def _unread_of(side: SenderSide) -> ColumnElement[bool]:
    return and_(
        col(Message.thread_id) == col(MessageThread.id),
        col(Message.sender_side) == other_side(side),
        col(Message.read_at).is_(None),
    )


def _summaries(side: SenderSide) -> Select[tuple[MessageThread, Patient, str, int, int]]:
    first_side = (
        select(col(Message.sender_side))
        .where(col(Message.thread_id) == col(MessageThread.id))
        .order_by(col(Message.id))
        .limit(1)
        .correlate(MessageThread)
        .scalar_subquery()
    )
    count = (
        select(func.count())
        .where(col(Message.thread_id) == col(MessageThread.id))
        .correlate(MessageThread)
        .scalar_subquery()
    )
    unread = select(func.count()).where(_unread_of(side)).correlate(MessageThread).scalar_subquery()
    return select(MessageThread, Patient, first_side, count, unread).join(
        Patient, col(Patient.id) == col(MessageThread.patient_id)
    )


_SummaryRow = Row[tuple[MessageThread, Patient, str, int, int]]


def _summary(row: _SummaryRow) -> ThreadSummary:
    thread, patient, started, count, unread = row
    return ThreadSummary(thread, patient, SenderSide(started), int(count), int(unread))


def list_threads(
    session: Session,
    *,
    side: SenderSide,
    scope: ColumnElement[bool] | None = None,
    patient_id: str | None = None,
    unread_only: bool = False,
    limit: int = 20,
    cursor: Cursor | None = None,
) -> ThreadPage:
    """Threads newest first (by last message), paged by cursor. `scope` is a clause on
    Patient.id (a listing's `patient_filter()`); `unread_only` keeps threads with messages of
    the other side not yet read."""
    query = _summaries(side).where(scope if scope is not None else true())
    if patient_id is not None:
        query = query.where(col(MessageThread.patient_id) == patient_id)
    if unread_only:
        query = query.where(exists().where(_unread_of(side)))
    if cursor is not None:
        query = query.where(
            or_(
                col(MessageThread.last_message_at) < cursor.last_message_at,
                and_(
                    col(MessageThread.last_message_at) == cursor.last_message_at,
                    col(MessageThread.id) < cursor.thread_id,
                ),
            )
        )
    query = query.order_by(
        col(MessageThread.last_message_at).desc(), col(MessageThread.id).desc()
    ).limit(limit + 1)
    items = [_summary(row) for row in session.execute(query).all()]
    more = len(items) > limit
    items = items[:limit]
    token = (
        encode_cursor(Cursor(items[-1].thread.last_message_at, items[-1].thread.id))
        if more
        else None
    )
    return ThreadPage(items, token)


def inbox(
    session: Session, *, scope: ColumnElement[bool], limit: int, offset: int
) -> tuple[list[ThreadSummary], int]:
    """The care team's threads: those with unread patient messages first, then the newest;
    one page, and the total number of threads."""
    side = SenderSide.CARE_TEAM
    waiting = case((exists().where(_unread_of(side)), 0), else_=1)
    rows = session.execute(
        _summaries(side)
        .where(scope)
        .order_by(waiting, col(MessageThread.last_message_at).desc(), col(MessageThread.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    total = session.scalar(
        select(func.count())
        .select_from(MessageThread)
        .join(Patient, col(Patient.id) == col(MessageThread.patient_id))
        .where(scope)
    )
    return [_summary(row) for row in rows], int(total or 0)


def unread_thread_count(
    session: Session,
    *,
    side: SenderSide,
    scope: ColumnElement[bool] | None = None,
    patient_id: str | None = None,
) -> int:
    """How many threads hold messages of the other side this side has not read (one query)."""
    query = (
        select(func.count(func.distinct(col(Message.thread_id))))
        .join(Patient, col(Patient.id) == col(Message.patient_id))
        .where(
            col(Message.sender_side) == other_side(side),
            col(Message.read_at).is_(None),
            scope if scope is not None else true(),
        )
    )
    if patient_id is not None:
        query = query.where(col(Message.patient_id) == patient_id)
    return int(session.scalar(query) or 0)


def summary(session: Session, *, thread_id: str, side: SenderSide) -> ThreadSummary | None:
    """One thread as lists show it, or None."""
    row = session.execute(_summaries(side).where(col(MessageThread.id) == thread_id)).first()
    return None if row is None else _summary(row)


def open_thread(
    session: Session,
    *,
    thread_id: str,
    side: SenderSide,
    reader_id: int,
    now: datetime,
    limit: int = 100,
    before: int | None = None,
) -> ThreadView | None:
    """A thread's latest messages (or those before a message id), oldest first. The other
    side's messages shown are marked read by this reader; a patient who has then read every
    message of their care team has their `message_waiting` notice marked read too."""
    thread = session.get(MessageThread, thread_id)
    if thread is None:
        return None
    query = (
        select(Message, col(User.full_name))
        .join(User, col(User.id) == col(Message.sender_id))
        .where(col(Message.thread_id) == thread_id)
    )
    if before is not None:
        query = query.where(col(Message.id) < before)
    rows = session.execute(query.order_by(col(Message.id).desc()).limit(limit + 1)).all()
    older = len(rows) > limit
    shown = [ShownMessage(m, name) for m, name in reversed(rows[:limit])]
    to_mark = [
        s.message.id
        for s in shown
        if s.message.id is not None
        and s.message.sender_side == other_side(side)
        and s.message.read_at is None
    ]
    if to_mark:
        session.execute(
            update(Message)
            .where(col(Message.id).in_(to_mark), col(Message.read_at).is_(None))
            .values(read_at=now, read_by=reader_id)
            .execution_options(synchronize_session=False)
        )
        for s in shown:
            if s.message.id in to_mark:
                s.message.read_at, s.message.read_by = now, reader_id
        if side is SenderSide.PATIENT:
            _settle_notice(session, patient_id=thread.patient_id, now=now)
    found = summary(session, thread_id=thread_id, side=side)
    assert found is not None
    return ThreadView(
        summary=found,
        messages=shown,
        older_cursor=shown[0].message.id if older and shown else None,
        marked=frozenset(to_mark),
    )


# ------------------------------------------------------------------------- writing


def _locked(session: Session, thread_id: str) -> MessageThread | None:
    # Row lock on PostgreSQL: a reply and a close of one thread are ordered, so no message
    # lands in a thread that was closed under it (SQLite has one writer anyway).
    return session.scalars(
        select(MessageThread).where(col(MessageThread.id) == thread_id).with_for_update()
    ).first()


def _add_message(
    session: Session,
    *,
    thread: MessageThread,
    sender_id: int,
    side: SenderSide,
    body: str,
    now: datetime,
) -> Message:
    message = Message(
        thread_id=thread.id,
        patient_id=thread.patient_id,
        sender_id=sender_id,
        sender_side=side,
        body=clean_body(body),
        sent_at=now,
    )
    thread.last_message_at = now
    session.add_all([thread, message])
    session.flush()
    if side is SenderSide.CARE_TEAM:
        _notify_patient(session, patient_id=thread.patient_id, now=now)
    return message


def start_thread(
    session: Session,
    *,
    patient_id: str,
    sender_id: int,
    side: SenderSide,
    subject: str,
    body: str,
    is_question: bool = False,
    now: datetime,
) -> tuple[MessageThread, Message]:
    """A new thread with its first message. Only a patient marks a question for the next
    visit; the care team's threads never are."""
    thread = MessageThread(
        patient_id=patient_id,
        subject=clean_subject(subject),
        is_question=is_question and side is SenderSide.PATIENT,
        status=ThreadStatus.OPEN,
        created_by=sender_id,
        created_at=now,
        last_message_at=now,
    )
    clean_body(body)  # refuse before anything is added
    session.add(thread)
    session.flush()
    message = _add_message(
        session, thread=thread, sender_id=sender_id, side=side, body=body, now=now
    )
    return thread, message


def reply(
    session: Session,
    *,
    thread_id: str,
    sender_id: int,
    side: SenderSide,
    body: str,
    now: datetime,
) -> Message:
    """Add a message to an open thread (409 `thread_closed` otherwise)."""
    text = clean_body(body)
    thread = _locked(session, thread_id)
    if thread is None:
        raise LookupError(thread_id)
    if thread.status != ThreadStatus.OPEN:
        raise MessageConflict("thread_closed", "this conversation is closed")
    return _add_message(session, thread=thread, sender_id=sender_id, side=side, body=text, now=now)


def set_status(
    session: Session, *, thread_id: str, status: ThreadStatus, side: SenderSide
) -> MessageThread:
    """Close or reopen a thread as its transition table allows. Either side closes; only
    the care team reopens (a patient starts a new thread instead)."""
    thread = _locked(session, thread_id)
    if thread is None:
        raise LookupError(thread_id)
    if status is ThreadStatus.OPEN and side is SenderSide.PATIENT:
        raise MessageForbidden(
            "care_team_only", "only the care team reopens a conversation; start a new one"
        )
    try:
        loop_service.check_transition(THREAD_TRANSITIONS, ThreadStatus(thread.status), status)
    except loop_service.TransitionError as exc:
        raise MessageConflict(
            "invalid_transition", f"the conversation is already {thread.status}"
        ) from exc
    thread.status = status
    session.add(thread)
    session.flush()
    return thread


# --------------------------------------------------------------------- the notice


_OPEN_NOTICE = (
    col(PatientNotice.kind) == MESSAGE_WAITING,
    col(PatientNotice.read_at).is_(None),
)


def _notify_patient(session: Session, *, patient_id: str, now: datetime) -> None:
    """One open `message_waiting` notice per patient, however many messages arrive."""
    waiting = session.scalar(
        select(col(PatientNotice.id))
        .where(col(PatientNotice.patient_id) == patient_id, *_OPEN_NOTICE)
        .limit(1)
    )
    if waiting is None:
        # Inserted with its time, not given it afterwards: on PostgreSQL the application role
        # may only mark a notice read (UPDATE of read_at; docs/postgresql.md).
        session.add(
            PatientNotice(
                patient_id=patient_id,
                kind=MESSAGE_WAITING,
                text=MESSAGE_WAITING_TEXT,
                created_at=now,
            )
        )
        session.flush()


def _settle_notice(session: Session, *, patient_id: str, now: datetime) -> None:
    """Mark the open notice read once no message of the care team is left unread."""
    left = unread_thread_count(session, side=SenderSide.PATIENT, patient_id=patient_id)
    if left == 0:
        session.execute(
            update(PatientNotice)
            .where(col(PatientNotice.patient_id) == patient_id, *_OPEN_NOTICE)
            .values(read_at=now)
            .execution_options(synchronize_session=False)
        )
