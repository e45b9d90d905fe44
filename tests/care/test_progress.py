"""Goal progress rules (pure): windows, exclusions, thresholds and sentences."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from loops.care.models import GoalKind
from loops.care.progress import (
    BpPoint,
    DosePoint,
    GoalTarget,
    LogPoint,
    ProgressData,
    StepPoint,
    adherence_progress,
    bp_progress,
    progress,
    sleep_progress,
    sodium_progress,
    steps_progress,
    window_start,
)

NOW = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)
BP = GoalTarget(GoalKind.BLOOD_PRESSURE, systolic=130.0, diastolic=80.0)


def at(days_back: int, hour: int = 8) -> datetime:
    """A time `days_back` UTC days before NOW's day, at `hour`."""
    return datetime(2026, 12, 6, hour, tzinfo=UTC) - timedelta(days=days_back)


def cuff(days_back: int, sbp: float, dbp: float, **kw: str | None) -> BpPoint:
    return BpPoint(
        at(days_back),
        sbp,
        dbp,
        str(kw.get("cls", "validated_cuff")),
        str(kw.get("status", "accepted")),
        kw.get("statistic"),
    )


def test_bp_progress_when_four_days_below_target_is_met() -> None:
    points = [cuff(d, 120, 75) for d in range(4)]
    p = bp_progress(points, BP, NOW)
    assert p.met is True
    assert (p.value, p.value_diastolic) == (120, 75)
    assert (p.days_with_data, p.count, p.days_28, p.days_meeting_28) == (4, 4, 4, 4)
    assert "averaged 120/75 mmHg" in p.sentence
    assert "below the target of 130/80 mmHg" in p.sentence


def test_bp_progress_when_three_days_of_data_is_unknown() -> None:
    p = bp_progress([cuff(d, 120, 75) for d in range(3)], BP, NOW)
    assert p.met is None
    assert p.value == 120  # the mean is still shown
    assert "Not enough home readings" in p.sentence


def test_bp_progress_when_mean_equals_target_is_not_met() -> None:
    # Within target means strictly below, as the protocol's "at target".
    p = bp_progress([cuff(d, 130, 70) for d in range(5)], BP, NOW)
    assert p.met is False
    assert p.days_meeting_28 == 0
    assert "not below" in p.sentence


def test_bp_progress_when_cuffless_quarantined_or_statistic_ignores_them() -> None:
    good = [cuff(d, 120, 75) for d in range(4)]
    noise = [
        cuff(0, 200, 120, cls="cuffless_wearable"),
        cuff(1, 200, 120, status="quarantined"),
        cuff(2, 90, 50, statistic="minimum"),
        cuff(10, 200, 120, cls="other"),
    ]
    p = bp_progress(good + noise, BP, NOW)
    assert (p.value, p.value_diastolic, p.count, p.days_28) == (120, 75, 4, 4)


def test_bp_progress_when_readings_outside_windows_ignores_them() -> None:
    future = BpPoint(NOW + timedelta(minutes=1), 200, 120, "validated_cuff")
    old = cuff(28, 200, 120)  # day 28 back is outside the 28-day window (days 0-27)
    edge = cuff(27, 140, 90)  # inside the 28 days, outside the 7
    p = bp_progress([*[cuff(d, 120, 75) for d in range(4)], future, old, edge], BP, NOW)
    assert (p.value, p.count, p.days_28, p.days_meeting_28) == (120, 4, 5, 4)


def test_steps_progress_when_days_summed_counts_days_meeting_goal() -> None:
    target = GoalTarget(GoalKind.DAILY_STEPS, value=7000)
    points = [
        StepPoint(at(0, 9), 4000),
        StepPoint(at(0, 17), 4000),  # day 0: 8,000
        StepPoint(at(1), 6000),
        StepPoint(at(2), 7000),
        StepPoint(at(3), 9000),
        StepPoint(at(4), 1_000_000, status="quarantined"),
        StepPoint(at(5), 500, statistic="minimum"),
    ]
    p = steps_progress(points, target, NOW)
    # (8000 + 6000 + 7000 + 9000) / 4 = 7500
    assert p.value == 7500
    assert p.met is True
    assert (p.days_with_data, p.days_28, p.days_meeting_28) == (4, 4, 3)
    assert "7,500 a day" in p.sentence


def test_adherence_progress_when_too_few_doses_is_unknown() -> None:
    target = GoalTarget(GoalKind.ADHERENCE, value=0.9)
    few = adherence_progress([DosePoint(at(d), True) for d in range(6)], target, NOW)
    assert few.met is None
    assert few.value == 1.0
    enough = adherence_progress(
        [DosePoint(at(d), d != 3) for d in range(10)] + [DosePoint(at(30), False)], target, NOW
    )
    # 9 taken of 10 in 28 days (the miss 30 days back is outside): 0.9 >= 0.9
    assert enough.value == pytest.approx(0.9)
    assert enough.met is True
    assert enough.count == 10
    assert "90% of doses were taken" in enough.sentence


def test_sodium_progress_when_mean_at_limit_is_met() -> None:
    target = GoalTarget(GoalKind.SODIUM, value=2000)
    logs = [
        LogPoint(date(2026, 12, 6) - timedelta(days=d), v)
        for d, v in enumerate([1500, 2500, 2000, 2000])
    ]
    p = sodium_progress(logs, target, NOW)
    assert p.value == 2000
    assert p.met is True
    assert p.days_meeting_28 == 3
    assert "within the limit of 2,000 mg a day" in p.sentence


def test_sleep_progress_when_below_floor_is_not_met() -> None:
    target = GoalTarget(GoalKind.SLEEP, value=7)
    logs = [
        LogPoint(date(2026, 12, 6) - timedelta(days=d), v)
        for d, v in enumerate([6, 6.5, 7.5, 6, 9])
    ]
    p = sleep_progress(logs, target, NOW)
    assert p.value == pytest.approx(7.0)
    assert p.met is True
    low = sleep_progress(logs[:4], target, NOW)
    assert low.value == pytest.approx(6.5)
    assert low.met is False
    assert "below the goal of 7 hours a night" in low.sentence


def test_progress_when_dispatched_uses_the_kind_and_its_logs() -> None:
    data = ProgressData(
        logs={GoalKind.SLEEP: [LogPoint(date(2026, 12, d), 8) for d in range(1, 7)]}
    )
    p = progress(GoalTarget(GoalKind.SLEEP, value=7), data, NOW)
    assert (p.kind, p.met, p.days_with_data) == (GoalKind.SLEEP, True, 6)
    empty = progress(GoalTarget(GoalKind.SODIUM, value=2000), data, NOW)
    assert (empty.met, empty.value, empty.days_28) == (None, None, 0)


def test_window_start_when_called_is_midnight_27_days_before() -> None:
    assert window_start(NOW) == datetime(2026, 11, 9, tzinfo=UTC)


def test_progress_when_now_naive_raises() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        bp_progress([], BP, datetime(2026, 12, 6))  # noqa: DTZ001 - naive on purpose
