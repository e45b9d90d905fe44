"""Open mHealth data points -> `ParsedReading` (pure, no I/O).

Validates `{"header": {...}, "body": {...}}` data points by hand against the official
schemas of the public repository `openmhealth/schemas` (folder `schema/omh/`, plus the
IEEE 1752.1 schemas it `$ref`s, mirrored there under `schema/ieee/`). Every rule below
names the schema file it comes from. Where a body schema `$ref`s an `N.x` alias, the
alias is resolved as the repository resolves it (e.g. `time-frame-1.x` -> `time-frame-1.0`,
`descriptive-statistic-1.x` -> `descriptive-statistic-1.1`, `header-1.x` -> `header-1.1`).

JSON Schema semantics are kept where they matter:
- `oneOf` (time-frame, time-interval) means exactly one alternative validates: a value
  that fits two alternatives at once (e.g. both `date_time` and `time_interval`) is
  rejected as `unexpected_field`, one that fits none as `invalid_time_frame`.
- No supported body schema sets `additionalProperties: false`, so undeclared properties
  are allowed and ignored (they are neither validated nor copied to `context`).
- `format: date-time` is RFC 3339 section 5.6 `date-time`: the UTC offset is mandatory.

Two ClinAIOps rules go beyond the schemas and are marked as such where applied: measured
values must be finite and not negative, and an interval may not end before it starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from device_ingest.formats import (
    UNIT_MMHG,
    UNIT_PER_MIN,
    UNIT_STEPS,
    EffectiveTime,
    EntryInvalid,
    ParsedReading,
    Precision,
    ReadingKind,
)

__all__ = ["SUPPORTED", "parse_data_point", "parse_data_points"]

NAMESPACE = "omh"

# Schema name -> the versions of it this module validates (each exists upstream).
SUPPORTED: dict[str, tuple[str, ...]] = {
    "blood-pressure": ("1.0", "2.0", "3.0", "3.1", "4.0"),
    "heart-rate": ("1.0", "1.1", "2.0", "3.0"),
    "step-count": ("1.0", "2.0", "3.0"),
}

# Canonical units of the readings we produce (UCUM).

# --- value sets -------------------------------------------------------------------------

# position-during-measurement-1.0 (via 1.x): blood-pressure 1.0.
POSITION_DURING_MEASUREMENT = frozenset({"sitting", "lying down", "standing"})
# body-posture-1.0 (via 1.x; blood-pressure 2.0, 3.0, 3.1) and IEEE 1752.1
# body-posture-1.0 (blood-pressure 4.0) list the same four values.
BODY_POSTURE = frozenset({"sitting", "lying down", "standing", "semi-recumbent"})
# body-location-1.1 (via 1.x; blood-pressure 3.0, 3.1, 4.0 `measurement_location`).
BODY_LOCATION = frozenset(
    {
        "left ankle",
        "right ankle",
        "left hip",
        "right hip",
        "left thigh",
        "right thigh",
        "left thorax",
        "middle left thorax",
        "left upper arm",
        "right upper arm",
        "left wrist",
        "right wrist",
    }
)
# temporal-relationship-to-physical-activity-1.0 (via 1.x).
TEMPORAL_RELATIONSHIP_TO_PHYSICAL_ACTIVITY = frozenset(
    {"at rest", "active", "before exercise", "after exercise", "during exercise"}
)
# temporal-relationship-to-sleep-1.0 (via 1.x).
TEMPORAL_RELATIONSHIP_TO_SLEEP = frozenset({"before sleeping", "during sleep", "on waking"})
# part-of-day-1.0 (via 1.x), used by time-interval-1.0's date form.
PART_OF_DAY = frozenset({"morning", "afternoon", "evening", "night"})
# descriptive-statistic-1.0 (OMH, draft-04), $ref'd by name from step-count 2.0 and 3.0.
DESCRIPTIVE_STATISTIC_OMH_1_0 = frozenset(
    {"average", "maximum", "minimum", "standard deviation", "variance", "sum", "median"}
)
# descriptive-statistic-1.1 (via 1.x): blood-pressure 1.0-3.1, heart-rate 1.0-2.0.
DESCRIPTIVE_STATISTIC_OMH_1_1 = DESCRIPTIVE_STATISTIC_OMH_1_0 | frozenset(
    {
        "count",
        "quartile deviation",
        "80th percentile",
        "lower quartile",
        "upper quartile",
        "1st quintile",
        "2nd quintile",
        "3rd quintile",
        "4th quintile",
    }
)
# IEEE 1752.1 descriptive-statistic-1.0: blood-pressure 4.0, heart-rate 3.0.
DESCRIPTIVE_STATISTIC_IEEE_1_0 = DESCRIPTIVE_STATISTIC_OMH_1_1 | frozenset({"20th percentile"})
# header-1.1 `acquisition_provenance.modality`.
MODALITY = frozenset({"sensed", "self-reported"})

# duration-unit-value-1.0 (OMH, via 1.x) and IEEE duration-unit-value-1.0 share this unit
# enum. Both say the units are UCUM's common synonyms, with "Mo" for UCUM `mo` (the mean
# Julian month, 30.4375 d) and "yr" for UCUM `a` (the Julian year, 365.25 d).
DURATION_UNIT_SECONDS: Mapping[str, float] = {
    "ps": 1e-12,
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 1e-3,
    "sec": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "wk": 7 * 86400.0,
    "Mo": 30.4375 * 86400.0,
    "yr": 365.25 * 86400.0,
}


# --- per-version body rules -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Descriptor:
    """A descriptive string property of a body, copied to `ParsedReading.context`."""

    name: str
    allowed: frozenset[str] | None  # None: any string


@dataclass(frozen=True, slots=True, kw_only=True)
class _BodyRules:
    kind: ReadingKind
    statistics: frozenset[str] | None  # None: the version has no descriptive_statistic
    descriptors: tuple[_Descriptor, ...]
    ieee_time_frame: bool = False  # IEEE time-frame-1.0 (no date/part_of_day form)
    time_frame_required: bool = False
    interval_only: bool = False  # allOf [time_frame, {"required": ["time_interval"]}]
    step_count_unit_value: bool = False  # step_count is a unit-value with unit "steps"


_USER_NOTES = _Descriptor("user_notes", None)  # {"type": "string"}
_POSTURE = _Descriptor("body_posture", BODY_POSTURE)
_LOCATION = _Descriptor("measurement_location", BODY_LOCATION)
_ACTIVITY = _Descriptor(
    "temporal_relationship_to_physical_activity", TEMPORAL_RELATIONSHIP_TO_PHYSICAL_ACTIVITY
)
_SLEEP = _Descriptor("temporal_relationship_to_sleep", TEMPORAL_RELATIONSHIP_TO_SLEEP)
# step-count 2.0/3.0: anyOf [descriptive-statistic-denominator-1.x, {"type": "string"}],
# so any string is valid.
_DENOMINATOR = _Descriptor("descriptive_statistic_denominator", None)

_BP = ReadingKind.BLOOD_PRESSURE
_HR = ReadingKind.HEART_RATE
_STEPS = ReadingKind.STEP_COUNT
_STAT_1_0 = DESCRIPTIVE_STATISTIC_OMH_1_0
_STAT_1_1 = DESCRIPTIVE_STATISTIC_OMH_1_1
_STAT_IEEE = DESCRIPTIVE_STATISTIC_IEEE_1_0

_RULES: dict[tuple[str, str], _BodyRules] = {
    # blood-pressure-1.0: required [systolic, diastolic]; time-frame-1.x;
    # position-during-measurement-1.x; descriptive-statistic-1.x; user_notes.
    ("blood-pressure", "1.0"): _BodyRules(
        kind=_BP,
        statistics=_STAT_1_1,
        descriptors=(
            _Descriptor("position_during_measurement", POSITION_DURING_MEASUREMENT),
            _USER_NOTES,
        ),
    ),
    # blood-pressure-2.0: as 1.0 with body-posture-1.x instead of position.
    ("blood-pressure", "2.0"): _BodyRules(
        kind=_BP, statistics=_STAT_1_1, descriptors=(_POSTURE, _USER_NOTES)
    ),
    # blood-pressure-3.0: required adds effective_time_frame; measurement_location
    # (body-location-1.x); no user_notes.
    ("blood-pressure", "3.0"): _BodyRules(
        kind=_BP,
        statistics=_STAT_1_1,
        descriptors=(_POSTURE, _LOCATION),
        time_frame_required=True,
    ),
    # blood-pressure-3.1: 3.0 + temporal-relationship-to-physical-activity-1.x.
    ("blood-pressure", "3.1"): _BodyRules(
        kind=_BP,
        statistics=_STAT_1_1,
        descriptors=(_POSTURE, _LOCATION, _ACTIVITY),
        time_frame_required=True,
    ),
    # blood-pressure-4.0: as 3.1 but with IEEE time-frame-1.0, body-posture-1.0 and
    # descriptive-statistic-1.0.
    ("blood-pressure", "4.0"): _BodyRules(
        kind=_BP,
        statistics=_STAT_IEEE,
        descriptors=(_POSTURE, _LOCATION, _ACTIVITY),
        ieee_time_frame=True,
        time_frame_required=True,
    ),
    # heart-rate-1.0: required [heart_rate]; unit "beats/min"; time-frame-1.x;
    # descriptive-statistic-1.x; temporal-relationship-to-physical-activity-1.x; user_notes.
    ("heart-rate", "1.0"): _BodyRules(
        kind=_HR, statistics=_STAT_1_1, descriptors=(_ACTIVITY, _USER_NOTES)
    ),
    # heart-rate-1.1: 1.0 + temporal-relationship-to-sleep-1.x.
    ("heart-rate", "1.1"): _BodyRules(
        kind=_HR, statistics=_STAT_1_1, descriptors=(_ACTIVITY, _SLEEP, _USER_NOTES)
    ),
    # heart-rate-2.0: required adds effective_time_frame; no user_notes.
    ("heart-rate", "2.0"): _BodyRules(
        kind=_HR,
        statistics=_STAT_1_1,
        descriptors=(_ACTIVITY, _SLEEP),
        time_frame_required=True,
    ),
    # heart-rate-3.0: as 2.0 with IEEE unit-value-1.0, time-frame-1.0 and
    # descriptive-statistic-1.0.
    ("heart-rate", "3.0"): _BodyRules(
        kind=_HR,
        statistics=_STAT_IEEE,
        descriptors=(_ACTIVITY, _SLEEP),
        ieee_time_frame=True,
        time_frame_required=True,
    ),
    # step-count-1.0: required [step_count] ({"type": "number"}); optional time-frame-1.x;
    # no descriptive_statistic.
    ("step-count", "1.0"): _BodyRules(kind=_STEPS, statistics=None, descriptors=()),
    # step-count-2.0: step_count a number; effective_time_frame required and restricted to
    # a time_interval; descriptive-statistic-1.0; descriptive_statistic_denominator.
    ("step-count", "2.0"): _BodyRules(
        kind=_STEPS,
        statistics=_STAT_1_0,
        descriptors=(_DENOMINATOR,),
        time_frame_required=True,
        interval_only=True,
    ),
    # step-count-3.0: as 2.0 but step_count is a unit-value-1.x with unit "steps".
    ("step-count", "3.0"): _BodyRules(
        kind=_STEPS,
        statistics=_STAT_1_0,
        descriptors=(_DENOMINATOR,),
        time_frame_required=True,
        interval_only=True,
        step_count_unit_value=True,
    ),
}


# --- small JSON helpers -----------------------------------------------------------------


def _at(path: str, key: str) -> str:
    return f"{path}/{key}" if path else key


def _object(value: object, path: str, what: str = "an object") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EntryInvalid("invalid_type", f"{path or 'data point'} must be {what}", path)
    return value


def _require(container: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in container:
        raise EntryInvalid("missing_field", f"{_at(path, key)} is required", _at(path, key))
    return container[key]


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise EntryInvalid("invalid_type", f"{path} must be a string", path)
    return value


def _enum(value: object, allowed: frozenset[str] | None, path: str) -> str:
    text = _string(value, path)
    if allowed is not None and text not in allowed:
        choices = ", ".join(sorted(allowed))
        raise EntryInvalid("invalid_value", f"{path}: {text!r} is not one of: {choices}", path)
    return text


def _number(value: object, path: str) -> float:
    """A JSON Schema `number` (booleans are not numbers) that is finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EntryInvalid("invalid_type", f"{path} must be a number", path)
    try:
        number = float(value)
    except OverflowError:
        raise EntryInvalid("invalid_value", f"{path} is out of range", path) from None
    if not math.isfinite(number):  # NaN/Infinity are not JSON numbers
        raise EntryInvalid("invalid_value", f"{path} must be a finite number", path)
    return number


