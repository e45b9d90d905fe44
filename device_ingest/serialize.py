"""Stored readings as FHIR R4 resources and OperationOutcomes (pure)."""

from __future__ import annotations

from typing import Any

from app.core.clock import iso
from device_ingest.formats import ReadingKind
from device_ingest.models import Reading, ReadingStatus

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INGEST_CODES = "https://clinaiops.org/fhir/CodeSystem/ingest-codes"
DEVICE_CLASS = "https://clinaiops.org/fhir/CodeSystem/device-class"
_PANEL = {
    "85354-9": "Blood pressure panel with all children optional",
    "55284-4": "Blood pressure systolic and diastolic",
}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _code(reading: Reading) -> dict[str, Any]:
    if reading.code.startswith("omh:"):
        # Open mHealth input is shown under the LOINC code of what it measures.
        loinc = {
            ReadingKind.BLOOD_PRESSURE: "85354-9",
            ReadingKind.HEART_RATE: "8867-4",
            ReadingKind.STEP_COUNT: "55423-8",
        }[ReadingKind(reading.kind)]
    else:
        loinc = reading.code
    return {"coding": [{"system": LOINC, "code": loinc, "display": _PANEL.get(loinc, loinc)}]}


def _effective(reading: Reading) -> dict[str, Any]:
    if reading.effective_precision in {"year", "month", "day"} and "/" not in reading.effective_raw:
        return {"effectiveDateTime": reading.effective_raw}  # partial dates stay partial
    if reading.effective_end is not None:
        return {
            "effectivePeriod": {
                "start": iso(reading.effective_start),
                "end": iso(reading.effective_end),
            }
        }
    return {"effectiveDateTime": iso(reading.effective_start)}


def observation(reading: Reading) -> dict[str, Any]:
    """A stored reading as a FHIR R4 vital-signs Observation."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(reading.id),
        "meta": {
            "lastUpdated": iso(reading.received_at),
            "tag": [{"system": DEVICE_CLASS, "code": reading.device_class}],
        },
        "status": "final" if reading.status == ReadingStatus.ACCEPTED else "preliminary",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": _code(reading),
        "subject": {"reference": f"Patient/{reading.patient_id}"},
        "device": {"reference": f"Device/{reading.device_id}"},
        **_effective(reading),
    }
    if reading.kind == ReadingKind.BLOOD_PRESSURE:
        resource["component"] = [
            {
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}
                    ]
                },
                "valueQuantity": _quantity(reading.systolic or 0.0, "mm[Hg]"),
            },
            {
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}
                    ]
                },
                "valueQuantity": _quantity(reading.diastolic or 0.0, "mm[Hg]"),
            },
        ]
    else:
        resource["valueQuantity"] = _quantity(reading.value or 0.0, reading.unit)
    if reading.statistic:
        resource["note"] = [{"text": f"descriptive statistic over the period: {reading.statistic}"}]
    if reading.status == ReadingStatus.QUARANTINED:
        resource["meta"]["tag"].append({"system": INGEST_CODES, "code": "quarantined"})
        resource["interpretation"] = [
            {"text": "quarantined: " + ", ".join(reading.quarantine_reasons)}
        ]
    return resource


def outcome(
    severity: str, code: str, detail: str, *, diagnostics: str = "", expression: str = ""
) -> dict[str, Any]:
    """An OperationOutcome with one issue; `detail` is our machine-readable reason code."""
    issue: dict[str, Any] = {
        "severity": severity,
        "code": code,
        "details": {"coding": [{"system": INGEST_CODES, "code": detail}], "text": detail},
    }
    if diagnostics:
        issue["diagnostics"] = diagnostics
    if expression:
        issue["expression"] = [fhirpath(expression)]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def fhirpath(path: str) -> str:
    """Turn a slash path (`component/0/value`) into FHIRPath (`component[0].value`)."""
    out = ""
    for part in path.strip("/").split("/"):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out
