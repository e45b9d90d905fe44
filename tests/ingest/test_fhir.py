"""FHIR payload and resource parsing: structure via fhir.resources, meaning via our rules."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from device_ingest.fhir import (
    EntryRequest,
    FhirPayload,
    parse_payload,
    parse_resource,
)
from device_ingest.formats import (
    MMHG_PER_KPA,
    EntryInvalid,
    ParsedMedicationEvent,
    ParsedReading,
    Precision,
    ReadingKind,
)

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"
HL7_BP = CONFORMANCE / "hl7-fhir" / "observation-example-bloodpressure.json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
WHEN = "2024-05-01T08:30:00+02:00"


def hl7_example() -> dict[str, Any]:
    """The HL7 blood-pressure example with its subject pointed at our patient."""
    doc: dict[str, Any] = json.loads(HL7_BP.read_text(encoding="utf-8"))
    doc["subject"] = {"reference": "Patient/x"}
    return doc


def quantity(value: object, unit: str, *, code: str | None = None) -> dict[str, Any]:
    """A UCUM Quantity (code defaults to the unit text)."""
    return {"value": value, "unit": unit, "system": UCUM, "code": code or unit}


def bp(
    sbp: object = 128, dbp: object = 82, *, unit: str = "mm[Hg]", code: str = "85354-9"
) -> dict[str, Any]:
    """A device blood-pressure Observation."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "Patient/x"},
        "effectiveDateTime": WHEN,
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": quantity(sbp, unit),
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": quantity(dbp, unit),
            },
        ],
    }


