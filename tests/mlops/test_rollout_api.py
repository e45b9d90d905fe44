"""The rollout API: start (ML engineers), read with steps and live analysis, roll back with a
reason; every call audited, refusals as problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from audit.models import AuditEntry
from mlops import rollout, serving
from mlops.models import ModelStatus, RolloutStatus
from mlops.serving import ServedModel
from tests.conftest import World
from tests.mlops.rollout_setup import Rig

START = "/api/v1/models/titration/versions/2/rollout"
READ = "/api/v1/models/titration/rollout"
ROLLBACK = "/api/v1/models/titration/rollback"


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "_cache", {})


@pytest.fixture
def rig(world: World, tmp_path: Path) -> Rig:
    return Rig(world, tmp_path, challenger_push=2.0)


def _entries(rig: Rig, action: str) -> list[dict[str, object]]:
    rig.s.expire_all()
    rows = rig.s.scalars(select(AuditEntry).where(AuditEntry.action == action))
    return [json.loads(r.details) for r in rows]


def test_start_rollout_as_ml_engineer_answers_the_rollout_in_shadow(
    client: TestClient, world: World, rig: Rig
) -> None:
    r = client.post(START, json={"dwell_minutes": 5}, headers=world.auth("mleng"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["status"], body["percent"], body["dwell_seconds"]) == ("shadow", 0, 300)
    assert (body["challenger_version"], body["champion_version"]) == (2, 1)
    assert body["steps"] == []
    assert body["current"]["decision"] == "hold"
    assert body["current"]["reasons"][0].startswith("dwell: ")
    assert body["model_alert"] is None
    assert "salt" not in body
    assert rig.status(2) == ModelStatus.SHADOW
    (entry,) = _entries(rig, "model.promote")
    assert entry["rollout_id"] == body["id"]
    assert len(_entries(rig, "model.rollout.start")) == 1


def test_start_rollout_without_dwell_uses_the_setting(
    client: TestClient, world: World, rig: Rig
) -> None:
    r = client.post(START, headers=world.auth("mleng"))
    assert r.status_code == 201, r.text
    assert r.json()["dwell_seconds"] == world.settings.canary_dwell_minutes * 60


@pytest.mark.parametrize("user", ["clina", "auditor", "admin", "pa1"])
def test_start_rollout_as_anyone_else_is_refused(
    client: TestClient, world: World, rig: Rig, user: str
) -> None:
    r = client.post(START, headers=world.auth(user))
    assert r.status_code == 403
    assert rig.status(2) == ModelStatus.VALIDATED


def test_start_rollout_twice_is_409_with_what_is_missing(
    client: TestClient, world: World, rig: Rig
) -> None:
    assert client.post(START, headers=world.auth("mleng")).status_code == 201
    r = client.post(START, headers=world.auth("mleng"))
    assert r.status_code == 409
    assert r.json()["code"] == "not_ready"
    assert "status_not_validated" in r.json()["detail"]


def test_start_rollout_of_unknown_version_is_404(
    client: TestClient, world: World, rig: Rig
) -> None:
    r = client.post("/api/v1/models/titration/versions/9/rollout", headers=world.auth("mleng"))
    assert r.status_code == 404


def test_start_rollout_with_bad_dwell_is_422(client: TestClient, world: World, rig: Rig) -> None:
    r = client.post(START, json={"dwell_minutes": 0}, headers=world.auth("mleng"))
    assert r.status_code == 422


def test_read_rollout_before_any_is_404(client: TestClient, world: World, rig: Rig) -> None:
    assert client.get(READ, headers=world.auth("mleng")).status_code == 404


def test_read_rollout_after_automatic_rollback_shows_steps_and_the_model_alert(
    client: TestClient, world: World, rig: Rig
) -> None:
    rig.to_canary()
    loaded = serving.load(rig.v2)
    assert loaded is not None

    class Raises(ServedModel):
        def predict_proba(self, x: object) -> object:
            raise RuntimeError("inference crashed")

    serving._cache[(loaded.label, rig.v2.artifact_sha256)] = Raises(loaded.label, loaded.model)
    rig.evaluate(12)
    rig.tick(13)

    for user in ("mleng", "auditor", "clina"):
        r = client.get(READ, headers=world.auth(user))
        assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == RolloutStatus.ROLLED_BACK
    assert body["current"] is None
    assert body["model_alert"].startswith("automatic rollback at canary 10%: error_rate")
    assert [(s["stage"], s["percent"], s["decision"]) for s in body["steps"]] == [
        ("shadow", 0, "advance"),
        ("canary", 10, "rollback"),
    ]
    checks = body["steps"][1]["analysis"]["checks"]
    assert checks["error_rate"]["breached"] is True
    assert client.get(READ, headers=world.auth("pa1")).status_code == 403
    reads = _entries(rig, "model.read")
    assert [e.get("rollout_id") for e in reads] == [1, 1, 1, None]  # the last: pa1's denial


def test_read_rollout_while_it_runs_shows_the_live_analysis(
    client: TestClient, world: World, rig: Rig
) -> None:
    rig.to_canary()
    r = client.get(READ, headers=world.auth("mleng"))
    assert r.status_code == 200
    current = r.json()["current"]
    assert (current["stage"], current["percent"], current["id"]) == ("canary", 10, None)
    assert set(current["analysis"]["checks"]) == {
        "error_rate",
        "override_rate",
        "routing_mix",
        "latency_p95_ms",
    }


def test_rollback_without_reason_is_422(client: TestClient, world: World, rig: Rig) -> None:
    rig.start()
    for body in ({}, {"reason": ""}):
        r = client.post(ROLLBACK, json=body, headers=world.auth("mleng"))
        assert r.status_code == 422
    r = client.post(ROLLBACK, json={"reason": "\x00 \n"}, headers=world.auth("mleng"))
    assert r.status_code == 422
    assert r.json()["code"] == "reason_required"
    assert rollout.active(rig.s, name="titration") is not None


def test_rollback_as_ml_engineer_ends_the_running_rollout(
    client: TestClient, world: World, rig: Rig
) -> None:
    started = rig.start()
    r = client.post(ROLLBACK, json={"reason": "ticket 42"}, headers=world.auth("mleng"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "retired_version": 2,
        "serving_version": 1,
        "rollout_id": started.id,
        "artifact_problem": None,
    }
    assert rig.rollout().status == RolloutStatus.ROLLED_BACK
    assert rig.rollout().end_reason == "manual rollback: ticket 42"
    (entry,) = _entries(rig, "model.rollback")
    assert entry["retired_version"] == 2


def test_rollback_with_nothing_before_is_409(client: TestClient, world: World, rig: Rig) -> None:
    r = client.post(ROLLBACK, json={"reason": "why not"}, headers=world.auth("mleng"))
    assert r.status_code == 409
    assert r.json()["code"] == "no_previous_version"


def test_rollback_as_clinician_is_refused(client: TestClient, world: World, rig: Rig) -> None:
    rig.start()
    r = client.post(ROLLBACK, json={"reason": "no"}, headers=world.auth("clina"))
    assert r.status_code == 403
    assert rollout.active(rig.s, name="titration") is not None
