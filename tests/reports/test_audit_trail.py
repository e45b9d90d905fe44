"""The audit trail report against the audit log: every entry of the period, counts by
outcome, the signed tree head covering it, the filters, and the PDF and CSV exports."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from audit import service as audit
from audit.models import AuditEntry
from reports import audit_trail, render, service
from reports.models import Filters, Period, Report, ReportKind, Section
from tests.reports.conftest import Seeded, build, csv_rows, pdf_pages, squeeze


def _entries(session: Session, seeded: Seeded) -> list[AuditEntry]:
    return list(
        session.scalars(
            select(AuditEntry)
            .where(
                col(AuditEntry.ts) >= seeded.period.start, col(AuditEntry.ts) < seeded.period.end
            )
            .order_by(col(AuditEntry.seq))
        )
    )


def _section(report: Report, heading_start: str) -> Section:
    (found,) = [s for s in report.sections if s.heading.startswith(heading_start)]
    return found


def _seqs(report: Report) -> list[int]:
    table = _section(report, "Entries").table
    assert table is not None
    return [int(row[0]) for row in table.rows]


def test_build_lists_every_entry_of_the_period(seeded: Seeded, reader: Session) -> None:
    report = build(audit_trail.build, seeded, reader)

    entries = _entries(reader, seeded)
    table = _section(report, "Entries").table
    assert table is not None
    assert len(entries) == 5
    pa1 = seeded.world.patients["pa1"]
    for row, entry in zip(table.rows, entries, strict=True):
        cells = dict(zip(table.columns, row, strict=True))
        assert cells["Seq"] == str(entry.seq)
        assert cells["Time (UTC)"] == clock.iso(entry.ts)
        assert cells["Actor"].endswith(f"({entry.actor})")
        assert (cells["Role"], cells["Action"], cells["Outcome"]) == (
            entry.actor_role,
            entry.action,
            entry.outcome,
        )
        assert cells["Request id"] == entry.request_id
        if entry.patient_id == pa1.id:  # the pseudonym, not the internal id
            assert cells["Patient"] == pa1.pseudonym
    summary = dict(report.summary)
    assert summary == {
        "Entries": "5",
        "Success": "3",
        "Denied": "2",
        "Failure": "0",
        "Tree size": "5",
    }


def test_build_states_the_tree_head_covering_the_period(seeded: Seeded, reader: Session) -> None:
    report = build(audit_trail.build, seeded, reader)

    sth = audit.latest_sth(reader)
    assert sth is not None
    section = _section(report, "Signed tree head covering the period")
    facts = dict(section.facts)
    assert facts["Tree size"] == "5"
    assert facts["Root hash (SHA-256)"] == sth.root_hash
    assert facts["Signed at (UTC)"] == sth.timestamp
    assert facts["Sequence numbers in the period"] == "1 to 5"
    assert any("docs/auditor-guide.md" in note for note in section.notes)
    assert not section.primary


def test_build_without_a_covering_tree_head_says_so(seeded: Seeded, reader: Session) -> None:
    world = seeded.world
    audit.record(
        world.session, actor="system:test", actor_role="system", action="x.y", resource_type="x"
    )
    world.session.commit()

    report = build(audit_trail.build, seeded, reader)

    section = _section(report, "Signed tree head")
    assert section.heading == "Signed tree head"
    assert "No signed tree head covers the whole period" in section.notes[0]
    assert "commits to 5 entries" in section.notes[0]
    assert "sequence number 6" in section.notes[0]


def test_build_filters_by_patient_pseudonym(seeded: Seeded, reader: Session) -> None:
    pa1, pa2 = seeded.world.patients["pa1"], seeded.world.patients["pa2"]

    one = build(audit_trail.build, seeded, reader, Filters(patient_id=pa1.pseudonym))
    two = build(audit_trail.build, seeded, reader, Filters(patient_id=pa2.pseudonym))
    nobody = build(audit_trail.build, seeded, reader, Filters(patient_id="P-NOBODY"))

    # pa1: read by clina, listed by clina, refused to clinb; pa2: only in clina's listing.
    assert _seqs(one) == [1, 2, 4]
    assert _seqs(two) == [2]
    assert _seqs(nobody) == []
    assert dict(one.summary)["Entries"] == "3"
    assert dict(one.summary)["Tree size"] == "5"  # the log's size, whatever the filter


def test_build_filters_by_actor_username_or_audit_actor(seeded: Seeded, reader: Session) -> None:
    clinb = seeded.world.users["clinb"]

    by_name = build(audit_trail.build, seeded, reader, Filters(actor="clinb"))
    by_actor = build(audit_trail.build, seeded, reader, Filters(actor=f"user:{clinb.id}"))

    assert _seqs(by_name) == _seqs(by_actor) == [3, 4]


def test_build_leaves_out_entries_outside_the_period(seeded: Seeded, reader: Session) -> None:
    start = seeded.period.start
    before = Period(start - timedelta(days=2), start)

    report = audit_trail.build(
        reader, period=before, filters=Filters(), generated_by="auditor", now=clock.utcnow()
    )

    assert _seqs(report) == []
    assert "Sequence numbers in the period" in dict(_section(report, "Signed tree head").facts)


def test_build_is_reachable_by_kind_and_writes_nothing(seeded: Seeded, reader: Session) -> None:
    report = service.build(
        reader,
        kind=ReportKind.AUDIT_TRAIL,
        period=seeded.period,
        filters=Filters(),
        generated_by="auditor",
        now=clock.utcnow(),
    )

    assert report.kind is ReportKind.AUDIT_TRAIL
    assert not reader.new
    assert not reader.dirty
    assert not reader.info.get("clinaiops.audit.pending")  # the caller audits the export
    reader.rollback()
    assert audit.tree_size(reader) == 5


def test_pdf_and_csv_exports_match_the_log(seeded: Seeded, reader: Session) -> None:
    report = build(audit_trail.build, seeded, reader)
    entries = _entries(reader, seeded)

    pages = pdf_pages(render.to_pdf(report))
    rows = csv_rows(render.to_csv(report))

    text = "".join(pages)
    for entry in entries:
        assert squeeze(f"{entry.seq} {clock.iso(entry.ts)}") in text
        assert squeeze(f"{entry.action}") in text
        assert str(entry.request_id) in text
    for number, page in enumerate(pages, start=1):
        assert squeeze(f"page {number} of {len(pages)}") in page
        assert squeeze(seeded.period.label()) in page
        assert squeeze("generated 2030-01-02 03:04:05 UTC") in page
    assert [
        (r["Seq"], r["Time (UTC)"], r["Action"], r["Outcome"], r["Request id"]) for r in rows
    ] == [(str(e.seq), clock.iso(e.ts), e.action, e.outcome, e.request_id or "") for e in entries]
    assert "section" not in rows[0]  # one primary table: the entries
