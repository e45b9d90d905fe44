"""Request ids, security headers, problem+json errors, body limits, readiness, OpenAPI."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.core.config import Settings
from app.db import make_engine
from app.main import create_app
from tests.conftest import World


def test_response_when_request_id_sent_echoes_it(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123-def-456"})
    assert r.headers["x-request-id"] == "abc-123-def-456"


def test_response_when_request_id_malformed_replaces_it(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "<script>"})
    assert r.headers["x-request-id"] != "<script>"
    assert len(r.headers["x-request-id"]) == 32


def test_response_when_any_route_carries_security_headers(client: TestClient, world: World) -> None:
    for r in (
        client.get("/healthz"),
        client.get("/api/v1/me", headers=world.auth("clina")),
        client.get("/api/v1/me"),
    ):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["referrer-policy"] == "no-referrer"
    assert client.get("/api/v1/me").headers["cache-control"] == "no-store"


def test_validation_when_body_invalid_names_field_paths(client: TestClient, world: World) -> None:
    r = client.post(
        "/api/v1/admin/users",
        headers=world.auth("admin"),
        json={"username": "x", "password": "y", "full_name": "z", "role": "wizard"},
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "validation_error"
    assert body["request_id"] == r.headers["x-request-id"]
    assert "body/role" in [e["path"] for e in body["errors"]]


def test_validation_when_body_not_json_is_4xx(client: TestClient, world: World) -> None:
    r = client.post(
        "/api/v1/admin/users",
        headers={**world.auth("admin"), "content-type": "application/json"},
        content=b"{not json",
    )
    assert r.status_code == 422
    assert r.json()["code"] == "validation_error"


def test_unknown_route_when_requested_is_problem_404(client: TestClient) -> None:
    r = client.get("/api/v1/nope")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


def test_method_when_not_allowed_is_problem_405(client: TestClient) -> None:
    r = client.delete("/healthz")
    assert r.status_code == 405
    assert r.json()["code"] == "method_not_allowed"


def _small_app(settings: Settings, engine: Engine) -> FastAPI:
    return create_app(settings.model_copy(update={"max_body_bytes": 2048}), engine)


def test_body_when_declared_too_large_is_413(settings: Settings, engine: Engine) -> None:
    with TestClient(_small_app(settings, engine)) as c:
        r = c.post(
            "/api/v1/auth/token",
            content=b"x" * 4096,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"
    assert r.headers["x-request-id"]


def test_body_when_streamed_too_large_is_413(settings: Settings, engine: Engine) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(8):
            yield b"y" * 1024

    with TestClient(_small_app(settings, engine)) as c:
        r = c.post(
            "/api/v1/auth/token",
            content=chunks(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert r.status_code == 413


def test_unhandled_error_when_raised_is_500_problem_without_details(
    app: FastAPI, settings: Settings
) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("patient Jane Doe secret detail")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500
    assert r.json()["code"] == "internal_error"
    assert r.json()["request_id"] == r.headers["x-request-id"]
    assert "Jane" not in r.text


def test_readyz_when_database_not_migrated_is_503(settings: Settings, tmp_path: Path) -> None:
    empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with TestClient(create_app(settings, empty)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["migration"] is None
    empty.dispose()


def test_readyz_when_database_unreachable_is_503(settings: Settings) -> None:
    broken = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", pool=False)
    with TestClient(create_app(settings, broken)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["database"] == "unreachable"


def test_openapi_when_fetched_lists_api_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/v1/patients/{patient_id}" in spec["paths"]
    assert "/api/v1/auth/token" in spec["paths"]
