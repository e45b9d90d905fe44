"""A care-plan version as a FHIR R4 CarePlan (validated with fhir.resources' R4B models,
wire-compatible with R4): medications as activities, agreed goals as contained Goal
resources, the care team as a contained CareTeam, the clinician's note and the envelope in
plain language as notes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.careplan import CarePlan

from app.core import clock
from loops.care.models import CarePlanVersion, GoalKind
from loops.care.progress import Progress

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ACHIEVEMENT = "http://terminology.hl7.org/CodeSystem/goal-achievement"
# SNOMED CT 38341003: hypertensive disorder, systemic arterial (what every activity is for).
HYPERTENSION = {"system": SNOMED, "code": "38341003", "display": "Hypertensive disorder"}


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def _measure(code: str | None, display: str) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": display}
    if code:
        concept["coding"] = [{"system": LOINC, "code": code, "display": display}]
    return concept


def _targets(goal: Mapping[str, Any]) -> list[dict[str, Any]]:
    kind = GoalKind(goal["kind"])
    value = goal.get("target_value")
    if kind is GoalKind.BLOOD_PRESSURE:
        return [
            {
                "measure": _measure("8480-6", "Systolic blood pressure"),
                "detailRange": {
                    "high": _quantity(goal["target_systolic"], "mmHg", "mm[Hg]"),
                },
            },
            {
                "measure": _measure("8462-4", "Diastolic blood pressure"),
                "detailRange": {
                    "high": _quantity(goal["target_diastolic"], "mmHg", "mm[Hg]"),
                },
            },
        ]
    if value is None:
        return []
    measures = {
        GoalKind.DAILY_STEPS: (
            _measure("41950-7", "Number of steps in 24 hour Measured"),
            {"low": _quantity(value, "steps/day", "/d")},
        ),
        GoalKind.ADHERENCE: (
            _measure(None, "Share of prescribed doses taken"),
            {"low": _quantity(round(100 * value, 4), "%", "%")},
        ),
        GoalKind.SODIUM: (
            _measure(None, "Sodium intake per day (self-reported)"),
            {"high": _quantity(value, "mg/day", "mg/d")},
        ),
        GoalKind.SLEEP: (
            _measure(None, "Sleep duration per night (self-reported)"),
            {"low": _quantity(value, "hours", "h")},
        ),
    }
    measure, detail = measures[kind]
    return [{"measure": measure, "detailRange": detail}]


def _goal(patient_id: str, goal: Mapping[str, Any], progress: Progress | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Goal",
        "id": f"goal-{goal['id']}",
        "lifecycleStatus": "active",
        "description": {"text": goal["text"]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "target": _targets(goal),
    }
    if goal.get("agreed_at"):
        resource["statusDate"] = str(goal["agreed_at"])[:10]
    if progress is not None and progress.met is not None:
        code = "achieving" if progress.met else "not-achieving"
        resource["achievementStatus"] = {
            "coding": [{"system": ACHIEVEMENT, "code": code}],
            "text": progress.sentence,
        }
    if goal.get("note"):
        resource["note"] = [{"text": goal["note"]}]
    return resource


def _activity(med: Mapping[str, Any], goal_refs: list[dict[str, str]]) -> dict[str, Any]:
    product: dict[str, Any] = {"text": med["drug"]}
    if med.get("rxnorm_code"):
        product["coding"] = [{"system": RXNORM, "code": med["rxnorm_code"], "display": med["drug"]}]
    detail: dict[str, Any] = {
        "kind": "MedicationRequest",
        "status": "in-progress",
        "productCodeableConcept": product,
        "description": med["text"],
        "scheduledString": med["frequency"],
        "reasonCode": [{"coding": [HYPERTENSION], "text": "High blood pressure"}],
    }
    if med.get("current_dose") is not None:
        detail["quantity"] = _quantity(med["current_dose"], med["unit"], med["unit"])
    if goal_refs:
        detail["goal"] = goal_refs
    return {"detail": detail}


def care_plan_resource(
    version: CarePlanVersion, *, progress: Mapping[str, Progress] | None = None
) -> dict[str, Any]:
    """The version as a FHIR CarePlan (JSON-ready dict), validated by fhir.resources.

    `progress` (by goal id) adds each contained Goal's achievement status.
    """
    content = version.content
    pid = version.patient_id
    progress = progress or {}
    goals = [_goal(pid, g, progress.get(g["id"])) for g in content.get("goals", [])]
    refs = [{"reference": f"#{g['id']}"} for g in goals]
    bp_refs = [
        {"reference": f"#goal-{g['id']}"}
        for g in content.get("goals", [])
        if g["kind"] == GoalKind.BLOOD_PRESSURE
    ]
    contained: list[dict[str, Any]] = list(goals)
    members = [
        {"member": {"display": m["name"]}, "onBehalfOf": {"display": t["team"]}}
        for t in content.get("care_team", [])
        for m in t["members"]
    ]
    resource: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": f"{pid}-v{version.version}",
        "meta": {
            "versionId": str(version.version),
            "lastUpdated": clock.iso(version.created_at),
        },
        "status": "active",
        "intent": "plan",
        "title": "Home blood pressure care plan",
        "description": "Home blood-pressure monitoring with medication titration within a "
        "clinician-set safety envelope, and shared lifestyle goals.",
        "subject": {"reference": f"Patient/{pid}"},
        "created": clock.iso(version.created_at),
        "category": [{"coding": [HYPERTENSION], "text": "Hypertension"}],
    }
    if members:
        contained.append(
            {
                "resourceType": "CareTeam",
                "id": "careteam",
                "status": "active",
                "name": ", ".join(t["team"] for t in content.get("care_team", [])),
                "subject": {"reference": f"Patient/{pid}"},
                "participant": members,
            }
        )
        resource["careTeam"] = [{"reference": "#careteam"}]
    if contained:
        resource["contained"] = contained
    if refs:
        resource["goal"] = refs
    activities = [_activity(m, bp_refs) for m in content.get("medications", [])]
    if activities:
        resource["activity"] = activities
    notes = []
    if content.get("note"):
        notes.append({"text": content["note"]})
    envelope = content.get("envelope") or {}
    if envelope.get("text"):
        label = (
            f"Automatic titration (safety envelope v{envelope['version']}): "
            if envelope.get("version")
            else "Automatic titration: "
        )
        notes.append({"text": label + " ".join(envelope["text"])})
    if notes:
        resource["note"] = notes
    checked = CarePlan.model_validate(resource)
    out: dict[str, Any] = checked.model_dump(mode="json", exclude_none=True)
    return out
