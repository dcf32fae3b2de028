"""Event types as data: admins register a type with a JSON Schema; events of it are checked
against that schema, fan out to webhooks that name it or a `prefix.*` wildcard, and arrive
exactly as built-in ones do."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio

from relay.event_types import register
from relay.store.event_types import EventTypeStore
from relay.validation import MAX_JSON_DEPTH
from tests.fixtures import ClientFactory
from tests.flows import Workers, webhook
from tests.receivers import Receiver

ORDERED = {
    "name": "custom.ordered",
    "description": "An order was placed.",
    "schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["order_id", "total"],
        "properties": {
            "order_id": {"type": "string", "minLength": 1},
            "total": {"type": "number", "minimum": 0},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
        },
        "$defs": {"line": {"type": "object", "required": ["sku"]}},
    },
}
VALID = {"order_id": "o_1", "total": 12.5, "lines": [{"sku": "a"}], "note": "passed through"}


async def _register(admin: httpx.AsyncClient, **overrides: Any) -> httpx.Response:
    return await admin.post("/v1/event-types", json={**ORDERED, **overrides})


async def _post(
    client: httpx.AsyncClient, data: object, type_name: str = "custom.ordered"
) -> httpx.Response:
    body = {"type": type_name, "tenant_id": "space_42", "data": data}
    return await client.post("/v1/events", json=body)


async def test_a_registered_type_round_trips_to_a_wildcard_webhook(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    made = await _register(admin)
    assert made.status_code == 201, made.text
    assert made.json()["data"]["schema"] == ORDERED["schema"]
    await workers(1)
    async with Receiver() as rx:
        custom = await webhook(admin, rx.url("/custom"), events=["custom.*"])
        await webhook(admin, rx.url("/posts"), events=["post.published"])

        accepted = await _post(admin, VALID)
        assert accepted.status_code == 202, accepted.text
        [delivery] = accepted.json()["data"]["deliveries"]
        assert delivery["webhook_id"] == custom["id"]

        refused = await _post(admin, {"total": -1})
        assert refused.status_code == 422
        assert set(refused.json()["errors"]) == {"data.order_id", "data.total"}
        nested = await _post(admin, {**VALID, "lines": [{"qty": 1}]})
        assert set(nested.json()["errors"]) == {"data.lines.0.sku"}

        # A built-in event is not one of custom.*: it goes to the other webhook only.
        post = await _post(admin, {"post_id": "p_1"}, "post.published")
        assert [d["webhook_id"] for d in post.json()["data"]["deliveries"]] != [custom["id"]]
        await rx.wait_for(2, timeout=20)
        [received] = rx.requests_to("/custom")
    body = orjson.loads(received.body)
    assert list(body) == ["id", "type", "timestamp", "tenant_id", "data"]
    assert body["type"] == "custom.ordered" and body["data"] == VALID
    assert body["id"] == accepted.json()["data"]["id"]


async def test_the_catalogue_lists_built_in_types_then_registered_ones(
    admin: httpx.AsyncClient,
) -> None:
    await _register(admin)
    listed = (await admin.get("/v1/event-types")).json()["data"]
    assert [t["name"] for t in listed] == [
        "post.published",
        "post.failed",
        "media.uploaded",
        "custom.ordered",
    ]
    assert [t["builtin"] for t in listed] == [True, True, True, False]
    assert listed[-1]["schema"] == ORDERED["schema"]
    assert listed[-1]["deprecated"] is False


async def test_a_schema_change_applies_to_the_next_event_on_every_replica(
    admin: httpx.AsyncClient, make_client: ClientFactory
) -> None:
    other_replica = await make_client()
    await _register(admin)
    assert (await _post(other_replica, VALID)).status_code == 202
    schema = {**ORDERED["schema"], "required": ["order_id", "total", "currency"]}
    changed = await admin.patch("/v1/event-types/custom.ordered", json={"schema": schema})
    assert changed.status_code == 200, changed.text
    refused = await _post(other_replica, VALID)
    assert refused.status_code == 422
    assert list(refused.json()["errors"]) == ["data.currency"]
    assert (await _post(other_replica, {**VALID, "currency": "EUR"})).status_code == 202


async def test_events_posted_at_once_read_their_types_together_each_by_its_own_schema(
    admin: httpx.AsyncClient, redis_client: redis.asyncio.Redis
) -> None:
    await _register(admin)
    other = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
    await _register(admin, name="custom.counted", schema=other)
    await redis_client.config_resetstat()

    answers = await asyncio.gather(
        _post(admin, VALID),
        _post(admin, {"id": 7}, "custom.counted"),
        _post(admin, {"id": "seven"}, "custom.counted"),
        _post(admin, {"order_id": "o_2"}),
        _post(admin, {}, "custom.unknown"),
    )
    assert [a.status_code for a in answers] == [202, 202, 422, 422, 422]
    assert list(answers[2].json()["errors"]) == ["data.id"]
    assert list(answers[3].json()["errors"]) == ["data.total"]
    assert list(answers[4].json()["errors"]) == ["type"]


async def test_types_read_at_once_are_one_read_each_as_redis_has_it_now(
    redis_client: redis.asyncio.Redis,
) -> None:
    store = EventTypeStore(redis_client)
    first = register("custom.a", "", {"type": "object"})
    await store.add(first)
    await store.add(register("custom.b", "", {"type": "array"}))
    await redis_client.config_resetstat()

    names = ["custom.a", "custom.b", "custom.none", "custom.a"]
    found = await asyncio.gather(*(store.get(name) for name in names))
    a, b = {"type": "object"}, {"type": "array"}
    assert [t and t.schema for t in found] == [a, b, None, a]
    stats = await redis_client.info("commandstats")
    assert (stats["cmdstat_mget"]["calls"], "cmdstat_get" in stats) == (1, False)
    # Changed in Redis (by another replica's PATCH), the next read has it.
    await store.change("custom.a", lambda t: dataclasses.replace(t, data_schema={"type": "null"}))
    changed = await store.get("custom.a")
    assert changed is not None and changed.schema == {"type": "null"}


async def test_a_deprecated_type_is_listed_so_and_still_accepted(
    admin: httpx.AsyncClient,
) -> None:
    await _register(admin)
    changed = await admin.patch("/v1/event-types/custom.ordered", json={"deprecated": True})
    assert changed.json()["data"]["deprecated"] is True
    listed = (await admin.get("/v1/event-types")).json()["data"]
    assert listed[-1]["deprecated"] is True
    assert (await _post(admin, VALID)).status_code == 202


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"schema": {"type": "objekt"}}, "schema"),
        ({"schema": {"properties": {"a": {"$ref": "https://example.com/s.json"}}}}, "schema"),
        ({"schema": []}, "schema"),
        ({"name": "Custom Ordered"}, "name"),
        ({"name": ""}, "name"),
        ({"description": 5}, "description"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_a_bad_registration_is_a_422_naming_the_field(
    admin: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await _register(admin, **body)
    assert response.status_code == 422, response.text
    assert list(response.json()["errors"]) == [field]


async def test_names_are_unique_and_built_in_types_fixed(admin: httpx.AsyncClient) -> None:
    assert (await _register(admin)).status_code == 201
    assert (await _register(admin)).status_code == 409
    assert (await _register(admin, name="post.published")).status_code == 409
    fixed = await admin.patch("/v1/event-types/post.published", json={"deprecated": True})
    assert fixed.status_code == 409
    missing = await admin.patch("/v1/event-types/custom.nothing", json={"deprecated": True})
    assert missing.status_code == 404
    empty = await admin.patch("/v1/event-types/custom.ordered", json={"schema": None})
    assert list(empty.json()["errors"]) == ["schema"]


async def test_only_admins_register_and_change_types(
    admin: httpx.AsyncClient,
    make_client: ClientFactory,
    token_for: Callable[..., Awaitable[str]],
) -> None:
    tenant = await make_client(token=await token_for("tenant", "space_42"))
    assert (await _register(tenant)).status_code == 403
    await _register(admin)
    change = await tenant.patch("/v1/event-types/custom.ordered", json={"deprecated": True})
    assert change.status_code == 403
    assert (await tenant.get("/v1/event-types")).status_code == 200


async def test_a_webhook_filter_names_a_registered_type_or_a_wildcard(
    admin: httpx.AsyncClient,
) -> None:
    url = "https://hooks.example.com/relay"
    early = await admin.post(
        "/v1/webhooks", json={"url": url, "tenant_id": "space_42", "events": ["custom.ordered"]}
    )
    assert early.status_code == 422
    [message] = early.json()["errors"]["events.0"]
    assert "post.*" in message  # the way to subscribe to types not registered yet
    assert (await webhook(admin, url, events=["custom.*"]))["events"] == ["custom.*"]
    await _register(admin)
    made = await webhook(admin, url, events=["custom.ordered", "post.failed"])
    assert made["events"] == ["custom.ordered", "post.failed"]
    changed = await admin.patch(f"/v1/webhooks/{made['id']}", json={"events": ["custom.ordered"]})
    assert changed.status_code == 200


def _negations(depth: int) -> dict[str, Any]:
    """A schema `depth` levels deep, each a `not` (the shape that costs jsonschema the most)."""
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(depth - 1):
        schema = {"not": schema}
    return schema


async def test_a_schema_nested_past_the_limit_is_a_422_naming_it(
    admin: httpx.AsyncClient,
) -> None:
    for depth in (MAX_JSON_DEPTH, 100, 500):
        response = await _register(admin, schema=_negations(depth))
        assert response.status_code == 422, response.text
        assert f"{MAX_JSON_DEPTH} levels" in response.json()["detail"]
        await _register(admin)
        change = await admin.patch(
            "/v1/event-types/custom.ordered", json={"schema": _negations(depth)}
        )
        assert change.status_code == 422, change.text

    # The deepest a body allows (the schema is one level into it) is registered and used.
    deepest = _negations(MAX_JSON_DEPTH - 1)
    made = await _register(admin, name="custom.deep", schema=deepest)
    assert made.status_code == 201, made.text
    accepted = await _post(admin, {}, "custom.deep")  # an even number of `not`s: it passes
    assert accepted.status_code == 202, accepted.text
    listed = (await admin.get("/v1/event-types")).json()["data"]
    assert [t["schema"] for t in listed if t["name"] == "custom.deep"] == [deepest]


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {
            "allOf": [{"$ref": "#/$defs/a"}],
            "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#"}},
        },
        {"anyOf": [{"type": "string"}, {"not": {"$ref": "#"}}]},
        {"$defs": {"me": {"$anchor": "me", "oneOf": [{"$ref": "#me"}]}}, "$ref": "#/$defs/me"},
        # Only objects with a `loop` field would take this one: refused all the same.
        {
            "type": "object",
            "if": {"required": ["loop"]},
            "then": {"$ref": "#/$defs/loop"},
            "$defs": {"loop": {"dependentSchemas": {"x": {"$ref": "#/$defs/loop"}}}},
        },
    ],
)
async def test_a_schema_whose_ref_loops_without_end_is_a_422(
    admin: httpx.AsyncClient, schema: dict[str, Any]
) -> None:
    response = await _register(admin, schema=schema)
    assert response.status_code == 422, response.text
    assert "$ref" in response.json()["errors"]["schema"][0]


async def test_a_schema_whose_ref_goes_into_the_data_checks_it_at_every_level(
    admin: httpx.AsyncClient,
) -> None:
    # Recursion through a part of the value ends where the data does: not a loop.
    schema = {
        "type": "object",
        "required": ["post_id"],
        "properties": {"post_id": {"type": "string"}, "replies": {"items": {"$ref": "#"}}},
    }
    assert (await _register(admin, schema=schema)).status_code == 201
    nested = {"post_id": "p_1", "replies": [{"post_id": "p_2", "replies": [{"post_id": "p_3"}]}]}
    assert (await _post(admin, nested)).status_code == 202
    refused = await _post(admin, {"post_id": "p_1", "replies": [{"replies": []}]})
    assert refused.status_code == 422, refused.text
    assert "data.replies.0.post_id" in refused.json()["errors"]