def _non_negative(number: float, path: str) -> float:
    # ClinAIOps rule, not in the schemas (they set no minimum): a negative pressure,
    # rate or step count is not a measurement.
    if number < 0:
        raise EntryInvalid("invalid_value", f"{path} must not be negative", path)
    return number


def _unit_value(value: object, units: frozenset[str], path: str) -> tuple[float, str, object]:
    """unit-value-1.0 / IEEE unit-value-1.0: required number `value` and string `unit`,
    narrowed by the referring schema to the `units` enum. Returns (value, unit, raw value)."""
    obj = _object(value, path)
    raw = _require(obj, "value", path)
    number = _number(raw, _at(path, "value"))
    unit = _string(_require(obj, "unit", path), _at(path, "unit"))
    if unit not in units:
        expected = ", ".join(sorted(units))
        raise EntryInvalid(
            "invalid_unit",
            f"{_at(path, 'unit')}: {unit!r} is not one of: {expected}",
            _at(path, "unit"),
        )
    return number, unit, raw


# --- date-time (date-time-1.0, IEEE date-time-1.0: "format": "date-time") ---------------

# RFC 3339 section 5.6 `date-time`; "T" and "Z" may be lower case (RFC 3339 5.6 note).
_RFC3339 = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt]"
    r"(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})(?:\.(?P<frac>[0-9]+))?"
    r"(?P<tz>[Zz]|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))?"
)
# time-interval-1.0 `full_date`: {"pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"} (RFC 3339 5.6).
_FULL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _date_time(value: object, path: str) -> datetime:
    """An RFC 3339 date-time with a mandatory offset, as an aware UTC datetime."""
    if not isinstance(value, str):
        raise EntryInvalid("invalid_datetime", f"{path} must be a date-time string", path)
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise EntryInvalid("invalid_datetime", f"{path}: not an RFC 3339 date-time", path)
    if match["tz"] is None:
        raise EntryInvalid(
            "invalid_datetime", f"{path}: a date-time needs a UTC offset (Z or +hh:mm)", path
        )
    hour, minute, second = int(match["h"]), int(match["mi"]), int(match["s"])
    off_h = int(match["oh"] or 0)
    off_m = int(match["om"] or 0)
    if hour > 23 or minute > 59 or second > 60 or off_h > 23 or off_m > 59:
        raise EntryInvalid("invalid_datetime", f"{path}: time or offset out of range", path)
    micro = int((match["frac"] or "0")[:6].ljust(6, "0"))
    offset = timedelta(hours=off_h, minutes=off_m)
    if match["sign"] == "-":
        offset = -offset
    try:
        local = datetime(
            int(match["y"]),
            int(match["mo"]),
            int(match["d"]),
            hour,
            minute,
            min(second, 59),  # a leap second (:60) is kept as :59
            micro,
            tzinfo=timezone(offset),
        )
        return local.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # e.g. 2023-02-30, year 0
        raise EntryInvalid("invalid_datetime", f"{path}: {exc}", path) from None


