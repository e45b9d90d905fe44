"""Threads of messages between a patient and their care team."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, Index
from sqlmodel import Field, SQLModel

from app.core.clock import utcnow
from app.db import BigId, UTCDateTime, new_id


class ThreadStatus(StrEnum):
    """A thread is open for replies until someone closes it."""

    OPEN = "open"
    CLOSED = "closed"


THREAD_TRANSITIONS: dict[ThreadStatus, frozenset[ThreadStatus]] = {
    ThreadStatus.OPEN: frozenset({ThreadStatus.CLOSED}),
    ThreadStatus.CLOSED: frozenset({ThreadStatus.OPEN}),
}


class SenderSide(StrEnum):
    """Which side of the conversation wrote a message."""

    PATIENT = "patient"
    CARE_TEAM = "care_team"


class MessageThread(SQLModel, table=True):
    """A conversation about one subject between a patient and their care team."""

    __tablename__ = "message_threads"
    __table_args__ = (Index("ix_message_threads_patient_last", "patient_id", "last_message_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    subject: str = Field(max_length=200)
    is_question: bool = False  # the patient asks something for the next visit
    status: str = Field(default=ThreadStatus.OPEN, max_length=16)  # a ThreadStatus
    created_by: int = Field(foreign_key="users.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_message_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Message(SQLModel, table=True):
    """One message; never edited. Read markers are per side (patient, care team)."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_thread_sent", "thread_id", "sent_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    thread_id: str = Field(foreign_key="message_threads.id", max_length=36)
    patient_id: str = Field(foreign_key="patients.id", max_length=36, index=True)
    sender_id: int = Field(foreign_key="users.id")
    sender_side: str = Field(max_length=16)  # a SenderSide
    body: str = Field(max_length=5000)
    sent_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    read_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # by the other side
    read_by: int | None = Field(default=None, foreign_key="users.id")
