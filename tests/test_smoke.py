"""The app boots on a migrated database and answers health checks."""

from fastapi.testclient import TestClient


def test_healthz_when_running_answers_ok(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_when_migrated_answers_ok(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["migration"] == response.json()["head"]
