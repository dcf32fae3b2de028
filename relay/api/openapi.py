"""The OpenAPI document, built from the same Operation list the router is built from.

Request bodies and answers come from the operations' pydantic models (each declared in its
resource's module); which errors each operation can return is worked out here from what it
takes and does. The fuzz tests (tests/test_fuzz.py) hold the app to the document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import pydantic

from relay import __version__
from relay.api.idempotency import REPLAYED
from relay.api.ops import Alive, Ready
from relay.api.routing import Operation
from relay.api.shapes import Problem, envelope
from relay.event_types import EVENT_TYPES, NAME_PATTERN
from relay.roles import Role
from relay.signing import Scheme
from relay.validation import TenantId

_REF = "#/components/schemas/{model}"
_IDEMPOTENT = frozenset({"POST", "PATCH", "DELETE"})


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(model=name)}


_STRING = {"type": "string"}
_TENANT = pydantic.TypeAdapter(TenantId).json_schema()


_ERRORS = {
    401: "Missing or unknown token",
    403: "The token's role may not do this",
    404: "No such object (or another tenant's)",
    409: "Conflict with the object's state, or an Idempotency-Key still in flight",
    413: "Body too large",
    415: "Body is not JSON",
    422: "Invalid input: `errors` names each field",
    429: "Rate limited",
    503: "Store unavailable",
}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": "Bearer"},
    429: {"Retry-After": "Seconds to wait"},
    503: {"Retry-After": "Seconds to wait"},
}


def _refine_token_spec(schema: dict[str, Any], _components: dict[str, Any]) -> None:
    # TokenSpec's validator: a tenant token is bound to a tenant_id, other roles to none.
    schema["if"] = {"properties": {"role": {"const": Role.TENANT.value}}}
    schema["then"] = {"properties": {"tenant_id": _TENANT}, "required": ["tenant_id"]}
    schema["else"] = {"properties": {"tenant_id": {"type": "null"}}}


# A registered type's name: any name but a built-in one, which is what tells the alternatives of
# an event apart.
_REGISTERED_NAME = (
    "^(?!(?:" + "|".join(re.escape(name) for name in EVENT_TYPES) + ")$)" + NAME_PATTERN[1:]
)


def _refine_event_in(schema: dict[str, Any], components: dict[str, Any]) -> None:
    # EventIn takes any `type` and `data` and validates them against the event-type catalog:
    # the document spells each built-in type out as one complete alternative, its data a model
    # of its own, and adds one for every registered type, whose data is checked against the
    # schema it was registered with (data, not part of the document: GET /v1/event-types). Each
    # alternative has every field, `tenant_id` and `id` too, so a generated client has them all.
    properties = schema.pop("properties")
    required = schema.pop("required")
    for rule in ("type", "additionalProperties"):
        schema.pop(rule)

    def alternative(title: str, type_name: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {
            "title": title,
            "type": "object",
            "properties": {**properties, "type": type_name, "data": data},
            "required": required,
            "additionalProperties": False,
        }

    schema["oneOf"] = [
        alternative(
            f"{event_type.model.__name__}Event",
            {"const": name},
            _ref(event_type.model.__name__),
        )
        for name, event_type in EVENT_TYPES.items()
    ] + [
        alternative(
            "RegisteredEvent",
            {
                "type": "string",
                "pattern": _REGISTERED_NAME,
                "description": "The name of a type registered at /v1/event-types",
            },
            _ref("RegisteredEventData"),
        )
    ]
    # A component of its own: stated inline, a generator would make its class twice.
    components["RegisteredEventData"] = {
        "type": "object",
        "description": "Must match the JSON Schema the type was registered with",
    }


def _refine_webhook_create(schema: dict[str, Any], _components: dict[str, Any]) -> None:
    # WebhookCreate's validator: only an hmac-sha256 webhook takes an imported secret.
    schema["if"] = {"properties": {"secret": {"type": "string"}}, "required": ["secret"]}
    schema["then"] = {"properties": {"signature_scheme": {"const": Scheme.HMAC_SHA256.value}}}


# Rules the request models enforce in validators, which their generated schemas cannot show.
# Each is stated on whole objects, as a condition (`if`/`then`, which client generators pass over)
# or as complete alternatives: a generator makes a class of each alternative, so alternatives
# holding one field each would leave a client no typed way to send the others.
_REFINE = {
    "TokenSpec": _refine_token_spec,
    "EventIn": _refine_event_in,
    "WebhookCreate": _refine_webhook_create,
}


def _schema(
    model: type[pydantic.BaseModel],
    components: dict[str, Any],
    mode: Literal["validation", "serialization"],
) -> dict[str, Any]:
    """`model`'s JSON Schema, the models it refers to moved into `components`."""
    schema = model.model_json_schema(ref_template=_REF, mode=mode)
    for name, definition in schema.pop("$defs", {}).items():
        # A model that is refined is refined wherever it appears (EventIn in a batch too).
        if (refine := _REFINE.get(name)) is not None:
            refine(definition, components)
        # Components are one namespace: two different models of one name would overwrite.
        if components.setdefault(name, definition) != definition:
            raise ValueError(f"Two different schemas are named {name}.")
    return schema