def single(code: str, value: object, unit: str) -> dict[str, Any]:
    """A single-value device Observation (heart rate, steps)."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": WHEN,
        "valueQuantity": quantity(value, unit),
    }


def med(status: str = "completed", **extra: Any) -> dict[str, Any]:
    """A MedicationAdministration for an RxNorm drug."""
    doc: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "status": status,
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076"}]
        },
        "subject": {"reference": "Patient/x"},
        "effectiveDateTime": WHEN,
    }
    doc.update(extra)
    return doc


def reading(doc: object, *, fast: bool = True) -> ParsedReading:
    """Parse a document that must be a reading."""
    parsed = parse_resource(doc, index=0, fast=fast)
    assert isinstance(parsed, ParsedReading)
    return parsed


def event(doc: object) -> ParsedMedicationEvent:
    """Parse a document that must be a dose event."""
    parsed = parse_resource(doc, index=0)
    assert isinstance(parsed, ParsedMedicationEvent)
    return parsed


def refusal(doc: object, *, fast: bool = True) -> EntryInvalid:
    """Parse a document that must be refused; the error, checked the same both ways."""
    with pytest.raises(EntryInvalid) as caught:
        parse_resource(doc, index=3, fast=fast)
    with pytest.raises(EntryInvalid) as slow:
        parse_resource(doc, index=3, fast=not fast)
    assert (slow.value.code, slow.value.path) == (caught.value.code, caught.value.path)
    assert caught.value.message.startswith("entry 3: ")
    return caught.value


# ----------------------------------------------------------------- the HL7 example


def test_parse_hl7_example_as_blood_pressure() -> None:
    parsed = reading(hl7_example())
    assert parsed.kind is ReadingKind.BLOOD_PRESSURE
    assert parsed.code == "85354-9"
    # the file's components: systolic 107 mm[Hg], diastolic 60 mm[Hg]
    assert (parsed.systolic, parsed.diastolic) == (107.0, 60.0)
    assert parsed.value is None
    assert parsed.unit == "mm[Hg]"
    assert parsed.subject == "Patient/x"
    assert parsed.context == {"body_site": "Right arm"}


def test_parse_hl7_example_keeps_day_precision() -> None:
    effective = reading(hl7_example()).effective
    assert effective.precision is Precision.DAY
    assert effective.raw == "2012-09-17"
    assert effective.start == datetime(2012, 9, 17, tzinfo=UTC)
    assert effective.end == datetime(2012, 9, 18, tzinfo=UTC)


def test_parse_hl7_example_leaves_input_unchanged() -> None:
    doc = hl7_example()
    before = copy.deepcopy(doc)
    reading(doc, fast=False)
    reading(doc, fast=True)
    assert doc == before


# ----------------------------------------------------------------- blood pressure


def test_parse_device_bp_on_fast_path() -> None:
    parsed = reading(bp(121, 79.5))
    assert (parsed.systolic, parsed.diastolic) == (121.0, 79.5)
    assert parsed.effective.precision is Precision.SECOND
    assert parsed.effective.start == datetime(2024, 5, 1, 6, 30, tzinfo=UTC)
    assert parsed.effective.raw == WHEN
    assert parsed == reading(bp(121, 79.5), fast=False)


def test_parse_bp_when_synthea_panel_code() -> None:
    parsed = reading(bp(code="55284-4"))
    assert parsed.kind is ReadingKind.BLOOD_PRESSURE
    assert parsed.code == "55284-4"


def test_convert_bp_when_kpa() -> None:
    parsed = reading(bp(16, 10.67, unit="kPa"))
    assert parsed.systolic == round(16 * MMHG_PER_KPA, 1) == 120.0
    assert parsed.diastolic == round(10.67 * MMHG_PER_KPA, 1) == 80.0
    assert parsed.unit == "mm[Hg]"


def test_parse_bp_when_unit_text_only() -> None:
    doc = bp()
    for component in doc["component"]:
        component["valueQuantity"] = {"value": 120, "unit": "mmHg"}
    assert reading(doc).systolic == 120.0


def test_parse_bp_when_code_names_mmhg_unit() -> None:
    assert reading(bp(unit="mmHg")).systolic == 128.0


def test_parse_bp_when_ucum_code_disagrees_with_unit_text() -> None:
    doc = bp(16, 10)
    for component in doc["component"]:
        component["valueQuantity"].update(code="kPa", unit="mmHg")
    assert reading(doc).systolic == 120.0  # the UCUM code decides


def test_parse_code_when_loinc_is_not_first_coding() -> None:
    doc = bp()
    doc["code"]["coding"].insert(0, {"system": "http://snomed.info/sct", "code": "75367002"})
    assert reading(doc).code == "85354-9"


def test_collect_context_when_site_method_device_notes() -> None:
    doc = bp()
    doc["bodySite"] = {"coding": [{"system": "http://snomed.info/sct", "code": "368209003"}]}
    doc["method"] = {"text": "seated, cuff"}
    doc["device"] = {"reference": "Device/cuff-1", "display": "Omron M7"}
    doc["note"] = [{"text": "after coffee"}, {"text": "left arm sore"}]
    assert reading(doc).context == {
        "body_site": "http://snomed.info/sct|368209003",
        "method": "seated, cuff",
        "device": "Omron M7",
        "device_reference": "Device/cuff-1",
        "notes": ["after coffee", "left arm sore"],
    }


def test_parse_subject_when_absent_is_none() -> None:
    doc = bp()
    del doc["subject"]
    assert reading(doc).subject is None


@pytest.mark.parametrize("status", ["final", "amended", "corrected", "preliminary"])
def test_parse_observation_when_status_is_a_result(status: str) -> None:
    doc = bp()
    doc["status"] = status
    assert reading(doc).systolic == 128.0


# ----------------------------------------------------------------- heart rate and steps


@pytest.mark.parametrize("unit", ["/min", "{beats}/min", "beats/minute"])
def test_parse_heart_rate_when_unit_accepted(unit: str) -> None:
    parsed = reading(single("8867-4", 64, unit))
    assert parsed.kind is ReadingKind.HEART_RATE
    assert (parsed.value, parsed.unit, parsed.code) == (64.0, "/min", "8867-4")
    assert parsed.systolic is None


@pytest.mark.parametrize("code", ["41950-7", "55423-8"])
@pytest.mark.parametrize("unit", ["{steps}", "steps", "1", "/d"])
def test_parse_steps_when_code_and_unit_accepted(code: str, unit: str) -> None:
    parsed = reading(single(code, 8042, unit))
    assert parsed.kind is ReadingKind.STEP_COUNT
    assert (parsed.value, parsed.unit, parsed.code) == (8042.0, "{steps}", code)


def test_parse_steps_when_effective_period() -> None:
    doc = single("41950-7", 10500, "{steps}")
    del doc["effectiveDateTime"]
    doc["effectivePeriod"] = {"start": "2024-05-01T00:00:00Z", "end": "2024-05-02T00:00:00Z"}
    effective = reading(doc).effective
    assert effective.precision is Precision.INTERVAL
    assert effective.raw == "2024-05-01T00:00:00Z/2024-05-02T00:00:00Z"
    assert effective.start == datetime(2024, 5, 1, tzinfo=UTC)
    assert effective.end == datetime(2024, 5, 2, tzinfo=UTC)


def test_parse_period_when_partial_end_is_inclusive() -> None:
    doc = single("41950-7", 10500, "{steps}")
    del doc["effectiveDateTime"]
    doc["effectivePeriod"] = {"start": "2024-05-01", "end": "2024-05-01"}
    effective = reading(doc).effective
    assert (effective.start, effective.end) == (
        datetime(2024, 5, 1, tzinfo=UTC),
        datetime(2024, 5, 2, tzinfo=UTC),
    )
    assert effective.raw == "2024-05-01/2024-05-01"


def test_parse_effective_instant() -> None:
    doc = single("8867-4", 70, "/min")
    del doc["effectiveDateTime"]
    doc["effectiveInstant"] = "2024-05-01T06:30:00.250Z"
    effective = reading(doc).effective
    assert effective.precision is Precision.SECOND
    assert effective.start == datetime(2024, 5, 1, 6, 30, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "precision"), [("2012", Precision.YEAR), ("2012-09", Precision.MONTH)]
)
def test_parse_partial_datetime_keeps_precision(raw: str, precision: Precision) -> None:
    doc = single("8867-4", 70, "/min")
    doc["effectiveDateTime"] = raw
    effective = reading(doc).effective
    assert (effective.precision, effective.raw) == (precision, raw)


# ----------------------------------------------------------------- meaning errors


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "registered", "unknown"])
def test_reject_observation_when_status_not_a_result(status: str) -> None:
    doc = bp()
    doc["status"] = status
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_status", "status")


def test_reject_observation_when_code_unknown() -> None:
    doc = bp(code="29463-7")  # body weight
    err = refusal(doc)
    assert (err.code, err.path) == ("unsupported_code", "code")


def test_reject_observation_when_loinc_code_has_other_system() -> None:
    doc = bp()
    doc["code"]["coding"][0]["system"] = "http://example.org/codes"
    assert refusal(doc).code == "unsupported_code"


def test_reject_observation_when_codes_name_two_kinds() -> None:
    doc = bp()
    doc["code"]["coding"].append({"system": LOINC, "code": "8867-4"})
    err = refusal(doc)
    assert (err.code, err.path) == ("ambiguous_code", "code")


def test_reject_bp_when_component_unit_unknown() -> None:
    doc = bp()
    doc["component"][0]["valueQuantity"] = quantity(128, "cm[H2O]")
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_unit", "component/0/valueQuantity")


def test_reject_heart_rate_when_unit_unknown() -> None:
    err = refusal(single("8867-4", 1.1, "Hz"))
    assert (err.code, err.path) == ("invalid_unit", "valueQuantity")


def test_reject_steps_when_unit_missing() -> None:
    doc = single("41950-7", 100, "{steps}")
    doc["valueQuantity"] = {"value": 100}
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_unit", "valueQuantity")


def test_reject_bp_when_component_value_missing() -> None:
    doc = bp()
    del doc["component"][1]["valueQuantity"]["value"]
    err = refusal(doc)
    assert (err.code, err.path) == ("missing_value", "component/1/valueQuantity/value")


def test_reject_bp_when_component_quantity_missing() -> None:
    doc = bp()
    del doc["component"][1]["valueQuantity"]
    err = refusal(doc)
    assert (err.code, err.path) == ("missing_value", "component/1/valueQuantity")


def test_reject_bp_when_diastolic_component_missing() -> None:
    doc = bp()
    del doc["component"][1]
    err = refusal(doc)
    assert (err.code, err.path) == ("missing_value", "component")


def test_reject_bp_when_systolic_component_repeated() -> None:
    doc = bp()
    doc["component"].append(copy.deepcopy(doc["component"][0]))
    err = refusal(doc)
    assert (err.code, err.path) == ("ambiguous_code", "component/2/code")


def test_reject_heart_rate_when_value_missing() -> None:
    doc = single("8867-4", 70, "/min")
    del doc["valueQuantity"]
    err = refusal(doc)
    assert (err.code, err.path) == ("missing_value", "valueQuantity")


def test_reject_value_when_numeric_string() -> None:
    # fhir.resources takes "120" for a decimal; FHIR JSON numbers are JSON numbers.
    err = refusal(single("8867-4", "120", "/min"))
    assert (err.code, err.path) == ("invalid_value", "valueQuantity/value")


def test_reject_value_when_huge() -> None:
    err = refusal(single("8867-4", 10**40, "/min"))
    assert (err.code, err.path) == ("invalid_value", "valueQuantity/value")


def test_reject_value_when_comparator() -> None:
    doc = single("8867-4", 40, "/min")
    doc["valueQuantity"]["comparator"] = "<"
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_value", "valueQuantity/comparator")


def test_reject_steps_when_negative() -> None:
    err = refusal(single("41950-7", -5, "{steps}"))
    assert (err.code, err.path) == ("invalid_value", "valueQuantity/value")


def test_reject_observation_when_effective_missing() -> None:
    doc = bp()
    del doc["effectiveDateTime"]
    err = refusal(doc)
    assert (err.code, err.path) == ("missing_effective", "effective[x]")


def test_reject_period_when_end_missing() -> None:
    doc = bp()
    del doc["effectiveDateTime"]
    doc["effectivePeriod"] = {"start": "2024-05-01T00:00:00Z"}
    err = refusal(doc)
    assert (err.code, err.path) == ("missing_effective", "effectivePeriod/end")


def test_reject_period_when_end_before_start() -> None:
    doc = bp()
    del doc["effectiveDateTime"]
    doc["effectivePeriod"] = {"start": "2024-05-02", "end": "2024-05-01T23:00:00Z"}
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_datetime", "effectivePeriod")


def test_reject_effective_timing_as_unsupported() -> None:
    doc = bp()
    del doc["effectiveDateTime"]
    doc["effectiveTiming"] = {"event": ["2024-05-01T00:00:00Z"]}
    err = refusal(doc)
    assert (err.code, err.path) == ("missing_effective", "effectiveTiming")


@pytest.mark.parametrize("raw", ["9999-12-31T23:59:59-14:00", "9999-12-31"])
def test_reject_datetime_when_past_representable_range(raw: str) -> None:
    doc = bp()
    doc["effectiveDateTime"] = raw
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_datetime", "effectiveDateTime")


def test_reject_datetime_when_a_number() -> None:
    # fhir.resources takes a Unix timestamp for a dateTime; FHIR JSON does not.
    doc = bp()
    doc["effectiveDateTime"] = 1714545000
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_datetime", "effectiveDateTime")


# ----------------------------------------------------------------- structure errors


def test_reject_structure_when_value_is_bool() -> None:
    doc = bp()
    doc["component"][0]["valueQuantity"]["value"] = True
    doc["component"][1]["code"]["coding"][0]["system"] = 7
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_resource", "component/0/valueQuantity/value")
    assert "component/1/code/coding/0/system" in err.message  # every error is named


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("2020-13-01", "effectiveDateTime"),
        ("2020-02-30T10:00:00Z", "effectiveDateTime"),
        ("2020-02-03T10:00:00", "effectiveDateTime"),
        (" 2020-02-03", "effectiveDateTime"),
    ],
)
def test_reject_structure_when_datetime_malformed(value: str, path: str) -> None:
    doc = bp()
    doc["effectiveDateTime"] = value
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_resource", path)


def test_reject_structure_when_many_errors_names_twenty() -> None:
    doc = bp()
    doc.update({f"unknown{i:02d}": i for i in range(30)})
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_resource", "unknown00")
    assert "unknown19" in err.message
    assert "unknown20" not in err.message
    assert err.message.endswith("; and 10 more")


def test_reject_structure_when_unknown_element() -> None:
    doc = bp()
    doc["component"][0]["valueQuantity"]["precision"] = 1
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_resource", "component/0/valueQuantity/precision")


def test_reject_structure_when_two_effective_choices() -> None:
    doc = bp()
    doc["effectiveInstant"] = "2024-05-01T06:30:00Z"
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_resource", "effective[x]")


def test_reject_structure_when_status_missing() -> None:
    doc = bp()
    del doc["status"]
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_resource", "status")


def test_reject_structure_when_code_is_a_list() -> None:
    doc = bp()
    doc["code"] = [doc["code"]]
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_resource", "code")


def test_reject_resource_when_not_an_object() -> None:
    for doc in ([bp()], "Observation", None, 3):
        err = refusal(doc)
        assert (err.code, err.path) == ("invalid_resource", "")


def test_reject_resource_when_resource_type_missing() -> None:
    doc = bp()
    del doc["resourceType"]
    err = refusal(doc)
    assert (err.code, err.path) == ("invalid_resource", "resourceType")


@pytest.mark.parametrize("resource_type", ["Patient", "Bundle", "MedicationStatement"])
def test_reject_resource_when_type_unsupported(resource_type: str) -> None:
    doc = bp()
    doc["resourceType"] = resource_type
    err = refusal(doc)
    assert (err.code, err.path) == ("unsupported_resource", "resourceType")


# ----------------------------------------------------------------- MedicationAdministration


def test_parse_medication_when_completed() -> None:
    parsed = event(med())
    assert parsed.taken is True
    assert parsed.medication == "http://www.nlm.nih.gov/research/umls/rxnorm|314076"
    assert parsed.reason is None
    assert parsed.subject == "Patient/x"
    assert parsed.effective.raw == WHEN


def test_parse_medication_when_not_done_with_reason_text() -> None:
    parsed = event(med("not-done", statusReason=[{"text": "felt dizzy"}]))
    assert (parsed.taken, parsed.reason) == (False, "felt dizzy")


def test_parse_medication_when_not_done_with_reason_code() -> None:
    reason = {"coding": [{"system": "http://snomed.info/sct", "code": "182890002"}]}
    parsed = event(med("not-done", statusReason=[reason]))
    assert parsed.reason == "http://snomed.info/sct|182890002"


def test_parse_medication_when_not_done_without_reason() -> None:
    assert event(med("not-done")).reason is None


def test_parse_medication_when_reference_or_text() -> None:
    doc = med()
    del doc["medicationCodeableConcept"]
    doc["medicationReference"] = {"reference": "Medication/lisinopril-10"}
    assert event(doc).medication == "Medication/lisinopril-10"
    doc = med(medicationCodeableConcept={"text": "lisinopril 10 mg"})
    assert event(doc).medication == "lisinopril 10 mg"


def test_parse_medication_when_effective_period() -> None:
    doc = med()
    del doc["effectiveDateTime"]
    doc["effectivePeriod"] = {"start": "2024-05-01T08:00:00Z", "end": "2024-05-01T08:05:00Z"}
    assert event(doc).effective.precision is Precision.INTERVAL


@pytest.mark.parametrize("status", ["in-progress", "on-hold", "stopped", "entered-in-error"])
def test_reject_medication_when_status_not_taken_or_missed(status: str) -> None:
    err = refusal(med(status))
    assert (err.code, err.path) == ("invalid_status", "status")


def test_reject_medication_when_effective_missing() -> None:
    doc = med()
    del doc["effectiveDateTime"]
    err = refusal(doc)  # R4 requires effective[x]: a structural error
    assert (err.code, err.path) == ("invalid_resource", "effective[x]")


def test_reject_medication_when_codeable_concept_empty() -> None:
    err = refusal(med(medicationCodeableConcept={"coding": [{"display": "a pill"}]}))
    assert (err.code, err.path) == ("missing_value", "medicationCodeableConcept")


# ----------------------------------------------------------------- payloads


def bundle(kind: str, resources: list[Any], *, request: bool = True) -> dict[str, Any]:
    """A Bundle around resources, with POST requests for batch / transaction."""
    entries = []
    for resource in resources:
        entry: dict[str, Any] = {"fullUrl": "urn:uuid:0", "resource": resource}
        if request and kind != "collection":
            entry["request"] = {"method": "POST", "url": resource["resourceType"]}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def test_parse_payload_when_single_resource() -> None:
    doc = bp()
    assert parse_payload(doc) == FhirPayload("single", [doc], [None])
    assert parse_payload(med()).kind == "single"


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_parse_payload_when_bundle_with_requests(kind: str) -> None:
    resources = [bp(), single("8867-4", 70, "/min"), med()]
    payload = parse_payload(bundle(kind, resources))
    assert payload.kind == kind
    assert payload.entries == resources
    assert payload.requests == [
        EntryRequest("POST", "Observation"),
        EntryRequest("POST", "Observation"),
        EntryRequest("POST", "MedicationAdministration"),
    ]
    assert [type(parse_resource(r, index=i)) for i, r in enumerate(payload.entries)] == [
        ParsedReading,
        ParsedReading,
        ParsedMedicationEvent,
    ]


def test_parse_payload_when_batch_entry_has_no_request() -> None:
    payload = parse_payload(bundle("batch", [bp()], request=False))
    assert payload.requests == [None]


def test_parse_payload_when_collection() -> None:
    doc = bundle("collection", [bp(), hl7_example()])
    doc["entry"][0]["request"] = {"method": "POST", "url": "Observation"}  # ignored
    payload = parse_payload(doc)
    assert (payload.kind, len(payload.entries), payload.requests) == ("collection", 2, [None, None])


def test_parse_payload_when_bundle_empty() -> None:
    payload = parse_payload({"resourceType": "Bundle", "type": "batch"})
    assert (payload.kind, payload.entries, payload.requests) == ("batch", [], [])


def test_parse_payload_keeps_unsupported_entries_for_parse_resource() -> None:
    payload = parse_payload(bundle("batch", [{"resourceType": "Patient"}]))
    with pytest.raises(EntryInvalid) as caught:
        parse_resource(payload.entries[0], index=0)
    assert caught.value.code == "unsupported_resource"


@pytest.mark.parametrize("kind", ["searchset", "document", "message", "history"])
def test_reject_payload_when_bundle_type_unsupported(kind: str) -> None:
    with pytest.raises(EntryInvalid) as caught:
        parse_payload(bundle(kind, [bp()]))
    assert (caught.value.code, caught.value.path) == ("unsupported_bundle_type", "type")


@pytest.mark.parametrize("kind", [None, 3, ""])
def test_reject_payload_when_bundle_type_missing_or_wrong(kind: object) -> None:
    doc = bundle("batch", [bp()])
    doc["type"] = kind
    with pytest.raises(EntryInvalid) as caught:
        parse_payload(doc)
    assert caught.value.code in {"invalid_bundle", "unsupported_bundle_type"}
    assert caught.value.path == "type"


def test_reject_payload_when_transaction_entry_has_no_resource() -> None:
    doc = bundle("transaction", [bp(), bp()])
    del doc["entry"][1]["resource"]
    with pytest.raises(EntryInvalid) as caught:
        parse_payload(doc)
    assert (caught.value.code, caught.value.path) == ("invalid_bundle", "entry/1/resource")


@pytest.mark.parametrize(
    ("entry", "path"),
    [
        ("not an entry", "entry/0"),
        ({"resource": [bp()]}, "entry/0/resource"),
        ({"resource": bp(), "request": "POST"}, "entry/0/request"),
        ({"resource": bp(), "request": {"method": "SEND", "url": "x"}}, "entry/0/request/method"),
        ({"resource": bp(), "request": {"method": "POST"}}, "entry/0/request/url"),
    ],
)
def test_reject_payload_when_entry_malformed(entry: object, path: str) -> None:
    doc = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    with pytest.raises(EntryInvalid) as caught:
        parse_payload(doc)
    assert (caught.value.code, caught.value.path) == ("invalid_bundle", path)


def test_reject_payload_when_entry_not_an_array() -> None:
    doc = {"resourceType": "Bundle", "type": "batch", "entry": {"resource": bp()}}
    with pytest.raises(EntryInvalid) as caught:
        parse_payload(doc)
    assert (caught.value.code, caught.value.path) == ("invalid_bundle", "entry")


@pytest.mark.parametrize("resource_type", ["Patient", "Device", "bundle"])
def test_reject_payload_when_resource_type_unsupported(resource_type: str) -> None:
    with pytest.raises(EntryInvalid) as caught:
        parse_payload({"resourceType": resource_type})
    assert (caught.value.code, caught.value.path) == ("unsupported_resource", "resourceType")


@pytest.mark.parametrize("body", [[], "Bundle", None, 1.5, True])
def test_reject_payload_when_not_an_object(body: object) -> None:
    with pytest.raises(EntryInvalid) as caught:
        parse_payload(body)
    assert (caught.value.code, caught.value.path) == ("invalid_resource", "")


def test_reject_payload_when_resource_type_missing() -> None:
    with pytest.raises(EntryInvalid) as caught:
        parse_payload({"type": "batch", "entry": []})
    assert (caught.value.code, caught.value.path) == ("invalid_resource", "resourceType")
