"""The AI decision log against the proposals and signed decisions: explanation, envelope,
routing, the signature manifestation or automatic delivery, the filters, and the exports."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from loops.models import Evaluation, Proposal
from loops.review.models import Decision
from reports import decision_log, render
from reports.models import Filters, Report, Section
from reports.trail_cells import utc
from tests.reports.conftest import HOSTILE, Seeded, build, csv_rows, pdf_pages, squeeze

SHAP_TOP = "cuff_sbp_mean_7d +1.20; cuff_days_7d -0.30; adherence_14d +0.00"


def _section(report: Report, heading: str) -> Section:
    (found,) = [s for s in report.sections if s.heading == heading]
    return found


def _rows(report: Report, heading: str = "Proposals and decisions") -> list[dict[str, str]]:
    table = _section(report, heading).table
    assert table is not None
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def _build(seeded: Seeded, reader: Session, filters: Filters | None = None) -> Report:
    return build(decision_log.build, seeded, reader, filters)


def _decision(reader: Session, proposal: Proposal) -> Decision:
    found = reader.scalars(select(Decision).where(col(Decision.proposal_id) == proposal.id)).one()
    return found


def test_build_lists_each_proposal_with_its_routing_and_decision(
    seeded: Seeded, reader: Session
) -> None:
    report = _build(seeded, reader)

    rows = {r["Proposal id"]: r for r in _rows(report)}
    proposals = reader.scalars(select(Proposal)).all()
    pseudonyms = {p.id: p.pseudonym for p in seeded.world.patients.values()}
    assert set(rows) == {p.id for p in proposals}
    for p in proposals:
        row = rows[p.id]
        assert row["Proposed (UTC)"] == utc(p.created_at)
        assert row["Patient"] == pseudonyms[p.patient_id]
        assert row["Model"] == p.model_version
        assert row["Confidence"] == f"{p.confidence:.2f}"
        assert row["Explanation"] == p.explanation["clinician_text"]
        assert row["Top SHAP contributions"] == SHAP_TOP
        assert row["Envelope"] == f"v{p.envelope_version}"
    approved = rows[seeded.approved.id]
    signed = _decision(reader, seeded.approved)
    assert approved["Proposed change"] == "increase: 10 mg → 20 mg (step 1 → 2)"
    assert approved["Routing"] == "clinician_review: action_not_auto_deliverable"
    assert approved["Decision"] == "approved 20 mg (step 2)"
    assert approved["Signature"] == (
        f"signed by {signed.signer_printed_name} at {utc(signed.signed_at)}; "
        "meaning: approved as prescriber"
    )
    rejected = rows[seeded.rejected.id]
    assert rejected["Decision"] == f"rejected; reason: other ({HOSTILE})"
    assert rejected["Signature"].endswith("meaning: rejected as reviewing clinician")
    delivered = rows[seeded.delivered.id]
    assert delivered["Routing"] == "auto_deliver"
    assert delivered["Decision"] == "delivered automatically within envelope v1"
    assert delivered["Signature"] == ""
    assert rows[seeded.pending.id]["Decision"] == "awaiting clinician review"
    assert dict(report.summary) == {
        "Proposals": "4",
        "Delivered within the envelope": "1",
        "Sent to a clinician": "3",
        "Approved": "1",
        "Modified": "0",
        "Rejected": "1",
        "Awaiting review": "1",
        "Superseded undecided": "0",
    }


def test_build_explains_reasons_and_lists_signed_records(seeded: Seeded, reader: Session) -> None:
    report = _build(seeded, reader)

    assert _rows(report, "Routing reasons") == [
        {
            "Reason": "action_not_auto_deliverable",
            "Meaning": "The envelope does not delegate this action.",
            "Proposals": "3",
        }
    ]
    signed = {r["Proposal id"]: r for r in _rows(report, "Signed records")}
    for proposal in (seeded.approved, seeded.rejected):
        decision = _decision(reader, proposal)
        assert signed[proposal.id]["Decision id"] == decision.id
        assert signed[proposal.id]["Record hash (SHA-256)"] == decision.record_hash
        assert signed[proposal.id]["Key id"] == decision.key_id
    assert not _section(report, "Signed records").primary


def test_build_shows_the_envelope_when_proposed_after_a_reroute(
    seeded: Seeded, reader: Session
) -> None:
    s = seeded.world.session
    pending = s.get_one(Proposal, seeded.pending.id)
    pending.envelope_version = 2  # re-checked against a newer envelope since
    s.add(
        Evaluation(
            patient_id=pending.patient_id,
            trigger="daily",
            as_of=clock.utcnow(),
            outcome="proposal",
            proposal_id=pending.id,
            envelope_version=1,
        )
    )
    s.commit()

    rows = {r["Proposal id"]: r for r in _rows(_build(seeded, reader))}

    assert rows[seeded.pending.id]["Envelope"] == "v2 (v1 when proposed)"


def test_build_filters_by_patient_signer_and_model_version(seeded: Seeded, reader: Session) -> None:
    clina = seeded.world.users["clina"]

    def ids(filters: Filters) -> set[str]:
        return {r["Proposal id"] for r in _rows(_build(seeded, reader, filters))}

    assert ids(Filters(patient_id=seeded.pseudonym("pa2"))) == {seeded.rejected.id}
    assert ids(Filters(patient_id="P-NOBODY")) == set()
    assert ids(Filters(actor="clina")) == {seeded.approved.id, seeded.rejected.id}
    assert ids(Filters(actor=f"user:{clina.id}")) == {seeded.approved.id, seeded.rejected.id}
    assert ids(Filters(actor="clinb")) == set()
    assert ids(Filters(model_version=2)) == {seeded.delivered.id}
    assert ids(Filters(model_version=1)) == {
        seeded.approved.id,
        seeded.rejected.id,
        seeded.pending.id,
    }
    assert ids(Filters(model_version=1, actor="clina", patient_id=seeded.pseudonym("pa1"))) == {
        seeded.approved.id
    }


def test_html_escapes_the_hostile_reason(seeded: Seeded, reader: Session) -> None:
    html = render.to_html(_build(seeded, reader))

    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/<wbr>script&gt;" in html  # a break hint after /


def test_pdf_and_csv_exports_match_the_decisions(seeded: Seeded, reader: Session) -> None:
    report = _build(seeded, reader)
    decision = _decision(reader, seeded.approved)

    pages = pdf_pages(render.to_pdf(report))
    rows = csv_rows(render.to_csv(report))

    text = "".join(pages)
    assert squeeze(decision.signer_printed_name) in text
    assert squeeze(utc(decision.signed_at)) in text
    assert squeeze("meaning: approved as prescriber") in text
    assert squeeze("delivered automatically within envelope v1") in text
    assert squeeze(decision.record_hash) in text
    for number, page in enumerate(pages, start=1):
        assert squeeze(f"page {number} of {len(pages)}") in page
        assert squeeze(seeded.period.label()) in page
        assert squeeze("AI decision log (decision-log)") in page
    assert "section" not in rows[0]  # the decisions table is the one primary table
    by_id = {r["Proposal id"]: r for r in rows}
    assert by_id[seeded.approved.id]["Signature"] == (
        f"signed by {decision.signer_printed_name} at {utc(decision.signed_at)}; "
        "meaning: approved as prescriber"
    )
    assert by_id[seeded.rejected.id]["Decision"] == f"rejected; reason: other ({HOSTILE})"
    assert by_id[seeded.delivered.id]["Model"] == "titration:v2"
