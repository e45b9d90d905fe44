"""The envelope editor: versions, stale edits, validation naming the field, templates, and
re-routing of queued proposals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import clock
from loops.models import MedicationRegimen, PatientNotice, Proposal, ProposalStatus
from loops.review import flows
from loops.review import service as review
from policies.envelope_templates import TEMPLATES, envelope_template
from tests.conftest import World

DELEGATE_ALL = {
    "auto_actions": ["decrease", "hold", "increase"],
    "max_dose_step": 3,
}


def _put(
    client: TestClient, world: World, patient: str, rules: dict[str, Any], expected: int | None
) -> Any:
    return client.put(
        f"/api/v1/patients/{world.patients[patient].id}/envelope",
        json={"rules": rules, "reason": "review after clinic visit", "expected_version": expected},
        headers=world.auth("clina" if patient.startswith("pa") else "clinb"),
    )


def test_envelope_template_when_drug_known_caps_at_ladder_top() -> None:
    assert set(TEMPLATES) >= {"amlodipine", "lisinopril", "losartan", "chlorthalidone"}
    assert envelope_template("Chlorthalidone").auto_actions == {"decrease", "hold"}
    assert envelope_template("amlodipine", ladder_steps=2).max_dose_step == 1
    assert envelope_template("unknown-drug").auto_actions == {"hold"}
    for drug in TEMPLATES:  # every template satisfies the envelope's own floors
        assert envelope_template(drug).min_cuff_readings_7d >= 12


def test_envelope_edit_when_current_creates_a_version_in_force_at_once(
    client: TestClient,
    world: World,
    regimens: dict[str, MedicationRegimen],
    count_audit: Callable[..., int],
) -> None:
    pid = world.patients["pa1"].id
    listed = client.get(f"/api/v1/patients/{pid}/envelopes", headers=world.auth("clina")).json()
    assert [v["version"] for v in listed["versions"]] == [1]
    assert listed["in_force_version"] == 1
    assert listed["drug"] == "lisinopril"
    assert listed["template"]["max_dose_step"] == 2
    response = _put(client, world, "pa1", DELEGATE_ALL, 1)
    assert response.status_code == 200
    assert response.json()["envelope"]["version"] == 2
    assert response.json()["envelope"]["author"] == "Clina"
    listed = client.get(f"/api/v1/patients/{pid}/envelopes", headers=world.auth("clina")).json()
    assert [v["version"] for v in listed["versions"]] == [2, 1]
    assert listed["in_force_version"] == 2
    assert listed["versions"][0]["reason"] == "review after clinic visit"
    assert count_audit(action="envelope.write", outcome="success") == 1
    assert count_audit(action="envelope.read") == 2


def test_envelope_edit_when_stale_is_409_naming_the_other_editor(
    client: TestClient, world: World, regimens: dict[str, MedicationRegimen]
) -> None:
    assert _put(client, world, "pa1", DELEGATE_ALL, 1).status_code == 200
    stale = _put(client, world, "pa1", {"auto_actions": ["hold"]}, 1)
    assert stale.status_code == 409
    problem = stale.json()
    assert problem["code"] == "stale_envelope"
    assert problem["holder"] == "Clina"
    assert problem["at"]


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        ({"min_cuff_readings_7d": 5}, "min_cuff_readings_7d"),
        ({"max_step_change": 2}, "max_step_change"),
        ({"bogus": 1}, "bogus"),
        ({"min_dose_step": 2, "max_dose_step": 1}, "max_dose_step"),
        ({"max_dose_step": 7}, "max_dose_step"),
        ({"auto_actions": ["double"]}, "auto_actions.0"),
    ],
)
def test_envelope_edit_when_rules_invalid_is_422_naming_the_field(
    client: TestClient,
    world: World,
    regimens: dict[str, MedicationRegimen],
    rules: dict[str, Any],
    field: str,
) -> None:
    response = _put(client, world, "pa1", rules, 1)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert response.json()["code"] == "invalid_rules"


def test_envelope_edit_when_reason_missing_is_422(
    client: TestClient, world: World, regimens: dict[str, MedicationRegimen]
) -> None:
    response = client.put(
        f"/api/v1/patients/{world.patients['pa1'].id}/envelope",
        json={"rules": DELEGATE_ALL, "reason": "  ", "expected_version": 1},
        headers=world.auth("clina"),
    )
    assert response.status_code == 422
    assert response.json()["field"] == "reason"


def test_envelope_edit_when_new_envelope_allows_it_delivers_a_fresh_queued_proposal(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    propose: Callable[..., Proposal],
    add_readings: Callable[..., None],
) -> None:
    add_readings("pa1", 150, 92)
    fresh = propose("pa1", age=timedelta(hours=2))
    response = _put(client, world, "pa1", DELEGATE_ALL, 1)
    assert response.status_code == 200
    (item,) = response.json()["rerouted"]
    assert item["proposal_id"] == fresh.id
    assert item["delivered"] is True
    assert item["old_route"] == "clinician_review"
    assert item["new_route"] == "auto_deliver"
    assert item["old_reasons"] == ["action_not_auto_deliverable"]
    assert item["reasons"] == []
    with short() as s:
        proposal = s.get(Proposal, fresh.id)
        regimen = s.get(MedicationRegimen, fresh.regimen_id)
        assert proposal is not None
        assert proposal.status == ProposalStatus.DELIVERED
        assert proposal.envelope_version == 2
        assert proposal.delivered_at is not None
        assert regimen is not None
        assert regimen.current_step == 2
        notice = s.scalars(select(PatientNotice)).one()
        assert notice.text.startswith("New dose: lisinopril 20 mg")


def test_envelope_edit_when_queued_proposal_is_old_keeps_it_with_reasons(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    propose: Callable[..., Proposal],
    add_readings: Callable[..., None],
) -> None:
    add_readings("pa1", 150, 92)
    old = propose("pa1", age=timedelta(hours=30))
    (item,) = _put(client, world, "pa1", DELEGATE_ALL, 1).json()["rerouted"]
    assert item["delivered"] is False
    assert item["reasons"] == [flows.TOO_OLD]
    with short() as s:
        proposal = s.get(Proposal, old.id)
        assert proposal is not None
        assert proposal.status == ProposalStatus.PENDING_REVIEW
        assert proposal.reasons == [flows.TOO_OLD]
        assert proposal.envelope_version == 2


def test_envelope_edit_when_still_outside_updates_the_reasons(
    client: TestClient,
    world: World,
    short: Callable[[], Session],
    propose: Callable[..., Proposal],
    add_readings: Callable[..., None],
) -> None:
    add_readings("pa1", 150, 92, days=3)  # 6 readings: below the sufficiency floor
    p = propose("pa1", confidence=0.85)
    rules = DELEGATE_ALL | {"min_confidence": 0.95}
    (item,) = _put(client, world, "pa1", rules, 1).json()["rerouted"]
    assert item["delivered"] is False
    assert item["reasons"] == ["confidence_below_envelope", "insufficient_validated_cuff_data"]
    with short() as s:
        proposal = s.get(Proposal, p.id)
        assert proposal is not None
        assert proposal.reasons == item["reasons"]
        assert proposal.route == "clinician_review"


def test_current_state_when_alert_open_counts_it_as_evidence(
    world: World,
    short: Callable[[], Session],
    regimens: dict[str, MedicationRegimen],
    add_readings: Callable[..., None],
) -> None:
    # At noon, so that two readings a day for 7 days fall on 7 local days at any hour the
    # test runs (before 11:00 UTC the newest two would land on the day before).
    noon = clock.utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    add_readings("pa1", 150, 92, now=noon)
    with short() as s:
        state = flows.current_state(s, patient_id=world.patients["pa1"].id, now=noon)
        assert state is not None
        assert state.evidence.cuff_readings_7d == 14
        assert state.evidence.cuff_days_7d >= 4
        assert state.evidence.open_alerts == 0
        # pa2 has no readings for 60 days: a data gap the rules would raise now.
        other = flows.current_state(s, patient_id=world.patients["pa2"].id, now=clock.utcnow())
        assert other is not None
        assert other.evidence.open_alerts == 1
        assert not s.dirty
        assert not s.new


def test_envelope_history_when_edited_lists_newest_first(
    world: World,
    short: Callable[[], Session],
    regimens: dict[str, MedicationRegimen],
) -> None:
    pid = world.patients["pa1"].id
    with short() as s:
        edit = review.edit_envelope(
            s,
            patient_id=pid,
            user=world.users["clina"],
            rules=DELEGATE_ALL,
            reason="tighten",
            expected_version=1,
            now=clock.utcnow(),
        )
        assert edit.envelope.version == 2
        assert edit.rerouted == []
        s.commit()
    with short() as s:
        assert [e.version for e in review.envelope_history(s, patient_id=pid)] == [2, 1]
