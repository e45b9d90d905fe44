"""Bounded autonomy: nothing outside the envelope in force is ever delivered automatically."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.envelope import EnvelopeRules, TitrationAction, default_rules
from policies.routing import (
    MIN_ADHERENCE_FOR_CHANGE,
    Evidence,
    Proposal,
    Reason,
    Route,
    route,
)

ACTIONS = st.sampled_from(list(TitrationAction))


@st.composite
def envelopes(draw: st.DrawFn) -> EnvelopeRules:
    """Any valid envelope a clinician could write."""
    low = draw(st.integers(0, 6))
    high = draw(st.one_of(st.none(), st.integers(low, 8)))
    return EnvelopeRules(
        auto_actions=draw(st.frozensets(ACTIONS)),
        max_step_change=draw(st.integers(0, 1)),
        min_dose_step=low,
        max_dose_step=high,
        min_confidence=draw(st.floats(0.5, 1.0)),
        min_cuff_readings_7d=draw(st.integers(12, 40)),
        min_cuff_days_7d=draw(st.integers(4, 7)),
        min_days_since_change=draw(st.integers(0, 60)),
        max_auto_changes_per_30d=draw(st.integers(0, 4)),
        block_on_open_alert=draw(st.booleans()),
    )


proposals = st.builds(
    Proposal,
    action=ACTIONS,
    from_step=st.integers(-2, 8),
    to_step=st.integers(-2, 9),
    confidence=st.one_of(st.floats(0.0, 1.0), st.floats(allow_nan=True, allow_infinity=True)),
    ladder_steps=st.integers(1, 6),
)
evidence = st.builds(
    Evidence,
    cuff_readings_7d=st.integers(0, 40),
    cuff_days_7d=st.integers(0, 7),
    days_since_last_change=st.one_of(st.none(), st.integers(0, 400)),
    auto_changes_30d=st.integers(0, 6),
    open_alerts=st.integers(0, 3),
    adherence_14d=st.one_of(st.none(), st.floats(-0.5, 1.5), st.just(math.nan)),
)


def _inside(p: Proposal, e: Evidence, env: EnvelopeRules) -> bool:
    """The envelope's bounds, restated independently of the implementation."""
    delta = p.to_step - p.from_step
    expected = {TitrationAction.DECREASE: -1, TitrationAction.HOLD: 0, TitrationAction.INCREASE: 1}[
        p.action
    ]
    moves = delta != 0
    return (
        p.action in env.auto_actions
        and delta == expected
        and abs(delta) <= env.max_step_change <= 1
        and 0 <= p.from_step < p.ladder_steps
        and 0 <= p.to_step < p.ladder_steps
        and env.min_dose_step <= p.to_step
        and (env.max_dose_step is None or p.to_step <= env.max_dose_step)
        and math.isfinite(p.confidence)
        and env.min_confidence <= p.confidence <= 1.0
        and e.cuff_readings_7d >= max(env.min_cuff_readings_7d, 12)
        and e.cuff_days_7d >= max(env.min_cuff_days_7d, 4)
        and (
            not moves
            or e.days_since_last_change is None
            or e.days_since_last_change >= env.min_days_since_change
        )
        and (not moves or e.auto_changes_30d < env.max_auto_changes_per_30d)
        and (not moves or e.adherence_14d is None or e.adherence_14d >= MIN_ADHERENCE_FOR_CHANGE)
        and not (env.block_on_open_alert and e.open_alerts > 0)
    )


@settings(max_examples=3000, deadline=None)
@given(p=proposals, e=evidence, env=st.one_of(st.none(), envelopes()), kill=st.booleans())
def test_route_when_anything_outside_envelope_never_auto_delivers(
    p: Proposal, e: Evidence, env: EnvelopeRules | None, kill: bool
) -> None:
    decision = route(p, e, env, kill_switch=kill)
    if decision.route is Route.AUTO_DELIVER:
        assert not kill
        assert env is not None
        assert _inside(p, e, env)
    assert (decision.route is Route.AUTO_DELIVER) == (decision.reasons == ())


@settings(max_examples=2000, deadline=None)
@given(p=proposals, e=evidence, env=envelopes())
def test_route_when_inside_envelope_delivers_and_otherwise_names_reasons(
    p: Proposal, e: Evidence, env: EnvelopeRules
) -> None:
    decision = route(p, e, env, kill_switch=False)
    assert (decision.route is Route.AUTO_DELIVER) == _inside(p, e, env)


@settings(max_examples=1500, deadline=None)
@given(p=proposals, e=evidence, env=envelopes())
def test_route_when_envelope_tightened_never_newly_auto_delivers(
    p: Proposal, e: Evidence, env: EnvelopeRules
) -> None:
    tighter = env.model_copy(
        update={
            "auto_actions": env.auto_actions - {p.action},
            "min_confidence": min(1.0, env.min_confidence + 0.1),
            "block_on_open_alert": True,
        }
    )
    if route(p, e, tighter, kill_switch=False).route is Route.AUTO_DELIVER:
        assert route(p, e, env, kill_switch=False).route is Route.AUTO_DELIVER


