"""Open mHealth data points: the shared conformance files and the schema rules around them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from device_ingest.formats import (
    EffectiveTime,
    EntryInvalid,
    ParsedReading,
    Precision,
    ReadingKind,
)
from device_ingest.omh import SUPPORTED, parse_data_point, parse_data_points

OMH_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "openmhealth"
RECEIVED = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
CREATED_RAW = "2024-03-01T12:00:00+01:00"
CREATED = datetime(2024, 3, 1, 11, 0, tzinfo=UTC)


def utc(text: str) -> datetime:
    """A UTC instant from "YYYY-MM-DDTHH:MM[:SS]"."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def point(name: str, version: str, body: Any, **header: Any) -> dict[str, Any]:
    """A data point around `body` with a complete header-1.1."""
    return {
        "header": {
            "id": f"dp-{name}-{version}",
            "creation_date_time": CREATED_RAW,
            "schema_id": {"namespace": "omh", "name": name, "version": version},
            **header,
        },
        "body": body,
    }


def parse(name: str, version: str, body: Any) -> ParsedReading:
    return parse_data_point(point(name, version, body), received_at=RECEIVED)


def error(name: str, version: str, body: Any) -> EntryInvalid:
    with pytest.raises(EntryInvalid) as info:
        parse(name, version, body)
    return info.value


def bp_body(**extra: Any) -> dict[str, Any]:
    return {
        "systolic_blood_pressure": {"value": 120, "unit": "mmHg"},
        "diastolic_blood_pressure": {"value": 80, "unit": "mmHg"},
        "effective_time_frame": {"date_time": "2024-02-01T08:00:00Z"},
        **extra,
    }


def hr_body(**extra: Any) -> dict[str, Any]:
    return {
        "heart_rate": {"value": 64, "unit": "beats/min"},
        "effective_time_frame": {"date_time": "2024-02-01T08:00:00Z"},
        **extra,
    }


INTERVAL = {
    "time_interval": {
        "start_date_time": "2024-02-01T00:00:00Z",
        "end_date_time": "2024-02-02T00:00:00Z",
    }
}


# --- the shared conformance files -------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What one shouldPass body must parse into."""

    values: tuple[float, ...]  # (systolic, diastolic) or (value,)
    effective: EffectiveTime
    statistic: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


UNSTATED = EffectiveTime(CREATED, None, Precision.UNSTATED, "")
AT_2013 = EffectiveTime(utc("2013-02-05T07:25"), None, Precision.SECOND, "2013-02-05T07:25:00Z")
SPAN_2013 = EffectiveTime(
    utc("2013-02-05T07:25"),
    utc("2013-06-05T07:25"),
    Precision.INTERVAL,
    "2013-02-05T07:25:00Z/2013-06-05T07:25:00Z",
)
AT_2020 = EffectiveTime(
    utc("2020-02-05T15:25"), None, Precision.SECOND, "2020-02-05T07:25:00-08:00"
)
WEEK_2020 = EffectiveTime(
    utc("2020-02-05T15:00"),
    utc("2020-02-12T15:00"),
    Precision.INTERVAL,
    "2020-02-05T07:00:00-08:00/2020-02-12T07:00:00-08:00",
)
SITTING_1_0 = {"position_during_measurement": "sitting"}
NOTES = {"user_notes": "I felt quite dizzy"}
AT_REST = {"temporal_relationship_to_physical_activity": "at rest"}
ON_WAKING = {"temporal_relationship_to_sleep": "on waking"}

