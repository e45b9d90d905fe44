"""What the audit-trail, access and decision-log builders share: how a time, a patient and an
actor are printed in a report cell, and how the patient and actor filters are resolved."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, false, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.models import User
from app.patients.models import Patient
from audit.models import AuditEntry

# An audit actor is `<kind>:<id>` (`user:12`, `device:<uuid>`, `system:loop`) or `anonymous`.
_ACTOR = re.compile(r"^[a-z_]+:.+$")


def utc(ts: datetime | None) -> str:
    """A time in a report cell: ISO 8601 in UTC to the second, with Z (empty when unknown)."""
    if ts is None:
        return ""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pseudonyms(session: Session, ids: Iterable[str | None]) -> dict[str, str]:
    """Patient id -> pseudonym, for the ids given (one query)."""
    wanted = sorted({i for i in ids if i})
    if not wanted:
        return {}
    rows = session.execute(
        select(col(Patient.id), col(Patient.pseudonym)).where(col(Patient.id).in_(wanted))
    )
    return {str(pid): str(name) for pid, name in rows}


def patient_cell(patient_id: str | None, names: dict[str, str]) -> str:
    """How a report shows a patient: the pseudonym, never the name (the id if none is known)."""
    if not patient_id:
        return ""
    return names.get(patient_id, patient_id)


def patient_of(session: Session, pseudonym: str | None) -> str | None:
    """The patient id behind a pseudonym filter ('' when no patient has it, None: no filter)."""
    if pseudonym is None:
        return None
    found = session.scalars(
        select(col(Patient.id)).where(col(Patient.pseudonym) == pseudonym)
    ).first()
    return str(found) if found is not None else ""


def actor_keys(session: Session, actor: str | None) -> list[str] | None:
    """The audit actors an actor filter means: `user:12` as given, or a username's `user:<id>`.

    None: no filter. An unknown username gives the value itself, which then matches nothing.
    """
    if actor is None:
        return None
    keys = [actor]
    if not _ACTOR.match(actor) and actor != "anonymous":
        user_id = session.scalars(select(col(User.id)).where(col(User.username) == actor)).first()
        if user_id is not None:
            keys.append(f"user:{user_id}")
    return keys


def actor_labels(session: Session, actors: Iterable[str]) -> dict[str, str]:
    """Audit actor -> how a report prints it: `alice (user:12)` for users, else as stored."""
    ids: dict[str, int] = {}
    for actor in set(actors):
        kind, _, ident = actor.partition(":")
        if kind == "user" and ident.isdigit():
            ids[actor] = int(ident)
    names: dict[int, str] = {}
    if ids:
        rows = session.execute(
            select(col(User.id), col(User.username)).where(col(User.id).in_(set(ids.values())))
        )
        names = {int(uid): str(name) for uid, name in rows}
    return {actor: f"{names[uid]} ({actor})" for actor, uid in ids.items() if uid in names}


def names_patient(patient_id: str) -> ColumnElement[bool]:
    """Audit entries naming a patient: in the patient column, or among the patients a listing
    showed (`details.patient_ids`). Ids are UUIDs, so a text match cannot hit another id.
    An empty id (a pseudonym no patient has) matches nothing."""
    if not patient_id:
        return false()
    return or_(
        col(AuditEntry.patient_id) == patient_id,
        col(AuditEntry.details).contains(f'"{patient_id}"', autoescape=True),
    )
