"""Alert rules for the patient-AI loop (pure): what needs a person now, and how urgently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

# Hypertensive crisis on a validated cuff: SBP > 180 and/or DBP > 120 (2017 ACC/AHA).
CRISIS_SBP = 180.0
CRISIS_DBP = 120.0
# A single crisis reading asks for a re-measurement within 5 minutes; it alerts when the
# re-measurement confirms it, or when none comes.
REMEASURE_WINDOW = timedelta(minutes=5)
# Only recent readings can start a crisis check: an old back-filled one is history.
CRISIS_LOOKBACK = timedelta(hours=2)
LOW_MEAN_SBP_3D = 100.0
LOW_SBP_WITH_SYMPTOM = 90.0
DATA_GAP = timedelta(days=7)
ADHERENCE_FLOOR_7D = 0.6
ADHERENCE_DROP = 0.25


class AlertType(StrEnum):
    """The conditions that raise an alert."""

    CRISIS = "hypertensive_crisis"
    LOW_BP = "persistent_low_bp"
    DATA_GAP = "data_gap"
    ADHERENCE_DROP = "adherence_drop"


class Severity(StrEnum):
    """How fast a person must look."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


SEVERITY = {
    AlertType.CRISIS: Severity.CRITICAL,
    AlertType.LOW_BP: Severity.HIGH,
    AlertType.ADHERENCE_DROP: Severity.MEDIUM,
    AlertType.DATA_GAP: Severity.LOW,
}
# Unacknowledged past this, an alert escalates (and again after each further interval).
ESCALATE_AFTER = {
    Severity.CRITICAL: timedelta(minutes=15),
    Severity.HIGH: timedelta(hours=4),
    Severity.MEDIUM: timedelta(hours=24),
    Severity.LOW: timedelta(hours=72),
}


@dataclass(frozen=True)
class CuffReading:
    """An accepted validated-cuff blood-pressure reading (quarantined ones never come here)."""

    time: datetime
    systolic: float
    diastolic: float


@dataclass(frozen=True)
class DoseEvent:
    """A scheduled dose, taken or missed."""

    time: datetime
    taken: bool


class CrisisStatus(StrEnum):
    """Where a crisis check stands."""

    NONE = "none"
    REMEASURE = "remeasure"  # ask the patient to measure again before `due`
    CONFIRMED = "confirmed"
    NOT_REMEASURED = "not_remeasured"


@dataclass(frozen=True)
class CrisisCheck:
    """The crisis rule's verdict, with the reading that started it."""

    status: CrisisStatus
    trigger: CuffReading | None = None
    due: datetime | None = None

    @property
    def alert(self) -> bool:
        """True when the crisis must alert now."""
        return self.status in {CrisisStatus.CONFIRMED, CrisisStatus.NOT_REMEASURED}


def is_crisis(reading: CuffReading) -> bool:
    """SBP above 180 and/or DBP above 120."""
    return reading.systolic > CRISIS_SBP or reading.diastolic > CRISIS_DBP


def crisis(readings: Sequence[CuffReading], *, now: datetime) -> CrisisCheck:
    """Apply the re-measure rule to the most recent crisis-level reading."""
    recent = sorted(
        (r for r in readings if now - CRISIS_LOOKBACK <= r.time <= now), key=lambda r: r.time
    )
    triggers = [r for r in recent if is_crisis(r)]
    if not triggers:
        return CrisisCheck(CrisisStatus.NONE)
    # Start from the earliest crisis reading not yet answered by a later normal reading.
    for trigger in triggers:
        window_end = trigger.time + REMEASURE_WINDOW
        follow_ups = [r for r in recent if trigger.time < r.time <= window_end]
        if any(is_crisis(r) for r in follow_ups):
            return CrisisCheck(CrisisStatus.CONFIRMED, trigger)
        if follow_ups:
            continue  # re-measured and not confirmed: this one is answered
        if now > window_end:
            return CrisisCheck(CrisisStatus.NOT_REMEASURED, trigger)
        return CrisisCheck(CrisisStatus.REMEASURE, trigger, due=window_end)
    return CrisisCheck(CrisisStatus.NONE)


