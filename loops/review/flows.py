"""Clinician-review steps that span domains: the routing evidence as it stands now (readings,
doses, alerts → features), and re-routing a patient's queued proposals after an envelope edit.

The evidence is gathered with the loop's own history queries and feature function
(`loops.flows`, `mlops.features`), so a re-check sees exactly what an evaluation at the same
instant would see; only the model is not consulted (the proposal keeps its confidence).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from loops import alerts as rules
from loops import flows as loop_flows
from loops import service as loop_service
from loops.models import (
    PROPOSAL_TRANSITIONS,
    Alert,
    AlertStatus,
    MedicationRegimen,
    Proposal,
    ProposalStatus,
    TitrationLadder,
)
from mlops.features import RegimenFacts, compute_features
from policies.envelope import EnvelopeRules, TitrationAction
from policies.models import SafetyEnvelope
from policies.routing import Evidence, Route, route
from policies.routing import Proposal as RoutingProposal

# A queued proposal the new envelope would deliver is delivered only while it is this fresh;
# an older one stays with a clinician (the data it answered have moved on).
AUTO_DELIVERY_MAX_AGE = timedelta(hours=24)
# Reasons a re-check adds besides the routing function's own.
TOO_OLD = "too_old_for_auto_delivery"
REGIMEN_CHANGED = "regimen_changed_since_proposal"


@dataclass(frozen=True)
class CurrentState:
    """A patient's active regimen, its ladder, and the routing evidence at one instant."""

    regimen: MedicationRegimen
    ladder: TitrationLadder
    evidence: Evidence


@dataclass(frozen=True)
class Rerouted:
    """A queued proposal re-checked against a new envelope: what it was, what it is now."""

    proposal: Proposal
    old_route: str
    new_route: str
    old_reasons: list[str]
    reasons: list[str]
    delivered: bool


def current_state(session: Session, *, patient_id: str, now: datetime) -> CurrentState | None:
    """The routing evidence for a patient as an evaluation at `now` would build it (features
    of the last 14 days, automatic changes in 30 days, unacknowledged alerts including any
    the rules would raise now, a pending crisis re-measurement); None without an active
    regimen."""
    # One patient through the loop's batched readers (see loops.flows.evaluate_many).
    patients = loop_flows._patients(session, [patient_id])
    regimens = loop_flows._active_regimens(session, [patient_id])
    if patient_id not in patients or patient_id not in regimens:
        return None
    patient = patients[patient_id]
    regimen, ladder = regimens[patient_id]
    history = loop_flows._histories(session, [patient_id], now)[patient_id]
    found, check = rules.findings(
        patient_id,
        readings=history.cuff,
        doses=history.alert_doses,
        symptom_times=history.symptoms,
        monitored_since=patient.created_at,
        now=now,
    )
    unresolved = loop_service.open_alerts_of(session, [patient_id])[patient_id]
    new = loop_service.new_alert_rows(
        patient_id=patient_id, found=found, unresolved=unresolved, now=now
    )
    # Which open alerts an evaluation now would clear, decided on detached copies so that
    # nothing in the session changes.
    copies = [Alert(**a.model_dump()) for a in unresolved]
    loop_service.clear_alerts(copies, still_found=found, now=now)
    unseen = sum(1 for a in copies if a.status == AlertStatus.OPEN)
    features = compute_features(
        readings=history.points,
        doses=history.doses,
        symptoms=history.reports,
        patient=patient.facts,
        regimen=RegimenFacts(
            step=regimen.current_step,
            ladder_steps=len(ladder.steps),
            last_change=loop_flows._last_change(regimen),
        ),
        as_of=now,
        tz="UTC",
    )
    evidence = features.to_evidence(
        auto_changes_30d=loop_flows.auto_changes_30d(session, patient_id=patient_id, now=now),
        open_alerts=unseen + len(new) + int(check.status is rules.CrisisStatus.REMEASURE),
    )
    return CurrentState(regimen, ladder, evidence)


def reroute_pending(
    session: Session, *, patient_id: str, envelope: SafetyEnvelope, now: datetime
) -> list[Rerouted]:
    """Re-check the patient's queued proposals against `envelope` and the evidence now: one
    the envelope would deliver is delivered if under 24 hours old and the regimen has not
    moved since; every other one stays queued with its new reasons. Never commits."""
    pending = session.scalars(
        select(Proposal)
        .where(
            col(Proposal.patient_id) == patient_id,
            col(Proposal.status) == ProposalStatus.PENDING_REVIEW,
        )
        .order_by(col(Proposal.created_at), col(Proposal.id))
    ).all()
    if not pending:
        return []
    state = current_state(session, patient_id=patient_id, now=now)
    if state is None:
        return []  # no active regimen: nothing could be delivered; leave them as they are
    rules_in_force = EnvelopeRules.model_validate(envelope.rules)
    kill_switch = loop_service.kill_switch_on(session)
    out: list[Rerouted] = []
    for proposal in pending:
        decision = route(
            RoutingProposal(
                action=TitrationAction(proposal.action),
                from_step=proposal.from_step,
                to_step=proposal.to_step,
                confidence=proposal.confidence,
                ladder_steps=len(state.ladder.steps),
            ),
            state.evidence,
            rules_in_force,
            kill_switch=kill_switch,
        )
        reasons = [str(r) for r in decision.reasons]
        deliver = decision.route is Route.AUTO_DELIVER
        if deliver and now - proposal.created_at >= AUTO_DELIVERY_MAX_AGE:
            deliver, reasons = False, [TOO_OLD]
        if deliver and (
            proposal.regimen_id != state.regimen.id
            or proposal.from_step != state.regimen.current_step
        ):
            deliver, reasons = False, [REGIMEN_CHANGED]
        old_route, old_reasons = proposal.route, list(proposal.reasons)
        proposal.envelope_version = envelope.version
        if deliver:
            _deliver(session, proposal, state, now)
        else:
            proposal.reasons = reasons
        session.add(proposal)
        out.append(
            Rerouted(proposal, old_route, proposal.route, old_reasons, list(reasons), deliver)
        )
    session.flush()
    return out


def _deliver(session: Session, proposal: Proposal, state: CurrentState, now: datetime) -> None:
    """Deliver a queued proposal as the loop delivers one inside the envelope."""
    loop_service.check_transition(
        PROPOSAL_TRANSITIONS, ProposalStatus(proposal.status), ProposalStatus.DELIVERED
    )
    proposal.status = ProposalStatus.DELIVERED
    proposal.route, proposal.reasons, proposal.delivered_at = Route.AUTO_DELIVER, [], now
    regimen, ladder = state.regimen, state.ladder
    regimen.current_step, regimen.last_changed_at = proposal.to_step, now
    session.add(regimen)
    loop_service.notify(
        session,
        patient_id=proposal.patient_id,
        kind="recommendation",
        text=f"New dose: {ladder.drug} {proposal.to_dose:g} {ladder.unit} {ladder.frequency}. "
        f"{proposal.explanation.get('patient_text', '')}".strip(),
    )
