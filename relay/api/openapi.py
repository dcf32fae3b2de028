"""The OpenAPI document, built from the same Operation list the router is built from.

Request bodies come from the operations' pydantic models; what each operation answers (its
success schema, and which errors it can return) is declared here, and the fuzz tests
(tests/test_fuzz.py) hold the app to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import pydantic

from relay import __version__
from relay.api.pagination import id_schema
from relay.api.routing import Operation
from relay.delivery.model import FINISHED, Status
from relay.events import EVENT_TYPES, NAME_PATTERN
from relay.signing import PUBLIC_KEY_PREFIX, SECRET_PREFIX, Scheme
from relay.stats import WINDOWS
from relay.tokens import TOKEN_PREFIX, Role
from relay.validation import TenantId

_REF = "#/components/schemas/{model}"
_IDEMPOTENT = frozenset({"POST", "PATCH", "DELETE"})


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(model=name)}


def _object(properties: dict[str, Any], *, optional: Iterable[str] = ()) -> dict[str, Any]:
    """A closed object schema: every property listed, all required but `optional`."""
    skip = set(optional)
    return {
        "type": "object",
        "required": [name for name in properties if name not in skip],
        "properties": properties,
        "additionalProperties": False,
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_STRING = {"type": "string"}
_COUNT = {"type": "integer", "minimum": 0}
_TIMESTAMP = {"type": "string", "format": "date-time"}
_TENANT = pydantic.TypeAdapter(TenantId).json_schema()
_EVENT_TYPE_NAME = {"type": "string", "pattern": NAME_PATTERN}
# Test sends are samples of the built-in types only.
_EVENT_TYPE = {"type": "string", "enum": list(EVENT_TYPES)}
_STATUS = {"type": "string", "enum": [s.value for s in Status]}
_HEADERS = {"type": "object", "additionalProperties": _STRING}
_HTTP_STATUS = {"type": "integer", "minimum": 100, "maximum": 599}

_PROBLEM = _object(
    {
        "type": _STRING,
        "title": _STRING,
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": _STRING,
        "code": _STRING,
        "errors": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": _STRING},
        },
    },
    optional=["errors"],
)

_TOKEN = {
    "id": id_schema("tok"),
    "role": {"type": "string", "enum": [r.value for r in Role]},
    "tenant_id": _nullable(_TENANT),
    "name": _STRING,
    "created_at": _TIMESTAMP,
    "expires_at": _nullable(_TIMESTAMP),
    "last_used_at": {
        **_nullable(_TIMESTAMP),
        "description": "When the token last authenticated, to the minute",
    },
}
_WEBHOOK = {
    "id": id_schema("wh"),
    "tenant_id": _TENANT,
    "url": _STRING,
    # Names of built-in and registered types, '*' and 'prefix.*' wildcards.
    "events": {"type": "array", "items": _STRING},
    "description": _STRING,
    "headers": _HEADERS,
    "enabled": {"type": "boolean"},
    "disabled_reason": _nullable(_STRING),
    "rate_limit_per_second": _nullable({"type": "integer", "minimum": 1}),
    "signature_scheme": {"type": "string", "enum": [s.value for s in Scheme]},
    "created_at": _TIMESTAMP,
    "updated_at": _TIMESTAMP,
}
_SECRET = {
    "type": "string",
    "pattern": f"^({SECRET_PREFIX}|{PUBLIC_KEY_PREFIX})[A-Za-z0-9+/]+={{0,2}}$",
    "description": (
        f"What a receiver verifies with: the {SECRET_PREFIX} secret (hmac-sha256), or the "
        f"{PUBLIC_KEY_PREFIX} public key (ed25519)"
    ),
}
_EVENT = {
    "id": id_schema("evt"),
    "type": _STRING,
    "tenant_id": _TENANT,
    "created_at": _TIMESTAMP,
    "upstream_id": _nullable(_STRING),
    "data": {"type": "object"},
    "deliveries": {
        "type": "array",
        "items": _object(
            {"id": id_schema("dlv"), "webhook_id": id_schema("wh"), "status": _STATUS}
        ),
    },
}
_DELIVERY = {
    "id": id_schema("dlv"),
    "event_id": id_schema("evt"),
    "webhook_id": id_schema("wh"),
    "tenant_id": _TENANT,
    "event_type": _STRING,
    "status": _STATUS,
    "attempt_count": _COUNT,
    "next_attempt_at": _nullable(_TIMESTAMP),
    "last_status_code": _nullable(_HTTP_STATUS),
    "last_error": _nullable(_STRING),
    "created_at": _TIMESTAMP,
    "updated_at": _TIMESTAMP,
    "delivered_at": _nullable(_TIMESTAMP),
}
_ATTEMPT = _object(
    {
        "number": {"type": "integer", "minimum": 1},
        "started_at": _TIMESTAMP,
        "duration_ms": _COUNT,
        "status_code": _nullable(_HTTP_STATUS),
        "error": _nullable(_STRING),
        "response_body": {
            **_STRING,
            "description": "The start of the response: RELAY_CAPTURE_RESPONSE_BYTES (4 KiB)",
        },
        "request_headers": _HEADERS,
        "url": {**_STRING, "description": "Where the attempt went (empty if none was made)"},
    },
    optional=("url",),  # attempts logged before relay recorded it
)
_DELETED = {"deleted": {"const": True}}
_FIGURES = {
    "events_accepted": _COUNT,
    "attempts": _COUNT,
    "attempts_succeeded": _COUNT,
    "success_rate": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
    "deliveries": _object({s.value: _COUNT for s in FINISHED}),
    "latency_p50_ms": _nullable(_COUNT),
    "latency_p95_ms": _nullable(_COUNT),
}

# The objects relay answers with (as each one's public view has them), by component name.
_RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": _PROBLEM,
    "Token": _object(_TOKEN),
    "IssuedToken": _object(
        {**_TOKEN, "token": {"type": "string", "pattern": f"^{TOKEN_PREFIX}[A-Za-z0-9_-]+$"}}
    ),
    "RevokedToken": _object({**_TOKEN, **_DELETED}),
    "AuditEntry": _object(
        {
            "id": id_schema("aud"),
            "at": _TIMESTAMP,
            "action": {**_STRING, "description": "What was done, e.g. webhook.secret.rotate"},
            "actor": _object(
                {
                    "token_id": {**_STRING, "description": "The token's id, or `system`"},
                    "role": _STRING,
                }
            ),
            "object_id": _nullable(_STRING),
            "tenant_id": _nullable(_TENANT),
            "request_id": {
                **_nullable(_STRING),
                "description": "The request's X-Request-Id (the caller's, or one relay made)",
            },
        }
    ),
    "PortalSession": _object(
        {
            "url": {
                **_STRING,
                "description": "The console, signed in by the token in the URL's fragment",
            },
            "token_id": id_schema("tok"),
            "tenant_id": _TENANT,
            "expires_at": _TIMESTAMP,
        }
    ),
    "EventType": _object(
        {
            "name": _EVENT_TYPE_NAME,
            "description": _STRING,
            "schema": {"type": "object", "description": "JSON Schema of the event's data"},
            "example": _nullable({"type": "object"}),
            "deprecated": {"type": "boolean"},
            "builtin": {
                "type": "boolean",
                "description": "Built into relay (fixed) rather than registered",
            },
        }
    ),
    "Webhook": _object(_WEBHOOK),
    "NewWebhook": _object({**_WEBHOOK, "secret": _SECRET}),
    "DeletedWebhook": _object({**_WEBHOOK, **_DELETED}),
    "Secret": _object(
        {
            "secret": _SECRET,
            "previous": {
                "type": "array",
                "description": "Previous secrets that still sign, and until when",
                "items": _object({"expires_at": _TIMESTAMP}),
            },
        }
    ),
    "RotatedSecret": _object({"secret": _SECRET, "previous_expires_at": _TIMESTAMP}),
    "TestResult": _object(
        {
            "event_id": id_schema("evt"),
            "type": _EVENT_TYPE,
            "sent_at": _TIMESTAMP,
            "url": _STRING,
            "status_code": _nullable(_HTTP_STATUS),
            "duration_ms": _COUNT,
            "error": _nullable(_STRING),
            "response_body": _STRING,
            "request_headers": _HEADERS,
        }
    ),
    "Event": _object(_EVENT),
    "EventSummary": _object({k: v for k, v in _EVENT.items() if k != "deliveries"}),
    "RetriedEvent": _object({**_EVENT, "requeued": _COUNT}),
    "Delivery": _object(_DELIVERY),
    "DeliveryWithAttempts": _object(
        {**_DELIVERY, "attempts": {"type": "array", "items": _ref("Attempt")}}
    ),
    "Attempt": _ATTEMPT,
    "Stats": _object(
        {
            "window": {"type": "string", "enum": list(WINDOWS)},
            "since": _TIMESTAMP,
            "until": _TIMESTAMP,
            "step_seconds": _COUNT,
            "totals": _object(_FIGURES),
            "series": {"type": "array", "items": _object({"start": _TIMESTAMP, **_FIGURES})},
            "backlog": _COUNT,
            "webhooks": {
                "type": "array",
                "items": _object({**_WEBHOOK, "failing_since": _nullable(_TIMESTAMP)}),
            },
        }
    ),
    "Recovery": _object(
        {
            "id": id_schema("rcv"),
            "webhook_id": id_schema("wh"),
            "status": {"type": "string", "enum": ["running", "done"]},
            "requeued": {**_COUNT, "description": "Failed deliveries sent again so far"},
            "since": _TIMESTAMP,
            "until": _TIMESTAMP,
            "url": {**_STRING, "description": "Where to GET the recovery's progress"},
        }
    ),
}
# What each operation's `data` holds, by operationId; a list's items are each one of these.
_DATA = {
    "create_token": "IssuedToken",
    "list_tokens": "Token",
    "delete_token": "RevokedToken",
    "create_portal_session": "PortalSession",
    "audit_log": "AuditEntry",
    "event_types": "EventType",
    "create_event_type": "EventType",
    "update_event_type": "EventType",
    "create_webhook": "NewWebhook",
    "list_webhooks": "Webhook",
    "send_test_event": "TestResult",
    "get_webhook": "Webhook",
    "update_webhook": "Webhook",
    "delete_webhook": "DeletedWebhook",
    "get_secret": "Secret",
    "rotate_secret": "RotatedSecret",
    "post_event": "Event",
    "get_event": "Event",
    "list_events": "EventSummary",
    "get_delivery_by_id": "DeliveryWithAttempts",
    "retry_event": "RetriedEvent",
    "webhook_deliveries": "Delivery",
    "all_deliveries": "Delivery",
    "get_delivery": "DeliveryWithAttempts",
    "retry_delivery": "Delivery",
    "cancel_delivery": "Delivery",
    "get_stats": "Stats",
    "recover_webhook": "Recovery",
    "get_recovery": "Recovery",
    "list_tests": "TestResult",
}
# Success answers besides the operation's own status.
_ALSO_SUCCEEDS = {
    "post_event": {"200": "A repeat of an upstream `id`: the first event; nothing new is created"},
}
# Operations that look something up by an id in their body or query, or that a tenant token
# can point at another tenant: 404 although no path parameter names an object.
_LOOKS_UP = frozenset(
    {
        "create_webhook",
        "list_webhooks",
        "send_test_event",
        "all_deliveries",
        "audit_log",
        "list_events",
    }
)

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


def _refine_token_spec(schema: dict[str, Any]) -> None:
    # TokenSpec's validator: a tenant token is bound to a tenant_id, other roles to none.
    schema["oneOf"] = [
        {
            "properties": {"role": {"const": Role.TENANT.value}, "tenant_id": _TENANT},
            "required": ["tenant_id"],
        },
        {
            "properties": {
                "role": {"enum": [Role.ADMIN.value, Role.INGEST.value]},
                "tenant_id": {"type": "null"},
            },
        },
    ]


def _refine_event_in(schema: dict[str, Any]) -> None:
    # EventIn takes any `type` and `data` and validates them against the event-type catalog:
    # the document spells the built-in types out, one complete alternative per type, so that
    # each one (and a client generated from it) has every field: `tenant_id` and `id` too.
    # Registered types are data, not part of the document; GET /v1/event-types lists them.
    properties = schema.pop("properties")
    required = schema.pop("required")
    for rule in ("type", "additionalProperties"):
        schema.pop(rule)
    schema["oneOf"] = [
        {
            "title": f"{event_type.model.__name__}Event",
            "type": "object",
            "properties": {
                **properties,
                "type": {"const": name},
                "data": _ref(event_type.model.__name__),
            },
            "required": required,
            "additionalProperties": False,
        }
        for name, event_type in EVENT_TYPES.items()
    ]
    schema["description"] += " Types registered at /v1/event-types are accepted as well."


def _refine_webhook_create(schema: dict[str, Any]) -> None:
    # WebhookCreate's validator: only an hmac-sha256 webhook takes an imported secret.
    schema["anyOf"] = [
        {"properties": {"signature_scheme": {"const": Scheme.HMAC_SHA256.value}}},
        {"properties": {"secret": {"type": "null"}}},
    ]


# Rules the request models enforce in validators, which their generated schemas cannot show.
_REFINE = {
    "TokenSpec": _refine_token_spec,
    "EventIn": _refine_event_in,
    "WebhookCreate": _refine_webhook_create,
}


def _body_schema(model: type[pydantic.BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    refine = _REFINE.get(model.__name__)
    if refine is not None:
        refine(schema)
    components[model.__name__] = schema
    return _ref(model.__name__)


def _event_data_schemas(components: dict[str, Any]) -> None:
    for event_type in EVENT_TYPES.values():
        schema = event_type.model.model_json_schema(ref_template=_REF)
        components.update(schema.pop("$defs", {}))
        components[event_type.model.__name__] = schema


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


def _success(op: Operation, description: str) -> dict[str, Any]:
    data = _ref(_DATA[op.handler.__name__]) if op.handler.__name__ in _DATA else {"type": "object"}
    if op.list_of:
        envelope = _object(
            {"data": {"type": "array", "items": data}, "next_cursor": _nullable(_STRING)}
        )
    else:
        envelope = _object({"data": data})
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": envelope}},
    }
    if op.method in _IDEMPOTENT:
        response["headers"] = _headers(
            {"Idempotent-Replayed": "`true` on a replay of a stored response"}, required=False
        )
    return response


def _error_codes(op: Operation) -> list[int]:
    """The errors `op` can answer with, from what it takes and does."""
    codes = {401, 403, 413, 429, 503}
    if op.body is not None:
        codes |= {415, 422}
    if any(p.where == "query" for p in op.params):
        codes.add(422)
    if any(p.where == "path" for p in op.params) or op.handler.__name__ in _LOOKS_UP:
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
    name = op.handler.__name__
    successes = {str(op.status): op.summary} | _ALSO_SUCCEEDS.get(name, {})
    spec: dict[str, Any] = {
        "operationId": name,
        "summary": op.summary,
        "tags": [op.tag],
        "security": [{"bearer": []}],
        "parameters": [_parameter(p.where, p.name, p.schema, p.description) for p in op.params],
        "responses": {code: _success(op, text) for code, text in successes.items()}
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
            "content": {"application/json": {"schema": _body_schema(op.body, components)}},
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


def _status(value: str) -> dict[str, Any]:
    return _object({"status": {"const": value}})


def build(operations: Sequence[Operation]) -> dict[str, Any]:
    """An OpenAPI 3.1 document for every route relay serves."""
    components: dict[str, Any] = dict(_RESPONSE_SCHEMAS)
    _event_data_schemas(components)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        # `{id:webhook}` names a route's convertor; the document states ids as schemas.
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", op.path)
        paths.setdefault(path, {})[op.method.lower()] = _operation(op, components)
    readyz = _plain("Ready: Redis is reachable", _status("ready"))
    readyz["responses"]["503"] = _problem(503) | {"description": "Redis unreachable"}
    metrics = _plain("Prometheus metrics", _STRING, "text/plain")
    metrics["responses"]["503"] = _problem(503)
    # Open unless RELAY_METRICS_TOKEN is set; then that token is the bearer it wants.
    metrics["security"] = [{}, {"bearer": []}]
    metrics["responses"]["401"] = _problem(401)
    paths |= {
        "/healthz": {"get": _plain("Alive", _status("ok"))},
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