SHOULD_PASS: dict[str, Expected] = {
    "blood-pressure/1.0/blood-pressure-only.json": Expected((160, 60), UNSTATED),
    "blood-pressure/1.0/with-date-time-time-frame.json": Expected(
        (160, 60), AT_2013, context=SITTING_1_0
    ),
    "blood-pressure/1.0/with-descriptive-statistic.json": Expected(
        (160, 60), SPAN_2013, "maximum", SITTING_1_0
    ),
    "blood-pressure/1.0/with-everything.json": Expected(
        (100, 60), SPAN_2013, "minimum", SITTING_1_0 | NOTES
    ),
    "blood-pressure/1.0/with-position.json": Expected((160, 60), UNSTATED, context=SITTING_1_0),
    "blood-pressure/1.0/with-time-frame.json": Expected(
        (160, 60),
        EffectiveTime(
            utc("2013-02-05T00:00"), utc("2013-02-06T00:00"), Precision.DAY, "2013-02-05/evening"
        ),
        context=SITTING_1_0,
    ),
    "blood-pressure/1.0/with-user-notes.json": Expected(
        (160, 60), UNSTATED, context=SITTING_1_0 | NOTES
    ),
    "blood-pressure/2.0/blood-pressure-only.json": Expected((160, 60), UNSTATED),
    "blood-pressure/2.0/with-descriptive-statistic.json": Expected(
        (160, 60), SPAN_2013, "maximum", {"body_posture": "sitting"}
    ),
    "blood-pressure/2.0/with-posture.json": Expected(
        (160, 60), UNSTATED, context={"body_posture": "sitting"}
    ),
    "blood-pressure/3.0/blood-pressure-only.json": Expected((115, 60), AT_2020),
    "blood-pressure/3.0/with-descriptive-statistic.json": Expected(
        (160, 60),
        WEEK_2020,
        "maximum",
        {"body_posture": "sitting", "measurement_location": "left wrist"},
    ),
    "blood-pressure/3.0/with-posture-and-location.json": Expected(
        (140, 60),
        AT_2020,
        context={"body_posture": "sitting", "measurement_location": "left upper arm"},
    ),
    "blood-pressure/3.1/with-posture-location-pa-relation.json": Expected(
        (125, 60),
        AT_2020,
        context={"body_posture": "sitting", "measurement_location": "left wrist"} | AT_REST,
    ),
    "blood-pressure/4.0/blood-pressure-only.json": Expected((115, 60), AT_2020),
    "blood-pressure/4.0/with-descriptive-statistic.json": Expected(
        (160, 60),
        WEEK_2020,
        "maximum",
        {"body_posture": "sitting", "measurement_location": "left wrist"},
    ),
    "blood-pressure/4.0/with-posture-and-location.json": Expected(
        (140, 60),
        AT_2020,
        context={"body_posture": "sitting", "measurement_location": "left upper arm"},
    ),
    "blood-pressure/4.0/with-posture-location-relation.json": Expected(
        (125, 60),
        AT_2020,
        context={"body_posture": "sitting", "measurement_location": "left wrist"} | AT_REST,
    ),
    "heart-rate/1.0/heart-rate-only.json": Expected((60,), UNSTATED),
    "heart-rate/1.0/with-everything.json": Expected((50,), AT_2013, context=AT_REST | NOTES),
    "heart-rate/1.0/with-temporal-relationship-to-physical-activity.json": Expected(
        (50,), AT_2013, context=AT_REST
    ),
    "heart-rate/1.0/with-time-frame.json": Expected((60,), AT_2013),
    "heart-rate/1.0/with-user-notes.json": Expected((50,), AT_2013, context=NOTES),
    "heart-rate/1.1/with-temporal-relationship-to-sleep.json": Expected(
        (50,), AT_2013, context=ON_WAKING
    ),
    "heart-rate/2.0/with-descriptive-statistic.json": Expected(
        (50,),
        EffectiveTime(
            utc("2020-02-05T05:00"),
            utc("2020-02-06T05:00"),
            Precision.INTERVAL,
            "2020-02-05T06:00:00+01:00/2020-02-06T06:00:00+01:00",
        ),
        "minimum",
    ),
    "heart-rate/2.0/with-temporal-relationship-to-sleep.json": Expected(
        (67.5,), AT_2020, context=ON_WAKING
    ),
}