def _format_number(raw: object) -> str:
    return str(raw) if isinstance(raw, int) else repr(raw)


def _duration(value: object, path: str) -> tuple[timedelta, str]:
    """duration-unit-value-1.0 (OMH) / IEEE duration-unit-value-1.0. Returns (delta, raw)."""
    number, unit, raw = _unit_value(value, frozenset(DURATION_UNIT_SECONDS), path)
    try:
        delta = timedelta(seconds=number * DURATION_UNIT_SECONDS[unit])
    except OverflowError:
        raise EntryInvalid("invalid_value", f"{path} is out of range", path) from None
    return delta, f"{_format_number(raw)} {unit}"


# --- time-interval / time-frame -----------------------------------------------------------

_Alternative = tuple[tuple[str, ...], Callable[[], EffectiveTime]]


def _one_of(
    obj: Mapping[str, Any], alternatives: list[_Alternative], path: str
) -> tuple[tuple[str, ...], EffectiveTime]:
    """JSON Schema `oneOf` over alternatives whose only constraints are their required
    properties and those properties' schemas: exactly one alternative must validate.
    Returns that alternative's property names and its effective time."""
    matched: list[tuple[tuple[str, ...], EffectiveTime]] = []
    first_error: EntryInvalid | None = None
    for keys, build in alternatives:
        if not all(key in obj for key in keys):
            continue
        try:
            matched.append((keys, build()))
        except EntryInvalid as exc:
            first_error = first_error or exc
    if len(matched) == 1:
        return matched[0]
    if len(matched) > 1:
        forms = " and ".join("+".join(keys) for keys, _ in matched)
        raise EntryInvalid(
            "unexpected_field", f"{path or 'value'} must use exactly one form; got {forms}", path
        )
    if first_error is not None:
        raise first_error
    forms = ", ".join("+".join(keys) for keys, _ in alternatives)
    given = ", ".join(sorted(obj)) or "nothing"
    raise EntryInvalid("invalid_time_frame", f"{path} needs one of: {forms}; got {given}", path)


