"""Errors as RFC 9457 problem+json with a stable machine-readable `code`."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.context import current_request_id

PROBLEM_JSON = "application/problem+json"

STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    423: "locked",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}

log = logging.getLogger("clinaiops.errors")


class ProblemError(Exception):
    """Raise from anywhere to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str = "",
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


def problem_response(
    status: int,
    code: str,
    detail: str = "",
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """Build a problem+json response carrying the request id."""
    body: dict[str, Any] = {
        "type": f"https://clinaiops.org/problems/{code}",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
        "request_id": current_request_id(),
    }
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return "/".join(str(part) for part in loc)


async def _authorize_unread_body(request: Request, exc: Exception) -> ProblemError | None:
    from app.api.deps import authorize_unread_body  # app.api imports this module

    return await run_in_threadpool(authorize_unread_body, request, exc)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json, and document them."""
    from app.core import openapi  # imports this module

    openapi.install(app)

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> Response:
        if exc.status == 401 and request.url.path.startswith("/portal"):
            # People, not programs, use the portal: send them to sign in and back.
            target = quote(request.url.path, safe="/")
            return RedirectResponse(
                f"/portal/login?next={target}&reason={exc.code}", status_code=303
            )
        return problem_response(
            exc.status, exc.code, exc.detail, headers=exc.headers, extra=exc.extra
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # A JSON body that is not UTF-8, refused before any dependency ran (see below).
            denial = await _authorize_unread_body(request, exc)
            if denial is not None:
                return await _problem(request, denial)
        code = STATUS_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else code
        return problem_response(exc.status_code, code, detail, headers=dict(exc.headers or {}))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(_: Request, exc: DBAPIError) -> Response:
        # The database restarted, failed over or refused a connection: nothing was committed
        # (the session rolls back), so the client may retry, with its idempotency key.
        log.warning("database unavailable: %s", type(exc.orig).__name__)
        return problem_response(
            503,
            "database_unavailable",
            "the database is not reachable right now; retry shortly",
            headers={"retry-after": "5"},
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            # FastAPI refuses a body that is not JSON before any dependency runs: decide the
            # caller's access first, so a stranger gets 401 and every answer is audited.
            denial = await _authorize_unread_body(request, exc)
            if denial is not None:
                return await _problem(request, denial)
        errors = [
            {
                "path": _loc(err.get("loc", ())),
                "message": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
            for err in exc.errors()
        ]
        return problem_response(
            422, "validation_error", "the request is not valid", extra={"errors": errors}
        )
