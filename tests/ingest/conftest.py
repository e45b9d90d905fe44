"""Builders for device payloads and a device-authenticated client."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from device_ingest.models import DeviceClass
from tests.conftest import CONFORMANCE, World

FHIR = "application/fhir+json"
HL7_BP = CONFORMANCE / "hl7-fhir" / "observation-example-bloodpressure.json"
OMH = CONFORMANCE / "openmhealth"


def at(minutes_ago: int = 60) -> str:
    """An effective time `minutes_ago` before now, FHIR-formatted."""
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def bp(
    sbp: float = 128,
    dbp: float = 82,
    when: str | None = None,
    *,
    subject: str | None = None,
    unit: str = "mm[Hg]",
    code: str = "85354-9",
) -> dict[str, Any]:
    """A device blood-pressure Observation."""
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
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
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "effectiveDateTime": when or at(),
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {
                    "value": sbp,
                    "unit": unit,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                },
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {
                    "value": dbp,
                    "unit": unit,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                },
            },
        ],
    }
    if subject is not None:
        obs["subject"] = {"reference": subject}
    return obs


def hr(bpm: float = 70, when: str | None = None) -> dict[str, Any]:
    """A heart-rate Observation."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "effectiveDateTime": when or at(),
        "valueQuantity": {
            "value": bpm,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def bundle(kind: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A Bundle of the given type around resources."""
    entries = []
    for r in resources:
        entry: dict[str, Any] = {"resource": r}
        if kind in {"batch", "transaction"}:
            entry["request"] = {"method": "POST", "url": r["resourceType"]}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def omh_point(name: str, version: str, body: dict[str, Any], n: int = 0) -> dict[str, Any]:
    """An Open mHealth data point around a body."""
    return {
        "header": {
            "id": f"dp-{name}-{version}-{n}",
            "creation_date_time": "2024-01-01T00:00:00Z",
            "schema_id": {"namespace": "omh", "name": name, "version": version},
        },
        "body": body,
    }


@dataclass
class DeviceClient:
    """Posts payloads with a device key."""

    client: TestClient
    key: str
    device_id: str
    patient_id: str

    def post(
        self,
        payload: Any,
        *,
        content_type: str = FHIR,
        key: str | None = None,
        raw: bytes | None = None,
    ) -> Any:
        """POST to the ingest endpoint."""
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": content_type}
        if key is not None:
            headers["Idempotency-Key"] = key
        data = raw if raw is not None else json.dumps(payload).encode()
        return self.client.post("/api/v1/device/observations", content=data, headers=headers)


@pytest.fixture
def device(client: TestClient, world: World) -> DeviceClient:
    """A validated cuff for patient pa1."""
    device_id, key = world.device("pa1")
    return DeviceClient(client, key, device_id, world.patients["pa1"].id)


@pytest.fixture
def make_device(client: TestClient, world: World) -> Callable[..., DeviceClient]:
    """Register another device for a patient."""

    def make(
        patient: str = "pa1", device_class: DeviceClass = DeviceClass.VALIDATED_CUFF
    ) -> DeviceClient:
        device_id, key = world.device(patient, device_class)
        return DeviceClient(client, key, device_id, world.patients[patient].id)

    return make
