"""The demo seed's conversations: a question for the next visit answered by the care team,
and a care team message the patient has not read yet."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.models import User
from app.core.config import Settings
from app.seed import seed_demo
from loops.messages.models import Message, MessageThread, SenderSide
from loops.messages.service import MESSAGE_WAITING, MESSAGE_WAITING_TEXT
from loops.models import PatientNotice


def test_seed_demo_when_run_adds_two_conversations(
    db: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINAIOPS_DEMO_PASSWORD", "demo-pass-123")
    seed_demo(db, settings=settings, n_patients=4)
    db.commit()
    users = {u.username: u for u in db.scalars(select(User))}
    threads = {t.subject: t for t in db.scalars(select(MessageThread))}
    assert set(threads) == {"Dizzy when I stand up", "Your home readings"}
    question = threads["Dizzy when I stand up"]
    assert question.is_question
    assert question.patient_id == users["patient1"].patient_id
    sides = [
        (m.sender_side, m.read_at is not None)
        for m in db.scalars(
            select(Message).where(col(Message.thread_id) == question.id).order_by(col(Message.id))
        )
    ]
    assert sides == [(SenderSide.PATIENT, True), (SenderSide.CARE_TEAM, False)]
    assert threads["Your home readings"].patient_id == users["patient2"].patient_id
    notices = db.scalars(
        select(PatientNotice).where(col(PatientNotice.kind) == MESSAGE_WAITING)
    ).all()
    assert sorted(n.patient_id for n in notices) == sorted(
        [users["patient1"].patient_id, users["patient2"].patient_id]
    )
    assert {n.text for n in notices} == {MESSAGE_WAITING_TEXT}


def test_seed_demo_when_one_patient_adds_only_the_question(
    db: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINAIOPS_DEMO_PASSWORD", "demo-pass-123")
    seed_demo(db, settings=settings, n_patients=1)
    db.commit()
    assert [t.subject for t in db.scalars(select(MessageThread))] == ["Dizzy when I stand up"]