def _shift(start: datetime, delta: timedelta, path: str) -> datetime:
    try:
        return start + delta
    except OverflowError:
        raise EntryInvalid("invalid_time_frame", f"{path}: interval out of range", path) from None


def _time_interval(value: object, path: str, *, ieee: bool) -> EffectiveTime:
    """time-interval-1.0 (OMH, via 1.x) or IEEE time-interval-1.0 (oneOf)."""
    obj = _object(value, path)
    start_p, end_p = _at(path, "start_date_time"), _at(path, "end_date_time")
    dur_p = _at(path, "duration")

    def start_duration() -> EffectiveTime:
        start = _date_time(obj["start_date_time"], start_p)
        delta, raw = _duration(obj["duration"], dur_p)
        end = _shift(start, delta, path)
        return EffectiveTime(start, end, Precision.INTERVAL, f"{obj['start_date_time']}/{raw}")

    def end_duration() -> EffectiveTime:
        end = _date_time(obj["end_date_time"], end_p)
        delta, raw = _duration(obj["duration"], dur_p)
        start = _shift(end, -delta, path)
        return EffectiveTime(start, end, Precision.INTERVAL, f"{raw}/{obj['end_date_time']}")

    def start_end() -> EffectiveTime:
        start = _date_time(obj["start_date_time"], start_p)
        end = _date_time(obj["end_date_time"], end_p)
        raw = f"{obj['start_date_time']}/{obj['end_date_time']}"
        return EffectiveTime(start, end, Precision.INTERVAL, raw)

    def date_part_of_day() -> EffectiveTime:
        # Only time-interval-1.0 (OMH) has this form; both properties are required there.
        date_p = _at(path, "date")
        text = obj["date"]
        if not isinstance(text, str) or _FULL_DATE.fullmatch(text) is None:
            raise EntryInvalid("invalid_datetime", f"{date_p} must be a YYYY-MM-DD date", date_p)
        part = _enum(obj["part_of_day"], PART_OF_DAY, _at(path, "part_of_day"))
        try:
            start = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError as exc:
            raise EntryInvalid("invalid_datetime", f"{date_p}: {exc}", date_p) from None
        # The part of the day has no defined boundaries: the reading spans the (UTC) day.
        end = _shift(start, timedelta(days=1), path)
        return EffectiveTime(start, end, Precision.DAY, f"{text}/{part}")

    alternatives: list[_Alternative] = [
        (("start_date_time", "duration"), start_duration),
        (("end_date_time", "duration"), end_duration),
        (("start_date_time", "end_date_time"), start_end),
    ]
    if not ieee:
        alternatives.append((("date", "part_of_day"), date_part_of_day))
    _, effective = _one_of(obj, alternatives, path)
    # ClinAIOps rule (the schemas leave it implicit): an interval cannot end before it starts.
    if effective.end is not None and effective.end < effective.start:
        raise EntryInvalid("invalid_time_frame", f"{path} ends before it starts", path)
    return effective


