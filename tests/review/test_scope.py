"""A clinician outside the patient's care team gets 404 on every review endpoint of that
patient, each refusal audited; nothing of the patient leaks."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from loops.models import Alert, Proposal
from tests.conftest import World
from tests.review.conftest import decision_body


def test_endpoints_when_clinician_outside_care_team_answer_404(
    client: TestClient,
    world: World,
    propose: Callable[..., Proposal],
    raise_alert: Callable[..., Alert],
    count_audit: Callable[..., int],
) -> None:
    p = propose("pa1")
    alert = raise_alert("pa1")
    decided = client.post(
        f"/api/v1/review/proposals/{propose('pa2').id}/decision",
        json=decision_body(),
        headers=world.auth("clina"),
    ).json()
    pid = world.patients["pa1"].id
    calls = [
        ("GET", f"/api/v1/review/proposals/{p.id}", None),
        ("POST", f"/api/v1/review/proposals/{p.id}/claim", None),
        ("DELETE", f"/api/v1/review/proposals/{p.id}/claim", None),
        ("POST", f"/api/v1/review/proposals/{p.id}/decision", decision_body()),
        ("GET", f"/api/v1/decisions/{decided['id']}", None),
        ("GET", f"/api/v1/patients/{pid}/envelopes", None),
        (
            "PUT",
            f"/api/v1/patients/{pid}/envelope",
            {"rules": {}, "reason": "x", "expected_version": 1},
        ),
        ("POST", f"/api/v1/alerts/{alert.id}/escalate", {"note": "x"}),
        ("POST", f"/api/v1/alerts/{alert.id}/acknowledge", {"note": "x"}),
    ]
    before = count_audit(outcome="denied")
    headers = world.auth("clinb")
    for method, url, body in calls:
        response = client.request(method, url, json=body, headers=headers)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["code"] == "not_found"
        for secret in (pid, world.patients["pa1"].pseudonym, world.patients["pa1"].family_name):
            assert secret not in response.text
    assert count_audit(outcome="denied") == before + len(calls)
    # Listings simply leave the patient out.
    for url in ("/api/v1/review/queue", "/api/v1/review/alerts", "/api/v1/review/panel"):
        response = client.get(url, headers=headers)
        assert response.status_code == 200
        assert pid not in response.text
        assert p.id not in response.text


def test_endpoints_when_patient_or_admin_calls_are_refused(
    client: TestClient, world: World, propose: Callable[..., Proposal]
) -> None:
    p = propose("pa1")
    for who in ("pa1", "admin", "auditor", "mleng"):
        headers = world.auth(who)
        assert client.get("/api/v1/review/queue", headers=headers).status_code == 403
        assert client.get(f"/api/v1/review/proposals/{p.id}", headers=headers).status_code == 403
        decided = client.post(
            f"/api/v1/review/proposals/{p.id}/decision", json=decision_body(), headers=headers
        )
        assert decided.status_code == 403
