"""Plausibility rules for parsed readings (pure): what a person should look at first."""

from __future__ import annotations

from datetime import datetime, timedelta

from device_ingest.formats import ParsedReading, ReadingKind

SBP_RANGE = (50.0, 300.0)
DBP_RANGE = (20.0, 200.0)
HR_RANGE = (20.0, 300.0)
STEPS_MAX_PER_DAY = 100_000.0


def quarantine_reasons(
    reading: ParsedReading,
    *,
    now: datetime,
    max_future: timedelta,
    max_age: timedelta | None,
) -> list[str]:
    """Reason codes that make a well-formed reading implausible; empty means plausible."""
    reasons: list[str] = []
    if reading.kind is ReadingKind.BLOOD_PRESSURE:
        sbp, dbp = reading.systolic, reading.diastolic
        if sbp is not None and not SBP_RANGE[0] <= sbp <= SBP_RANGE[1]:
            reasons.append("sbp_out_of_range")
        if dbp is not None and not DBP_RANGE[0] <= dbp <= DBP_RANGE[1]:
            reasons.append("dbp_out_of_range")
        if sbp is not None and dbp is not None and sbp <= dbp:
            reasons.append("sbp_not_above_dbp")
    elif reading.kind is ReadingKind.HEART_RATE:
        if reading.value is not None and not HR_RANGE[0] <= reading.value <= HR_RANGE[1]:
            reasons.append("hr_out_of_range")
    elif reading.kind is ReadingKind.STEP_COUNT and reading.value is not None:
        span = reading.effective.end - reading.effective.start if reading.effective.end else None
        days = max(span / timedelta(days=1), 1.0) if span else 1.0
        if reading.value > STEPS_MAX_PER_DAY * days:
            reasons.append("steps_implausible")
    if reading.effective.start > now + max_future:
        reasons.append("future_time")
    if max_age is not None and (reading.effective.end or reading.effective.start) < now - max_age:
        reasons.append("too_old")
    return reasons
