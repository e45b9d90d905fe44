"""The rollout's pure rules: the patient-hash slice, the step ladder, the live analysis."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlops import canary
from mlops.canary import Arm, Thresholds, Verdict

SMALL = Thresholds(
    min_scored=5, min_decided=5, min_proposals=5, min_latency_samples=5, latency_slack_ms=1.0
)
DWELL = timedelta(minutes=60)
CLEAN = Arm(scored=50, proposals=10, auto_delivered=5, decided=10, overridden=2)


def _analyse(
    challenger: Arm,
    champion: Arm = CLEAN,
    *,
    percent: int = 10,
    elapsed: timedelta = DWELL,
    artifact_problem: str | None = None,
) -> canary.Analysis:
    return canary.analyse(
        percent=percent,
        elapsed=elapsed,
        dwell=DWELL,
        challenger=challenger,
        champion=champion,
        thresholds=SMALL,
        artifact_problem=artifact_problem,
    )


@given(st.text(max_size=32), st.text(min_size=1, max_size=64))
def test_bucket_is_deterministic_and_in_range(salt: str, patient_id: str) -> None:
    value = canary.bucket(salt, patient_id)
    assert 0.0 <= value < 100.0
    assert canary.bucket(salt, patient_id) == value


@given(
    st.text(max_size=16),
    st.uuids().map(str),
    st.integers(min_value=0, max_value=100),
    st.integers(min_value=0, max_value=100),
)
def test_in_slice_is_monotone_in_percent(salt: str, pid: str, low: int, high: int) -> None:
    low, high = sorted((low, high))
    if canary.in_slice(salt, pid, low):
        assert canary.in_slice(salt, pid, high)


@given(st.text(max_size=16), st.uuids().map(str))
def test_in_slice_at_the_ends_takes_nobody_and_everybody(salt: str, pid: str) -> None:
    assert not canary.in_slice(salt, pid, 0)
    assert canary.in_slice(salt, pid, 100)


def test_in_slice_takes_about_its_share_of_patients() -> None:
    ids = [str(uuid.UUID(int=i)) for i in range(20_000)]
    for percent in canary.STEPS:
        share = sum(canary.in_slice("salt-1", p, percent) for p in ids) / len(ids)
        assert share == pytest.approx(percent / 100, abs=0.015)


def test_in_slice_with_another_salt_takes_other_patients() -> None:
    ids = [str(uuid.UUID(int=i)) for i in range(2_000)]
    a = {p for p in ids if canary.in_slice("a", p, 10)}
    b = {p for p in ids if canary.in_slice("b", p, 10)}
    assert a != b
    assert len(a & b) < len(a) / 2


def test_next_percent_walks_the_ladder_then_stops() -> None:
    walk, percent = [], 0
    while (following := canary.next_percent(percent)) is not None:
        walk.append(following)
        percent = following
    assert walk == [10, 25, 50, 100]
    assert canary.next_percent(17) == 25


def test_analyse_when_clean_after_dwell_advances_to_the_next_step() -> None:
    result = _analyse(CLEAN, percent=25)
    assert result.verdict is Verdict.ADVANCE
    assert result.next_percent == 50


def test_analyse_in_shadow_when_clean_advances_to_ten_percent() -> None:
    result = _analyse(CLEAN, percent=0)
    assert result.verdict is Verdict.ADVANCE
    assert result.next_percent == 10
    assert result.reasons == ("clean at shadow for the dwell",)


def test_analyse_at_hundred_percent_when_clean_completes() -> None:
    result = _analyse(CLEAN, percent=100)
    assert result.verdict is Verdict.COMPLETE
    assert result.next_percent is None


def test_analyse_before_dwell_holds_and_says_how_long() -> None:
    result = _analyse(CLEAN, elapsed=timedelta(minutes=59, seconds=30))
    assert result.verdict is Verdict.HOLD
    assert result.reasons == ("dwell: 30 s left of 3600 s",)


def test_analyse_with_too_few_evaluations_holds_after_dwell() -> None:
    result = _analyse(Arm(scored=4))
    assert result.verdict is Verdict.HOLD
    assert result.reasons == ("insufficient_data: 4 of 5 evaluations",)


def test_analyse_with_errors_rolls_back_even_before_dwell() -> None:
    result = _analyse(Arm(scored=10, errors=1), elapsed=timedelta(0))
    assert result.verdict is Verdict.ROLLBACK
    assert result.reasons[0].startswith("error_rate 0.1 vs champion 0.0")


def test_analyse_with_errors_within_margin_of_champion_does_not_breach() -> None:
    result = _analyse(Arm(scored=100, errors=3), Arm(scored=100, errors=2))
    assert result.verdict is Verdict.ADVANCE


def test_analyse_with_higher_override_rate_rolls_back() -> None:
    worse = Arm(scored=50, decided=10, overridden=5)  # 0.5 against the champion's 0.2
    result = _analyse(worse)
    assert result.verdict is Verdict.ROLLBACK
    assert result.reasons == ("override_rate 0.5 vs champion 0.2 (limit champion + 0.1)",)


def test_analyse_with_few_decisions_does_not_judge_override_rate() -> None:
    worse = Arm(scored=50, decided=4, overridden=4)
    result = _analyse(worse)
    assert result.verdict is Verdict.ADVANCE
    check = next(c for c in result.checks if c.name == "override_rate")
    assert not check.judged
    assert check.note == "needs 5 decisions per model"


def test_analyse_with_routing_mix_shift_rolls_back() -> None:
    # The champion delivers half of its proposals; the challenger all of them.
    shifted = Arm(scored=50, proposals=10, auto_delivered=10)
    result = _analyse(shifted)
    assert result.verdict is Verdict.ROLLBACK
    assert result.reasons[0].startswith("routing_mix 1.0 vs champion 0.5")


def test_analyse_with_slow_challenger_rolls_back_but_not_within_slack() -> None:
    fast = Arm(scored=50, latency_p95_ms=2.0, latency_samples=50)
    slow = Arm(scored=50, latency_p95_ms=9.0, latency_samples=50)
    within = Arm(scored=50, latency_p95_ms=2.9, latency_samples=50)  # x1.45, +0.9 ms
    assert _analyse(slow, fast).verdict is Verdict.ROLLBACK
    assert _analyse(within, fast).verdict is Verdict.ADVANCE


def test_analyse_with_unusable_artifact_rolls_back_first() -> None:
    result = _analyse(CLEAN, artifact_problem="ArtifactError")
    assert result.verdict is Verdict.ROLLBACK
    assert result.reasons == ("artifact_unusable: ArtifactError",)


def test_analysis_document_names_every_check() -> None:
    doc = _analyse(CLEAN).document()
    assert doc["verdict"] == "advance"
    assert set(doc["checks"]) == {"error_rate", "override_rate", "routing_mix", "latency_p95_ms"}
    assert doc["checks"]["override_rate"] == {
        "judged": True,
        "breached": False,
        "challenger": 0.2,
        "champion": 0.2,
        "limit": "champion + 0.1",
        "note": "",
    }


arms = st.builds(
    lambda scored, errors, proposals, auto, decided, over, lat, n: Arm(
        scored=scored,
        errors=min(errors, scored),
        proposals=proposals,
        auto_delivered=min(auto, proposals),
        decided=decided,
        overridden=min(over, decided),
        latency_p95_ms=lat,
        latency_samples=n,
    ),
    st.integers(0, 200),
    st.integers(0, 200),
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 100),
    st.one_of(st.none(), st.floats(0, 1000)),
    st.integers(0, 100),
)


@given(
    arms,
    arms,
    st.sampled_from((0, *canary.STEPS)),
    st.integers(0, 7200).map(lambda s: timedelta(seconds=s)),
)
def test_analyse_advances_only_clean_after_dwell_and_never_skips_a_step(
    challenger: Arm, champion: Arm, percent: int, elapsed: timedelta
) -> None:
    result = _analyse(challenger, champion, percent=percent, elapsed=elapsed)
    breached = any(c.breached for c in result.checks)
    if breached:
        assert result.verdict is Verdict.ROLLBACK
    if result.verdict in {Verdict.ADVANCE, Verdict.COMPLETE}:
        assert not breached
        assert elapsed >= DWELL
        assert challenger.scored >= SMALL.min_scored
    if result.verdict is Verdict.ADVANCE:
        assert result.next_percent == canary.next_percent(percent)
    assert (result.verdict is Verdict.COMPLETE) == (
        percent == 100 and not breached and elapsed >= DWELL and challenger.scored >= 5
    )


@given(st.lists(st.floats(0, 1e6), max_size=200))
def test_p95_is_a_value_at_or_above_ninety_five_percent_of_them(values: list[float]) -> None:
    result = canary.p95(values)
    if not values:
        assert result is None
        return
    assert result in values
    assert sum(v <= result for v in values) >= 0.95 * len(values)


def test_thresholds_from_settings_reads_every_canary_setting() -> None:
    from app.core.config import Settings

    chosen = {
        "min_scored": 7,
        "min_decided": 8,
        "max_override_increase": 0.05,
        "min_proposals": 9,
        "max_mix_shift": 0.3,
        "max_error_increase": 0.01,
        "min_latency_samples": 11,
        "max_latency_ratio": 3.0,
        "latency_slack_ms": 2.5,
    }
    settings = Settings(
        environment="test",
        **{f"canary_{k}": v for k, v in chosen.items()},  # type: ignore[arg-type]
    )
    assert set(chosen) == set(Thresholds.__dataclass_fields__)
    assert Thresholds.from_settings(settings) == Thresholds(**chosen)  # type: ignore[arg-type]


def test_thresholds_from_default_settings_match_the_documented_defaults() -> None:
    from app.core.config import Settings

    assert Thresholds.from_settings(Settings(environment="test")) == Thresholds()
