"""The model registry API: list, lineage, validate, sign off, serving history; who may do
what (ML engineers, clinical leads for the clinical sign-off, auditors read), BOLA-style
checks on names and versions, and the audit trail of each call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import select
from sqlmodel import col

from app.auth.models import LoginAttempt
from audit.models import AuditEntry
from mlops import lifecycle
from mlops.models import ModelSignoff, ModelStatus, ModelVersion, SignoffRole
from tests.conftest import PASSWORD, World
from tests.mlops import gate_models

BASE = "/api/v1/models"
V2 = f"{BASE}/titration/versions/2"
ML_MEANING = lifecycle.SIGNOFF_MEANINGS[SignoffRole.ML_ENGINEER]
LEAD_MEANING = lifecycle.SIGNOFF_MEANINGS[SignoffRole.CLINICAL_LEAD]


@pytest.fixture
def registry_world(world: World, tmp_path: Path) -> World:
    """v1 in production (champion) and v2 a good candidate child of it; clina a clinical lead."""
    s = world.session
    models = gate_models.trained().models
    v1 = gate_models.register(s, models["champion"], tmp_path / "m", status=ModelStatus.PRODUCTION)
    gate_models.register(s, models["good"], tmp_path / "m", parent=v1.version)
    world.users["clina"].is_clinical_lead = True
    s.commit()
    return world


def _entries(world: World, action: str) -> list[AuditEntry]:
    stmt = select(AuditEntry).where(col(AuditEntry.action) == action)
    found = list(world.session.scalars(stmt.execution_options(populate_existing=True)))
    world.session.commit()  # ends the read: on SQLite a transaction holds the writer slot
    return found


def _validate(client: TestClient, world: World) -> None:
    response = client.post(f"{V2}/validate", headers=world.auth("mleng"))
    assert response.status_code == 200, response.text
    assert response.json()["passed"] is True


def _sign(client: TestClient, world: World, user: str, role: str, **kw: str) -> Response:
    meaning = ML_MEANING if role == "ml_engineer" else LEAD_MEANING
    body = {"role": role, "meaning": meaning, "password": PASSWORD, "note": "ok", **kw}
    return client.post(f"{V2}/signoffs", json=body, headers=world.auth(user))


@pytest.mark.parametrize(
    ("user", "status"),
    [("mleng", 200), ("auditor", 200), ("clina", 200), ("pa1", 403), ("admin", 403)],
)
def test_list_models_by_role(
    client: TestClient, registry_world: World, user: str, status: int
) -> None:
    response = client.get(BASE, headers=registry_world.auth(user))
    assert response.status_code == status
    if status == 200:
        body = response.json()
        assert [(v["version"], v["status"], v["aliases"]) for v in body["items"]] == [
            (2, "candidate", []),
            (1, "production", ["champion"]),
        ]
        assert body["aliases"] == {"titration": {"champion": 1}}


def test_list_models_when_anonymous_401(client: TestClient, registry_world: World) -> None:
    assert client.get(BASE).status_code == 401


def test_read_version_shows_lineage_and_is_audited(
    client: TestClient, registry_world: World
) -> None:
    response = client.get(V2, headers=registry_world.auth("auditor"))
    assert response.status_code == 200
    body = response.json()
    assert body["label"] == "titration:v2"
    assert [p["version"] for p in body["parents"]] == [1]
    assert body["params"]["feature_set"] == "clinaiops-features/2"
    assert body["ready_for_rollout"] == [
        "status_not_validated",
        "gates_not_passed",
        "signoff_ml_engineer",
        "signoff_clinical_lead",
    ]
    assert body["signoff_meanings"]["clinical_lead"] == LEAD_MEANING
    assert [(t["from_status"], t["to_status"]) for t in body["transitions"]] == [
        (None, "candidate")
    ]
    (entry,) = _entries(registry_world, "model.read")
    assert (entry.resource_type, entry.resource_id) == ("model", "titration:v2")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"{BASE}/titration/versions/9", 404),
        (f"{BASE}/other/versions/1", 404),
        (f"{BASE}/titration/versions/0", 422),
        (f"{BASE}/Titration;drop/versions/1", 422),
        (f"{BASE}/titration/versions/99999999999", 422),
    ],
)
def test_read_version_when_unknown_or_malformed_answers_4xx(
    client: TestClient, registry_world: World, path: str, status: int
) -> None:
    assert client.get(path, headers=registry_world.auth("mleng")).status_code == status


def test_validate_when_ml_engineer_runs_gates_and_validates(
    client: TestClient, registry_world: World
) -> None:
    response = client.post(f"{V2}/validate", headers=registry_world.auth("mleng"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["passed"] is True
    assert [g["gate"] for g in body["gates"]] == list(lifecycle.REQUIRED_GATES)
    assert all(g["evidence_sha256"] for g in body["gates"])
    detail = client.get(V2, headers=registry_world.auth("mleng")).json()
    assert detail["status"] == "validated"
    assert detail["validation_runs"][0]["run_id"] == body["run_id"]
    assert [(t["from_status"], t["to_status"]) for t in detail["transitions"]] == [
        (None, "candidate"),
        ("candidate", "validated"),
    ]
    (entry,) = _entries(registry_world, "model.validate")
    assert json.loads(entry.details)["passed"] is True
    # A second run is refused: the version is no longer a candidate.
    again = client.post(f"{V2}/validate", headers=registry_world.auth("mleng"))
    assert (again.status_code, again.json()["code"]) == (409, "not_candidate")


@pytest.mark.parametrize("user", ["clina", "auditor", "pa1", "admin"])
def test_validate_when_not_ml_engineer_403_and_nothing_run(
    client: TestClient, registry_world: World, user: str
) -> None:
    response = client.post(f"{V2}/validate", headers=registry_world.auth(user))
    assert response.status_code == 403
    assert _entries(registry_world, "model.gates") == []


def test_signoffs_when_engineer_and_lead_sign_version_is_ready(
    client: TestClient, registry_world: World
) -> None:
    _validate(client, registry_world)
    first = _sign(client, registry_world, "mleng", "ml_engineer")
    assert first.status_code == 201, first.text
    second = _sign(client, registry_world, "clina", "clinical_lead")
    assert second.status_code == 201
    shown = second.json()
    assert (shown["signer_name"], shown["meaning"], shown["signature_valid"]) == (
        "Clina",
        LEAD_MEANING,
        True,
    )
    detail = client.get(V2, headers=registry_world.auth("auditor")).json()
    assert detail["ready_for_rollout"] == []
    assert [s["role"] for s in detail["signoffs"]] == ["ml_engineer", "clinical_lead"]
    assert all(s["signature_valid"] for s in detail["signoffs"])
    assert "password" not in json.dumps(
        [e.details for e in _entries(registry_world, "model.signoff")]
    )


@pytest.mark.parametrize(
    ("user", "role", "status", "code"),
    [
        ("clinb", "clinical_lead", 403, "wrong_role"),  # not a clinical lead
        ("clina", "ml_engineer", 403, "wrong_role"),
        ("mleng", "clinical_lead", 403, "wrong_role"),
        ("auditor", "ml_engineer", 403, "forbidden"),  # the policy refuses before the service
        ("pa1", "clinical_lead", 403, "forbidden"),
    ],
)
def test_signoff_when_role_does_not_fit_403_audited_as_denied(
    client: TestClient, registry_world: World, user: str, role: str, status: int, code: str
) -> None:
    _validate(client, registry_world)
    response = _sign(client, registry_world, user, role)
    assert response.status_code == status
    assert response.json()["code"] == code
    registry_world.session.expire_all()
    assert registry_world.session.scalars(select(ModelSignoff)).all() == []
    denied = [e for e in _entries(registry_world, "model.signoff") if e.outcome == "denied"]
    assert len(denied) == 1


def test_signoff_when_password_wrong_403_counts_failure_and_signs_nothing(
    client: TestClient, registry_world: World
) -> None:
    _validate(client, registry_world)
    response = _sign(client, registry_world, "mleng", "ml_engineer", password="wrong-password")
    assert response.status_code == 403
    assert response.json()["code"] == "signature_invalid"
    registry_world.session.expire_all()
    attempt = registry_world.session.get(LoginAttempt, "mleng")
    assert attempt is not None
    assert attempt.failures == 1
    assert registry_world.session.scalars(select(ModelSignoff)).all() == []


@pytest.mark.parametrize(
    ("prepare", "body", "status", "code"),
    [
        (False, {}, 409, "status_not_validated"),
        (True, {"meaning": "I approve"}, 422, "meaning_mismatch"),
        (True, {"role": "boss"}, 422, "validation_error"),
    ],
)
def test_signoff_when_refused_answers_problem(
    client: TestClient,
    registry_world: World,
    prepare: bool,
    body: dict[str, str],
    status: int,
    code: str,
) -> None:
    if prepare:
        _validate(client, registry_world)
    response = _sign(client, registry_world, "mleng", body.pop("role", "ml_engineer"), **body)
    assert response.status_code == status
    assert response.json()["code"] == code


def test_signoff_when_same_role_signed_twice_409(client: TestClient, registry_world: World) -> None:
    _validate(client, registry_world)
    registry_world.users["clinb"].is_clinical_lead = True
    registry_world.session.commit()
    assert _sign(client, registry_world, "clina", "clinical_lead").status_code == 201
    again = _sign(client, registry_world, "clinb", "clinical_lead")
    assert again.status_code == 409
    assert again.json()["code"] == "already_signed"


def test_history_shows_intervals_and_transitions(client: TestClient, registry_world: World) -> None:
    response = client.get(f"{BASE}/titration/history", headers=registry_world.auth("auditor"))
    assert response.status_code == 200
    body = response.json()
    assert body["champion"] == 1
    assert [(i["version"], i["end"]) for i in body["intervals"]] == [(1, None)]
    assert [(t["version"], t["to_status"]) for t in body["transitions"]] == [
        (1, "production"),
        (2, "candidate"),
    ]
    unknown = client.get(f"{BASE}/nothing/history", headers=registry_world.auth("auditor"))
    assert unknown.status_code == 404
    patient = client.get(f"{BASE}/titration/history", headers=registry_world.auth("pa1"))
    assert patient.status_code == 403


def test_versions_when_listed_show_no_patient_rows(
    client: TestClient, registry_world: World
) -> None:
    _validate(client, registry_world)
    detail = client.get(V2, headers=registry_world.auth("auditor")).text
    for pid in (p.id for p in registry_world.patients.values()):
        assert pid not in detail
    version = registry_world.session.scalars(
        select(ModelVersion).where(col(ModelVersion.version) == 2)
    ).one()
    assert version.status == ModelStatus.VALIDATED