@settings(max_examples=500, deadline=None)
@given(p=proposals, e=evidence, env=st.one_of(st.none(), envelopes()))
def test_route_when_kill_switch_on_always_needs_a_clinician(
    p: Proposal, e: Evidence, env: EnvelopeRules | None
) -> None:
    decision = route(p, e, env, kill_switch=True)
    assert decision.route is Route.CLINICIAN_REVIEW
    assert Reason.KILL_SWITCH in decision.reasons


# ------------------------------------------------------------------- named clinical cases

ENVELOPE = default_rules(3)  # holds and one-step moves on a 3-step ladder
GOOD = Evidence(
    cuff_readings_7d=14,
    cuff_days_7d=7,
    days_since_last_change=30,
    auto_changes_30d=0,
    open_alerts=0,
    adherence_14d=0.95,
)
UP = Proposal(TitrationAction.INCREASE, 0, 1, 0.9, 3)
DOWN = Proposal(TitrationAction.DECREASE, 1, 0, 0.9, 3)
HOLD = Proposal(TitrationAction.HOLD, 1, 1, 0.9, 3)

CASES = [
    ("uncontrolled, adherent, enough cuff data: step up", UP, GOOD, False, ()),
    ("controlled: hold", HOLD, GOOD, False, ()),
    (
        "hypertensive crisis alert open",
        UP,
        replace(GOOD, open_alerts=1),
        False,
        (Reason.OPEN_ALERT,),
    ),
    (
        "low blood pressure alert open: even a step down waits",
        DOWN,
        replace(GOOD, open_alerts=1),
        False,
        (Reason.OPEN_ALERT,),
    ),
    (
        "poor adherence: no dose increase",
        UP,
        replace(GOOD, adherence_14d=0.6),
        False,
        (Reason.POOR_ADHERENCE,),
    ),
    ("poor adherence: holding is fine", HOLD, replace(GOOD, adherence_14d=0.6), False, ()),
    (
        "cuffless readings only",
        UP,
        replace(GOOD, cuff_readings_7d=0, cuff_days_7d=0),
        False,
        (Reason.INSUFFICIENT_CUFF_DATA,),
    ),
    (
        "too few validated-cuff days",
        HOLD,
        replace(GOOD, cuff_days_7d=3),
        False,
        (Reason.INSUFFICIENT_CUFF_DATA,),
    ),
    (
        "changed 5 days ago",
        UP,
        replace(GOOD, days_since_last_change=5),
        False,
        (Reason.RECENT_CHANGE,),
    ),
    (
        "automatic change already this month",
        UP,
        replace(GOOD, auto_changes_30d=1),
        False,
        (Reason.AUTO_CHANGE_LIMIT,),
    ),
    ("kill switch on", HOLD, GOOD, True, (Reason.KILL_SWITCH,)),
    (
        "top of the ladder: no higher step",
        Proposal(TitrationAction.INCREASE, 2, 3, 0.9, 3),
        GOOD,
        False,
        (Reason.OUTSIDE_LADDER, Reason.DOSE_OUTSIDE_ENVELOPE),
    ),
    (
        "two steps at once",
        Proposal(TitrationAction.INCREASE, 0, 2, 0.95, 3),
        GOOD,
        False,
        (Reason.INCONSISTENT_PROPOSAL, Reason.STEP_CHANGE_TOO_LARGE),
    ),
    ("model unsure", replace(UP, confidence=0.6), GOOD, False, (Reason.LOW_CONFIDENCE,)),
]


@pytest.mark.parametrize(
    ("name", "proposal", "facts", "kill", "reasons"), CASES, ids=[c[0] for c in CASES]
)
def test_route_when_clinical_case_follows_protocol(
    name: str, proposal: Proposal, facts: Evidence, kill: bool, reasons: tuple[Reason, ...]
) -> None:
    decision = route(proposal, facts, ENVELOPE, kill_switch=kill)
    assert decision.reasons == reasons
    assert decision.route is (Route.AUTO_DELIVER if not reasons else Route.CLINICIAN_REVIEW)


def test_route_when_no_envelope_in_force_needs_a_clinician() -> None:
    decision = route(HOLD, GOOD, None, kill_switch=False)
    assert decision.reasons == (Reason.NO_ENVELOPE,)


def test_route_when_action_not_delegated_needs_a_clinician() -> None:
    holds_only = EnvelopeRules()  # the default delegates holds only
    assert route(UP, GOOD, holds_only, kill_switch=False).reasons == (Reason.ACTION_NOT_AUTO,)
    assert route(HOLD, GOOD, holds_only, kill_switch=False).route is Route.AUTO_DELIVER


def test_envelope_when_sufficiency_relaxed_below_floor_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        EnvelopeRules(min_cuff_readings_7d=6)
    with pytest.raises(ValidationError):
        EnvelopeRules(max_step_change=2)
