"""The visit cadence rule, table-driven: every branch and its boundaries, without a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from loops.visits.cadence import (
    CadenceFacts,
    Reason,
    controlled_days,
    next_review,
)
from loops.visits.models import VisitKind

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
R = Reason
# A controlled, stable patient: enough data, below the 135/85 default, no change for a year,
# controlled for 120 days, good adherence.
BASE = CadenceFacts(
    now=NOW,
    sbp_7d=126.0,
    dbp_7d=78.0,
    readings_7d=14,
    days_7d=7,
    last_change_at=NOW - timedelta(days=365),
    adherence_28d=0.95,
    controlled_days=120,
)
H = timedelta(hours=1)
D = timedelta(days=1)

CASES: list[tuple[str, dict[str, object], VisitKind, timedelta, tuple[Reason, ...]]] = [
    # name, changes to BASE, kind, due after NOW, reasons (most urgent first)
    ("stable_6_months", {}, VisitKind.VISIT, 182 * D, (R.CONTROLLED_STABLE,)),
    (
        "stable_never_changed",
        {"last_change_at": None},
        VisitKind.VISIT,
        182 * D,
        (R.CONTROLLED_STABLE,),
    ),
    (
        "controlled_89_days_3_months",
        {"controlled_days": 89},
        VisitKind.VISIT,
        91 * D,
        (R.CONTROLLED,),
    ),
    (
        "controlled_90_days_6_months",
        {"controlled_days": 90},
        VisitKind.VISIT,
        182 * D,
        (R.CONTROLLED_STABLE,),
    ),
    (
        "change_89_days_ago_3_months",
        {"last_change_at": NOW - 89 * D},
        VisitKind.VISIT,
        91 * D,
        (R.CONTROLLED,),
    ),
    (
        "change_90_days_ago_6_months",
        {"last_change_at": NOW - 90 * D},
        VisitKind.VISIT,
        182 * D,
        (R.CONTROLLED_STABLE,),
    ),
    (
        "controlled_change_29_days_4_weeks",
        {"last_change_at": NOW - 29 * D},
        VisitKind.VISIT,
        28 * D,
        (R.RECENT_CHANGE, R.CONTROLLED),
    ),
    (
        "controlled_change_30_days_not_recent",
        {"last_change_at": NOW - 30 * D},
        VisitKind.VISIT,
        91 * D,
        (R.CONTROLLED,),
    ),
    (
        "controlled_change_31_days_not_recent",
        {"last_change_at": NOW - 31 * D},
        VisitKind.VISIT,
        91 * D,
        (R.CONTROLLED,),
    ),
    (
        "uncontrolled_4_weeks",
        {"sbp_7d": 142.0, "controlled_days": 0},
        VisitKind.VISIT,
        28 * D,
        (R.UNCONTROLLED,),
    ),
    (
        "uncontrolled_dbp_only",
        {"dbp_7d": 88.0, "controlled_days": 0},
        VisitKind.VISIT,
        28 * D,
        (R.UNCONTROLLED,),
    ),
    (
        "exactly_target_is_uncontrolled",
        {"sbp_7d": 135.0, "dbp_7d": 84.0},
        VisitKind.VISIT,
        28 * D,
        (R.UNCONTROLLED,),
    ),
    (
        "exactly_target_dbp_is_uncontrolled",
        {"sbp_7d": 130.0, "dbp_7d": 85.0},
        VisitKind.VISIT,
        28 * D,
        (R.UNCONTROLLED,),
    ),
    (
        "just_below_target_controlled",
        {"sbp_7d": 134.9, "dbp_7d": 84.9},
        VisitKind.VISIT,
        182 * D,
        (R.CONTROLLED_STABLE,),
    ),
    (
        "agreed_goal_target_lower",
        {"sbp_7d": 132.0, "target": (130.0, 80.0), "target_from_goal": True},
        VisitKind.VISIT,
        28 * D,
        (R.UNCONTROLLED,),
    ),
    (
        "uncontrolled_and_change_29_days_2_weeks",
        {"sbp_7d": 142.0, "last_change_at": NOW - 29 * D},
        VisitKind.VISIT,
        14 * D,
        (R.UNCONTROLLED, R.RECENT_CHANGE),
    ),
    (
        "uncontrolled_change_30_days_4_weeks",
        {"sbp_7d": 142.0, "last_change_at": NOW - 30 * D},
        VisitKind.VISIT,
        28 * D,
        (R.UNCONTROLLED,),
    ),
    (
        "uncontrolled_change_31_days_4_weeks",
        {"sbp_7d": 142.0, "last_change_at": NOW - 31 * D},
        VisitKind.VISIT,
        28 * D,
        (R.UNCONTROLLED,),
    ),
    (
        "change_today_2_weeks_when_uncontrolled",
        {"sbp_7d": 150.0, "last_change_at": NOW},
        VisitKind.VISIT,
        14 * D,
        (R.UNCONTROLLED, R.RECENT_CHANGE),
    ),
    (
        "poor_adherence_call",
        {"adherence_28d": 0.79},
        VisitKind.CALL,
        14 * D,
        (R.POOR_ADHERENCE, R.CONTROLLED_STABLE),
    ),
    (
        "adherence_80_is_enough",
        {"adherence_28d": 0.8},
        VisitKind.VISIT,
        182 * D,
        (R.CONTROLLED_STABLE,),
    ),
    (
        "no_dose_reports_no_adherence_reason",
        {"adherence_28d": None},
        VisitKind.VISIT,
        182 * D,
        (R.CONTROLLED_STABLE,),
    ),
    (
        "poor_adherence_uncontrolled_call_first",
        {"sbp_7d": 145.0, "adherence_28d": 0.5},
        VisitKind.CALL,
        14 * D,
        (R.POOR_ADHERENCE, R.UNCONTROLLED),
    ),
    (
        "poor_adherence_tie_visit_wins",
        {"sbp_7d": 145.0, "adherence_28d": 0.5, "last_change_at": NOW - 5 * D},
        VisitKind.VISIT,
        14 * D,
        (R.UNCONTROLLED, R.RECENT_CHANGE, R.POOR_ADHERENCE),
    ),
    (
        "crisis_48_hours",
        {"crisis_alert_at": NOW - 2 * H},
        VisitKind.VISIT,
        46 * H,
        (R.CRISIS_ALERT, R.CONTROLLED_STABLE),
    ),
    (
        "low_bp_48_hours",
        {"low_bp_alert_at": NOW, "sbp_7d": 96.0},
        VisitKind.VISIT,
        48 * H,
        (R.LOW_BP_ALERT, R.CONTROLLED_STABLE),
    ),
    (
        "crisis_old_alert_overdue",
        {"crisis_alert_at": NOW - 3 * D, "sbp_7d": 150.0},
        VisitKind.VISIT,
        -1 * D,
        (R.CRISIS_ALERT, R.UNCONTROLLED),
    ),
    (
        "crisis_beats_poor_adherence",
        {"crisis_alert_at": NOW, "adherence_28d": 0.3},
        VisitKind.VISIT,
        48 * H,
        (R.CRISIS_ALERT, R.POOR_ADHERENCE, R.CONTROLLED_STABLE),
    ),
    (
        "no_data_4_weeks",
        {"sbp_7d": None, "dbp_7d": None, "readings_7d": 0, "days_7d": 0, "controlled_days": 0},
        VisitKind.VISIT,
        28 * D,
        (R.INSUFFICIENT_DATA,),
    ),
    (
        "11_readings_insufficient",
        {"readings_7d": 11},
        VisitKind.VISIT,
        28 * D,
        (R.INSUFFICIENT_DATA,),
    ),
    (
        "12_readings_sufficient",
        {"readings_7d": 12},
        VisitKind.VISIT,
        182 * D,
        (R.CONTROLLED_STABLE,),
    ),
    ("3_days_insufficient", {"days_7d": 3}, VisitKind.VISIT, 28 * D, (R.INSUFFICIENT_DATA,)),
    ("4_days_sufficient", {"days_7d": 4}, VisitKind.VISIT, 182 * D, (R.CONTROLLED_STABLE,)),
    (
        "insufficient_and_change_4_weeks",
        {"readings_7d": 3, "last_change_at": NOW - 3 * D},
        VisitKind.VISIT,
        28 * D,
        (R.RECENT_CHANGE, R.INSUFFICIENT_DATA),
    ),
    # Dates count from facts: the last review (since), the change, the alert.
    (
        "stable_counts_from_last_review",
        {"since": NOW - 40 * D},
        VisitKind.VISIT,
        142 * D,
        (R.CONTROLLED_STABLE,),
    ),
    (
        "uncontrolled_long_after_review_overdue",
        {"since": NOW - 100 * D, "sbp_7d": 140.0},
        VisitKind.VISIT,
        -72 * D,
        (R.UNCONTROLLED,),
    ),
    (
        "change_after_review_counts_from_change",
        {"since": NOW - 60 * D, "last_change_at": NOW - 10 * D},
        VisitKind.VISIT,
        18 * D,
        (R.RECENT_CHANGE, R.CONTROLLED),
    ),
    (
        "review_after_change_counts_from_review",
        {"since": NOW - 5 * D, "last_change_at": NOW - 10 * D, "sbp_7d": 150.0},
        VisitKind.VISIT,
        9 * D,
        (R.UNCONTROLLED, R.RECENT_CHANGE),
    ),
    (
        "insufficient_poor_adherence_call",
        {"readings_7d": 3, "adherence_28d": 0.4},
        VisitKind.CALL,
        14 * D,
        (R.POOR_ADHERENCE, R.INSUFFICIENT_DATA),
    ),
]


@pytest.mark.parametrize(
    ("changes", "kind", "after", "reasons"),
    [pytest.param(c, k, a, r, id=name) for name, c, k, a, r in CASES],
)
def test_next_review_when_facts_vary_gives_kind_due_and_reasons(
    changes: dict[str, object],
    kind: VisitKind,
    after: timedelta,
    reasons: tuple[Reason, ...],
) -> None:
    facts = replace(BASE, **changes)  # type: ignore[arg-type]
    result = next_review(facts)
    assert result.kind == kind
    assert result.due_by == NOW + after
    assert result.reasons == reasons
    assert result.why


def test_next_review_why_names_figures_in_plain_words() -> None:
    result = next_review(replace(BASE, sbp_7d=142.4, dbp_7d=86.0, adherence_28d=0.6))
    assert "142/86 mmHg" in result.why
    assert "135/85 mmHg" in result.why
    assert "60% of your doses" in result.why
    assert result.why.endswith("Your care team would like to call you by 20 December 2026.")
    assert "_" not in result.why  # no codes


def test_next_review_why_says_agreed_target_when_from_goal() -> None:
    result = next_review(replace(BASE, target=(130.0, 80.0), target_from_goal=True))
    assert "your agreed target of 130/80 mmHg" in result.why
    assert result.why.endswith("see you by 6 June 2027.")


def test_next_review_why_when_overdue_says_as_soon_as_possible() -> None:
    result = next_review(replace(BASE, since=NOW - 200 * D))
    assert result.due_by < NOW
    assert result.why.endswith("Your care team would like to see you as soon as possible.")


def _daily(
    days: int, sbp: float, dbp: float = 80.0, *, end: date
) -> list[tuple[datetime, float, float]]:
    start = datetime(end.year, end.month, end.day, 8, tzinfo=UTC)
    return [(start - timedelta(days=k), sbp, dbp) for k in range(days)]


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        pytest.param([], 0, id="no_readings"),
        pytest.param(_daily(100, 125.0, end=NOW.date()), 100, id="all_controlled"),
        pytest.param(_daily(30, 125.0, end=NOW.date()), 30, id="history_starts_30_days_ago"),
        pytest.param(
            _daily(40, 125.0, end=NOW.date()) + [(NOW - timedelta(days=20), 200.0, 80.0)] * 2,
            14,  # two high readings 20 days ago lift the windows of days 14..20 ago to 142
            id="one_high_week_ends_run",
        ),
        pytest.param(_daily(10, 140.0, end=NOW.date()), 0, id="uncontrolled_today"),
        pytest.param(
            _daily(5, 125.0, end=NOW.date())
            + _daily(20, 125.0, end=NOW.date() - timedelta(days=15)),
            5,  # the window of 5 days ago (days 5..11 ago) holds no reading
            id="gap_ends_run",
        ),
    ],
)
def test_controlled_days_when_history_varies_counts_back_from_today(
    readings: list[tuple[datetime, float, float]], expected: int
) -> None:
    assert controlled_days(readings, target=(135.0, 85.0), today=NOW.date()) == expected
