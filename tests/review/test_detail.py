"""The proposal detail: explanation, envelope in force, chart series, changes and responses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from fastapi.testclient import TestClient

from device_ingest.models import DeviceClass
from loops.models import Alert, MedicationRegimen, Proposal, ProposalStatus
from tests.conftest import World
from tests.review.conftest import decision_body


def test_detail_when_read_shows_what_a_clinician_needs(
    client: TestClient,
    world: World,
    regimens: dict[str, MedicationRegimen],
    propose: Callable[..., Proposal],
    raise_alert: Callable[..., Alert],
    add_readings: Callable[..., None],
    count_audit: Callable[..., int],
) -> None:
    add_readings("pa1", 150, 92)
    add_readings("pa1", 140, 85, days=3, device_class=DeviceClass.CUFFLESS_WEARABLE)
    earlier = propose("pa1", age=timedelta(days=3), status=ProposalStatus.DELIVERED)
    p = propose("pa1")
    raise_alert("pa1", "adherence_drop", "medium")
    response = client.get(f"/api/v1/review/proposals/{p.id}", headers=world.auth("clina"))
    assert response.status_code == 200
    body = response.json()
    assert body["proposal"]["id"] == p.id
    assert body["proposal"]["status"] == "pending_review"
    assert body["drug"] == "lisinopril"
    assert [s["dose"] for s in body["steps"]] == [5.0, 10.0, 20.0, 40.0]
    assert [s["step"] for s in body["steps"] if s["current"]] == [1]
    assert [s["step"] for s in body["steps"] if s["proposed"]] == [2]
    assert body["envelope"]["version"] == 1
    assert body["envelope"]["author"] == "Clina"
    assert body["reasons"] == [
        {
            "code": "action_not_auto_deliverable",
            "text": "The envelope does not delegate this action.",
        }
    ]
    factors = body["explanation"]["factors"]
    assert [f["feature"] for f in factors] == ["cuff_sbp_mean_7d", "cuff_days_7d", "adherence_14d"]
    assert factors[0]["value"] == 145.0
    assert factors[0]["shap"] == 1.2
    assert body["explanation"]["patient_text"] == "Your readings are above your target."
    assert len(body["readings"]["validated_cuff"]) == 14
    assert len(body["readings"]["cuffless"]) == 6
    assert (body["target_systolic"], body["target_diastolic"]) == (135.0, 85.0)
    (change,) = body["medication_changes"]
    assert change["proposal_id"] == earlier.id
    assert change["source"] == "auto"
    assert (change["from_dose"], change["to_dose"], change["by"]) == (10.0, 20.0, None)
    assert [a["type"] for a in body["alerts"]] == ["adherence_drop"]
    assert body["claim"] is None
    assert body["decision"] is None
    assert count_audit(action="proposal.read") == 1


def test_detail_when_decided_shows_the_signature_and_the_change(
    client: TestClient, world: World, propose: Callable[..., Proposal]
) -> None:
    p = propose("pa1")
    client.post(
        f"/api/v1/review/proposals/{p.id}/decision",
        json=decision_body("modify", decided_step=3, reason_code="recent_readings"),
        headers=world.auth("clina"),
    )
    body = client.get(f"/api/v1/review/proposals/{p.id}", headers=world.auth("clina")).json()
    assert body["proposal"]["status"] == "modified"
    assert body["decision"]["signature"]["printed_name"] == "Clina"
    assert body["decision"]["signature"]["meaning"] == "modified as prescriber"
    (change,) = body["medication_changes"]
    assert change["source"] == "modify"
    assert change["to_dose"] == 40.0
    assert change["by"] == "Clina"
    assert body["overdue"] is False
