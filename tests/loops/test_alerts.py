"""Alert rules: crisis with re-measurement, low BP, data gaps, adherence, escalation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loops.alerts import (
    AlertType,
    CrisisStatus,
    CuffReading,
    DoseEvent,
    Severity,
    adherence,
    crisis,
    escalation_due,
    findings,
    low_bp,
)

NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def r(minutes_ago: float, sbp: float, dbp: float = 80) -> CuffReading:
    return CuffReading(NOW - timedelta(minutes=minutes_ago), sbp, dbp)


@pytest.mark.parametrize(
    ("name", "readings", "status"),
    [
        ("normal readings", [r(30, 140), r(29, 138)], CrisisStatus.NONE),
        ("one crisis reading just now: ask to re-measure", [r(1, 186)], CrisisStatus.REMEASURE),
        ("diastolic alone", [r(1, 150, 125)], CrisisStatus.REMEASURE),
        ("exactly 180/120 is not a crisis", [r(1, 180, 120)], CrisisStatus.NONE),
        ("confirmed by a second reading", [r(4, 190), r(2, 184)], CrisisStatus.CONFIRMED),
        ("re-measured normal: not confirmed", [r(4, 190), r(2, 150)], CrisisStatus.NONE),
        ("not re-measured within 5 minutes", [r(7, 190)], CrisisStatus.NOT_REMEASURED),
        (
            "second reading after the window does not confirm",
            [r(12, 190), r(3, 150)],
            CrisisStatus.NOT_REMEASURED,
        ),
        ("old back-filled crisis is history", [r(60 * 5, 200)], CrisisStatus.NONE),
    ],
)
def test_crisis_when_readings_given_follows_remeasure_rule(
    name: str, readings: list[CuffReading], status: CrisisStatus
) -> None:
    check = crisis(readings, now=NOW)
    assert check.status is status
    assert check.alert == (status in {CrisisStatus.CONFIRMED, CrisisStatus.NOT_REMEASURED})


def test_crisis_when_awaiting_remeasure_names_the_deadline() -> None:
    check = crisis([r(1, 186)], now=NOW)
    assert check.due == NOW - timedelta(minutes=1) + timedelta(minutes=5)


def test_low_bp_when_three_day_mean_below_100_is_low() -> None:
    readings = [CuffReading(NOW - timedelta(hours=h), 96, 60) for h in (2, 20, 40, 60)]
    assert low_bp(readings, symptom_times=[], now=NOW)
    assert not low_bp([CuffReading(NOW - timedelta(hours=2), 104, 60)], symptom_times=[], now=NOW)


def test_low_bp_when_sbp_below_90_needs_a_symptom() -> None:
    readings = [
        CuffReading(NOW - timedelta(hours=2), 88, 55),
        CuffReading(NOW - timedelta(hours=30), 130, 80),
    ]
    assert not low_bp(readings, symptom_times=[], now=NOW)
    assert low_bp(readings, symptom_times=[NOW - timedelta(hours=3)], now=NOW)


def test_adherence_when_doses_given_is_share_taken() -> None:
    doses = [DoseEvent(NOW - timedelta(days=d), d % 4 != 0) for d in range(1, 9)]
    assert adherence(doses, start=NOW - timedelta(days=8), end=NOW) == pytest.approx(6 / 8)
    assert adherence([], start=NOW - timedelta(days=7), end=NOW) is None


def test_findings_when_several_conditions_hold_report_each_once() -> None:
    readings = [CuffReading(NOW - timedelta(minutes=8), 192, 110)]
    doses = [DoseEvent(NOW - timedelta(days=d, hours=1), d > 7) for d in range(1, 22)]
    found, check = findings(
        "p1",
        readings=readings,
        doses=doses,
        symptom_times=[],
        monitored_since=NOW - timedelta(days=60),
        now=NOW,
    )
    assert check.status is CrisisStatus.NOT_REMEASURED
    assert [(f.type, f.severity, f.key) for f in found] == [
        (AlertType.CRISIS, Severity.CRITICAL, "p1:hypertensive_crisis"),
        (AlertType.ADHERENCE_DROP, Severity.MEDIUM, "p1:adherence_drop"),
    ]


def test_findings_when_no_reading_for_a_week_report_data_gap() -> None:
    old = [CuffReading(NOW - timedelta(days=8), 130, 80)]
    found, _ = findings(
        "p1",
        readings=old,
        doses=[],
        symptom_times=[],
        monitored_since=NOW - timedelta(days=60),
        now=NOW,
    )
    assert [f.type for f in found] == [AlertType.DATA_GAP]
    fresh, _ = findings(
        "p1",
        readings=[],
        doses=[],
        symptom_times=[],
        monitored_since=NOW - timedelta(days=2),
        now=NOW,
    )
    assert fresh == []


@pytest.mark.parametrize(
    ("severity", "minutes", "due"),
    [
        (Severity.CRITICAL, 14, False),
        (Severity.CRITICAL, 15, True),
        (Severity.HIGH, 239, False),
        (Severity.HIGH, 240, True),
        (Severity.LOW, 60 * 71, False),
        (Severity.LOW, 60 * 72, True),
    ],
)
def test_escalation_when_unacknowledged_past_limit_is_due(
    severity: Severity, minutes: int, due: bool
) -> None:
    raised = NOW - timedelta(minutes=minutes)
    assert (
        escalation_due(
            severity, raised_at=raised, last_escalated_at=None, acknowledged=False, now=NOW
        )
        is due
    )
    assert not escalation_due(
        severity, raised_at=raised, last_escalated_at=None, acknowledged=True, now=NOW
    )


def test_escalation_when_already_escalated_waits_another_interval() -> None:
    assert not escalation_due(
        Severity.CRITICAL,
        raised_at=NOW - timedelta(hours=1),
        last_escalated_at=NOW - timedelta(minutes=5),
        acknowledged=False,
        now=NOW,
    )
