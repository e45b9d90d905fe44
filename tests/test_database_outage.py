"""A database that is down or restarting answers 503 with Retry-After, never 500."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import InterfaceError, OperationalError

from app.core import errors


def _app(raised: Exception) -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    def boom() -> None:
        raise raised

    return app


@pytest.mark.parametrize(
    "raised",
    [
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        InterfaceError("SELECT 1", {}, Exception("connection already closed")),
    ],
)
def test_request_when_the_database_is_unreachable_answers_503_with_retry_after(
    raised: Exception,
) -> None:
    with TestClient(_app(raised)) as client:
        response = client.get("/boom")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["code"] == "database_unavailable"
    assert "SELECT" not in response.text  # no statement (or its parameters) leaks
