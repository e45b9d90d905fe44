"""The training, privacy-ledger and training-snapshot API: who may call it, what it answers,
refusals with their reasons, and one audit entry per call."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from app.core.config import Settings
from audit.models import AuditEntry
from mlops import ledger
from tests.conftest import World
from tests.mlops.cohort import store_decisions


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small cohorts pass the data checks."""
    return settings.model_copy(update={"training_min_rows": 12, "training_min_patients": 12})


@pytest.fixture
def decisions(world: World) -> None:
    store_decisions(
        world.session,
        world.users["clina"],
        n_patients=40,
        signed_at=clock.utcnow() - timedelta(days=1),
    )


def audits(session: Session, action: str, **filters: str) -> list[AuditEntry]:
    session.rollback()  # a fresh read of what the app committed
    stmt = select(AuditEntry).where(col(AuditEntry.action) == action)
    for name, value in filters.items():
        stmt = stmt.where(getattr(AuditEntry, name) == value)
    return list(session.scalars(stmt).all())


def train(client: TestClient, world: World, user: str = "mleng", **body: Any) -> Any:
    return client.post("/api/v1/models/train", json=body, headers=world.auth(user))


def test_train_when_ml_engineer_registers_a_candidate(
    client: TestClient, world: World, decisions: None
) -> None:
    with pytest.warns(UserWarning, match="Secure RNG turned off"):
        r = train(client, world, target_epsilon=2.0)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["model"] == "titration:v1"
    assert body["status"] == "candidate"
    assert 0 < body["epsilon"] <= 2.02
    assert body["privacy_unit"] == "patient"
    assert body["ledger"]["spent_epsilon"] == pytest.approx(body["epsilon"])
    assert body["ledger"]["remaining_epsilon"] == pytest.approx(10.0 - body["epsilon"])
    entries = audits(world.session, "model.train")
    assert len(entries) == 1  # the request's own entry, filled in: not a second one
    assert entries[0].resource_id == "titration:v1"
    assert entries[0].outcome == "success"
    assert entries[0].actor_role == "ml_engineer"


@pytest.mark.parametrize("user", ["clina", "auditor", "admin", "pa1"])
def test_train_when_not_ml_engineer_is_refused(client: TestClient, world: World, user: str) -> None:
    r = train(client, world, user=user)
    assert r.status_code == 403
    assert len(audits(world.session, "model.train", outcome="denied")) == 1


def test_train_when_over_budget_answers_422_and_audits_the_refusal(
    client: TestClient, world: World, decisions: None
) -> None:
    ledger.record(
        world.session,
        cohort="clinic",
        snapshot_id=None,
        model_name="titration",
        model_version=None,
        epsilon=9.5,
        delta=1e-4,
        accountant="rdp",
        details={},
        created_by="earlier",
        now=clock.utcnow(),
    )
    world.session.commit()
    r = train(client, world, target_epsilon=1.0)
    assert r.status_code == 422
    problem = r.json()
    assert problem["code"] == "privacy_budget_exceeded"
    assert "above the budget of 10 by 0.5" in problem["detail"]
    [entry] = audits(world.session, "model.train")
    assert entry.outcome == "failure"
    assert '"code":"privacy_budget_exceeded"' in entry.details


def test_train_when_data_fail_checks_answers_422_and_keeps_the_snapshot(
    client: TestClient, world: World
) -> None:
    r = train(client, world)
    assert r.status_code == 422
    assert r.json()["code"] == "data_checks_failed"
    assert "min_rows: 0 rows, at least 12 needed (12 short)" in r.json()["detail"]
    listing = client.get("/api/v1/training-snapshots", headers=world.auth("auditor")).json()
    [snap] = listing["items"]
    assert snap["status"] == "invalid"
    detail = client.get(f"/api/v1/training-snapshots/{snap['id']}", headers=world.auth("mleng"))
    assert detail.status_code == 200
    assert "min_rows" in detail.json()["failed_checks"]
    assert {c["name"] for c in detail.json()["checks"]} >= {"schema", "label_balance"}


@pytest.mark.parametrize(("body", "code"), [({"cohort": "team-a"}, "unknown_cohort")])
def test_train_when_cohort_unknown_answers_422(
    client: TestClient, world: World, body: dict[str, Any], code: str
) -> None:
    r = train(client, world, **body)
    assert (r.status_code, r.json()["code"]) == (422, code)


@pytest.mark.parametrize(
    "body", [{"target_epsilon": 0}, {"target_epsilon": 50}, {"cohort": "Clinic; DROP"}]
)
def test_train_when_body_invalid_answers_422(
    client: TestClient, world: World, body: dict[str, Any]
) -> None:
    assert train(client, world, **body).status_code == 422


@pytest.mark.parametrize(("user", "status"), [("mleng", 200), ("auditor", 200), ("clina", 403)])
def test_privacy_ledger_when_read_answers_by_role(
    client: TestClient, world: World, user: str, status: int
) -> None:
    r = client.get("/api/v1/privacy-ledger", headers=world.auth(user))
    assert r.status_code == status
    if status == 200:
        body = r.json()
        assert body["composition"].startswith("basic sequential composition")
        assert [c["cohort"] for c in body["cohorts"]] == ["clinic", "simulated"]
        assert body["cohorts"][0]["budget_epsilon"] == 10.0


def test_privacy_ledger_when_cohort_given_shows_its_entries(
    client: TestClient, world: World
) -> None:
    for eps in (1.0, 2.0):
        ledger.record(
            world.session,
            cohort="clinic",
            snapshot_id=None,
            model_name="titration",
            model_version=2,
            epsilon=eps,
            delta=1e-5,
            accountant="rdp",
            details={"steps": 10},
            created_by="user:9",
            now=clock.utcnow(),
        )
    world.session.commit()
    r = client.get("/api/v1/privacy-ledger?cohort=clinic", headers=world.auth("auditor"))
    [clinic] = r.json()["cohorts"]
    assert clinic["spent_epsilon"] == 3.0
    assert clinic["spent_delta"] == pytest.approx(2e-5)
    assert clinic["remaining_epsilon"] == 7.0
    assert [e["model"] for e in clinic["entries"]] == ["titration:v2", "titration:v2"]
    missing = client.get("/api/v1/privacy-ledger?cohort=nobody", headers=world.auth("auditor"))
    assert missing.status_code == 404
    [entry, *_] = audits(world.session, "privacy_ledger.read")
    assert entry.resource_id == "clinic"


@pytest.mark.parametrize("user", ["clina", "pa1", "admin"])
def test_training_snapshots_when_not_ml_engineer_or_auditor_are_refused(
    client: TestClient, world: World, user: str
) -> None:
    assert client.get("/api/v1/training-snapshots", headers=world.auth(user)).status_code == 403
    r = client.get("/api/v1/training-snapshots/1", headers=world.auth(user))
    assert r.status_code == 403


def test_training_snapshot_when_missing_answers_404(client: TestClient, world: World) -> None:
    r = client.get("/api/v1/training-snapshots/99", headers=world.auth("auditor"))
    assert r.status_code == 404
    [entry] = audits(world.session, "training_snapshot.read")
    assert (entry.resource_id, entry.outcome) == ("99", "failure")