# shouldFail file -> (code, path)
SHOULD_FAIL: dict[str, tuple[str, str]] = {
    "blood-pressure/1.0/empty-document.json": ("missing_field", "body/systolic_blood_pressure"),
    "blood-pressure/2.0/empty-document.json": ("missing_field", "body/systolic_blood_pressure"),
    "blood-pressure/2.0/invalid-unit.json": (
        "invalid_unit",
        "body/systolic_blood_pressure/unit",
    ),
    "blood-pressure/3.0/empty-document.json": ("missing_field", "body/systolic_blood_pressure"),
    "blood-pressure/3.0/invalid-unit.json": (
        "invalid_unit",
        "body/systolic_blood_pressure/unit",
    ),
    "blood-pressure/3.1/invalid-pa-value.json": (
        "invalid_value",
        "body/temporal_relationship_to_physical_activity",
    ),
    "blood-pressure/4.0/empty-document.json": ("missing_field", "body/systolic_blood_pressure"),
    "blood-pressure/4.0/invalid-pa-value.json": (
        "invalid_value",
        "body/temporal_relationship_to_physical_activity",
    ),
    # IEEE time-interval-1.0 (which 4.0 uses) has no date + part_of_day form.
    "blood-pressure/4.0/invalid-timeframe-format.json": (
        "invalid_time_frame",
        "body/effective_time_frame/time_interval",
    ),
    "blood-pressure/4.0/invalid-unit.json": (
        "invalid_unit",
        "body/systolic_blood_pressure/unit",
    ),
    "heart-rate/1.0/empty-document.json": ("missing_field", "body/heart_rate"),
    "heart-rate/1.0/incorrect-unit.json": ("invalid_unit", "body/heart_rate/unit"),
    "heart-rate/2.0/empty-document.json": ("missing_field", "body/heart_rate"),
    "heart-rate/2.0/incorrect-unit.json": ("invalid_unit", "body/heart_rate/unit"),
    "heart-rate/2.0/missing-effective-time-frame.json": (
        "missing_field",
        "body/effective_time_frame",
    ),
}


def _on_disk(kind: str) -> set[str]:
    return {f"{p.parts[-4]}/{p.parts[-3]}/{p.name}" for p in OMH_DIR.glob(f"*/*/{kind}/*.json")}


def _conformance(relative: str, kind: str) -> ParsedReading | EntryInvalid:
    name, version, filename = relative.split("/")
    body = json.loads((OMH_DIR / name / version / kind / filename).read_text())
    [result] = parse_data_points(point(name, version, body), received_at=RECEIVED)
    return result


def test_conformance_folder_when_listed_holds_exactly_the_expected_files() -> None:
    assert OMH_DIR.is_dir(), f"missing {OMH_DIR}"
    assert _on_disk("shouldPass"), "no shouldPass files"
    assert _on_disk("shouldFail"), "no shouldFail files"
    # Every file has expectations below, and every expectation has its file.
    assert _on_disk("shouldPass") == set(SHOULD_PASS)
    assert _on_disk("shouldFail") == set(SHOULD_FAIL)


@pytest.mark.parametrize("relative", sorted(SHOULD_PASS))
def test_parse_should_pass_file_gives_exact_reading(relative: str) -> None:
    expected = SHOULD_PASS[relative]
    name, version, _ = relative.split("/")
    reading = _conformance(relative, "shouldPass")
    assert isinstance(reading, ParsedReading), reading
    assert reading.code == f"omh:{name}:{version}"
    if name == "blood-pressure":
        assert reading.kind is ReadingKind.BLOOD_PRESSURE
        assert (reading.systolic, reading.diastolic) == expected.values
        assert reading.value is None
        assert reading.unit == "mm[Hg]"
    else:
        assert reading.kind is ReadingKind.HEART_RATE
        assert (reading.value,) == expected.values
        assert reading.systolic is None
        assert reading.unit == "/min"
    assert reading.statistic == expected.statistic
    assert reading.context == expected.context
    assert reading.effective == expected.effective
    assert reading.subject is None


@pytest.mark.parametrize("relative", sorted(SHOULD_FAIL))
def test_parse_should_fail_file_names_code_and_path(relative: str) -> None:
    result = _conformance(relative, "shouldFail")
    assert isinstance(result, EntryInvalid), result
    assert (result.code, result.path) == SHOULD_FAIL[relative]
    assert result.message


# --- schema ids and headers -------------------------------------------------------------


def test_supported_when_listed_names_each_schema_version() -> None:
    assert SUPPORTED == {
        "blood-pressure": ("1.0", "2.0", "3.0", "3.1", "4.0"),
        "heart-rate": ("1.0", "1.1", "2.0", "3.0"),
        "step-count": ("1.0", "2.0", "3.0"),
    }


@pytest.mark.parametrize(
    ("name", "version"),
    [("blood-pressure", "5.0"), ("blood-pressure", "4"), ("heart-rate", "1.2"), ("sleep", "1.0")],
)
def test_parse_unsupported_schema_is_rejected(name: str, version: str) -> None:
    err = error(name, version, bp_body())
    assert (err.code, err.path) == ("unsupported_schema", "header/schema_id")


