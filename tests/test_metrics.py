"""GET /metrics: Prometheus text behind the metrics token; route templates, never raw paths."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from sqlalchemy import Engine, create_engine

from app.cli import _share_metrics
from app.core.config import Settings
from app.main import create_app
from app.metrics import DatabaseCollector
from audit.models import Outcome
from loops.models import Alert
from mlops.models import ModelAlias
from tests.conftest import World
from tests.ingest.conftest import FHIR, bp, bundle
from validation.models import JobRun

TOKEN = "m" * 40
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def metrics_app(settings: Settings, engine: Engine) -> FastAPI:
    """The app with a metrics token set."""
    return create_app(settings.model_copy(update={"metrics_token": TOKEN}), engine)


@pytest.fixture
def mclient(metrics_app: FastAPI) -> Iterator[TestClient]:
    """A client of the app with metrics on."""
    with TestClient(metrics_app, raise_server_exceptions=False) as c:
        yield c


def _scrape(client: TestClient) -> tuple[str, Samples]:
    response = client.get("/metrics", headers=SCRAPE)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_scrape_after_requests_counts_them_by_route_template(
    mclient: TestClient, world: World
) -> None:
    patient_id = world.patients["pa1"].id
    auth = world.auth("clina")
    for _ in range(2):
        assert mclient.get(f"/api/v1/patients/{patient_id}", headers=auth).status_code == 200
    assert mclient.get(f"/no/such/{patient_id}", headers=auth).status_code == 404

    text, samples = _scrape(mclient)

    route = "/api/v1/patients/{patient_id}"
    labels = {"method": "GET", "route": route, "status": "2xx"}
    assert _value(samples, "clinaiops_http_requests_total", **labels) == 2
    assert _value(samples, "clinaiops_http_request_duration_seconds_count", **labels) == 2
    assert _value(samples, "clinaiops_http_request_duration_seconds_sum", **labels) > 0
    unmatched = {"method": "GET", "route": "unmatched", "status": "4xx"}
    assert _value(samples, "clinaiops_http_requests_total", **unmatched) == 1
    # No patient id, pseudonym or name anywhere in the exposition.
    patient = world.patients["pa1"]
    for secret in (patient_id, patient.pseudonym, patient.family_name):
        assert secret not in text


def test_scrape_counts_ingest_queues_models_and_jobs_from_the_database(
    mclient: TestClient, world: World
) -> None:
    device_id, key = world.device("pa1")
    body = json.dumps(bundle("batch", [bp(128, 82), bp(131, 84, when="2020-01-01T08:00:00Z")]))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": FHIR}
    assert mclient.post("/api/v1/device/observations", content=body, headers=headers).is_success
    assert mclient.post("/api/v1/device/observations", content=body, headers=headers).is_success
    now = datetime.now(UTC)
    world.session.add_all(
        [
            Alert(
                patient_id=world.patients["pa1"].id,
                type="crisis",
                severity="crisis",
                key="metrics-test",
                detail="test",
                raised_at=now,
            ),
            ModelAlias(model_name="titration", alias="champion", version=3, updated_by="t"),
            JobRun(
                job="drift_report",
                period="2026-12-01",
                status="succeeded",
                holder="t",
                started_at=now,
                lease_until=now + timedelta(minutes=5),
            ),
        ]
    )
    world.session.commit()

    text, samples = _scrape(mclient)

    assert _value(samples, "clinaiops_metrics_database_up") == 1
    assert _value(samples, "clinaiops_ingest_readings_total", outcome="accepted") == 2
    assert _value(samples, "clinaiops_ingest_readings_total", outcome="duplicate") == 2
    assert _value(samples, "clinaiops_queue_depth", queue="alerts_unacknowledged") == 1
    assert _value(samples, "clinaiops_queue_depth", queue="review") == 0
    assert _value(samples, "clinaiops_queue_depth", queue="evaluation_outbox") >= 1
    serving = {"model": "titration", "alias": "champion", "version": "3"}
    assert _value(samples, "clinaiops_model_serving", **serving) == 1
    assert _value(samples, "clinaiops_job_runs", job="drift_report", status="succeeded") == 1
    assert world.patients["pa1"].id not in text
    assert device_id not in text


def test_scrape_when_token_wrong_or_missing_is_refused_and_audited(
    mclient: TestClient, count_audit: object
) -> None:
    wrong = mclient.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40})
    missing = mclient.get("/metrics")

    for response in (wrong, missing):
        assert response.status_code == 401
        assert response.json()["code"] == "unauthenticated"
    assert callable(count_audit)
    assert count_audit(action="metrics.read", outcome=Outcome.DENIED) == 2


def test_scrape_when_no_token_is_configured_is_refused(client: TestClient) -> None:
    response = client.get("/metrics", headers={"Authorization": "Bearer "})

    assert response.status_code == 401
    assert response.json()["code"] == "metrics_disabled"


def test_settings_when_metrics_token_is_short_refuse_to_load(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="METRICS_TOKEN"):
        Settings.model_validate({**settings.model_dump(), "metrics_token": "short"})


def test_collector_when_database_unreachable_reports_down_without_database_metrics() -> None:
    unreachable = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(unreachable))

    families = {f.name: f for f in registry.collect()}

    assert set(families) == {"clinaiops_metrics_database_up"}
    assert families["clinaiops_metrics_database_up"].samples[0].value == 0


def test_share_metrics_when_no_dir_is_set_empties_and_points_at_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    default = tmp_path / "prometheus" / "8000"
    default.mkdir(parents=True)
    (default / "counter_123.db").write_bytes(b"left by an earlier run")

    _share_metrics(default)

    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(default)
    assert list(default.iterdir()) == []


def test_share_metrics_when_dir_is_set_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = tmp_path / "chosen"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(chosen))

    _share_metrics(tmp_path / "default")

    assert chosen.is_dir()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(chosen)
    assert not (tmp_path / "default").exists()
