"""The OpenAPI document, built from the same Operation list the router is built from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay import __version__
from relay.api.routing import Operation

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
    },
}
_ERRORS = {
    "400": "Bad request",
    "401": "Missing or unknown token",
    "403": "The token's role may not do this",
    "404": "No such object (or another tenant's)",
    "405": "Method not allowed",
    "409": "Conflict with the object's state, or an Idempotency-Key in flight",
    "413": "Body too large",
    "415": "Body is not JSON",
    "422": "Invalid input",
    "429": "Rate limited",
    "503": "Store unavailable",
}


def _problem_ref() -> dict[str, Any]:
    return {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _success(op: Operation) -> dict[str, Any]:
    data: dict[str, Any] = {"type": "object"}
    if op.list_of:
        envelope = {
            "type": "object",
            "required": ["data", "next_cursor"],
            "properties": {
                "data": {"type": "array", "items": data},
                "next_cursor": {"type": ["string", "null"]},
            },
        }
    else:
        envelope = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {"description": op.summary, "content": {"application/json": {"schema": envelope}}}


def _operation(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "operationId": op.handler.__name__,
        "summary": op.summary,
        "tags": [op.tag],
        "security": [{"bearer": []}],
        "parameters": [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "schema": p.schema,
                **({"description": p.description} if p.description else {}),
            }
            for p in op.params
        ],
        "responses": {str(op.status): _success(op)}
        | {
            code: {"description": text, "content": _problem_ref()} for code, text in _ERRORS.items()
        },
    }
    if op.method in {"POST", "PATCH", "DELETE"}:
        spec["parameters"].append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
    if op.body is not None:
        schema = op.body.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[op.body.__name__] = schema
        spec["requestBody"] = {
            "required": op.method != "POST" or "required" in schema,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}
            },
        }
    return spec


def _plain(summary: str, content_type: str = "application/json") -> dict[str, Any]:
    return {
        "summary": summary,
        "tags": ["operations"],
        "security": [],
        "responses": {"200": {"description": summary, "content": {content_type: {}}}},
    }


def build(operations: Sequence[Operation]) -> dict[str, Any]:
    """An OpenAPI 3.1 document for every route relay serves."""
    components: dict[str, Any] = {"Problem": _PROBLEM}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, components)
    readyz = _plain("Ready: Redis is reachable")
    readyz["responses"]["503"] = {"description": "Redis unreachable", "content": _problem_ref()}
    paths |= {
        "/healthz": {"get": _plain("Alive")},
        "/readyz": {"get": readyz},
        "/metrics": {"get": _plain("Prometheus metrics", "text/plain")},
        "/openapi.json": {"get": _plain("This document")},
        "/docs": {"get": _plain("Interactive API documentation", "text/html")},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay",
            "version": __version__,
            "description": "Webhook relay: signed, retried, logged deliveries.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
