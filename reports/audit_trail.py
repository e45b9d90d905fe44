"""Audit trail report: every audit entry in the period, and the signed tree head covering it.

The entries are the log's own rows (sequence number, time, actor, role, action, resource,
patient, outcome, request id); their `details` are left out, as they may hold free text. The
verifiable export (entries with inclusion proofs against the signed tree head) is
`reports.audit_export`; docs/auditor-guide.md says how to check it offline.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from audit import service as audit
from audit.models import AuditEntry, Outcome, SignedTreeHead
from reports.models import Filters, Period, Report, ReportKind, Section, Table
from reports.trail_cells import (
    actor_keys,
    actor_labels,
    names_patient,
    patient_cell,
    patient_of,
    pseudonyms,
)

COLUMNS = (
    "Seq",
    "Time (UTC)",
    "Actor",
    "Role",
    "Action",
    "Resource type",
    "Resource id",
    "Patient",
    "Outcome",
    "Request id",
)
GUIDE = "docs/auditor-guide.md"


def _conditions(session: Session, period: Period, filters: Filters) -> list[ColumnElement[bool]]:
    where = [col(AuditEntry.ts) >= period.start, col(AuditEntry.ts) < period.end]
    patient_id = patient_of(session, filters.patient_id)
    if patient_id is not None:
        where.append(names_patient(patient_id))
    actors = actor_keys(session, filters.actor)
    if actors is not None:
        where.append(col(AuditEntry.actor).in_(actors))
    return where


def _seq_range(session: Session, period: Period) -> tuple[int | None, int | None]:
    """The first and last sequence numbers written in the period (whatever the filters)."""
    first, last = session.execute(
        select(func.min(col(AuditEntry.seq)), func.max(col(AuditEntry.seq))).where(
            col(AuditEntry.ts) >= period.start, col(AuditEntry.ts) < period.end
        )
    ).one()
    return (None if first is None else int(first)), (None if last is None else int(last))


def _covering_head(session: Session, last_seq: int | None) -> SignedTreeHead | None:
    """The newest signed tree head, if it commits to every entry up to `last_seq`."""
    sth = audit.latest_sth(session)
    if sth is None or (last_seq is not None and sth.tree_size < last_seq):
        return None
    return sth


def _tree_head_section(
    session: Session, first_seq: int | None, last_seq: int | None, size: int
) -> Section:
    sth = _covering_head(session, last_seq)
    verify = (
        f"To check these entries offline, export them with their inclusion proofs against "
        f"this tree head and run the standalone verifier, as {GUIDE} describes. A changed, "
        f"removed or re-ordered entry is reported with its sequence number."
    )
    span = "none" if first_seq is None or last_seq is None else f"{first_seq} to {last_seq}"
    if sth is None:
        newest = audit.latest_sth(session)
        notes = (
            "No signed tree head covers the whole period yet: the newest one"
            + (f" commits to {newest.tree_size} entries" if newest is not None else " is missing")
            + f", and the period's entries run to sequence number {last_seq}. The hourly "
            "audit_checkpoint job (or `clinaiops audit checkpoint`) signs the next one.",
            verify,
        )
        return Section(
            "Signed tree head",
            facts=(("Sequence numbers in the period", span), ("Tree size now", str(size))),
            notes=notes,
            primary=False,
        )
    return Section(
        "Signed tree head covering the period",
        facts=(
            ("Sequence numbers in the period", span),
            ("Tree size", str(sth.tree_size)),
            ("Root hash (SHA-256)", sth.root_hash),
            ("Signed at (UTC)", sth.timestamp),
            ("Log id (key)", sth.log_id),
            ("Signature (Ed25519)", sth.signature),
        ),
        notes=(
            f"The tree head is the newest one; it commits to the first {sth.tree_size} "
            "entries of the log, so to every entry of the period.",
            verify,
        ),
        primary=False,
    )


def build(
    session: Session, *, period: Period, filters: Filters, generated_by: str, now: datetime
) -> Report:
    """The audit entries in the period (optionally of one patient and/or actor)."""
    where = _conditions(session, period, filters)
    entries = list(session.scalars(select(AuditEntry).where(*where).order_by(col(AuditEntry.seq))))
    names = pseudonyms(session, (e.patient_id for e in entries))
    actors = actor_labels(session, (e.actor for e in entries))
    rows = tuple(
        (
            str(e.seq),
            clock.iso(e.ts),
            actors.get(e.actor, e.actor),
            e.actor_role,
            e.action,
            e.resource_type,
            e.resource_id or "",
            patient_cell(e.patient_id, names),
            e.outcome,
            e.request_id or "",
        )
        for e in entries
    )
    outcomes = Counter(e.outcome for e in entries)
    size = audit.tree_size(session)
    first_seq, last_seq = _seq_range(session, period)
    summary = (
        ("Entries", str(len(entries))),
        *((str(o).capitalize(), str(outcomes.get(o, 0))) for o in Outcome),
        ("Tree size", str(size)),
    )
    return Report(
        kind=ReportKind.AUDIT_TRAIL,
        title="Audit trail",
        period=period,
        generated_at=now,
        generated_by=generated_by,
        filters=filters,
        summary=summary,
        sections=(
            Section(
                "Entries",
                notes=(
                    "Every audited act in the period, in log order: each write, each read of "
                    "patient data and each denial. Times are the log's own (UTC); patients are "
                    "shown by pseudonym.",
                ),
                table=Table(COLUMNS, rows),
            ),
            _tree_head_section(session, first_seq, last_seq, size),
        ),
    )
