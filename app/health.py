"""Liveness and readiness probes (unauthenticated, no data)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import public_route
from app.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
@public_route
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
@public_route
def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers and its schema is at the code's migration head."""
    engine = request.app.state.engine
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = current_revision(engine)
    except Exception as exc:  # any database failure means not ready
        return JSONResponse(
            {"status": "unavailable", "database": "unreachable", "error": type(exc).__name__},
            status_code=503,
        )
    head = head_revision()
    ok = current == head
    return JSONResponse(
        {
            "status": "ok" if ok else "unavailable",
            "database": "ok",
            "migration": current,
            "head": head,
        },
        status_code=200 if ok else 503,
    )