def _time_frame(value: object, path: str, rules: _BodyRules) -> EffectiveTime:
    """time-frame-1.0 (OMH, via 1.x) or IEEE time-frame-1.0: oneOf date_time | time_interval."""
    obj = _object(value, path)
    dt_p, ti_p = _at(path, "date_time"), _at(path, "time_interval")

    def date_time() -> EffectiveTime:
        start = _date_time(obj["date_time"], dt_p)
        return EffectiveTime(start, None, Precision.SECOND, obj["date_time"])

    def time_interval() -> EffectiveTime:
        return _time_interval(obj["time_interval"], ti_p, ieee=rules.ieee_time_frame)

    form, effective = _one_of(
        obj, [(("date_time",), date_time), (("time_interval",), time_interval)], path
    )
    if rules.interval_only and form != ("time_interval",):
        # step-count-2.0/3.0: allOf [time_frame, {"required": ["time_interval"]}], "as a
        # measure of a duration, step count should not be associated to a date time".
        # (Stricter than the letter of the schema in one corner: an invalid time_interval
        # next to a valid date_time is rejected rather than the date_time being used.)
        raise EntryInvalid(
            "invalid_time_frame", f"{path}: a step count needs a time_interval", path
        )
    return effective


# --- header (data-point-1.0 -> header-1.x = header-1.1 -> schema-id-1.x) ----------------