def test_parse_wrong_namespace_is_unsupported() -> None:
    dp = point("blood-pressure", "4.0", bp_body())
    dp["header"]["schema_id"]["namespace"] = "granola"
    with pytest.raises(EntryInvalid) as info:
        parse_data_point(dp, received_at=RECEIVED)
    assert (info.value.code, info.value.path) == ("unsupported_schema", "header/schema_id")


@pytest.mark.parametrize("body", [[], "body", 5, None])
def test_parse_non_object_body_is_invalid_type(body: Any) -> None:
    err = error("blood-pressure", "4.0", body)
    assert (err.code, err.path) == ("invalid_type", "body")


@pytest.mark.parametrize(
    ("drop", "path"),
    [
        ("id", "header/id"),
        ("creation_date_time", "header/creation_date_time"),
        ("schema_id", "header/schema_id"),
    ],
)
def test_parse_header_without_required_field_is_missing_field(drop: str, path: str) -> None:
    dp = point("heart-rate", "2.0", hr_body())
    del dp["header"][drop]
    with pytest.raises(EntryInvalid) as info:
        parse_data_point(dp, received_at=RECEIVED)
    assert (info.value.code, info.value.path) == ("missing_field", path)


@pytest.mark.parametrize(
    ("header", "code", "path"),
    [
        ({"id": 7}, "invalid_type", "header/id"),
        (
            {"creation_date_time": "2024-03-01T12:00:00"},
            "invalid_datetime",
            "header/creation_date_time",
        ),
        ({"user_id": 3}, "invalid_type", "header/user_id"),
        (
            {"acquisition_provenance": {"modality": "sensed"}},
            "missing_field",
            "header/acquisition_provenance/source_name",
        ),
        (
            {"acquisition_provenance": {"source_name": "cuff", "modality": "guessed"}},
            "invalid_value",
            "header/acquisition_provenance/modality",
        ),
        (
            {"acquisition_provenance": {"source_name": "cuff", "source_creation_date_time": "x"}},
            "invalid_datetime",
            "header/acquisition_provenance/source_creation_date_time",
        ),
    ],
)
def test_parse_header_breaking_header_1_1_is_rejected(
    header: dict[str, Any], code: str, path: str
) -> None:
    dp = point("heart-rate", "2.0", hr_body(), **header)
    with pytest.raises(EntryInvalid) as info:
        parse_data_point(dp, received_at=RECEIVED)
    assert (info.value.code, info.value.path) == (code, path)


def test_parse_header_with_provenance_and_user_is_accepted() -> None:
    provenance = {
        "source_name": "cuff",
        "source_creation_date_time": "2024-02-01T08:00:01Z",
        "modality": "sensed",
    }
    dp = point("heart-rate", "2.0", hr_body(), acquisition_provenance=provenance, user_id="u1")
    assert parse_data_point(dp, received_at=RECEIVED).value == 64


@pytest.mark.parametrize(
    ("obj", "code", "path"),
    [
        ([], "invalid_type", ""),
        ({"body": {}}, "missing_field", "header"),
        ({"header": point("heart-rate", "2.0", {})["header"]}, "missing_field", "body"),
        ({"header": "h", "body": {}}, "invalid_type", "header"),
        (
            {"header": {"schema_id": {"namespace": "omh", "name": "heart-rate"}}, "body": {}},
            "missing_field",
            "header/schema_id/version",
        ),
    ],
)
def test_parse_malformed_data_point_names_code_and_path(obj: Any, code: str, path: str) -> None:
    with pytest.raises(EntryInvalid) as info:
        parse_data_point(obj, received_at=RECEIVED)
    assert (info.value.code, info.value.path) == (code, path)


def test_parse_error_message_names_the_index() -> None:
    with pytest.raises(EntryInvalid) as info:
        parse_data_point(point("heart-rate", "2.0", {}), index=4, received_at=RECEIVED)
    assert "[4]" in info.value.message


# --- payloads ---------------------------------------------------------------------------


def test_parse_list_payload_with_one_bad_entry_reports_its_index() -> None:
    good = point("heart-rate", "2.0", hr_body())
    bad = point("heart-rate", "2.0", hr_body(heart_rate={"value": 64, "unit": "bpm"}))
    results = parse_data_points([good, good, good, bad, good], received_at=RECEIVED)
    assert [isinstance(r, ParsedReading) for r in results] == [True, True, True, False, True]
    err = results[3]
    assert isinstance(err, EntryInvalid)
    assert (err.code, err.path) == ("invalid_unit", "[3]/body/heart_rate/unit")
    assert "[3]" in err.message


