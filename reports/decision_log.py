"""AI decision log: each proposal the model made in the period, why, where it was routed, and
who decided it under which signature (or that it was delivered within the envelope).

Sources: `loops.models.Proposal` (the proposal, its stored explanation with SHAP values, the
envelope version and the routing decision with its reasons), `loops.models.Evaluation` (the
envelope version when the loop proposed it, before any re-routing after an envelope edit) and
`loops.review.models.Decision` (the signed decision and its 21 CFR 11.50 manifestation).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session
from sqlmodel import col

from loops.models import (
    Evaluation,
    MedicationRegimen,
    Proposal,
    ProposalStatus,
    TitrationLadder,
)
from loops.review.models import Decision, DecisionKind
from loops.review.service import REASON_TEXTS
from policies.routing import Route
from reports.models import Filters, Period, Report, ReportKind, Section, Table
from reports.trail_cells import actor_keys, patient_of, pseudonyms, utc

TOP_FACTORS = 3
COLUMNS = (
    "Proposed (UTC)",
    "Proposal id",
    "Patient",
    "Model",
    "Proposed change",
    "Confidence",
    "Explanation",
    "Top SHAP contributions",
    "Envelope",
    "Routing",
    "Decision",
    "Signature",
)
SIGNED_COLUMNS = ("Proposal id", "Decision id", "Signer", "Record hash (SHA-256)", "Key id")
_DECIDED = {
    DecisionKind.APPROVE: "approved",
    DecisionKind.MODIFY: "modified",
    DecisionKind.REJECT: "rejected",
}


def _dose(value: float, unit: str) -> str:
    return f"{value:g} {unit}".strip()


def top_contributions(explanation: dict[str, Any], k: int = TOP_FACTORS) -> str:
    """The k largest SHAP values by magnitude, as stored: `name +1.20; other -0.30`."""
    shap = explanation.get("shap") or {}
    values = [
        (str(name), float(v))
        for name, v in shap.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v
    ]
    values.sort(key=lambda nv: (-abs(nv[1]), nv[0]))
    return "; ".join(f"{name} {v:+.2f}" for name, v in values[:k])


def _envelope(proposal: Proposal, at_proposal: int | None) -> str:
    if proposal.envelope_version is None:
        return "none in force"
    label = f"v{proposal.envelope_version}"
    if at_proposal is not None and at_proposal != proposal.envelope_version:
        label += f" (v{at_proposal} when proposed)"
    return label


def _routing(proposal: Proposal) -> str:
    reasons = ", ".join(proposal.reasons)
    return f"{proposal.route}: {reasons}" if reasons else proposal.route


def _decision(proposal: Proposal, decision: Decision | None, unit: str) -> str:
    if decision is not None:
        kind = DecisionKind(decision.kind)
        text = _DECIDED[kind]
        if kind is not DecisionKind.REJECT:
            text += f" {_dose(decision.decided_dose, unit)} (step {decision.decided_step})"
        if decision.reason_code:
            text += f"; reason: {decision.reason_code}"
            if decision.reason_text:
                text += f" ({decision.reason_text})"
        return text
    if proposal.route == Route.AUTO_DELIVER and proposal.delivered_at is not None:
        text = f"delivered automatically within envelope v{proposal.envelope_version}"
        if proposal.status == ProposalStatus.SUPERSEDED:
            text += " (later superseded)"
        return text
    if proposal.status == ProposalStatus.PENDING_REVIEW:
        return "awaiting clinician review"
    if proposal.status == ProposalStatus.SUPERSEDED:
        return "superseded before a decision"
    return proposal.status


def _signature(decision: Decision | None) -> str:
    if decision is None:
        return ""
    return (
        f"signed by {decision.signer_printed_name} at {utc(decision.signed_at)}; "
        f"meaning: {decision.meaning}"
    )


def _signer_filter(session: Session, actor: str | None) -> ColumnElement[bool] | None:
    keys = actor_keys(session, actor)
    if keys is None:
        return None
    ids = [int(k[5:]) for k in keys if k.startswith("user:") and k[5:].isdigit()]
    return or_(col(Decision.signer_username).in_(keys), col(Decision.signer_user_id).in_(ids))


def build(
    session: Session, *, period: Period, filters: Filters, generated_by: str, now: datetime
) -> Report:
    """The proposals made in the period with their routing and decisions (filters: patient,
    actor as the signer, model version)."""
    where: list[ColumnElement[bool]] = [
        col(Proposal.created_at) >= period.start,
        col(Proposal.created_at) < period.end,
    ]
    patient_id = patient_of(session, filters.patient_id)
    if patient_id is not None:
        where.append(col(Proposal.patient_id) == patient_id)
    if filters.model_version is not None:
        where.append(col(Proposal.model_version).endswith(f":v{filters.model_version}"))
    signer = _signer_filter(session, filters.actor)
    if signer is not None:
        where.append(signer)
    rows = session.execute(
        select(Proposal, Decision, col(TitrationLadder.unit))
        .outerjoin(Decision, col(Decision.proposal_id) == col(Proposal.id))
        .outerjoin(MedicationRegimen, col(MedicationRegimen.id) == col(Proposal.regimen_id))
        .outerjoin(TitrationLadder, col(TitrationLadder.id) == col(MedicationRegimen.ladder_id))
        .where(*where)
        .order_by(col(Proposal.created_at), col(Proposal.id))
    ).all()
    ids = [p.id for p, _, _ in rows]
    at_proposal: dict[str, int | None] = {}
    if ids:
        for pid, version in session.execute(
            select(col(Evaluation.proposal_id), col(Evaluation.envelope_version)).where(
                col(Evaluation.proposal_id).in_(ids)
            )
        ):
            at_proposal.setdefault(str(pid), version)
    names = pseudonyms(session, (p.patient_id for p, _, _ in rows))
    table_rows = []
    signed = []
    reasons: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for proposal, decision, unit_or_none in rows:
        unit = unit_or_none or ""
        reasons.update(proposal.reasons)
        decision_text = _decision(proposal, decision, unit)
        if decision is not None:
            outcomes[_DECIDED[DecisionKind(decision.kind)]] += 1
            signed.append(
                (
                    proposal.id,
                    decision.id,
                    decision.signer_username,
                    decision.record_hash,
                    decision.key_id,
                )
            )
        elif decision_text.startswith("delivered automatically"):
            outcomes["auto"] += 1
        elif proposal.status == ProposalStatus.PENDING_REVIEW:
            outcomes["pending"] += 1
        else:
            outcomes["superseded"] += 1
        table_rows.append(
            (
                utc(proposal.created_at),
                proposal.id,
                names.get(proposal.patient_id, proposal.patient_id),
                proposal.model_version,
                f"{proposal.action}: {_dose(proposal.from_dose, unit)} → "
                f"{_dose(proposal.to_dose, unit)} (step {proposal.from_step} → "
                f"{proposal.to_step})",
                f"{proposal.confidence:.2f}",
                str((proposal.explanation or {}).get("clinician_text", "")),
                top_contributions(proposal.explanation or {}),
                _envelope(proposal, at_proposal.get(proposal.id)),
                _routing(proposal),
                decision_text,
                _signature(decision),
            )
        )
    reviewed = sum(1 for p, _, _ in rows if p.route == Route.CLINICIAN_REVIEW)
    return Report(
        kind=ReportKind.DECISION_LOG,
        title="AI decision log",
        period=period,
        generated_at=now,
        generated_by=generated_by,
        filters=filters,
        summary=(
            ("Proposals", str(len(rows))),
            ("Delivered within the envelope", str(outcomes["auto"])),
            ("Sent to a clinician", str(reviewed)),
            ("Approved", str(outcomes["approved"])),
            ("Modified", str(outcomes["modified"])),
            ("Rejected", str(outcomes["rejected"])),
            ("Awaiting review", str(outcomes["pending"])),
            ("Superseded undecided", str(outcomes["superseded"])),
        ),
        sections=(
            Section(
                "Proposals and decisions",
                notes=(
                    "Each proposal the model made in the period, oldest first. The explanation "
                    "is the one stored with the proposal; SHAP contributions are in logit "
                    "units toward the proposed action. Routing is the route and the reasons "
                    "it needed a clinician (none: inside the envelope). A signature shows the "
                    "signer's printed name, the UTC time and the meaning of the signature "
                    "(21 CFR 11.50).",
                ),
                table=Table(COLUMNS, tuple(table_rows)),
            ),
            Section(
                "Routing reasons",
                notes=("What each reason code in the log means, and how often it occurred.",),
                table=Table(
                    ("Reason", "Meaning", "Proposals"),
                    tuple(
                        (code, REASON_TEXTS.get(code, code.replace("_", " ")), str(n))
                        for code, n in sorted(reasons.items(), key=lambda cn: (-cn[1], cn[0]))
                    ),
                ),
                primary=False,
            ),
            Section(
                "Signed records",
                notes=(
                    "Each decision is signed with Ed25519 over the SHA-256 of its record "
                    "(the decision, the signer and the manifestation), so a changed field or "
                    "a signature copied to another record no longer verifies. "
                    "GET /api/v1/decisions/{decision id} shows the record and whether its "
                    "signature verifies; the key id is the SHA-256 of the signing public key.",
                ),
                table=Table(SIGNED_COLUMNS, tuple(signed)),
                primary=False,
            ),
        ),
    )