@dataclass(frozen=True, slots=True)
class _Header:
    name: str
    version: str
    created: datetime


def _schema_id(header: Mapping[str, Any]) -> tuple[str, str]:
    path = "header/schema_id"
    schema_id = _object(_require(header, "schema_id", "header"), path)
    # schema-id-1.0: namespace, name and version are required strings.
    namespace = _string(_require(schema_id, "namespace", path), f"{path}/namespace")
    name = _string(_require(schema_id, "name", path), f"{path}/name")
    version = _string(_require(schema_id, "version", path), f"{path}/version")
    if namespace != NAMESPACE or version not in SUPPORTED.get(name, ()):
        raise EntryInvalid(
            "unsupported_schema", f"unsupported schema {namespace}:{name}:{version}", path
        )
    return name, version


def _header(value: object) -> _Header:
    header = _object(value, "header")
    name, version = _schema_id(header)
    # header-1.1 required: id (string), creation_date_time (date-time), schema_id.
    _string(_require(header, "id", "header"), "header/id")
    created = _date_time(
        _require(header, "creation_date_time", "header"), "header/creation_date_time"
    )
    if "acquisition_provenance" in header:
        path = "header/acquisition_provenance"
        provenance = _object(header["acquisition_provenance"], path)
        _string(_require(provenance, "source_name", path), f"{path}/source_name")
        if "source_creation_date_time" in provenance:
            source_created = provenance["source_creation_date_time"]
            _date_time(source_created, f"{path}/source_creation_date_time")
        if "modality" in provenance:
            _enum(provenance["modality"], MODALITY, f"{path}/modality")
    if "user_id" in header:  # header-1.1
        _string(header["user_id"], "header/user_id")
    return _Header(name, version, created)


# --- bodies -----------------------------------------------------------------------------


def _measurement(body: Mapping[str, Any], rules: _BodyRules) -> dict[str, Any]:
    """The measured value(s) as ParsedReading keyword arguments."""
    if rules.kind is ReadingKind.BLOOD_PRESSURE:
        # systolic-blood-pressure-1.0 / diastolic-blood-pressure-1.0 (via 1.x):
        # allOf [unit-value-1.x, {"unit": {"enum": ["mmHg"]}}].
        mmhg = frozenset({"mmHg"})
        values: dict[str, Any] = {"unit": UNIT_MMHG}
        for key, field in (
            ("systolic_blood_pressure", "systolic"),
            ("diastolic_blood_pressure", "diastolic"),
        ):
            number, _, _ = _unit_value(_require(body, key, "body"), mmhg, f"body/{key}")
            values[field] = _non_negative(number, f"body/{key}/value")
        return values
    if rules.kind is ReadingKind.HEART_RATE:
        # heart-rate-*: allOf [unit-value, {"unit": {"enum": ["beats/min"]}}].
        path = "body/heart_rate"
        number, _, _ = _unit_value(
            _require(body, "heart_rate", "body"), frozenset({"beats/min"}), path
        )
        return {"value": _non_negative(number, f"{path}/value"), "unit": UNIT_PER_MIN}
    path = "body/step_count"
    raw = _require(body, "step_count", "body")
    if rules.step_count_unit_value:  # step-count-3.0: unit-value with unit "steps"
        number, _, _ = _unit_value(raw, frozenset({"steps"}), path)
        value_path = f"{path}/value"
    else:  # step-count-1.0/2.0: {"type": "number"}
        number, value_path = _number(raw, path), path
    return {"value": _non_negative(number, value_path), "unit": UNIT_STEPS}


