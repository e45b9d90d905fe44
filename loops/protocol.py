"""The written titration protocol (docs/protocol.md) as a pure function.

It labels the first model's training data and is the rule the simulated usual-care
clinician follows; later model versions learn from clinicians' decisions instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from policies.envelope import TitrationAction

# Home-BP targets (2017 ACC/AHA Table 11 home equivalents): 135/85 in general, 130/80 with
# diabetes or chronic kidney disease.
TARGET_DEFAULT = (135.0, 85.0)
TARGET_HIGH_RISK = (130.0, 80.0)
MIN_READINGS_7D = 12
MIN_DAYS_7D = 4
MIN_DAYS_BETWEEN_CHANGES = 14
MIN_ADHERENCE = 0.8
LOW_MEAN_SBP_3D = 100.0
LOW_SBP_WITH_SYMPTOMS = 90.0
# The symptom reports the low-BP rule counts (a cough or a free-text note does not).
HYPOTENSION_SYMPTOMS = frozenset({"dizziness", "fainting"})


class Why(StrEnum):
    """The protocol rule that decided."""

    INSUFFICIENT_DATA = "insufficient_data"
    LOW_BP = "low_bp"
    LOW_BP_AT_LOWEST_STEP = "low_bp_at_lowest_step"
    TOO_SOON = "too_soon_after_change"
    POOR_ADHERENCE = "poor_adherence"
    ABOVE_TARGET = "above_target"
    ABOVE_TARGET_AT_TOP = "above_target_at_top_of_ladder"
    AT_TARGET = "at_target"


@dataclass(frozen=True)
class PatientState:
    """What the protocol looks at, all from validated-cuff readings and dose events."""

    cuff_readings_per_day_7d: Sequence[int]  # the last 7 days, any order
    mean_sbp_7d: float | None
    mean_dbp_7d: float | None
    mean_sbp_3d: float | None
    min_sbp_3d: float | None
    hypotension_symptoms: bool  # dizziness or fainting reported in the last 3 days
    adherence_14d: float | None
    days_since_last_change: int | None
    step: int
    ladder_steps: int
    diabetes_or_ckd: bool


@dataclass(frozen=True)
class ProtocolDecision:
    """The protocol's action (None: no proposal, ask the patient to measure) and why."""

    action: TitrationAction | None
    why: Why


def target(diabetes_or_ckd: bool) -> tuple[float, float]:
    """The home systolic/diastolic target for a patient."""
    return TARGET_HIGH_RISK if diabetes_or_ckd else TARGET_DEFAULT


def sufficient(cuff_readings_per_day_7d: Sequence[int]) -> bool:
    """At least 12 validated-cuff readings on at least 4 of the last 7 days."""
    days = [n for n in cuff_readings_per_day_7d if n > 0]
    return sum(days) >= MIN_READINGS_7D and len(days) >= MIN_DAYS_7D


def decide(state: PatientState) -> ProtocolDecision:
    """Apply the protocol's rules in their written order."""
    if (
        not sufficient(state.cuff_readings_per_day_7d)
        or state.mean_sbp_7d is None
        or state.mean_dbp_7d is None
    ):
        return ProtocolDecision(None, Why.INSUFFICIENT_DATA)
    low = (state.mean_sbp_3d is not None and state.mean_sbp_3d < LOW_MEAN_SBP_3D) or (
        state.hypotension_symptoms
        and state.min_sbp_3d is not None
        and state.min_sbp_3d < LOW_SBP_WITH_SYMPTOMS
    )
    if low:
        if state.step > 0:
            return ProtocolDecision(TitrationAction.DECREASE, Why.LOW_BP)
        return ProtocolDecision(TitrationAction.HOLD, Why.LOW_BP_AT_LOWEST_STEP)
    if (
        state.days_since_last_change is not None
        and state.days_since_last_change < MIN_DAYS_BETWEEN_CHANGES
    ):
        return ProtocolDecision(TitrationAction.HOLD, Why.TOO_SOON)
    if state.adherence_14d is not None and state.adherence_14d < MIN_ADHERENCE:
        return ProtocolDecision(TitrationAction.HOLD, Why.POOR_ADHERENCE)
    sbp_target, dbp_target = target(state.diabetes_or_ckd)
    if state.mean_sbp_7d >= sbp_target or state.mean_dbp_7d >= dbp_target:
        if state.step + 1 < state.ladder_steps:
            return ProtocolDecision(TitrationAction.INCREASE, Why.ABOVE_TARGET)
        return ProtocolDecision(TitrationAction.HOLD, Why.ABOVE_TARGET_AT_TOP)
    return ProtocolDecision(TitrationAction.HOLD, Why.AT_TARGET)
