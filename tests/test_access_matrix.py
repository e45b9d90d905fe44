"""Role x route x own/other patient: every cell answers as the policy says (OWASP API1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from audit import service as audit_service
from audit.keys import load_signing_key
from tests.conftest import World


@dataclass(frozen=True)
class Cell:
    """One request and the status each caller must get."""

    name: str
    method: str
    path: str
    expect: dict[str, int]


CALLERS = ["anon", "pa1", "clina", "clinb", "auditor", "mleng", "admin", "device_pa1"]


def _all(status: int, **overrides: int) -> dict[str, int]:
    return {c: overrides.get(c, status) for c in CALLERS}


CELLS = [
    Cell("me", "GET", "/api/v1/me", _all(200, anon=401, device_pa1=403)),
    Cell(
        "patients-list",
        "GET",
        "/api/v1/patients",
        _all(403, anon=401, pa1=200, clina=200, clinb=200),
    ),
    Cell(
        "patient-pa1",
        "GET",
        "/api/v1/patients/{pa1}",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "patient-pb1",
        "GET",
        "/api/v1/patients/{pb1}",
        _all(403, anon=401, pa1=404, clina=404, clinb=200),
    ),
    Cell(
        "patient-unknown",
        "GET",
        "/api/v1/patients/00000000-0000-4000-8000-000000000000",
        _all(403, anon=401, pa1=404, clina=404, clinb=404),
    ),
    Cell("audit-entries", "GET", "/api/v1/audit/entries", _all(403, anon=401, auditor=200)),
    Cell("audit-sth", "GET", "/api/v1/audit/sth", _all(200, anon=401, device_pa1=403)),
    Cell(
        "audit-proof",
        "GET",
        "/api/v1/audit/proofs/inclusion?seq=1&tree_size=1",
        _all(403, anon=401, auditor=200),
    ),
    Cell("audit-export", "GET", "/api/v1/audit/export", _all(403, anon=401, auditor=200)),
    Cell("audit-checkpoint", "POST", "/api/v1/audit/checkpoints", _all(403, anon=401, admin=201)),
    Cell("admin-users", "GET", "/api/v1/admin/users", _all(403, anon=401, admin=200)),
    Cell(
        "devices-pa1",
        "GET",
        "/api/v1/patients/{pa1}/devices",
        _all(403, anon=401, admin=200, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "devices-pb1",
        "GET",
        "/api/v1/patients/{pb1}/devices",
        _all(403, anon=401, admin=200, pa1=404, clina=404, clinb=200),
    ),
    Cell(
        "device-revoke-unknown",
        "POST",
        "/api/v1/devices/00000000-0000-4000-8000-000000000000/revoke",
        _all(403, anon=401, admin=404, pa1=404, clina=404, clinb=404),
    ),
    Cell(
        "fhir-search-pa1",
        "GET",
        "/fhir/R4/Observation?patient={pa1}",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "fhir-search-pb1",
        "GET",
        "/fhir/R4/Observation?patient=Patient/{pb1}",
        _all(403, anon=401, pa1=404, clina=404, clinb=200),
    ),
    Cell(
        "readings-pa1",
        "GET",
        "/api/v1/patients/{pa1}/readings",
        _all(403, anon=401, pa1=200, clina=200, clinb=404),
    ),
    Cell(
        "quarantine-pa1",
        "GET",
        "/api/v1/patients/{pa1}/quarantine",
        _all(403, anon=401, clina=200, clinb=404, auditor=200),
    ),
    Cell(
        "ingest-as-user",
        "POST",
        "/api/v1/device/observations",
        _all(403, anon=401, device_pa1=415),
    ),
    Cell("device-me", "GET", "/api/v1/device/me", _all(403, anon=401, device_pa1=200)),
]


@pytest.fixture
def setup(world: World) -> tuple[World, dict[str, dict[str, str]]]:
    """Headers for every caller, and a first signed tree head."""
    _, key = world.device("pa1")
    headers: dict[str, dict[str, str]] = {
        "anon": {},
        "device_pa1": {"Authorization": f"Bearer {key}"},
    }
    for name in ("pa1", "clina", "clinb", "auditor", "mleng", "admin"):
        headers[name] = world.auth(name)
    assert world.settings.signing_key_path is not None
    audit_service.checkpoint(world.session, key=load_signing_key(world.settings.signing_key_path))
    world.session.commit()
    return world, headers


def _forbidden_data(world: World, caller: str) -> list[str]:
    """Identifiers and record contents of patients the caller must never see.

    Admins manage accounts and devices, so they see patient ids (links), never records.
    """
    visible = {
        "pa1": {"pa1"},
        "clina": {"pa1", "pa2"},
        "clinb": {"pb1", "pb2"},
        "device_pa1": {"pa1"},
    }.get(caller, set())
    out = []
    for key, patient in world.patients.items():
        if key not in visible:
            if caller != "admin":
                out.append(patient.id)
            out += [patient.given_name, patient.family_name, patient.pseudonym]
    return out


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_access_matrix_when_each_role_calls_answers_as_policy(
    client: TestClient,
    setup: tuple[World, dict[str, dict[str, str]]],
    cell: Cell,
    count_audit: object,
) -> None:
    world, headers = setup
    path = cell.path.format(pa1=world.patients["pa1"].id, pb1=world.patients["pb1"].id)
    got = {}
    for caller in CALLERS:
        response = client.request(cell.method, path, headers=headers[caller])
        got[caller] = response.status_code
        for secret in _forbidden_data(world, caller):
            assert secret not in response.text, f"{caller} saw another patient's data in {path}"
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"]
    assert got == cell.expect


def test_denials_when_refused_are_each_audited(
    client: TestClient,
    setup: tuple[World, dict[str, dict[str, str]]],
    count_audit: Callable[..., int],
) -> None:
    world, headers = setup
    counter = count_audit
    before = counter(outcome="denied")
    other = world.patients["pb1"].id
    assert client.get(f"/api/v1/patients/{other}", headers=headers["clina"]).status_code == 404
    assert client.get("/api/v1/audit/entries", headers=headers["pa1"]).status_code == 403
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me", headers=headers["device_pa1"]).status_code == 403
    assert counter(outcome="denied") == before + 4
    assert counter(outcome="denied", action="patient.read", patient_id=other) == 1


def test_clinician_list_when_two_teams_returns_only_own_team(
    client: TestClient, setup: tuple[World, dict[str, dict[str, str]]]
) -> None:
    world, headers = setup
    ids = {p["id"] for p in client.get("/api/v1/patients", headers=headers["clina"]).json()}
    assert ids == {world.patients["pa1"].id, world.patients["pa2"].id}
    own = client.get("/api/v1/patients", headers=headers["pa1"]).json()
    assert [p["id"] for p in own] == [world.patients["pa1"].id]