def test_parse_list_payload_with_non_object_entry_reports_its_index() -> None:
    results = parse_data_points([point("heart-rate", "2.0", hr_body()), 7], received_at=RECEIVED)
    err = results[1]
    assert isinstance(err, EntryInvalid)
    assert (err.code, err.path) == ("invalid_type", "[1]")


def test_parse_single_object_payload_keeps_root_paths() -> None:
    [err] = parse_data_points(point("heart-rate", "2.0", {}), received_at=RECEIVED)
    assert isinstance(err, EntryInvalid)
    assert (err.code, err.path) == ("missing_field", "body/heart_rate")


def test_parse_empty_list_payload_gives_no_results() -> None:
    assert parse_data_points([], received_at=RECEIVED) == []


@pytest.mark.parametrize("payload", ["[]", 3, None, b"{}"])
def test_parse_payload_neither_object_nor_list_raises_invalid_body(payload: Any) -> None:
    with pytest.raises(EntryInvalid) as info:
        parse_data_points(payload, received_at=RECEIVED)
    assert info.value.code == "invalid_body"


# --- measured values and units ----------------------------------------------------------


@pytest.mark.parametrize("unit", ["kPa", "mm[Hg]", "mmhg", "cmH2O"])
def test_parse_bp_in_other_units_is_rejected(unit: str) -> None:
    for version in SUPPORTED["blood-pressure"]:
        err = error(
            "blood-pressure",
            version,
            bp_body(diastolic_blood_pressure={"value": 10.7, "unit": unit}),
        )
        assert (err.code, err.path) == ("invalid_unit", "body/diastolic_blood_pressure/unit")


@pytest.mark.parametrize(
    ("value", "code", "path"),
    [
        ({"unit": "mmHg"}, "missing_field", "body/systolic_blood_pressure/value"),
        ({"value": 120}, "missing_field", "body/systolic_blood_pressure/unit"),
        ({"value": "120", "unit": "mmHg"}, "invalid_type", "body/systolic_blood_pressure/value"),
        ({"value": True, "unit": "mmHg"}, "invalid_type", "body/systolic_blood_pressure/value"),
        ({"value": 120, "unit": 1}, "invalid_type", "body/systolic_blood_pressure/unit"),
        (
            {"value": math.nan, "unit": "mmHg"},
            "invalid_value",
            "body/systolic_blood_pressure/value",
        ),
        ({"value": -1, "unit": "mmHg"}, "invalid_value", "body/systolic_blood_pressure/value"),
        (120, "invalid_type", "body/systolic_blood_pressure"),
    ],
)
def test_parse_bad_unit_value_names_code_and_path(value: Any, code: str, path: str) -> None:
    err = error("blood-pressure", "3.1", bp_body(systolic_blood_pressure=value))
    assert (err.code, err.path) == (code, path)


def test_parse_heart_rate_3_0_gives_rate_per_minute() -> None:
    reading = parse("heart-rate", "3.0", hr_body(heart_rate={"value": 58.5, "unit": "beats/min"}))
    assert (reading.kind, reading.value, reading.unit) == (ReadingKind.HEART_RATE, 58.5, "/min")
    assert reading.code == "omh:heart-rate:3.0"


def test_parse_step_count_1_0_number_without_time_frame_is_unstated() -> None:
    reading = parse("step-count", "1.0", {"step_count": 7939})
    assert (reading.kind, reading.value, reading.unit) == (ReadingKind.STEP_COUNT, 7939, "{steps}")
    assert reading.effective == UNSTATED
    assert reading.statistic is None


def test_parse_step_count_2_0_with_session_keeps_statistic_and_denominator() -> None:
    # Shape of upstream test-data/omh/step-count/2.0/shouldPass/with-session.json.
    body = {
        "step_count": 20000,
        "effective_time_frame": {
            "time_interval": {
                "start_date_time": "2016-02-05T07:00:00Z",
                "end_date_time": "2016-06-05T07:00:00Z",
            }
        },
        "descriptive_statistic": "maximum",
        "descriptive_statistic_denominator": "session",
    }
    reading = parse("step-count", "2.0", body)
    assert (reading.value, reading.unit, reading.statistic) == (20000, "{steps}", "maximum")
    assert reading.context == {"descriptive_statistic_denominator": "session"}
    assert reading.effective == EffectiveTime(
        utc("2016-02-05T07:00"),
        utc("2016-06-05T07:00"),
        Precision.INTERVAL,
        "2016-02-05T07:00:00Z/2016-06-05T07:00:00Z",
    )