def _body(
    body: Mapping[str, Any], header: _Header, rules: _BodyRules
) -> tuple[dict[str, Any], EffectiveTime, str | None, dict[str, Any]]:
    measured = _measurement(body, rules)
    if "effective_time_frame" in body:
        effective = _time_frame(body["effective_time_frame"], "body/effective_time_frame", rules)
    elif rules.time_frame_required:
        raise EntryInvalid(
            "missing_field", "body/effective_time_frame is required", "body/effective_time_frame"
        )
    else:
        # The schema lets the time frame be absent: the header's creation time stands in.
        effective = EffectiveTime(header.created, None, Precision.UNSTATED, "")
    statistic: str | None = None
    if rules.statistics is not None and "descriptive_statistic" in body:
        statistic = _enum(
            body["descriptive_statistic"], rules.statistics, "body/descriptive_statistic"
        )
    context: dict[str, Any] = {}
    for descriptor in rules.descriptors:
        if descriptor.name in body:
            path = f"body/{descriptor.name}"
            context[descriptor.name] = _enum(body[descriptor.name], descriptor.allowed, path)
    return measured, effective, statistic, context


# --- public API -------------------------------------------------------------------------


def parse_data_point(obj: object, *, index: int = 0, received_at: datetime) -> ParsedReading:
    """Validate one OMH data point and return its reading in canonical units.

    Raises `EntryInvalid(code, message, path)`; `path` is a slash path from the data point
    root (e.g. "body/systolic_blood_pressure/unit") and the message names `index`.

    A body without a time frame (allowed by e.g. blood-pressure 1.0, heart-rate 1.0) is
    dated by the header's `creation_date_time` with `Precision.UNSTATED`. `received_at`
    would be the fallback when the header has no creation time, but header-1.0 and 1.1
    both require one, so for a valid data point it is never needed; it is accepted so
    the OMH and FHIR parsers share a signature.
    """
    try:
        point = _object(obj, "", "an object with header and body")
        # data-point-1.0: required [header, body]; body {"type": "object"}.
        header_value = _require(point, "header", "")
        body_value = _require(point, "body", "")
        header = _header(header_value)
        body = _object(body_value, "body")
        rules = _RULES[(header.name, header.version)]
        measured, effective, statistic, context = _body(body, header, rules)
    except EntryInvalid as exc:
        raise EntryInvalid(exc.code, f"data point [{index}]: {exc.message}", exc.path) from None
    return ParsedReading(
        kind=rules.kind,
        code=f"{NAMESPACE}:{header.name}:{header.version}",
        effective=effective,
        statistic=statistic,
        context=context,
        **measured,
    )


def parse_data_points(
    payload: object, *, received_at: datetime
) -> list[ParsedReading | EntryInvalid]:
    """Parse one data point or a list of them; per-entry results in order.

    A bad entry of a list is returned as its `EntryInvalid`, its path prefixed with the
    entry's index (e.g. "[3]/body/heart_rate/unit"). A payload that is neither an object
    nor a list raises `EntryInvalid("invalid_body", ...)`.
    """
    if isinstance(payload, dict):
        try:
            return [parse_data_point(payload, received_at=received_at)]
        except EntryInvalid as exc:
            return [exc]
    if not isinstance(payload, list):
        raise EntryInvalid(
            "invalid_body", "an Open mHealth payload is a data point object or a list of them"
        )
    results: list[ParsedReading | EntryInvalid] = []
    for index, entry in enumerate(payload):
        try:
            results.append(parse_data_point(entry, index=index, received_at=received_at))
        except EntryInvalid as exc:
            path = f"[{index}]/{exc.path}" if exc.path else f"[{index}]"
            results.append(EntryInvalid(exc.code, exc.message, path))
    return results
