"""The care plan in plain language: goals, medications and the safety envelope as sentences a
patient can read (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

from loops.care.models import GoalKind
from policies.envelope import EnvelopeRules, TitrationAction

KIND_LABELS: dict[GoalKind, str] = {
    GoalKind.BLOOD_PRESSURE: "Home blood pressure",
    GoalKind.DAILY_STEPS: "Daily steps",
    GoalKind.ADHERENCE: "Taking medication",
    GoalKind.SODIUM: "Sodium (salt)",
    GoalKind.SLEEP: "Sleep",
}


def number(value: float) -> str:
    """A figure for people: thousands separated, whole when large or whole, else one decimal."""
    if abs(value) >= 100 or value == int(value):
        return f"{round(value):,}"
    return f"{value:.1f}"


def goal_sentence(
    kind: str,
    *,
    target_value: float | None = None,
    target_systolic: float | None = None,
    target_diastolic: float | None = None,
) -> str:
    """What a goal asks for, e.g. 'Keep home blood pressure below 130/80 mmHg'."""
    goal = GoalKind(kind)
    if goal is GoalKind.BLOOD_PRESSURE:
        if target_systolic is None or target_diastolic is None:
            return "Keep home blood pressure below target"
        return (
            f"Keep home blood pressure below {number(target_systolic)}/"
            f"{number(target_diastolic)} mmHg (validated-cuff readings)"
        )
    if target_value is None:
        return KIND_LABELS[goal]
    if goal is GoalKind.DAILY_STEPS:
        return f"Walk at least {number(target_value)} steps a day"
    if goal is GoalKind.ADHERENCE:
        return f"Take at least {number(100 * target_value)}% of doses as prescribed"
    if goal is GoalKind.SODIUM:
        return f"Keep sodium to at most {number(target_value)} mg a day"
    return f"Sleep at least {number(target_value)} hours a night"


def medication_sentence(
    drug: str, unit: str, frequency: str, steps: Sequence[float], current_step: int
) -> str:
    """A regimen and its ladder, e.g. 'Lisinopril 10 mg once daily (step 2 of 4: 5, 10, ...)'."""
    dose = steps[current_step] if 0 <= current_step < len(steps) else None
    ladder = ", ".join(number(s) for s in steps)
    now = f"{number(dose)} {unit}" if dose is not None else "dose unknown"
    return (
        f"{drug.capitalize()} {now} {frequency} (step {current_step + 1} of {len(steps)} on "
        f"the dose ladder: {ladder} {unit})"
    )


def _bounds(steps: Sequence[float], low: int, high: int | None, unit: str) -> str:
    """The envelope's dose range as doses, or as ladder steps when the ladder is unknown."""
    if not steps:
        top = "the top of the ladder" if high is None else f"step {high + 1}"
        return f"between step {low + 1} of the dose ladder and {top}"
    last = len(steps) - 1
    first = steps[min(max(low, 0), last)]
    end = steps[last if high is None else min(max(high, 0), last)]
    return f"between {number(first)} {unit} and {number(end)} {unit}"


def envelope_sentences(
    rules: EnvelopeRules | None,
    *,
    drug: str = "",
    unit: str = "mg",
    steps: Sequence[float] = (),
) -> list[str]:
    """What the app may do without a clinician, and when it must ask one, in plain words."""
    if rules is None:
        return [
            "The app does not change your medication by itself: every change is decided by "
            "your clinician."
        ]
    medicine = f"your {drug}" if drug else "your medicine"
    auto = rules.auto_actions
    moves = [
        label
        for action, label in (
            (TitrationAction.INCREASE, "raise"),
            (TitrationAction.DECREASE, "lower"),
        )
        if action in auto
    ]
    out: list[str] = []
    if not moves or rules.max_step_change == 0:
        keep = (
            " It may tell you to keep your dose as it is." if TitrationAction.HOLD in auto else ""
        )
        out.append(
            f"The app never changes {medicine} dose by itself: every change is decided by "
            f"your clinician.{keep}"
        )
    else:
        verbs = " or ".join(moves)
        out.append(
            f"The app may {verbs} {medicine} dose by one step at a time without waiting for "
            f"your clinician; anything else goes to your clinician first."
        )
        bounds = _bounds(steps, rules.min_dose_step, rules.max_dose_step, unit)
        out.append(f"By itself it keeps the dose {bounds}.")
        out.append(
            f"It waits at least {rules.min_days_since_change} days after a change and makes "
            f"at most {rules.max_auto_changes_per_30d} automatic change"
            f"{'' if rules.max_auto_changes_per_30d == 1 else 's'} in 30 days."
        )
        out.append(
            f"It acts only when its model is at least {number(100 * rules.min_confidence)}% "
            f"confident."
        )
    out.append(
        f"It needs at least {rules.min_cuff_readings_7d} readings from a validated cuff on "
        f"{rules.min_cuff_days_7d} different days in the last week; readings from cuffless "
        f"watches or bands never count."
    )
    if rules.block_on_open_alert:
        out.append(
            "If there is an alert about you (very high or low blood pressure), it changes "
            "nothing until a clinician has looked at it."
        )
    return out