def test_parse_step_count_3_0_unit_value_gives_steps() -> None:
    body = {"step_count": {"value": 12500, "unit": "steps"}, "effective_time_frame": INTERVAL}
    reading = parse("step-count", "3.0", body)
    assert (reading.value, reading.unit, reading.code) == (12500, "{steps}", "omh:step-count:3.0")


@pytest.mark.parametrize(
    ("version", "step_count", "code", "path"),
    [
        ("1.0", -1, "invalid_value", "body/step_count"),
        ("2.0", -5, "invalid_value", "body/step_count"),
        ("3.0", {"value": -5, "unit": "steps"}, "invalid_value", "body/step_count/value"),
        ("3.0", {"value": "6000", "unit": "steps"}, "invalid_type", "body/step_count/value"),
        ("3.0", {"value": 6000, "unit": "step"}, "invalid_unit", "body/step_count/unit"),
        ("2.0", {"value": 6000, "unit": "steps"}, "invalid_type", "body/step_count"),
    ],
)
def test_parse_bad_step_count_is_rejected(
    version: str, step_count: Any, code: str, path: str
) -> None:
    err = error("step-count", version, {"step_count": step_count, "effective_time_frame": INTERVAL})
    assert (err.code, err.path) == (code, path)


@pytest.mark.parametrize("version", ["2.0", "3.0"])
def test_parse_step_count_with_date_time_is_invalid_time_frame(version: str) -> None:
    step_count = 6000 if version == "2.0" else {"value": 6000, "unit": "steps"}
    body = {"step_count": step_count, "effective_time_frame": {"date_time": "2016-02-05T07:00:00Z"}}
    err = error("step-count", version, body)
    assert (err.code, err.path) == ("invalid_time_frame", "body/effective_time_frame")


def test_parse_step_count_2_0_without_time_frame_is_missing_field() -> None:
    err = error("step-count", "2.0", {"step_count": 6000})
    assert (err.code, err.path) == ("missing_field", "body/effective_time_frame")


# --- descriptive fields and statistics ----------------------------------------------------


def test_parse_statistic_enum_follows_the_version() -> None:
    # "20th percentile" is only in IEEE descriptive-statistic-1.0 (blood-pressure 4.0).
    assert (
        parse("blood-pressure", "4.0", bp_body(descriptive_statistic="20th percentile")).statistic
        == "20th percentile"
    )
    err = error("blood-pressure", "3.1", bp_body(descriptive_statistic="20th percentile"))
    assert (err.code, err.path) == ("invalid_value", "body/descriptive_statistic")
    # "count" is in descriptive-statistic-1.1 but not 1.0 (step-count 2.0/3.0).
    assert parse("heart-rate", "2.0", hr_body(descriptive_statistic="count")).statistic == "count"
    err = error(
        "step-count",
        "2.0",
        {"step_count": 1, "effective_time_frame": INTERVAL, "descriptive_statistic": "count"},
    )
    assert (err.code, err.path) == ("invalid_value", "body/descriptive_statistic")


@pytest.mark.parametrize(
    ("version", "field_name", "value", "code"),
    [
        ("1.0", "position_during_measurement", "semi-recumbent", "invalid_value"),
        ("2.0", "body_posture", "kneeling", "invalid_value"),
        ("3.0", "measurement_location", "left ear", "invalid_value"),
        ("4.0", "body_posture", 3, "invalid_type"),
        ("2.0", "user_notes", ["dizzy"], "invalid_type"),
    ],
)
def test_parse_bad_descriptive_field_is_rejected(
    version: str, field_name: str, value: Any, code: str
) -> None:
    err = error("blood-pressure", version, bp_body(**{field_name: value}))
    assert (err.code, err.path) == (code, f"body/{field_name}")


def test_parse_semi_recumbent_posture_is_kept_in_context() -> None:
    reading = parse("blood-pressure", "4.0", bp_body(body_posture="semi-recumbent"))
    assert reading.context == {"body_posture": "semi-recumbent"}


