"""Goal progress from the patient's own data (pure: the service gathers the rows).

Days are UTC calendar days ending with the day of `now`: "the last 7 days" is that day and
the six before it, "the last 28 days" that day and the 27 before it. Only data at or before
`now` counts.

- Blood pressure: validated-cuff home readings only. Cuffless readings are excluded (2025
  ACC/AHA: cuffless BP is not for managing hypertension), and so are quarantined readings
  and interval statistics (an interval's minimum is not a measurement). Headline: the mean
  systolic and diastolic of the readings of the last 7 days; within target means both means
  strictly below the target (as the titration protocol's "at target"). Also: of the last 28
  days with readings, how many had a daily mean within target.
- Daily steps: steps summed per day (days without step data are unknown, not zero);
  headline: the mean over the days with data of the last 7; met when at least the target.
- Adherence: taken / (taken + missed) over the dose events of the last 28 days.
- Sodium, sleep: the patient's daily logs; the mean of the logged days of the last 7.
  Sodium is a ceiling (met when the mean is at most the target), sleep a floor.

`met` is None while there is not enough data: fewer than 4 days with data in the last 7
(fewer than 7 dose events in 28 days for adherence).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from loops.care.models import GoalKind
from loops.care.plain import number

WEEK = 7
FOUR_WEEKS = 28
MIN_DAYS_7D = 4
MIN_DOSES_28D = 7
VALIDATED_CUFF = "validated_cuff"
ACCEPTED = "accepted"


@dataclass(frozen=True)
class GoalTarget:
    """What a goal aims at: `value` for single-number kinds, systolic/diastolic for BP."""

    kind: GoalKind
    value: float | None = None
    systolic: float | None = None
    diastolic: float | None = None


@dataclass(frozen=True)
class BpPoint:
    """One blood-pressure reading as stored, with what decides whether it may count."""

    time: datetime
    systolic: float
    diastolic: float
    device_class: str
    status: str = ACCEPTED
    statistic: str | None = None


@dataclass(frozen=True)
class StepPoint:
    """One step-count reading (a day's or an interval's count)."""

    time: datetime
    value: float
    status: str = ACCEPTED
    statistic: str | None = None


@dataclass(frozen=True)
class DosePoint:
    """A dose taken or missed."""

    time: datetime
    taken: bool


@dataclass(frozen=True)
class LogPoint:
    """A patient's own figure for one day (sodium mg, sleep hours)."""

    day: date
    value: float


@dataclass(frozen=True)
class ProgressData:
    """Everything progress may look at for one patient (the service's query results)."""

    bp: Sequence[BpPoint] = ()
    steps: Sequence[StepPoint] = ()
    doses: Sequence[DosePoint] = ()
    logs: dict[GoalKind, Sequence[LogPoint]] | None = None


@dataclass(frozen=True)
class Progress:
    """How a goal is going, computed from the data, with a sentence for people."""

    kind: GoalKind
    value: float | None  # BP: the systolic mean
    value_diastolic: float | None  # BP only
    target: float | None  # BP: the systolic target
    target_diastolic: float | None
    met: bool | None  # None: not enough data to judge
    days_with_data: int  # in the headline window
    window_days: int  # 7, or 28 for adherence
    count: int  # readings, dose events or logs in the headline window
    days_28: int  # days with data in the last 28
    days_meeting_28: int | None  # of those, days that met the target (None: adherence)
    sentence: str

    @property
    def share_meeting_28(self) -> float | None:
        """The share of the last 28 days with data that met the target."""
        if self.days_meeting_28 is None or self.days_28 == 0:
            return None
        return self.days_meeting_28 / self.days_28


