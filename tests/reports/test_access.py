"""The access report against the audit log: reads of patient data (listings with each
patient shown), every denial, counts per actor, the filters, and the PDF and CSV exports."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from audit import service as audit
from audit.models import AuditEntry, Outcome
from reports import access, render
from reports.models import Filters, Report, Section
from tests.reports.conftest import Seeded, build, csv_rows, pdf_pages, squeeze


def _section(report: Report, heading: str) -> Section:
    (found,) = [s for s in report.sections if s.heading == heading]
    return found


def _rows(report: Report, heading: str) -> list[dict[str, str]]:
    table = _section(report, heading).table
    assert table is not None
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def _build(seeded: Seeded, reader: Session, filters: Filters | None = None) -> Report:
    return build(access.build, seeded, reader, filters)


@pytest.mark.parametrize(
    ("action", "names_patient", "expected"),
    [
        ("proposal.read", False, True),  # a known read, even without a patient
        ("patient.list", True, True),
        ("report.export", True, True),  # a read verb naming a patient
        ("report.export", False, False),
        ("audit.read", False, False),
        ("proposal.decide", True, False),  # a write is not a read
        ("loop.evaluate", True, False),
    ],
)
def test_is_patient_read_by_action_and_patient(
    action: str, names_patient: bool, expected: bool
) -> None:
    assert access.is_patient_read(action, names_patient) is expected


def test_build_lists_reads_and_denials_from_the_log(seeded: Seeded, reader: Session) -> None:
    world = seeded.world
    pa1 = world.patients["pa1"].id
    # Acts that are not reads of patient data: a decision (a write) and an audit-log read.
    for action, patient in (("proposal.decide", pa1), ("audit.read", None)):
        audit.record(
            world.session,
            actor=f"user:{world.users['clina'].id}",
            actor_role="clinician",
            action=action,
            resource_type="x",
            patient_id=patient,
        )
    world.session.commit()

    report = _build(seeded, reader)

    log = {
        e.seq: e
        for e in reader.scalars(select(AuditEntry).where(col(AuditEntry.ts) >= seeded.period.start))
    }
    reads = _rows(report, "Reads of patient data")
    denials = _rows(report, "Denials")
    assert [(r["Seq"], r["Action"]) for r in reads] == [
        ("1", "patient.read"),
        ("2", "patient.list"),
        ("3", "proposal.read"),
    ]
    assert [(r["Seq"], r["Action"], r["Code"]) for r in denials] == [
        ("4", "patient.read", "not_found"),
        ("5", "user.manage", "insufficient_scope"),
    ]
    for row in reads + denials:
        entry = log[int(row["Seq"])]
        assert row["Time (UTC)"] == clock.iso(entry.ts)
        assert row["Outcome"] == entry.outcome
        assert row["Request id"] == entry.request_id
        assert row["Actor"].endswith(f"({entry.actor})")
    assert all(log[int(r["Seq"])].outcome == Outcome.DENIED for r in denials)
    p = seeded.pseudonym
    assert [r["Patients"] for r in reads] == [
        p("pa1"),
        f"{p('pa1')}, {p('pa2')}",  # the listing: every patient it showed
        p("pb2"),
    ]
    assert denials[0]["Patients"] == p("pa1")


def test_build_counts_reads_and_denials_per_actor(seeded: Seeded, reader: Session) -> None:
    report = _build(seeded, reader)

    users = seeded.world.users
    by_actor = {r["Actor"]: r for r in _rows(report, "By actor")}
    assert by_actor[f"clina (user:{users['clina'].id})"] == {
        "Actor": f"clina (user:{users['clina'].id})",
        "Role": "clinician",
        "Reads": "2",
        "Patients read": "2",
        "Failed reads": "0",
        "Denials": "0",
    }
    clinb = by_actor[f"clinb (user:{users['clinb'].id})"]
    assert (clinb["Reads"], clinb["Patients read"], clinb["Denials"]) == ("1", "1", "1")
    pa1 = by_actor[f"pa1 (user:{users['pa1'].id})"]
    assert (pa1["Role"], pa1["Reads"], pa1["Denials"]) == ("patient", "0", "1")
    assert dict(report.summary) == {
        "Reads of patient data": "3",
        "Actors who read": "2",
        "Patients read": "3",
        "Denials": "2",
    }
    assert not _section(report, "By actor").primary


def test_build_filters_by_patient_including_listings(seeded: Seeded, reader: Session) -> None:
    pa1 = _build(seeded, reader, Filters(patient_id=seeded.pseudonym("pa1")))
    pa2 = _build(seeded, reader, Filters(patient_id=seeded.pseudonym("pa2")))
    nobody = _build(seeded, reader, Filters(patient_id="P-NOBODY"))

    assert [r["Seq"] for r in _rows(pa1, "Reads of patient data")] == ["1", "2"]
    assert [r["Seq"] for r in _rows(pa1, "Denials")] == ["4"]
    assert [r["Seq"] for r in _rows(pa2, "Reads of patient data")] == ["2"]
    assert _rows(pa2, "Denials") == []
    assert _rows(nobody, "Reads of patient data") == _rows(nobody, "Denials") == []


def test_build_filters_by_actor(seeded: Seeded, reader: Session) -> None:
    report = _build(seeded, reader, Filters(actor="clinb"))

    assert [r["Seq"] for r in _rows(report, "Reads of patient data")] == ["3"]
    assert [r["Seq"] for r in _rows(report, "Denials")] == ["4"]
    assert [r["Actor"].split()[0] for r in _rows(report, "By actor")] == ["clinb"]


def test_csv_and_pdf_exports_match_the_log(seeded: Seeded, reader: Session) -> None:
    report = _build(seeded, reader)

    rows = csv_rows(render.to_csv(report))
    pages = pdf_pages(render.to_pdf(report))

    log = {e.seq: e for e in reader.scalars(select(AuditEntry))}
    assert [(r["section"], r["Seq"]) for r in rows] == [
        ("Reads of patient data", "1"),
        ("Reads of patient data", "2"),
        ("Reads of patient data", "3"),
        ("Denials", "4"),
        ("Denials", "5"),
    ]
    for row in rows:
        entry = log[int(row["Seq"])]
        assert (row["Action"], row["Outcome"], row["Request id"]) == (
            entry.action,
            entry.outcome,
            entry.request_id,
        )
    text = "".join(pages)
    for entry in log.values():
        assert str(entry.request_id) in text
    assert squeeze(f"{seeded.pseudonym('pa1')}, {seeded.pseudonym('pa2')}") in text
    assert squeeze("page 1 of 1") in pages[0]
    assert squeeze(seeded.period.label()) in pages[0]
    assert squeeze("generated 2030-01-02 03:04:05 UTC") in pages[0]