def test_parse_undeclared_body_field_is_allowed_and_ignored() -> None:
    # No supported body schema sets additionalProperties: false.
    reading = parse("blood-pressure", "3.0", bp_body(user_notes="not in 3.0", pulse=70))
    assert reading.context == {}
    assert parse("heart-rate", "1.0", hr_body(temporal_relationship_to_sleep="x")).context == {}


# --- time frames --------------------------------------------------------------------------


def test_parse_time_frame_with_both_forms_is_unexpected_field() -> None:
    frame = {"date_time": "2024-02-01T08:00:00Z"} | INTERVAL
    err = error("blood-pressure", "3.0", bp_body(effective_time_frame=frame))
    assert (err.code, err.path) == ("unexpected_field", "body/effective_time_frame")


def test_parse_interval_with_start_end_and_duration_is_unexpected_field() -> None:
    interval = INTERVAL["time_interval"] | {"duration": {"value": 1, "unit": "d"}}
    err = error("heart-rate", "3.0", hr_body(effective_time_frame={"time_interval": interval}))
    assert (err.code, err.path) == ("unexpected_field", "body/effective_time_frame/time_interval")


def test_parse_interval_ending_before_start_is_invalid_time_frame() -> None:
    frame = {
        "time_interval": {
            "start_date_time": "2024-02-02T00:00:00Z",
            "end_date_time": "2024-02-01T00:00:00Z",
        }
    }
    err = error("blood-pressure", "4.0", bp_body(effective_time_frame=frame))
    assert (err.code, err.path) == ("invalid_time_frame", "body/effective_time_frame/time_interval")


def test_parse_interval_with_negative_duration_is_invalid_time_frame() -> None:
    frame = {
        "time_interval": {
            "start_date_time": "2024-02-02T00:00:00Z",
            "duration": {"value": -2, "unit": "h"},
        }
    }
    err = error("heart-rate", "2.0", hr_body(effective_time_frame=frame))
    assert (err.code, err.path) == ("invalid_time_frame", "body/effective_time_frame/time_interval")


@pytest.mark.parametrize(
    "raw",
    [
        "2024-02-01T08:00:00",
        "2024-02-01",
        "2024-02-01 08:00:00Z",
        "2024-02-30T08:00:00Z",
        "2024-02-01T24:00:00Z",
        "2024-02-01T08:00:00+2400",
        "yesterday",
        1706774400,
    ],
)
def test_parse_bad_date_time_is_invalid_datetime(raw: Any) -> None:
    err = error("heart-rate", "1.0", hr_body(effective_time_frame={"date_time": raw}))
    assert (err.code, err.path) == ("invalid_datetime", "body/effective_time_frame/date_time")


