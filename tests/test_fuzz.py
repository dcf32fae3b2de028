"""Property-based fuzzing of every operation in relay's own OpenAPI document (schemathesis).

Schemathesis reads /openapi.json from the app, generates valid and invalid requests for each
operation, sends them as the admin and runs its default checks on every answer: never a 5xx,
only documented status codes, content types, headers and schemas, valid data accepted and
invalid data refused, 405 with `Allow` for undocumented methods, and no operation that answers
without a token. On top of those, every error must be RFC 9457 problem+json.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings
from jsonschema import Draft202012Validator, SchemaError
from schemathesis.core.parameters import ParameterLocation
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import negative_data_rejection
from starlette.applications import Starlette

from relay.api.openapi import build as build_openapi
from relay.app import OPERATIONS, create_app
from relay.config import Settings
from relay.event_types import EVENT_TYPES
from relay.timefmt import parse_rfc3339
from tests.fixtures import ADMIN_TOKEN, ClientFactory
from tests.flows import Workers, wait_status, webhook
from tests.receivers import closed_port

PROBLEM = "application/problem+json"
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code"}
WEBHOOK_BODIES = {("POST", "/v1/webhooks"), ("PATCH", "/v1/webhooks/{id}")}
EVENT_TYPE_BODIES = {("POST", "/v1/event-types"), ("PATCH", "/v1/event-types/{name}")}
TENANT_TOKEN = {"role": "tenant", "tenant_id": "space_42", "name": "tour"}
# A registered type whose data may be any object: what valid events of registered types name.
ANY_DATA_TYPE = "fuzz.any_data"
BATCH = ("POST", "/v1/events/batch")


@schemathesis.check
def errors_are_problems(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Every 4xx and 5xx is RFC 9457 problem+json with the promised members."""
    if response.status_code < 400:
        return None
    media = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    assert media == PROBLEM, f"{response.status_code} answered as {media!r}, not {PROBLEM}"
    body = response.json()
    assert isinstance(body, dict) and body.keys() >= PROBLEM_MEMBERS, body
    assert body["status"] == response.status_code, body
    return None


@pytest.fixture
async def any_data_type(admin: httpx.AsyncClient) -> None:
    """ANY_DATA_TYPE registered (on a Redis emptied first)."""
    spec = {"name": ANY_DATA_TYPE, "schema": {"type": "object"}}
    assert (await admin.post("/v1/event-types", json=spec)).status_code == 201


@pytest.fixture
def app(settings_for: Callable[..., Settings], any_data_type: None) -> Iterator[Starlette]:
    """relay on the session's redis-server; schemathesis runs its lifespan in its own loop."""
    # No per-token rate limit: the fuzzer sends far more than a client would in a second. No
    # limit on failed authentications either: it checks that each operation refuses a bad token
    # with a 401, one operation after another from one address, far past what a client would.
    yield create_app(settings_for(api_rate_limit=0, auth_failures_per_minute=0))
    asgi.shutdown_lifespans()