def _component(
    model: type[pydantic.BaseModel],
    components: dict[str, Any],
    mode: Literal["validation", "serialization"] = "serialization",
) -> dict[str, Any]:
    """A reference to `model`, stated once in `components` by its name."""
    schema = _schema(model, components, mode)
    refine = _REFINE.get(model.__name__)
    if refine is not None:
        refine(schema, components)
    components[model.__name__] = schema
    return _ref(model.__name__)


def _headers(names: dict[str, str], required: bool) -> dict[str, Any]:
    return {
        name: {"description": text, "required": required, "schema": _STRING}
        for name, text in names.items()
    }


def _problem(code: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERRORS[code],
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if code in _ERROR_HEADERS:
        response["headers"] = _headers(_ERROR_HEADERS[code], required=True)
    return response


def _success(op: Operation, description: str, components: dict[str, Any]) -> dict[str, Any]:
    body = _schema(envelope(op.answers, op.list_of, op.per_item), components, "serialization")
    # Stated in place, as each operation's own answer: a generated client names it after the
    # operation, not after the generic envelope.
    del body["title"]
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": body}},
    }
    if op.method in _IDEMPOTENT:
        response["headers"] = _headers(
            {REPLAYED: "`true` on a replay of a stored response"}, required=False
        )
    return response


def _error_codes(op: Operation) -> list[int]:
    """The errors `op` can answer with, from what it takes and does."""
    codes = {401, 403, 413, 429, 503}
    if op.body is not None:
        codes |= {415, 422}
    if any(p.where == "query" for p in op.params):
        codes.add(422)
    if any(p.where == "path" for p in op.params) or op.looks_up:
        codes.add(404)
    if op.method in _IDEMPOTENT:
        codes |= {409, 422}  # an Idempotency-Key in flight; a malformed or reused one
    return sorted(codes)


def _parameter(where: str, name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    parameter: dict[str, Any] = {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
    }
    if description:
        parameter["description"] = description
    if where == "query":
        # relay reads an empty query value as an absent one, everywhere.
        parameter["allowEmptyValue"] = True
    return parameter


def _operation(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    successes = {str(op.status): op.summary} | {str(c): text for c, text in op.also_succeeds}
    spec: dict[str, Any] = {
        "operationId": op.handler.__name__,
        "summary": op.summary,
        "tags": [op.tag],
        "security": [{"bearer": []}],
        "parameters": [_parameter(p.where, p.name, p.schema, p.description) for p in op.params],
        "responses": {code: _success(op, text, components) for code, text in successes.items()}
        | {str(code): _problem(code) for code in _error_codes(op)},
    }
    if op.method in _IDEMPOTENT:
        spec["parameters"].append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Makes a retry of this request safe; kept 24 h per token",
                # Printable ASCII; a server strips surrounding spaces before relay sees them.
                "schema": {"type": "string", "pattern": "^[!-~]([ -~]{0,253}[!-~])?$"},
            }
        )
    if op.body is not None:
        required = any(field.is_required() for field in op.body.model_fields.values())
        spec["requestBody"] = {
            "required": required,
            "content": {
                "application/json": {"schema": _component(op.body, components, "validation")}
            },
        }
    return spec


def _plain(
    summary: str, schema: dict[str, Any], content_type: str = "application/json"
) -> dict[str, Any]:
    return {
        "summary": summary,
        "tags": ["operations"],
        "security": [],
        "responses": {
            "200": {"description": summary, "content": {content_type: {"schema": schema}}},
            "413": _problem(413),
        },
    }


def build(operations: Sequence[Operation]) -> dict[str, Any]:
    """An OpenAPI 3.1 document for every route relay serves."""
    components: dict[str, Any] = {}
    _component(Problem, components)
    for event_type in EVENT_TYPES.values():
        _component(event_type.model, components, "validation")
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        # `{id:webhook}` names a route's convertor; the document states ids as schemas.
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", op.path)
        paths.setdefault(path, {})[op.method.lower()] = _operation(op, components)
    readyz = _plain("Ready: Redis is reachable", _component(Ready, components))
    readyz["responses"]["503"] = _problem(503) | {"description": "Redis unreachable"}
    metrics = _plain("Prometheus metrics", _STRING, "text/plain")
    metrics["responses"]["503"] = _problem(503)
    # Open unless RELAY_METRICS_TOKEN is set; then that token is the bearer it wants.
    metrics["security"] = [{}, {"bearer": []}]
    metrics["responses"]["401"] = _problem(401)
    paths |= {
        "/healthz": {"get": _plain("Alive", _component(Alive, components))},
        "/readyz": {"get": readyz},
        "/metrics": {"get": metrics},
        "/openapi.json": {"get": _plain("This document", {"type": "object"})},
        "/docs": {"get": _plain("Interactive API documentation", _STRING, "text/html")},
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
