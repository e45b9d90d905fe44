"""Hostile payloads to every API route that reads a JSON body (taken from /openapi.json, so a
new route is swept too), sent by a caller who may use it: bodies over the size limit, 10,000
levels of nesting, numbers past every range (1e400, 10**400, 5,000 digits), NaN and Infinity,
wrong content types and bytes that are not UTF-8. Each is a 4xx problem document with a code,
never a 500."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI

from tests.hostile.conftest import UNKNOWN, Caller, Scene, assert_problem

JSON = "application/json"
# The caller who may use a route, by path prefix (first match); anything else: a clinician.
CALLER_BY_PREFIX = (
    ("/api/v1/admin", "admin"),
    ("/api/v1/me", "pa1"),
    ("/api/v1/device", "device"),
    ("/api/v1/audit", "auditor"),
    ("/api/v1/models", "mleng"),
    ("/api/v1/monitoring", "mleng"),
    ("/api/v1/jobs", "mleng"),
    ("/api/v1/auth", "anonymous"),
)
DEPTH = 10_000
HUGE_LITERALS = [
    pytest.param(b"1e400", id="1e400"),
    pytest.param(b"-1e400", id="-1e400"),
    pytest.param(str(10**400).encode(), id="10**400"),
    pytest.param(b"9" * 5000, id="5000-digits"),
    pytest.param(b"NaN", id="nan"),
    pytest.param(b"Infinity", id="inf"),
    pytest.param(b"-Infinity", id="-inf"),
]
SHAPES = [
    pytest.param(b"[" * DEPTH + b"]" * DEPTH, JSON, id="nested-arrays"),
    pytest.param(b'{"a":' * DEPTH + b"1" + b"}" * DEPTH, JSON, id="nested-objects"),
    pytest.param(b'{"note": "\xff\xfe", "reason": "\xc3\x28"}', JSON, id="invalid-utf8"),
    pytest.param(b'{"a": 1}', "text/plain", id="text-plain"),
    pytest.param(b"<a>1</a>", "application/xml", id="xml"),
    pytest.param(b"--x\r\nContent-Disposition: form-data\r\n\r\n", "multipart/form-data", id="mp"),
    pytest.param(b"a=1&b=2", "application/x-www-form-urlencoded", id="form"),
    pytest.param(b'{"a": 1}', "", id="no-content-type"),
]


def _caller(path: str) -> str:
    return next((who for prefix, who in CALLER_BY_PREFIX if path.startswith(prefix)), "clina")


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        resolved: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        return resolved
    for key in ("anyOf", "allOf", "oneOf"):
        for option in schema.get(key, []):
            if "$ref" in option:
                return _resolve(spec, option)
    return schema


def body_routes(app: FastAPI, scene: Scene) -> Iterator[tuple[str, str, str, list[str]]]:
    """(caller, method, path with pa1's id or an unknown one, the body's property names) of
    every operation that reads a JSON body."""
    spec = app.openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if JSON not in content:
                continue
            schema = _resolve(spec, content[JSON].get("schema", {}))
            names = sorted(schema.get("properties", {})) or ["value"]
            filled = path.replace("{patient_id}", scene.pid("pa1"))
            filled = filled.replace("{name}", "bp-risk").replace("{version}", "1")
            for param in ("goal_id", "thread_id", "proposal_id", "alert_id", "device_id"):
                filled = filled.replace("{" + param + "}", UNKNOWN)
            filled = filled.replace("{user_id}", "1").replace("{team_id}", "1")
            yield _caller(path), method.upper(), filled, names


def _send(
    as_: Callable[[str], Caller], who: str, method: str, path: str, content: bytes, ctype: str
) -> Any:
    headers = {"content-type": ctype} if ctype else {}
    return as_(who)(method, path, content=content, headers=headers)


def test_sweep_when_run_covers_the_json_writes(app: FastAPI, scene: Scene) -> None:
    routes = list(body_routes(app, scene))
    assert len(routes) >= 30, len(routes)
    assert {who for who, *_ in routes} >= {"admin", "pa1", "clina", "mleng"}


@pytest.mark.parametrize("literal", HUGE_LITERALS)
def test_write_when_every_field_is_a_number_past_every_range_is_4xx(
    app: FastAPI, scene: Scene, as_: Callable[[str], Caller], literal: bytes
) -> None:
    for who, method, path, names in body_routes(app, scene):
        content = b"{" + b",".join(b'"%s": %s' % (n.encode(), literal) for n in names) + b"}"
        r = _send(as_, who, method, path, content, JSON)
        assert r.status_code != 500, (method, path, r.text[:300])
        assert_problem(r)


@pytest.mark.parametrize(("content", "ctype"), SHAPES)
def test_write_when_body_is_hostile_in_shape_or_type_is_4xx(
    app: FastAPI, scene: Scene, as_: Callable[[str], Caller], content: bytes, ctype: str
) -> None:
    for who, method, path, _ in body_routes(app, scene):
        r = _send(as_, who, method, path, content, ctype)
        assert r.status_code != 500, (method, path, r.text[:300])
        assert_problem(r)


# Readable, if odd: an empty object (with a BOM, or a charset that does not match) is a valid
# body where every field is optional, and a 4xx elsewhere.
ODD_BUT_READABLE = [
    pytest.param(b"\xef\xbb\xbf{}", JSON, id="utf8-bom"),
    pytest.param(b"{}", "application/json; charset=utf-16", id="utf16-charset"),
    pytest.param(b"{}", "application/vnd.api+json", id="other-json-type"),
]


@pytest.mark.parametrize(("content", "ctype"), ODD_BUT_READABLE)
def test_write_when_body_is_odd_but_readable_is_never_a_500(
    app: FastAPI, scene: Scene, as_: Callable[[str], Caller], content: bytes, ctype: str
) -> None:
    for who, method, path, _ in body_routes(app, scene):
        r = _send(as_, who, method, path, content, ctype)
        assert r.status_code != 500, (method, path, r.text[:300])
        if r.status_code >= 400:
            assert_problem(r)


def test_write_when_body_is_over_the_limit_is_413(
    app: FastAPI, scene: Scene, as_: Callable[[str], Caller]
) -> None:
    limit = app.state.settings.max_body_bytes
    content = b'{"note": "' + b"x" * limit + b'"}'
    for who, method, path, _ in body_routes(app, scene):
        r = _send(as_, who, method, path, content, JSON)
        assert_problem(r, 413)
        assert r.json()["code"] == "payload_too_large"


def test_write_when_oversized_body_is_streamed_without_length_is_413(
    app: FastAPI, scene: Scene, as_: Callable[[str], Caller]
) -> None:
    limit = app.state.settings.max_body_bytes

    def chunks() -> Iterator[bytes]:
        yield b'{"body": "'
        for _ in range(limit // 65536 + 2):
            yield b"y" * 65536
        yield b'"}'

    r = as_("pa1")("POST", "/api/v1/me/messages", content=chunks(), headers={"content-type": JSON})
    assert_problem(r, 413)
