"""Every route declares the authorization dependency, or is on the short public list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api.deps import AUTHZ_MARK, require
from app.main import ROUTERS

PUBLIC = {
    ("POST", "/api/v1/auth/token"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),  # no user route: its own bearer token (metrics_token) guards it
    ("GET", "/portal/login"),
    ("POST", "/portal/login"),
}


def _authorized(dependant: Dependant) -> bool:
    for dep in dependant.dependencies:
        if getattr(dep.call, AUTHZ_MARK, None) is not None or _authorized(dep):
            return True
    return False


def _routes() -> list[tuple[str, str, APIRoute]]:
    out = []
    for router in ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute), f"unexpected route type {type(route)}"
            for method in sorted(route.methods):
                out.append((method, route.path, route))
    return out


def test_every_route_when_not_public_declares_require() -> None:
    unguarded = [
        (m, p) for m, p, r in _routes() if (m, p) not in PUBLIC and not _authorized(r.dependant)
    ]
    assert unguarded == []


def test_public_routes_when_listed_are_marked_public() -> None:
    marked = {(m, p) for m, p, r in _routes() if getattr(r.endpoint, "__clinaiops_public__", False)}
    assert marked == PUBLIC


def test_coverage_check_when_route_lacks_require_flags_it() -> None:
    router = APIRouter()

    def naked() -> dict[str, str]:
        return {}

    def guarded(access: Any = require("me", "read")) -> dict[str, str]:
        return {}

    router.add_api_route("/naked", naked)
    router.add_api_route("/guarded", guarded)
    checks: dict[str, Callable[[Dependant], bool]] = {"check": _authorized}
    naked_route, guarded_route = router.routes
    assert isinstance(naked_route, APIRoute)
    assert isinstance(guarded_route, APIRoute)
    assert not checks["check"](naked_route.dependant)
    assert checks["check"](guarded_route.dependant)
