"""The care plan in plain language (pure)."""

from __future__ import annotations

import pytest

from loops.care.plain import envelope_sentences, goal_sentence, medication_sentence, number
from policies.envelope import EnvelopeRules, TitrationAction

STEPS = [5.0, 10.0, 20.0, 40.0]


@pytest.mark.parametrize(
    ("value", "text"),
    [(7000, "7,000"), (7925.4, "7,925"), (7.0, "7"), (6.75, "6.8"), (0.5, "0.5"), (90.0, "90")],
)
def test_number_when_formatted_reads_naturally(value: float, text: str) -> None:
    assert number(value) == text


@pytest.mark.parametrize(
    ("kind", "kw", "text"),
    [
        (
            "blood_pressure",
            {"target_systolic": 130, "target_diastolic": 80},
            "Keep home blood pressure below 130/80 mmHg (validated-cuff readings)",
        ),
        ("daily_steps", {"target_value": 7000}, "Walk at least 7,000 steps a day"),
        ("adherence", {"target_value": 0.9}, "Take at least 90% of doses as prescribed"),
        ("sodium", {"target_value": 2000}, "Keep sodium to at most 2,000 mg a day"),
        ("sleep", {"target_value": 7.5}, "Sleep at least 7.5 hours a night"),
    ],
)
def test_goal_sentence_when_each_kind_says_what_it_asks(
    kind: str, kw: dict[str, float], text: str
) -> None:
    assert goal_sentence(kind, **kw) == text


def test_medication_sentence_when_on_a_ladder_names_step_and_doses() -> None:
    assert medication_sentence("amlodipine", "mg", "once daily", [2.5, 5.0, 10.0], 0) == (
        "Amlodipine 2.5 mg once daily (step 1 of 3 on the dose ladder: 2.5, 5, 10 mg)"
    )


def test_envelope_sentences_when_none_say_the_clinician_decides() -> None:
    assert envelope_sentences(None) == [
        "The app does not change your medication by itself: every change is decided by your "
        "clinician."
    ]


def test_envelope_sentences_when_holds_only_say_no_automatic_change() -> None:
    rules = EnvelopeRules(auto_actions=frozenset({TitrationAction.HOLD}))
    lines = envelope_sentences(rules, drug="lisinopril", steps=STEPS)
    assert lines[0] == (
        "The app never changes your lisinopril dose by itself: every change is decided by "
        "your clinician. It may tell you to keep your dose as it is."
    )
    assert any("at least 12 readings from a validated cuff on 4 different days" in s for s in lines)
    assert lines[-1].startswith("If there is an alert about you")


def test_envelope_sentences_when_both_moves_allowed_name_bounds_and_pace() -> None:
    rules = EnvelopeRules(
        auto_actions=frozenset(TitrationAction),
        min_dose_step=1,
        max_dose_step=2,
        min_confidence=0.85,
        min_days_since_change=21,
        max_auto_changes_per_30d=2,
        block_on_open_alert=False,
    )
    lines = envelope_sentences(rules, drug="lisinopril", steps=STEPS)
    assert lines[0].startswith("The app may raise or lower your lisinopril dose by one step")
    assert "By itself it keeps the dose between 10 mg and 20 mg." in lines
    assert (
        "It waits at least 21 days after a change and makes at most 2 automatic changes in 30 days."
        in lines
    )
    assert "It acts only when its model is at least 85% confident." in lines
    assert not any("alert" in s for s in lines)


def test_envelope_sentences_when_no_top_step_reach_the_top_of_the_ladder() -> None:
    rules = EnvelopeRules(auto_actions=frozenset({TitrationAction.INCREASE}), max_dose_step=None)
    assert envelope_sentences(rules, steps=STEPS)[1] == (
        "By itself it keeps the dose between 5 mg and 40 mg."
    )
    # Without a ladder the range is told in steps.
    assert envelope_sentences(rules)[1] == (
        "By itself it keeps the dose between step 1 of the dose ladder and the top of the ladder."
    )
