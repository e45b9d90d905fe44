"""What every device format parses into, and the errors parsers raise (pure, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

MMHG_PER_KPA = 7.500615758
# Canonical units of stored readings, as UCUM codes.
UNIT_MMHG = "mm[Hg]"
UNIT_PER_MIN = "/min"
UNIT_STEPS = "{steps}"


class ReadingKind(StrEnum):
    """The vital signs ClinAIOps stores as readings."""

    BLOOD_PRESSURE = "blood_pressure"
    HEART_RATE = "heart_rate"
    STEP_COUNT = "step_count"


class Precision(StrEnum):
    """How precisely the sender stated the time; partial FHIR dates keep theirs."""

    YEAR = "year"
    MONTH = "month"
    DAY = "day"
    SECOND = "second"  # a full date-time (any fraction of a second included)
    INTERVAL = "interval"  # a start-end period
    UNSTATED = "unstated"  # the sender gave no time; `effective_start` is the header's


class SourceFormat(StrEnum):
    """The wire format a reading arrived in."""

    FHIR = "fhir"
    OMH = "omh"


@dataclass(frozen=True, slots=True)
class EffectiveTime:
    """When a reading was taken: an instant, a partial date (a span) or an interval."""

    start: datetime  # UTC, aware
    end: datetime | None  # exclusive end for partial dates and intervals
    precision: Precision
    raw: str  # as sent, so the natural key and the FHIR read side keep it exactly


@dataclass(frozen=True, slots=True)
class ParsedReading:
    """One measurement in canonical UCUM units: mm[Hg], /min, {steps}."""

    kind: ReadingKind
    code: str  # LOINC code as sent, or the OMH schema id like "omh:blood-pressure:4.0"
    effective: EffectiveTime
    systolic: float | None = None
    diastolic: float | None = None
    value: float | None = None
    unit: str = ""
    # Set when the value summarises an interval (OMH descriptive_statistic), e.g. "minimum":
    # such values are stored as statistics and never treated as single measurements.
    statistic: str | None = None
    subject: str | None = None  # FHIR subject reference as sent, e.g. "Patient/<id>"
    context: dict[str, Any] = field(default_factory=dict)  # posture, location, notes, ...


@dataclass(frozen=True, slots=True)
class ParsedMedicationEvent:
    """A dose taken or missed (FHIR MedicationAdministration completed / not-done)."""

    medication: str  # code (system|code) or text
    taken: bool
    effective: EffectiveTime
    reason: str | None = None  # statusReason text/code when not taken
    subject: str | None = None


class EntryInvalid(ValueError):
    """A malformed entry: names the machine-readable code and the field path."""

    def __init__(self, code: str, message: str, path: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.path = path
        self.message = message


_FHIR_DATETIME = re.compile(
    r"^(?P<y>[0-9]{4})(-(?P<m>0[1-9]|1[0-2])(-(?P<d>0[1-9]|[12][0-9]|3[01])"
    r"(T(?P<time>[01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?"
    r"(?P<tz>Z|[+-](0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00))?)?)?$"
)


def parse_fhir_datetime(raw: str, path: str = "effectiveDateTime") -> EffectiveTime:
    """Parse a FHIR dateTime; a partial date becomes the span it names (UTC) at its precision."""
    match = _FHIR_DATETIME.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise EntryInvalid("invalid_datetime", f"not a FHIR dateTime: {raw!r}", path)
    year = int(match["y"])
    if match["time"] is not None:
        if match["tz"] is None:
            raise EntryInvalid("invalid_datetime", "a time needs a timezone offset", path)
        text = raw.replace("Z", "+00:00")
        # Python accepts at most 6 fractional digits; FHIR allows more.
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)
        try:
            instant = datetime.fromisoformat(text.replace(":60", ":59")).astimezone(UTC)
        except (ValueError, OverflowError) as exc:  # beyond datetime's range once in UTC
            raise EntryInvalid("invalid_datetime", str(exc), path) from None
        return EffectiveTime(instant, None, Precision.SECOND, raw)
    try:
        if match["d"] is not None:
            start = datetime(year, int(match["m"]), int(match["d"]), tzinfo=UTC)
            return EffectiveTime(start, start + timedelta(days=1), Precision.DAY, raw)
        if match["m"] is not None:
            month = int(match["m"])
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            return EffectiveTime(start, end, Precision.MONTH, raw)
        start = datetime(year, 1, 1, tzinfo=UTC)
        return EffectiveTime(start, datetime(year + 1, 1, 1, tzinfo=UTC), Precision.YEAR, raw)
    except (ValueError, OverflowError) as exc:  # e.g. 2023-02-30, or 9999-12-31 + 1 day
        raise EntryInvalid("invalid_datetime", str(exc), path) from None


def parse_instant(raw: str, path: str) -> datetime:
    """Parse an RFC 3339 date-time with offset (OMH date_time, FHIR instant) to UTC."""
    if not isinstance(raw, str):
        raise EntryInvalid("invalid_datetime", "expected a date-time string", path)
    parsed = parse_fhir_datetime(raw, path)
    if parsed.precision is not Precision.SECOND:
        raise EntryInvalid("invalid_datetime", "expected a full date-time with offset", path)
    return parsed.start