@pytest.fixture
def api_schema(app: Starlette) -> schemathesis.BaseSchema:
    # Credentials for the document's `bearer` scheme: schemathesis sends them on every request
    # but the ones testing a missing or wrong token, and knows them for its auth checks.
    config = schemathesis.Config.from_dict(
        {"auth": {"openapi": {"bearer": {"bearer": ADMIN_TOKEN}}, "auto-signup": False}}
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4 renames the test node through `Node._nodeid`, which pytest 9.2 no longer
    # has; giving it one back is all its lazy (fixture-loaded) schemas need.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _header_bytes(headers: dict[str, Any]) -> int:
    return sum(len(str(k).encode()) + len(str(v).encode()) for k, v in headers.items())


def _is_local_json_schema(schema: object) -> bool:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        return False
    refs = []
    nodes = [schema]
    while nodes:
        node = nodes.pop()
        if isinstance(node, dict):
            refs += [v for k, v in node.items() if k == "$ref"]
            nodes += node.values()
        elif isinstance(node, list):
            nodes += node
    return all(isinstance(ref, str) and ref.startswith("#") for ref in refs)


def _within_unstated_rules(case: schemathesis.Case) -> None:
    """Keep valid requests within the rules the document states in words but no schema can.

    Only for positive (schema-valid) cases, which must then be accepted; invalid ones are sent
    as generated, and must be refused.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    # A client reuses an Idempotency-Key only to retry the same request; a repeat with another
    # body is refused with 422. Generated keys repeat across different requests.
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    if (case.method.upper(), case.path) in WEBHOOK_BODIES and isinstance(case.body, dict):
        headers = case.body.get("headers")
        if isinstance(headers, dict):
            # Header names are unique without regard to case, and total at most 4 KiB.
            assume(len({str(name).lower() for name in headers}) == len(headers))
            assume(_header_bytes(headers) <= 4096)
        if case.method.upper() == "POST" and case.body.get("tenant_id") is None:
            # An admin says which tenant a webhook is for; a tenant token may leave it out.
            case.body["tenant_id"] = "fuzz_tenant"
    recovery = (case.method.upper(), case.path) == ("POST", "/v1/recoveries")
    if (
        recovery
        and isinstance(case.body, dict)
        and case.body.get("since")
        and case.body.get("until")
    ):
        # A window ends no earlier than it starts.
        since, until = (parse_rfc3339(case.body[k], k) for k in ("since", "until"))
        assume(until >= since)
    event_post = (case.method.upper(), case.path) == ("POST", "/v1/events")
    if event_post and isinstance(case.body, dict) and case.body.get("type") not in EVENT_TYPES:
        # Registered types are data: the document says an event may name one, not which exist.
        case.body["type"] = ANY_DATA_TYPE
    if (case.method.upper(), case.path) in EVENT_TYPE_BODIES and isinstance(case.body, dict):
        # `schema` must itself be a JSON Schema (draft 2020-12) whose `$ref`s stay local.
        assume(_is_local_json_schema(case.body.get("schema", {})))
    token_post = (case.method.upper(), case.path) == ("POST", "/v1/tokens")
    if token_post and isinstance(case.body, dict) and case.body.get("expires_at") is not None:
        # A token's expiry must lie in the future.
        case.body["expires_at"] = (datetime.now(UTC) + timedelta(days=1)).isoformat()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.system
def test_every_operation_keeps_its_documented_promises(case: schemathesis.Case) -> None:
    _within_unstated_rules(case)
    body = case.meta.components.get(ParameterLocation.BODY) if case.meta else None
    if body is not None and body.mode.is_negative and (case.method.upper(), case.path) == BATCH:
        # A batch refuses an invalid event on its own, in a 207: an invalid body
        # is refused by the whole answer or by one of its results.
        response = case.call_and_validate(excluded_checks=[negative_data_rejection])
        if response.status_code == 207:
            results = response.json()["data"]
            assert any(r["status"] >= 400 for r in results), response.text
        return
    case.call_and_validate()


def test_every_operation_documents_the_objects_it_answers_with() -> None:
    document = build_openapi(OPERATIONS)
    for path, methods in document["paths"].items():
        for method, spec in methods.items():
            for status, response in spec["responses"].items():
                if path.startswith("/v1/") and status.startswith("2"):
                    data = response["content"]["application/json"]["schema"]["properties"]["data"]
                    assert "$ref" in data.get("items", data), (method, path, status)


def test_every_request_body_states_every_field_its_model_takes() -> None:
    # A client generator makes a class of each alternative of a body: each must have every field.
    schemas = build_openapi(OPERATIONS)["components"]["schemas"]
    for op in OPERATIONS:
        if op.body is not None:
            fields = {f.alias or name for name, f in op.body.model_fields.items()}
            schema = schemas[op.body.__name__]
            for alternative in schema.get("oneOf", schema.get("anyOf", [schema])):
                assert set(alternative["properties"]) == fields, op.body.__name__


def test_the_document_takes_events_of_registered_types_and_built_in_ones_as_built() -> None:
    document = build_openapi(OPERATIONS)
    event = Draft202012Validator({**document, "$ref": "#/components/schemas/EventIn"})
    ordered = {"type": "custom.ordered", "tenant_id": "space_42", "data": {"order_id": "o_1"}}
    assert event.is_valid(ordered)
    assert not event.is_valid({**ordered, "type": "post.published"})  # no post_id
    assert event.is_valid({**ordered, "type": "post.published", "data": {"post_id": 7}})
    assert not event.is_valid({**ordered, "data": "o_1"})


def _sample_path(path: str, parameters: list[dict[str, Any]]) -> str:
    """`path` with each id parameter filled in with a well-formed id (of nothing)."""
    for parameter in parameters:
        if parameter["in"] == "path":
            prefix = parameter["schema"]["pattern"].removeprefix("^").split("_")[0]
            path = path.replace("{" + parameter["name"] + "}", f"{prefix}_{'0' * 26}")
    return path


async def test_every_v1_operation_refuses_a_request_without_a_valid_token(
    make_client: ClientFactory,
) -> None:
    # Three bad tokens for each operation from one address: past the failed-authentication
    # limit (its own tests check it), which would answer 429 before any token is looked at.
    anonymous = await make_client(token=None, auth_failures_per_minute=0)
    document = (await anonymous.get("/openapi.json")).json()
    operations = [
        (method.upper(), _sample_path(path, spec.get("parameters", [])))
        for path, methods in document["paths"].items()
        if path.startswith("/v1/")
        for method, spec in methods.items()
    ]
    assert len(operations) == len(OPERATIONS)
    for authorization in (None, "Bearer rly_unknown", "Bearer", "Basic dGVzdA=="):
        headers = {"authorization": authorization} if authorization else {}
        for method, path in operations:
            response = await anonymous.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, authorization, response.text)
            assert response.headers["content-type"] == PROBLEM
            assert response.headers["www-authenticate"] == "Bearer"


class Tour:
    """Chosen calls through schemathesis, which checks each answer as it does generated ones."""

    def __init__(self, api_schema: schemathesis.BaseSchema) -> None:
        self.schema = api_schema
        self.seen: set[tuple[str, str, int]] = set()

    async def call(
        self,
        method: str,
        path: str,
        status: int,
        *,
        ids: dict[str, str] | None = None,
        query: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        operation = self.schema[path][method]
        case = operation.Case(
            path_parameters=ids or {},
            query=query or {},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", **(headers or {})},
            **({"body": body, "media_type": "application/json"} if body is not None else {}),
        )
        response = await asyncio.to_thread(case.call_and_validate)
        assert response.status_code == status, (method, path, response.text)
        self.seen.add((method, path, status))
        answer: dict[str, Any] = (
            response.json() if "json" in response.headers["content-type"][0] else {}
        )
        return answer


async def test_real_objects_match_the_documented_responses(
    api_schema: schemathesis.BaseSchema, admin: httpx.AsyncClient, workers: Workers
) -> None:
    tour = Tour(api_schema)
    [worker] = await workers(1)
    # A target nothing listens on: attempts fail fast, and there is a log of them to read.
    dead = f"http://127.0.0.1:{closed_port()}/hook"

    ordered = {"name": "custom.ordered", "schema": {"type": "object", "required": ["order_id"]}}
    await tour.call("POST", "/v1/event-types", 201, body=ordered)
    order = {"type": "custom.ordered", "tenant_id": "space_42", "data": {"order_id": "o_1"}}
    await tour.call("POST", "/v1/events", 202, body=order)
    named = {"name": ordered["name"]}
    await tour.call("PATCH", "/v1/event-types/{name}", 200, ids=named, body={"deprecated": True})
    await tour.call("GET", "/v1/event-types", 200)
    key = {"Idempotency-Key": "tour-token"}
    token = (await tour.call("POST", "/v1/tokens", 201, body=TENANT_TOKEN, headers=key))["data"]
    await tour.call("POST", "/v1/tokens", 201, body=TENANT_TOKEN, headers=key)  # a replay
    await tour.call("GET", "/v1/tokens", 200, query={"limit": 1})
    await tour.call("GET", "/v1/tokens/self", 200)
    await tour.call("DELETE", "/v1/tokens/{id}", 200, ids={"id": token["id"]})
    await tour.call("POST", "/v1/portal-sessions", 201, body={"tenant_id": "space_42"})

    new = {"url": dead, "tenant_id": "space_42", "headers": {"X-Trace": "tour"}, "events": ["*"]}
    hook = (await tour.call("POST", "/v1/webhooks", 201, body=new))["data"]
    on_hook = {"id": hook["id"]}
    await tour.call("GET", "/v1/webhooks", 200, query={"tenant_id": "space_42"})
    await tour.call("GET", "/v1/webhooks/{id}", 200, ids=on_hook)
    await tour.call("PATCH", "/v1/webhooks/{id}", 200, ids=on_hook, body={"description": "t"})
    await tour.call("GET", "/v1/webhooks/{id}/secret", 200, ids=on_hook)
    rotate = {"grace_seconds": 60}
    await tour.call("POST", "/v1/webhooks/{id}/rotate-secret", 200, ids=on_hook, body=rotate)
    await tour.call("POST", "/v1/webhooks/test", 200, body={"webhook_id": hook["id"]})
    await tour.call("GET", "/v1/webhooks/{id}/tests", 200, ids=on_hook)

    event = {"type": "post.published", "tenant_id": "space_42", "data": {"post_id": 7}, "id": "u1"}
    first = (await tour.call("POST", "/v1/events", 202, body=event))["data"]
    await tour.call("POST", "/v1/events", 200, body=event)  # the same upstream id again
    on_event = {"id": first["id"]}
    on_delivery = {**on_hook, "delivery_id": first["deliveries"][0]["id"]}
    await wait_status(admin, hook["id"], on_delivery["delivery_id"], "failed")
    worker.terminate()  # nothing may take the delivery while it is retried and canceled below
    await asyncio.to_thread(worker.wait, 15)

    await tour.call("GET", "/v1/events/{id}", 200, ids=on_event)
    failed = {"status": "failed", "event_type": "post.published", "since": first["created_at"]}
    await tour.call("GET", "/v1/webhooks/{id}/deliveries", 200, ids=on_hook, query=failed)
    await tour.call("GET", "/v1/deliveries", 200, query={"webhook_id": hook["id"], **failed})
    await tour.call("GET", "/v1/deliveries/{id}", 200, ids={"id": on_delivery["delivery_id"]})
    await tour.call("GET", "/v1/events", 200, query={"type": "post.published", "id": "u1"})
    delivery = "/v1/webhooks/{id}/deliveries/{delivery_id}"
    found = (await tour.call("GET", delivery, 200, ids=on_delivery))["data"]
    assert found["attempts"], found
    stats = (await tour.call("GET", "/v1/stats", 200, query={"window": "day"}))["data"]
    assert [w["id"] for w in stats["webhooks"]] == [hook["id"]]  # failing
    window = {"since": first["created_at"]}
    recover = "/v1/webhooks/{id}/recover"
    recovery = (await tour.call("POST", recover, 202, ids=on_hook, body=window))["data"]
    assert recovery["requeued"] == 1
    on_recovery = {**on_hook, "recovery_id": recovery["id"]}
    await tour.call("GET", "/v1/webhooks/{id}/recoveries/{recovery_id}", 200, ids=on_recovery)
    matching = {"webhook_id": hook["id"], "event_type": "post.published", **window}
    bulk = (await tour.call("POST", "/v1/recoveries", 202, body=matching))["data"]
    await tour.call("GET", "/v1/recoveries/{recovery_id}", 200, ids={"recovery_id": bulk["id"]})
    await tour.call("POST", f"{delivery}/retry", 202, ids=on_delivery)  # pending: due now
    await tour.call("POST", f"{delivery}/cancel", 200, ids=on_delivery)
    await tour.call("POST", f"{delivery}/retry", 202, ids=on_delivery)
    await tour.call("POST", f"{delivery}/cancel", 200, ids=on_delivery)
    await tour.call("POST", "/v1/events/{id}/retry", 202, ids=on_event)  # nothing failed now
    fresh = {"type": "post.published", "tenant_id": "space_42", "data": {"post_id": 8}}
    batch = await tour.call("POST", "/v1/events/batch", 207, body={"events": [event, fresh]})
    assert [r["status"] for r in batch["data"]] == [200, 202]
    await tour.call("DELETE", "/v1/webhooks/{id}", 200, ids=on_hook)
    trail = {"tenant_id": "space_42", "action": "webhook.delete", "since": first["created_at"]}
    [deleted] = (await tour.call("GET", "/v1/audit-log", 200, query=trail))["data"]
    assert deleted["object_id"] == hook["id"]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        await tour.call("GET", path, 200)

    documented = {
        (method.upper(), path)
        for path, methods in (await admin.get("/openapi.json")).json()["paths"].items()
        for method in methods
    }
    assert {(method, path) for method, path, _ in tour.seen} == documented


# What fuzzing found, pinned down.


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/tokens", "GET, HEAD, POST"),
        ("PATCH", "/v1/webhooks/test", "POST"),
        ("GET", "/v1/webhooks/test", "POST"),
        ("GET", "/v1/events/batch", "POST"),
        ("DELETE", "/v1/tokens/self", "GET, HEAD"),
        ("GET", "/v1/tokens/tok_1", "DELETE"),
        ("PUT", "/v1/webhooks/wh_1", "DELETE, GET, HEAD, PATCH"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
async def test_a_405_names_every_method_the_path_takes(
    admin: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await admin.request(method, path)
    assert response.status_code == 405 and response.headers["content-type"] == PROBLEM
    assert response.headers["allow"] == allow


async def test_a_json_integer_may_be_written_with_a_zero_fraction(admin: httpx.AsyncClient) -> None:
    hook = await webhook(admin, "https://a.example.com/", rate_limit_per_second=5.0)
    assert hook["rate_limit_per_second"] == 5
    assert (await admin.get("/v1/webhooks", params={"limit": "1.0"})).status_code == 200
    event = {"type": "media.uploaded", "tenant_id": "space_42"}
    media = {"media_id": 7.0, "url": "https://cdn.example.com/m", "mime": "image/png", "size": 1.0}
    assert (await admin.post("/v1/events", json={**event, "data": media})).status_code == 202
    for size in (1.5, 1e23, -1.0):
        refused = await admin.post("/v1/events", json={**event, "data": {**media, "size": size}})
        assert refused.status_code == 422 and "data.size" in refused.json()["errors"], size
    for limit in ("1.5", "１", "+1"):
        assert (await admin.get("/v1/webhooks", params={"limit": limit})).status_code == 422


async def test_time_filters_take_rfc_3339_timestamps_only(admin: httpx.AsyncClient) -> None:
    hook = await webhook(admin, "https://a.example.com/")
    deliveries = f"/v1/webhooks/{hook['id']}/deliveries"
    for since in (
        "2024-05-01T00:00:00Z",
        "2024-05-01t00:00:00.1234567-01:30",
        "2016-12-31T23:59:60Z",
    ):
        assert (await admin.get(deliveries, params={"since": since})).status_code == 200, since
    for since in ("2024-05-01", "2024-05-01 00:00:00Z", "20240501T000000Z", "2024-05-01T00:00:00"):
        refused = await admin.get(deliveries, params={"since": since})
        assert refused.status_code == 422 and "since" in refused.json()["errors"], since