def low_bp(
    readings: Sequence[CuffReading], *, symptom_times: Sequence[datetime], now: datetime
) -> bool:
    """Mean SBP below 100 over 3 days, or SBP below 90 within a day of a symptom report."""
    window = [r for r in readings if now - timedelta(days=3) <= r.time <= now]
    if window and sum(r.systolic for r in window) / len(window) < LOW_MEAN_SBP_3D:
        return True
    day = timedelta(days=1)
    return any(
        r.systolic < LOW_SBP_WITH_SYMPTOM and abs(r.time - s) <= day
        for r in window
        for s in symptom_times
        if now - timedelta(days=3) <= s <= now
    )


def data_gap(
    last_cuff_reading: datetime | None, *, monitored_since: datetime, now: datetime
) -> bool:
    """No validated-cuff reading for 7 days (counted from enrolment if there never was one)."""
    return now - (last_cuff_reading or monitored_since) >= DATA_GAP


def adherence(doses: Sequence[DoseEvent], *, start: datetime, end: datetime) -> float | None:
    """Share of scheduled doses taken in [start, end); None when none were scheduled."""
    window = [d for d in doses if start <= d.time < end]
    return sum(d.taken for d in window) / len(window) if window else None


def adherence_drop(doses: Sequence[DoseEvent], *, now: datetime) -> bool:
    """Last 7 days below 60%, or 25 points below the 14 days before."""
    recent = adherence(doses, start=now - timedelta(days=7), end=now)
    before = adherence(doses, start=now - timedelta(days=21), end=now - timedelta(days=7))
    if recent is None:
        return False
    return recent < ADHERENCE_FLOOR_7D or (before is not None and before - recent >= ADHERENCE_DROP)


@dataclass(frozen=True)
class Finding:
    """A condition that holds now; `key` de-duplicates it against open alerts."""

    type: AlertType
    severity: Severity
    key: str
    detail: str


def findings(
    patient_id: str,
    *,
    readings: Sequence[CuffReading],
    doses: Sequence[DoseEvent],
    symptom_times: Sequence[datetime],
    monitored_since: datetime,
    now: datetime,
) -> tuple[list[Finding], CrisisCheck]:
    """Every alert condition for a patient now, and the crisis check (for re-measure asks)."""
    found: list[Finding] = []
    check = crisis(readings, now=now)
    if check.alert and check.trigger is not None:
        t = check.trigger
        found.append(
            _finding(
                patient_id,
                AlertType.CRISIS,
                f"{t.systolic:.0f}/{t.diastolic:.0f} mmHg, {check.status}",
            )
        )
    if low_bp(readings, symptom_times=symptom_times, now=now):
        found.append(_finding(patient_id, AlertType.LOW_BP, "low blood pressure"))
    last = max((r.time for r in readings if r.time <= now), default=None)
    if data_gap(last, monitored_since=monitored_since, now=now):
        found.append(_finding(patient_id, AlertType.DATA_GAP, "no validated-cuff reading"))
    if adherence_drop(doses, now=now):
        found.append(_finding(patient_id, AlertType.ADHERENCE_DROP, "doses missed"))
    return found, check


def _finding(patient_id: str, kind: AlertType, detail: str) -> Finding:
    # One open alert per patient and type: a condition that persists is the same alert.
    return Finding(kind, SEVERITY[kind], f"{patient_id}:{kind}", detail)


def escalation_due(
    severity: Severity,
    *,
    raised_at: datetime,
    last_escalated_at: datetime | None,
    acknowledged: bool,
    now: datetime,
) -> bool:
    """An unacknowledged alert escalates once per interval of its severity."""
    if acknowledged:
        return False
    since = last_escalated_at or raised_at
    return now - since >= ESCALATE_AFTER[severity]
