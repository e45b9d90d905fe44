"""Per-drug starting envelopes for the envelope editor (data, pure).

A template is what the editor offers before a clinician changes anything: it is never in
force by itself. The values are demonstration defaults chosen to be conservative where a dose
change needs laboratory follow-up, not clinical advice. `max_dose_step` refers to the drug's
standard ladder (the ladders of `app/seed.py`, which the simulator also uses); a patient on a
shorter ladder gets it capped at that ladder's top step.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final

from policies.envelope import EnvelopeRules

# Rules per drug (lower-case generic name), as EnvelopeRules fields; unset fields keep the
# EnvelopeRules defaults (sufficiency floors 12 readings on 4 days, confidence 0.8, ...).
TEMPLATES: Final[MappingProxyType[str, dict[str, Any]]] = MappingProxyType(
    {
        # Calcium-channel blocker, 2.5 / 5 / 10 mg: full effect in about two weeks, no
        # laboratory follow-up, so one-step moves over the whole ladder may be delegated.
        "amlodipine": {
            "auto_actions": ["decrease", "hold", "increase"],
            "max_dose_step": 2,
            "min_days_since_change": 14,
            "max_auto_changes_per_30d": 1,
        },
        # ACE inhibitor, 5 / 10 / 20 / 40 mg: potassium and creatinine are checked after a
        # dose change, so the top step and a second change within a month need a clinician.
        "lisinopril": {
            "auto_actions": ["decrease", "hold", "increase"],
            "max_dose_step": 2,
            "min_days_since_change": 21,
            "max_auto_changes_per_30d": 1,
        },
        # Angiotensin-receptor blocker, 25 / 50 / 100 mg: as lisinopril.
        "losartan": {
            "auto_actions": ["decrease", "hold", "increase"],
            "max_dose_step": 1,
            "min_days_since_change": 21,
            "max_auto_changes_per_30d": 1,
        },
        # Thiazide-like diuretic, 12.5 / 25 mg: an increase raises the risk of low sodium and
        # potassium, so only holds and decreases are delegated.
        "chlorthalidone": {
            "auto_actions": ["decrease", "hold"],
            "max_dose_step": 1,
            "min_days_since_change": 28,
            "max_auto_changes_per_30d": 1,
        },
    }
)


def envelope_template(drug: str, *, ladder_steps: int | None = None) -> EnvelopeRules:
    """The starting envelope for a drug (holds only for a drug without a template), with
    `max_dose_step` capped at the top of a ladder of `ladder_steps` steps if given."""
    fields = dict(TEMPLATES.get(drug.strip().lower(), {}))
    if ladder_steps is not None:
        top = max(ladder_steps - 1, 0)
        fields["max_dose_step"] = min(fields.get("max_dose_step", top), top)
    return EnvelopeRules.model_validate(fields)
