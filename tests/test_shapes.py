"""Each answer's shape is declared once, as a model named on its operation: /openapi.json states
exactly that model, and an answer outside it is never sent."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import httpx
import pytest

import relay.app
from relay.api import shapes, stats, webhooks
from relay.app import OPERATIONS
from relay.delivery.model import FINISHED
from tests.fixtures import ClientFactory
from tests.flows import Workers, post_event, wait_status, webhook
from tests.receivers import Receiver

REF = "#/components/schemas/"


def _data_schema(document: dict[str, Any], operation_id: str, status: int) -> dict[str, Any]:
    """The schema of `data` in one operation's success, as the document states it."""
    for methods in document["paths"].values():
        for spec in methods.values():
            if spec.get("operationId") == operation_id:
                content = spec["responses"][str(status)]["content"]["application/json"]
                data: dict[str, Any] = content["schema"]["properties"]["data"]
                return data
    raise AssertionError(f"{operation_id} is not in the document")


async def test_the_document_states_each_operations_model(admin: httpx.AsyncClient) -> None:
    document = (await admin.get("/openapi.json")).json()
    components = document["components"]["schemas"]
    for op in OPERATIONS:
        data = _data_schema(document, op.handler.__name__, op.status)
        name = op.answers.__name__
        assert (data["items"] if op.list_of or op.per_item else data) == {"$ref": REF + name}, name
        component = components[name]
        # Closed, with every field the model has (under its JSON name) and no other.
        assert component["additionalProperties"] is False, name
        fields = {f.alias or n for n, f in op.answers.model_fields.items()}
        assert set(component["properties"]) == fields, name


async def test_an_answer_outside_its_model_is_a_logged_500_and_never_sent(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As if create_webhook's model had lost its `secret` field: the handler still answers one.
    narrowed = [
        dataclasses.replace(op, answers=webhooks.Webhook)
        if op.handler is webhooks.create_webhook
        else op
        for op in OPERATIONS
    ]
    monkeypatch.setattr(relay.app, "OPERATIONS", narrowed)
    client = await make_client()
    with caplog.at_level(logging.ERROR, logger="relay.api"):
        made = await client.post(
            "/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "tenant_id": "space_42"}
        )
    assert made.status_code == 500, made.text
    assert made.headers["content-type"] == "application/problem+json"
    assert "whsec_" not in made.text
    logged = "\n".join(r.getMessage() + str(r.exc_info and r.exc_info[1]) for r in caplog.records)
    assert "data.secret: Extra inputs are not permitted" in logged
    # The log names the field, never its value.
    assert "whsec_" not in caplog.text
    # The webhook was made before its answer was found wanting: the audit trail says so.
    trail = (await client.get("/v1/audit-log")).json()["data"]
    assert [entry["action"] for entry in trail] == ["webhook.create"]


def test_stats_count_every_finished_status() -> None:
    assert set(stats.DeliveryCounts.model_fields) == {s.value for s in FINISHED}


def _answer_models(model: type[shapes.Shape]) -> list[type[shapes.Shape]]:
    below = model.__subclasses__()
    return below + [m for sub in below for m in _answer_models(sub)]


def _attributes(source: type) -> set[str]:
    """What an object of `source` has to read: its dataclass fields and its properties."""
    fields = (
        {f.name for f in dataclasses.fields(source)} if dataclasses.is_dataclass(source) else set()
    )
    return fields | {n for n in dir(source) if isinstance(getattr(source, n), property)}


def test_every_answer_reads_only_what_its_domain_object_has() -> None:
    # An answer is its domain object's attributes (model_validate reads them): a field renamed
    # or dropped on one side only would fail on the first call, so it fails here first.
    built = {m for m in _answer_models(shapes.Shape) if m.source is not None}
    assert built, "no answer names the domain object it is read from"
    for model in built:
        sources = model.source if isinstance(model.source, tuple) else (model.source,)
        for source in sources:
            assert source is not None
            has = _attributes(source)
            # Read under its JSON name when it has one.
            names = {f.alias or n for n, f in model.model_fields.items()}
            missing = names - model.added - has
            assert not missing, f"{model.__name__} has no {source.__name__} attribute {missing}"
            # What an answer adds beside its object is what the object does not hold.
            assert model.added <= names - has, model.__name__
            if model.as_is:
                # Sent as it is: every field of the object is in the answer, in its order.
                written = [f.name for f in dataclasses.fields(source)]
                assert written == list(model.model_fields), model.__name__


async def test_answers_keep_their_fields_in_order(admin: httpx.AsyncClient) -> None:
    # Answers are rendered from their models: a model's bases decide the order of its fields.
    made = (await admin.post("/v1/tokens", json={"role": "ingest"})).json()["data"]
    revoked = (await admin.delete(f"/v1/tokens/{made['id']}")).json()["data"]
    assert list(revoked) == [*(k for k in made if k != "token"), "deleted"]
    hook = {"url": "http://127.0.0.1:9/hook", "tenant_id": "space_42"}
    created = (await admin.post("/v1/webhooks", json=hook)).json()["data"]
    deleted = (await admin.delete(f"/v1/webhooks/{created['id']}")).json()["data"]
    shown = (k for k in created if k not in ("concurrency", "secret"))
    assert list(deleted) == [*shown, "deleted"]
    stats = (await admin.get("/v1/stats")).json()["data"]
    assert list(stats["series"][0])[:2] == ["start", "events_accepted"]


async def test_attempts_and_test_sends_keep_their_fields_in_order(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    await workers()
    async with Receiver() as receiver:
        hook = await webhook(admin, receiver.url("/a"))
        [delivery] = (await post_event(admin)).json()["data"]["deliveries"]
        done = await wait_status(admin, hook["id"], delivery["id"], "delivered")
        sample = await admin.post("/v1/webhooks/test", json={"webhook_id": hook["id"]})
    [attempt] = done["attempts"]
    # As the attempt log has always kept them (the trigger last).
    assert list(attempt) == [
        "number",
        "started_at",
        "duration_ms",
        "status_code",
        "error",
        "response_body",
        "request_headers",
        "url",
        "trigger",
    ]
    sent = [
        "event_id",
        "type",
        "sent_at",
        "url",
        "status_code",
        "duration_ms",
        "error",
        "response_body",
        "request_headers",
    ]
    assert list(sample.json()["data"]) == sent
    [listed] = (await admin.get(f"/v1/webhooks/{hook['id']}/tests")).json()["data"]
    assert list(listed) == sent
