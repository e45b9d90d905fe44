"""The OpenAPI document says what the app answers besides success: problem+json 4xx bodies
(401/403 on every route that takes a credential, 404, 409, 413, 415, 422...) and the bearer
credential itself, so clients and schemathesis know every answer they can get."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from app.core.errors import PROBLEM_JSON, STATUS_CODES

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem document with a stable machine-readable code.",
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
# Any route: a malformed request (400), an unknown object (404), a conflict with the current
# state (409: a write, or a read of something not there yet), a parameter or body that fails
# validation (422), the admission limit (429).
_ANY = (400, 404, 409, 422, 429)
# A route that takes a credential: none or a bad one (401), not allowed (403).
_SECURED = (401, 403)
# A route that reads a body: too large (413), not a media type it reads (415).
_BODY = (413, 415)
# FHIR endpoints answer FHIR's own media type.
_FHIR_PREFIX = "/fhir/"
_FHIR_JSON = "application/fhir+json"


def _public(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of the routes marked public (health, sign-in)."""
    found: set[tuple[str, str]] = set()
    # Included routers are nested; FastAPI's own walk flattens them with the full paths.
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and getattr(route.endpoint, "__clinaiops_public__", False):
            found.update((str(context.path_format), m.lower()) for m in route.methods or ())
    return found


def _problem(status: int) -> dict[str, Any]:
    return {
        "description": STATUS_CODES.get(status, "error").replace("_", " "),
        "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
    }


def _offers_fhir(operation: dict[str, Any]) -> bool:
    """Whether a `format` query parameter can ask for FHIR."""
    for parameter in operation.get("parameters", []):
        if parameter.get("name") == "format" and parameter.get("in") == "query":
            schema = parameter.get("schema", {})
            options = [schema, *schema.get("anyOf", [])]
            if any("fhir" in option.get("enum", []) for option in options):
                return True
    return False


def document_errors(schema: dict[str, Any], public: set[tuple[str, str]]) -> dict[str, Any]:
    """Add the problem responses and the bearer credential to every operation, in place."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    # FastAPI's own 422 body is replaced by the problem document the app answers with.
    components["schemas"].pop("HTTPValidationError", None)
    components["schemas"].pop("ValidationError", None)
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A person's access token (POST /api/v1/auth/token) or a device key "
            "(device endpoints only).",
        }
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            statuses = list(_ANY)
            if (path, method) not in public:
                statuses += _SECURED
                operation["security"] = [{"bearer": []}]
            elif "requestBody" in operation:
                statuses.append(401)  # signing in with a wrong password
            if "requestBody" in operation:
                statuses += _BODY
            responses = operation.setdefault("responses", {})
            if _offers_fhir(operation) and "200" in responses:
                # `?format=fhir` answers the same resource as a FHIR one.
                responses["200"].setdefault("content", {})[_FHIR_JSON] = {
                    "schema": {"type": "object", "required": ["resourceType"]}
                }
            if path.startswith(_FHIR_PREFIX):
                for response in responses.values():
                    content = response.get("content", {})
                    if "application/json" in content:
                        content[_FHIR_JSON] = content.pop("application/json")
            for status in sorted(statuses):
                responses[str(status)] = _problem(status)
    return schema


def install(app: FastAPI) -> None:
    """Serve the OpenAPI document with the error responses and credentials documented."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build(), _public(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
