"""Safety-envelope rules: what the AI may deliver to a patient without a clinician (pure)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TitrationAction(StrEnum):
    """What a proposal asks for, one ladder step at most."""

    DECREASE = "decrease"
    HOLD = "hold"
    INCREASE = "increase"


class EnvelopeRules(BaseModel):
    """The clinician-set bounds; anything outside goes to a clinician."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    auto_actions: frozenset[TitrationAction] = frozenset({TitrationAction.HOLD})
    # One step at most, ever: the bound is in the type, not only in the data.
    max_step_change: int = Field(default=1, ge=0, le=1)
    min_dose_step: int = Field(default=0, ge=0)
    max_dose_step: int | None = Field(default=None, ge=0)
    min_confidence: float = Field(default=0.8, ge=0.5, le=1.0)
    # Validated-cuff readings required in the last 7 days, and days they must span. The
    # floor is the protocol's sufficiency rule: a clinician may tighten it, never relax it.
    # Cuffless readings never count (2025 ACC/AHA: not for managing hypertension).
    min_cuff_readings_7d: int = Field(default=12, ge=12, le=100)
    min_cuff_days_7d: int = Field(default=4, ge=4, le=7)
    min_days_since_change: int = Field(default=14, ge=0, le=365)
    max_auto_changes_per_30d: int = Field(default=1, ge=0, le=4)
    block_on_open_alert: bool = True

    @model_validator(mode="after")
    def _bounds_ordered(self) -> EnvelopeRules:
        if self.max_dose_step is not None and self.max_dose_step < self.min_dose_step:
            raise ValueError("max_dose_step is below min_dose_step")
        return self


def default_rules(ladder_steps: int) -> EnvelopeRules:
    """A conservative starting envelope: holds and one-step moves within the ladder."""
    return EnvelopeRules(
        auto_actions=frozenset(
            {TitrationAction.HOLD, TitrationAction.INCREASE, TitrationAction.DECREASE}
        ),
        max_dose_step=max(ladder_steps - 1, 0),
    )