def today_of(now: datetime) -> date:
    """The UTC day of `now` (the last day of every window)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).date()


def _age(day: date, today: date) -> int:
    return (today - day).days


def _in_window(t: datetime, now: datetime, days: int) -> date | None:
    """The UTC day of `t` if it falls within the last `days` days up to `now`, else None."""
    if t > now:
        return None
    day = t.astimezone(UTC).date()
    return day if 0 <= _age(day, today_of(now)) < days else None


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def usable_bp(points: Iterable[BpPoint]) -> list[BpPoint]:
    """Readings that may count: validated cuff, accepted, single measurements."""
    return [
        p
        for p in points
        if p.device_class == VALIDATED_CUFF and p.status == ACCEPTED and p.statistic is None
    ]


def bp_progress(points: Iterable[BpPoint], target: GoalTarget, now: datetime) -> Progress:
    """Mean home BP over 7 days against the target; days within target of the last 28."""
    assert target.systolic is not None
    assert target.diastolic is not None
    ts, td = target.systolic, target.diastolic
    by_day: dict[date, list[BpPoint]] = defaultdict(list)
    for p in usable_bp(points):
        day = _in_window(p.time, now, FOUR_WEEKS)
        if day is not None:
            by_day[day].append(p)
    today = today_of(now)
    week = [p for day, ps in by_day.items() if _age(day, today) < WEEK for p in ps]
    week_days = sum(1 for day in by_day if _age(day, today) < WEEK)
    sbp = _mean([p.systolic for p in week])
    dbp = _mean([p.diastolic for p in week])
    within = 0
    for ps in by_day.values():
        day_s = _mean([p.systolic for p in ps])
        day_d = _mean([p.diastolic for p in ps])
        if day_s is not None and day_d is not None and day_s < ts and day_d < td:
            within += 1
    enough = week_days >= MIN_DAYS_7D and sbp is not None and dbp is not None
    met = (sbp is not None and dbp is not None and sbp < ts and dbp < td) if enough else None
    target_text = f"{number(ts)}/{number(td)} mmHg"
    if sbp is None or dbp is None or not enough:
        sentence = (
            f"Not enough home readings from a validated cuff to judge yet: readings on "
            f"{week_days} of the last 7 days, at least {MIN_DAYS_7D} needed (target below "
            f"{target_text})."
        )
    else:
        shown = f"{_mmhg(sbp, ts)}/{_mmhg(dbp, td)} mmHg"
        where = "below" if met else "not below"
        sentence = (
            f"Home blood pressure averaged {shown} over the last 7 days ({len(week)} "
            f"validated-cuff readings on {week_days} days), {where} the target of "
            f"{target_text}."
        )
    if by_day:
        sentence += (
            f" {within} of {len(by_day)} days with readings in the last 4 weeks were within target."
        )
    return Progress(
        kind=GoalKind.BLOOD_PRESSURE,
        value=sbp,
        value_diastolic=dbp,
        target=ts,
        target_diastolic=td,
        met=met,
        days_with_data=week_days,
        window_days=WEEK,
        count=len(week),
        days_28=len(by_day),
        days_meeting_28=within,
        sentence=sentence,
    )


def _mmhg(value: float, target: float) -> str:
    """A mean in whole mmHg, or to a tenth where rounding would make it look like the target."""
    return f"{value:.1f}" if round(value) == target else f"{value:.0f}"


def _daily(
    per_day: dict[date, float],
    target: float,
    now: datetime,
    *,
    floor: bool,
) -> tuple[float | None, int, int, int, bool | None]:
    """Mean of the last 7 days with data, days with data (7 and 28), days meeting the
    target (28), and whether the mean meets it (None: too few days)."""
    today = today_of(now)
    week = [v for day, v in per_day.items() if _age(day, today) < WEEK]
    mean = _mean(week)
    meeting = sum(1 for v in per_day.values() if (v >= target if floor else v <= target))
    met: bool | None = None
    if mean is not None and len(week) >= MIN_DAYS_7D:
        met = mean >= target if floor else mean <= target
    return mean, len(week), len(per_day), meeting, met


def steps_progress(points: Iterable[StepPoint], target: GoalTarget, now: datetime) -> Progress:
    """Mean daily steps over the days with data of the last 7; days meeting the goal of 28."""
    assert target.value is not None
    per_day: dict[date, float] = defaultdict(float)
    for p in points:
        if p.status != ACCEPTED or p.statistic is not None:
            continue
        day = _in_window(p.time, now, FOUR_WEEKS)
        if day is not None:
            per_day[day] += p.value
    mean, days7, days28, meeting, met = _daily(per_day, target.value, now, floor=True)
    goal = f"{number(target.value)} steps a day"
    if mean is None or met is None:
        sentence = (
            f"Not enough step data to judge yet: {days7} of the last 7 days have steps, at "
            f"least {MIN_DAYS_7D} needed (goal {goal})."
        )
    else:
        where = "meeting" if met else "below"
        sentence = (
            f"Steps averaged {number(mean)} a day over the last 7 days ({days7} days with "
            f"data), {where} the goal of {goal}."
        )
    if days28:
        sentence += f" The goal was reached on {meeting} of {days28} days with data in 4 weeks."
    return Progress(
        kind=GoalKind.DAILY_STEPS,
        value=mean,
        value_diastolic=None,
        target=target.value,
        target_diastolic=None,
        met=met,
        days_with_data=days7,
        window_days=WEEK,
        count=days7,
        days_28=days28,
        days_meeting_28=meeting,
        sentence=sentence,
    )


def adherence_progress(points: Iterable[DosePoint], target: GoalTarget, now: datetime) -> Progress:
    """Doses taken / (taken + missed) over the last 28 days."""
    assert target.value is not None
    taken = missed = 0
    days: set[date] = set()
    for p in points:
        day = _in_window(p.time, now, FOUR_WEEKS)
        if day is None:
            continue
        days.add(day)
        if p.taken:
            taken += 1
        else:
            missed += 1
    total = taken + missed
    share = taken / total if total else None
    met = share >= target.value if share is not None and total >= MIN_DOSES_28D else None
    goal = f"{number(100 * target.value)}% of doses"
    if share is None or met is None:
        sentence = (
            f"Not enough dose records to judge yet: {total} in the last 4 weeks, at least "
            f"{MIN_DOSES_28D} needed (goal {goal})."
        )
    else:
        where = "meeting" if met else "below"
        sentence = (
            f"{number(100 * share)}% of doses were taken in the last 4 weeks ({taken} of "
            f"{total}), {where} the goal of {goal}."
        )
    return Progress(
        kind=GoalKind.ADHERENCE,
        value=share,
        value_diastolic=None,
        target=target.value,
        target_diastolic=None,
        met=met,
        days_with_data=len(days),
        window_days=FOUR_WEEKS,
        count=total,
        days_28=len(days),
        days_meeting_28=None,
        sentence=sentence,
    )


def _logs_by_day(points: Iterable[LogPoint], now: datetime) -> dict[date, float]:
    today = today_of(now)
    return {p.day: p.value for p in points if 0 <= _age(p.day, today) < FOUR_WEEKS}


def sodium_progress(points: Iterable[LogPoint], target: GoalTarget, now: datetime) -> Progress:
    """Mean logged sodium over the last 7 days against a daily ceiling."""
    assert target.value is not None
    mean, days7, days28, meeting, met = _daily(
        _logs_by_day(points, now), target.value, now, floor=False
    )
    limit = f"{number(target.value)} mg a day"
    if mean is None or met is None:
        sentence = (
            f"Not enough sodium logs to judge yet: {days7} of the last 7 days logged, at least "
            f"{MIN_DAYS_7D} needed (limit {limit})."
        )
    else:
        where = "within" if met else "above"
        sentence = (
            f"Sodium averaged {number(mean)} mg a day over the last 7 days ({days7} days "
            f"logged), {where} the limit of {limit}."
        )
    if days28:
        sentence += f" Within the limit on {meeting} of {days28} logged days in 4 weeks."
    return Progress(
        kind=GoalKind.SODIUM,
        value=mean,
        value_diastolic=None,
        target=target.value,
        target_diastolic=None,
        met=met,
        days_with_data=days7,
        window_days=WEEK,
        count=days7,
        days_28=days28,
        days_meeting_28=meeting,
        sentence=sentence,
    )


def sleep_progress(points: Iterable[LogPoint], target: GoalTarget, now: datetime) -> Progress:
    """Mean logged sleep over the last 7 days against a nightly minimum."""
    assert target.value is not None
    mean, days7, days28, meeting, met = _daily(
        _logs_by_day(points, now), target.value, now, floor=True
    )
    goal = f"{number(target.value)} hours a night"
    if mean is None or met is None:
        sentence = (
            f"Not enough sleep logs to judge yet: {days7} of the last 7 nights logged, at least "
            f"{MIN_DAYS_7D} needed (goal {goal})."
        )
    else:
        where = "meeting" if met else "below"
        sentence = (
            f"Sleep averaged {number(mean)} hours a night over the last 7 days ({days7} nights "
            f"logged), {where} the goal of {goal}."
        )
    if days28:
        sentence += f" The goal was reached on {meeting} of {days28} logged nights in 4 weeks."
    return Progress(
        kind=GoalKind.SLEEP,
        value=mean,
        value_diastolic=None,
        target=target.value,
        target_diastolic=None,
        met=met,
        days_with_data=days7,
        window_days=WEEK,
        count=days7,
        days_28=days28,
        days_meeting_28=meeting,
        sentence=sentence,
    )


def progress(target: GoalTarget, data: ProgressData, now: datetime) -> Progress:
    """The progress of one goal from the patient's data."""
    kind = GoalKind(target.kind)
    if kind is GoalKind.BLOOD_PRESSURE:
        return bp_progress(data.bp, target, now)
    if kind is GoalKind.DAILY_STEPS:
        return steps_progress(data.steps, target, now)
    if kind is GoalKind.ADHERENCE:
        return adherence_progress(data.doses, target, now)
    logs = (data.logs or {}).get(kind, ())
    if kind is GoalKind.SODIUM:
        return sodium_progress(logs, target, now)
    return sleep_progress(logs, target, now)


def window_start(now: datetime) -> datetime:
    """The first instant any progress measure looks at (start of the 28-day window)."""
    first = today_of(now) - timedelta(days=FOUR_WEEKS - 1)
    return datetime(first.year, first.month, first.day, tzinfo=UTC)
