"""The written titration protocol, rule by rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from loops.protocol import PatientState, ProtocolDecision, Why, decide, sufficient, target
from policies.envelope import TitrationAction

BASE = PatientState(
    cuff_readings_per_day_7d=[2, 2, 2, 2, 2, 2, 2],
    mean_sbp_7d=142.0,
    mean_dbp_7d=84.0,
    mean_sbp_3d=141.0,
    min_sbp_3d=130.0,
    hypotension_symptoms=False,
    adherence_14d=0.95,
    days_since_last_change=40,
    step=0,
    ladder_steps=3,
    diabetes_or_ckd=False,
)
A = TitrationAction

CASES = [
    ("above target, adherent, settled: step up", BASE, A.INCREASE, Why.ABOVE_TARGET),
    (
        "diastolic alone above target",
        replace(BASE, mean_sbp_7d=128.0, mean_dbp_7d=86.0),
        A.INCREASE,
        Why.ABOVE_TARGET,
    ),
    ("at target", replace(BASE, mean_sbp_7d=128.0, mean_dbp_7d=78.0), A.HOLD, Why.AT_TARGET),
    (
        "diabetes: 132/79 is above 130/80",
        replace(BASE, mean_sbp_7d=132.0, mean_dbp_7d=79.0, diabetes_or_ckd=True),
        A.INCREASE,
        Why.ABOVE_TARGET,
    ),
    (
        "no diabetes: 132/79 is at target",
        replace(BASE, mean_sbp_7d=132.0, mean_dbp_7d=79.0),
        A.HOLD,
        Why.AT_TARGET,
    ),
    ("poor adherence holds", replace(BASE, adherence_14d=0.7), A.HOLD, Why.POOR_ADHERENCE),
    ("changed 10 days ago holds", replace(BASE, days_since_last_change=10), A.HOLD, Why.TOO_SOON),
    ("top of ladder", replace(BASE, step=2), A.HOLD, Why.ABOVE_TARGET_AT_TOP),
    (
        "low mean over 3 days steps down",
        replace(BASE, step=1, mean_sbp_3d=97.0),
        A.DECREASE,
        Why.LOW_BP,
    ),
    (
        "dizzy with SBP 88 steps down",
        replace(BASE, step=2, min_sbp_3d=88.0, hypotension_symptoms=True),
        A.DECREASE,
        Why.LOW_BP,
    ),
    (
        "SBP 88 without symptoms is not low BP",
        replace(BASE, min_sbp_3d=88.0),
        A.INCREASE,
        Why.ABOVE_TARGET,
    ),
    (
        "low BP at the lowest step holds (clinician)",
        replace(BASE, mean_sbp_3d=95.0),
        A.HOLD,
        Why.LOW_BP_AT_LOWEST_STEP,
    ),
    (
        "low BP beats too-soon",
        replace(BASE, step=1, mean_sbp_3d=95.0, days_since_last_change=3),
        A.DECREASE,
        Why.LOW_BP,
    ),
    (
        "only 3 days measured",
        replace(BASE, cuff_readings_per_day_7d=[4, 4, 4, 0, 0, 0, 0]),
        None,
        Why.INSUFFICIENT_DATA,
    ),
    (
        "11 readings",
        replace(BASE, cuff_readings_per_day_7d=[2, 2, 2, 2, 2, 1, 0]),
        None,
        Why.INSUFFICIENT_DATA,
    ),
]


@pytest.mark.parametrize(("name", "state", "action", "why"), CASES, ids=[c[0] for c in CASES])
def test_protocol_when_case_applies_decides_as_written(
    name: str, state: PatientState, action: TitrationAction | None, why: Why
) -> None:
    assert decide(state) == ProtocolDecision(action, why)


def test_sufficiency_when_exactly_at_floor_is_met() -> None:
    assert sufficient([3, 3, 3, 3, 0, 0, 0])
    assert not sufficient([6, 6, 0, 0, 0, 0, 0])


def test_target_when_high_risk_is_lower() -> None:
    assert target(True) == (130.0, 80.0)
    assert target(False) == (135.0, 85.0)
