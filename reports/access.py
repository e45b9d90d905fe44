"""Access report: who read which patient's data in the period, and every denial.

Reads are audit entries whose action reads patient data. The actions are the ones the code
audits (`require(..., audit_as=...)`, `<resource>.<action>` by default, and the portal's own
`audit.record` calls), listed in `PATIENT_DATA_READS`; any other action whose verb reads
(`READ_VERBS`) counts too when its entry names a patient, so a read added later is not missed.
A listing (the queue, the panel, inboxes, searches) names the patients it showed in
`details.patient_ids`; each of them is shown. Denials are every entry with outcome `denied`,
whatever the action (failed sign-ins included).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from audit.models import AuditEntry, Outcome
from reports.models import Filters, Period, Report, ReportKind, Section, Table
from reports.trail_cells import actor_keys, actor_labels, names_patient, patient_of, pseudonyms

# Every action the code audits that shows a patient's data to the caller.
PATIENT_DATA_READS: frozenset[str] = frozenset(
    {
        "patient.read",
        "patient.list",
        "device.list",
        "observation.search",
        "readings.read",
        "quarantine.read",
        "trends.read",
        "recommendation.read",
        "medication_request.search",
        "alert.read",
        "alert.inbox",
        "review.queue",
        "review.panel",
        "proposal.read",
        "proposal.print",
        "decision.read",
        "envelope.read",
        "care_plan.read",
        "care_plan.history",
        "care_plan.search",
        "goal.read",
        "goal.logs",
        "visit.read",
        "visit.due_list",
        "previsit_summary.read",
        "message.list",
        "message.read",
        "symptom.read",
    }
)
# The verb (after the last dot) of an action that reads; counted when the entry names a patient.
READ_VERBS: frozenset[str] = frozenset(
    {"read", "list", "search", "print", "history", "export", "download"}
)
COLUMNS = (
    "Seq",
    "Time (UTC)",
    "Actor",
    "Role",
    "Action",
    "Resource",
    "Patients",
    "Outcome",
    "Code",
    "Request id",
)
BY_ACTOR_COLUMNS = ("Actor", "Role", "Reads", "Patients read", "Failed reads", "Denials")


@dataclass(frozen=True)
class _Row:
    entry: AuditEntry
    patients: tuple[str, ...]  # patient ids the entry names
    code: str


def _details(entry: AuditEntry) -> dict[str, Any]:
    try:
        value = json.loads(entry.details)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _row(entry: AuditEntry) -> _Row:
    details = _details(entry)
    listed = details.get("patient_ids")
    ids = [entry.patient_id] if entry.patient_id else []
    if isinstance(listed, list):
        ids.extend(str(i) for i in listed if isinstance(i, str) and i not in ids)
    code = details.get("code")
    return _Row(entry, tuple(ids), code if isinstance(code, str) else "")


def is_patient_read(action: str, names_a_patient: bool) -> bool:
    """Whether an audited action read patient data (see the module docstring)."""
    if action in PATIENT_DATA_READS:
        return True
    return names_a_patient and action.rpartition(".")[2] in READ_VERBS


def _read_like() -> ColumnElement[bool]:
    """A superset of the reads, to narrow the scan in SQL (is_patient_read decides)."""
    return or_(
        col(AuditEntry.action).in_(PATIENT_DATA_READS),
        *(col(AuditEntry.action).endswith(f".{verb}") for verb in sorted(READ_VERBS)),
    )


def build(
    session: Session, *, period: Period, filters: Filters, generated_by: str, now: datetime
) -> Report:
    """Reads of patient data and denials in the period, per actor and entry by entry."""
    where: list[ColumnElement[bool]] = [
        col(AuditEntry.ts) >= period.start,
        col(AuditEntry.ts) < period.end,
        or_(col(AuditEntry.outcome) == Outcome.DENIED, _read_like()),
    ]
    patient_id = patient_of(session, filters.patient_id)
    if patient_id is not None:
        where.append(names_patient(patient_id))
    actors_wanted = actor_keys(session, filters.actor)
    if actors_wanted is not None:
        where.append(col(AuditEntry.actor).in_(actors_wanted))
    reads: list[_Row] = []
    denials: list[_Row] = []
    for entry in session.scalars(select(AuditEntry).where(*where).order_by(col(AuditEntry.seq))):
        row = _row(entry)
        if patient_id is not None and patient_id not in row.patients:
            continue  # the text match hit something else in the details
        if entry.outcome == Outcome.DENIED:
            denials.append(row)
        elif is_patient_read(entry.action, bool(row.patients)):
            reads.append(row)
    every = reads + denials
    names = pseudonyms(session, (p for r in every for p in r.patients))
    labels = actor_labels(session, (r.entry.actor for r in every))

    def cells(row: _Row) -> tuple[str, ...]:
        e = row.entry
        resource = e.resource_type + (f" {e.resource_id}" if e.resource_id else "")
        return (
            str(e.seq),
            clock.iso(e.ts),
            labels.get(e.actor, e.actor),
            e.actor_role,
            e.action,
            resource,
            ", ".join(names.get(p, p) for p in row.patients),
            e.outcome,
            row.code,
            e.request_id or "",
        )

    per_actor: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"role": "", "reads": 0, "patients": set(), "failed": 0, "denials": 0}
    )
    for row in reads:
        tally = per_actor[row.entry.actor]
        tally["role"] = row.entry.actor_role
        if row.entry.outcome == Outcome.SUCCESS:
            tally["reads"] += 1
            tally["patients"].update(row.patients)
        else:
            tally["failed"] += 1
    for row in denials:
        tally = per_actor[row.entry.actor]
        tally["role"] = tally["role"] or row.entry.actor_role
        tally["denials"] += 1
    by_actor = tuple(
        (
            labels.get(actor, actor),
            t["role"],
            str(t["reads"]),
            str(len(t["patients"])),
            str(t["failed"]),
            str(t["denials"]),
        )
        for actor, t in sorted(
            per_actor.items(), key=lambda kv: (-kv[1]["reads"] - kv[1]["denials"], kv[0])
        )
    )
    patients_read = {p for r in reads if r.entry.outcome == Outcome.SUCCESS for p in r.patients}
    return Report(
        kind=ReportKind.ACCESS,
        title="Access report",
        period=period,
        generated_at=now,
        generated_by=generated_by,
        filters=filters,
        summary=(
            ("Reads of patient data", str(sum(r.entry.outcome == Outcome.SUCCESS for r in reads))),
            ("Actors who read", str(len({r.entry.actor for r in reads}))),
            ("Patients read", str(len(patients_read))),
            ("Denials", str(len(denials))),
        ),
        sections=(
            Section(
                "By actor",
                notes=(
                    "Reads succeeded; failed reads were refused by the service after access "
                    "was granted (an unknown id, a conflict); denials were refused by the "
                    "access policy or authentication.",
                ),
                table=Table(BY_ACTOR_COLUMNS, by_actor),
                primary=False,
            ),
            Section(
                "Reads of patient data",
                notes=(
                    "Each audited read of patient data in the period. A listing (review "
                    "queue, panel, inbox, search) shows every patient it listed.",
                ),
                table=Table(COLUMNS, tuple(cells(r) for r in reads)),
            ),
            Section(
                "Denials",
                notes=(
                    "Every refusal in the period, whatever was asked: the code says why "
                    "(for example forbidden; not_found for an object outside the caller's "
                    "scope; invalid_credentials for a wrong password).",
                ),
                table=Table(COLUMNS, tuple(cells(r) for r in denials)),
            ),
        ),
    )
