"""The one routing decision: deliver a proposal to the patient, or send it to a clinician.

Pure: no I/O, no clock. Everything the decision needs is in its arguments, so the property
tests can show that nothing outside the envelope in force is ever auto-delivered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from policies.envelope import EnvelopeRules, TitrationAction

# Below this adherence the protocol holds the dose: a poor response may be missed doses.
MIN_ADHERENCE_FOR_CHANGE = 0.8
_STEP = {TitrationAction.DECREASE: -1, TitrationAction.HOLD: 0, TitrationAction.INCREASE: 1}


class Route(StrEnum):
    """Where a proposal goes."""

    AUTO_DELIVER = "auto_deliver"
    CLINICIAN_REVIEW = "clinician_review"


class Reason(StrEnum):
    """Why a proposal needs a clinician; each names one bound that was not met."""

    KILL_SWITCH = "kill_switch"
    NO_ENVELOPE = "no_envelope"
    INCONSISTENT_PROPOSAL = "inconsistent_proposal"
    OUTSIDE_LADDER = "outside_ladder"
    ACTION_NOT_AUTO = "action_not_auto_deliverable"
    STEP_CHANGE_TOO_LARGE = "step_change_exceeds_envelope"
    DOSE_OUTSIDE_ENVELOPE = "dose_outside_envelope"
    LOW_CONFIDENCE = "confidence_below_envelope"
    INSUFFICIENT_CUFF_DATA = "insufficient_validated_cuff_data"
    RECENT_CHANGE = "recent_change"
    AUTO_CHANGE_LIMIT = "auto_change_limit_reached"
    OPEN_ALERT = "open_alert"
    POOR_ADHERENCE = "poor_adherence"


@dataclass(frozen=True)
class Proposal:
    """What the model proposes: a move on the ladder and its confidence in that move."""

    action: TitrationAction
    from_step: int
    to_step: int
    confidence: float
    ladder_steps: int


@dataclass(frozen=True)
class Evidence:
    """What the data say right now; cuffless readings are deliberately absent."""

    cuff_readings_7d: int
    cuff_days_7d: int
    days_since_last_change: int | None  # None: never changed
    auto_changes_30d: int
    open_alerts: int
    adherence_14d: float | None  # share of doses taken; None: unknown


@dataclass(frozen=True)
class RoutingDecision:
    """The route and every reason for it (empty when delivered automatically)."""

    route: Route
    reasons: tuple[Reason, ...]


def route(
    proposal: Proposal,
    evidence: Evidence,
    envelope: EnvelopeRules | None,
    *,
    kill_switch: bool,
) -> RoutingDecision:
    """Auto-deliver only when every bound of the envelope in force is met; else review."""
    reasons: list[Reason] = []
    if kill_switch:
        reasons.append(Reason.KILL_SWITCH)
    change = proposal.to_step - proposal.from_step
    if change != _STEP[proposal.action]:
        reasons.append(Reason.INCONSISTENT_PROPOSAL)
    if not (
        0 <= proposal.from_step < proposal.ladder_steps
        and 0 <= proposal.to_step < proposal.ladder_steps
    ):
        reasons.append(Reason.OUTSIDE_LADDER)
    changes_dose = proposal.action is not TitrationAction.HOLD or change != 0
    if (
        changes_dose
        and evidence.adherence_14d is not None
        and (not evidence.adherence_14d >= MIN_ADHERENCE_FOR_CHANGE)
    ):  # NaN fails too
        reasons.append(Reason.POOR_ADHERENCE)
    if envelope is None:
        reasons.append(Reason.NO_ENVELOPE)
    else:
        reasons += _envelope_reasons(proposal, evidence, envelope, change, changes_dose)
    return RoutingDecision(
        Route.CLINICIAN_REVIEW if reasons else Route.AUTO_DELIVER, tuple(reasons)
    )


def _envelope_reasons(
    proposal: Proposal, evidence: Evidence, envelope: EnvelopeRules, change: int, changes_dose: bool
) -> list[Reason]:
    reasons: list[Reason] = []
    if proposal.action not in envelope.auto_actions:
        reasons.append(Reason.ACTION_NOT_AUTO)
    # max_step_change is at most 1 by the envelope's own type; the second test keeps the
    # one-step rule even if that type ever changed.
    if abs(change) > envelope.max_step_change or abs(change) > 1:
        reasons.append(Reason.STEP_CHANGE_TOO_LARGE)
    if proposal.to_step < envelope.min_dose_step or (
        envelope.max_dose_step is not None and proposal.to_step > envelope.max_dose_step
    ):
        reasons.append(Reason.DOSE_OUTSIDE_ENVELOPE)
    if not (
        math.isfinite(proposal.confidence)
        and 0.0 <= proposal.confidence <= 1.0
        and proposal.confidence >= envelope.min_confidence
    ):
        reasons.append(Reason.LOW_CONFIDENCE)
    if (
        evidence.cuff_readings_7d < envelope.min_cuff_readings_7d
        or evidence.cuff_days_7d < envelope.min_cuff_days_7d
    ):
        reasons.append(Reason.INSUFFICIENT_CUFF_DATA)
    if changes_dose:
        if (
            evidence.days_since_last_change is not None
            and evidence.days_since_last_change < envelope.min_days_since_change
        ):
            reasons.append(Reason.RECENT_CHANGE)
        if evidence.auto_changes_30d >= envelope.max_auto_changes_per_30d:
            reasons.append(Reason.AUTO_CHANGE_LIMIT)
    if envelope.block_on_open_alert and evidence.open_alerts > 0:
        reasons.append(Reason.OPEN_ALERT)
    return reasons