def test_parse_date_time_without_offset_is_rejected_in_every_version() -> None:
    frame = {"date_time": "2020-02-05T07:25:00"}
    for version in SUPPORTED["blood-pressure"]:
        err = error("blood-pressure", version, bp_body(effective_time_frame=frame))
        assert err.code == "invalid_datetime"
        assert "offset" in err.message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-02-01t08:00:00z", utc("2024-02-01T08:00")),
        ("2024-02-01T08:00:00.123456789-05:30", datetime(2024, 2, 1, 13, 30, 0, 123456, UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_parse_rfc3339_date_time_variants_are_accepted(raw: str, expected: datetime) -> None:
    reading = parse("heart-rate", "2.0", hr_body(effective_time_frame={"date_time": raw}))
    assert reading.effective == EffectiveTime(expected, None, Precision.SECOND, raw)


@pytest.mark.parametrize(
    ("interval", "start", "end", "raw"),
    [
        (
            {"start_date_time": "2024-02-01T08:00:00Z", "duration": {"value": 90, "unit": "min"}},
            "2024-02-01T08:00",
            "2024-02-01T09:30",
            "2024-02-01T08:00:00Z/90 min",
        ),
        (
            {"end_date_time": "2024-02-01T08:00:00+01:00", "duration": {"value": 1.5, "unit": "h"}},
            "2024-02-01T05:30",
            "2024-02-01T07:00",
            "1.5 h/2024-02-01T08:00:00+01:00",
        ),
        (
            {"start_date_time": "2024-02-01T00:00:00Z", "duration": {"value": 2, "unit": "wk"}},
            "2024-02-01T00:00",
            "2024-02-15T00:00",
            "2024-02-01T00:00:00Z/2 wk",
        ),
        (  # UCUM "mo": the mean Julian month, 30.4375 days
            {"start_date_time": "2024-02-01T00:00:00Z", "duration": {"value": 1, "unit": "Mo"}},
            "2024-02-01T00:00",
            "2024-03-02T10:30",
            "2024-02-01T00:00:00Z/1 Mo",
        ),
    ],
)
def test_parse_interval_with_duration_computes_the_other_end(
    interval: dict[str, Any], start: str, end: str, raw: str
) -> None:
    reading = parse(
        "blood-pressure", "4.0", bp_body(effective_time_frame={"time_interval": interval})
    )
    assert reading.effective == EffectiveTime(utc(start), utc(end), Precision.INTERVAL, raw)


@pytest.mark.parametrize(
    ("duration", "code", "path_tail"),
    [
        ({"value": 1, "unit": "s"}, "invalid_unit", "duration/unit"),
        ({"value": 1}, "missing_field", "duration/unit"),
        ("PT1H", "invalid_type", "duration"),
    ],
)
def test_parse_bad_duration_is_rejected(duration: Any, code: str, path_tail: str) -> None:
    frame = {"time_interval": {"start_date_time": "2024-02-01T00:00:00Z", "duration": duration}}
    err = error("heart-rate", "2.0", hr_body(effective_time_frame=frame))
    assert (err.code, err.path) == (code, f"body/effective_time_frame/time_interval/{path_tail}")


def test_parse_date_with_part_of_day_gives_the_day_span() -> None:
    frame = {"time_interval": {"date": "2016-02-29", "part_of_day": "morning"}}
    reading = parse("blood-pressure", "3.1", bp_body(effective_time_frame=frame))
    assert reading.effective == EffectiveTime(
        utc("2016-02-29T00:00"), utc("2016-03-01T00:00"), Precision.DAY, "2016-02-29/morning"
    )


@pytest.mark.parametrize(
    ("interval", "code", "path_tail"),
    [
        ({"date": "2013-02-05"}, "invalid_time_frame", ""),  # 1.0 requires part_of_day too
        ({"date": "2013-02-30", "part_of_day": "night"}, "invalid_datetime", "/date"),
        ({"date": "5 Feb 2013", "part_of_day": "night"}, "invalid_datetime", "/date"),
        ({"date": "2013-02-05", "part_of_day": "noon"}, "invalid_value", "/part_of_day"),
        ({"start_date_time": "2013-02-05T07:25:00Z"}, "invalid_time_frame", ""),
        ("2013-02-05", "invalid_type", ""),
    ],
)
def test_parse_bad_omh_time_interval_is_rejected(interval: Any, code: str, path_tail: str) -> None:
    err = error("blood-pressure", "1.0", bp_body(effective_time_frame={"time_interval": interval}))
    assert (err.code, err.path) == (code, f"body/effective_time_frame/time_interval{path_tail}")


@pytest.mark.parametrize("frame", [{}, {"start_date_time": "2024-02-01T00:00:00Z"}, "now"])
def test_parse_bad_time_frame_is_rejected(frame: Any) -> None:
    err = error("heart-rate", "2.0", hr_body(effective_time_frame=frame))
    assert err.code in {"invalid_time_frame", "invalid_type"}
    assert err.path == "body/effective_time_frame"


def test_parse_absent_time_frame_uses_header_creation_time() -> None:
    reading = parse("heart-rate", "1.1", {"heart_rate": {"value": 70, "unit": "beats/min"}})
    assert reading.effective == EffectiveTime(CREATED, None, Precision.UNSTATED, "")


@pytest.mark.parametrize(
    ("interval", "code"),
    [
        ("garbage", "invalid_time_frame"),  # the valid date_time may not stand in
        (INTERVAL["time_interval"], "unexpected_field"),  # both forms valid: oneOf fails
    ],
)
def test_parse_step_count_with_date_time_beside_interval_is_rejected(
    interval: Any, code: str
) -> None:
    frame = {"date_time": "2016-02-05T07:00:00Z", "time_interval": interval}
    body = {"step_count": {"value": 1, "unit": "steps"}, "effective_time_frame": frame}
    err = error("step-count", "3.0", body)
    assert (err.code, err.path) == (code, "body/effective_time_frame")
