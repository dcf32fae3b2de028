"""One event's path, as an operator follows it: one trace, and one log line per attempt."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from relay import tracing
from relay.config import Settings
from relay.resources import Resources
from relay.worker import DeliveryWorker
from tests.fixtures import ADMIN_TOKEN, ClientFactory
from tests.flows import post_event, wait_status, webhook
from tests.receivers import Receiver
from tests.support import RedisServer, relay_env, spawn_relay

FAST = "0.2,0.2,0.2"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, into memory, as OTEL_EXPORTER_OTLP_ENDPOINT would turn it on."""
    exporter = InMemorySpanExporter()
    tracing.enable(SimpleSpanProcessor(exporter), "relay-test")
    yield exporter
    tracing.shutdown()


@pytest.fixture
async def in_process_worker(
    settings_for: Callable[..., Settings],
) -> AsyncIterator[Callable[..., None]]:
    """A delivery worker in the test's own process, so its spans reach the in-memory exporter."""
    running: list[tuple[DeliveryWorker, asyncio.Task[None], Resources]] = []

    def start(**overrides: Any) -> None:
        svc = Resources.open(settings_for(**overrides))
        worker = DeliveryWorker(svc)
        running.append((worker, asyncio.create_task(worker.run()), svc))

    yield start
    for worker, task, svc in running:
        worker.stop()
        await task
        await worker.drain(5)
        await svc.aclose()


async def test_an_event_retried_twice_is_one_trace_from_ingest_to_each_attempt(
    spans: InMemorySpanExporter,
    make_client: ClientFactory,
    in_process_worker: Callable[..., None],
) -> None:
    admin = await make_client(retry_schedule=FAST)
    in_process_worker(retry_schedule=FAST)
    async with Receiver() as rx:
        rx.fail(2)
        hook = await webhook(admin, rx.url("/hook?token=query-secret"))
        upstream_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        response = await admin.post(
            "/v1/events",
            json={"type": "post.published", "tenant_id": "space_42", "data": {"post_id": "p"}},
            headers={"traceparent": f"00-{upstream_trace}-00f067aa0ba902b7-01"},
        )
        assert response.status_code == 202
        delivery = response.json()["data"]["deliveries"][0]
        await wait_status(admin, hook["id"], delivery["id"], "delivered")

    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    ingest = next(s for s in finished if s.name == "POST /v1/events")
    trace_id = ingest.context.trace_id
    assert format(trace_id, "032x") == upstream_trace  # the upstream's trace, continued
    attempts = sorted(
        (s for s in finished if s.name == "deliver"), key=lambda s: s.attributes["relay.attempt"]
    )
    assert [s.attributes["relay.attempt"] for s in attempts] == [1, 2, 3]
    for span in attempts:
        assert span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == ingest.context.span_id
        assert span.attributes["relay.delivery_id"] == delivery["id"]
        assert span.attributes["relay.event_id"] == response.json()["data"]["id"]
        # The HTTP request to the receiver is a client span under its attempt.
        (client,) = [s for s in finished if s.parent and s.parent.span_id == span.context.span_id]
        assert client.kind is SpanKind.CLIENT
        assert span.attributes["http.response.status_code"] in (
            client.attributes.get("http.response.status_code"),
            client.attributes.get("http.status_code"),  # older semantic conventions
        )
    assert [s.status.status_code for s in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [s.attributes["http.response.status_code"] for s in attempts] == [500, 500, 200]
    # A webhook URL's query may hold a token: no span keeps it.
    assert "query-secret" not in repr([dict(s.attributes or {}) for s in finished])


UPSTREAM_TRACE = "0af7651916cd43dd8448eb211c80319c"
UPSTREAM = {
    "traceparent": f"00-{UPSTREAM_TRACE}-b7ad6b7169203331-01",
    "tracestate": "upstream=secret-ish",
    "baggage": "customer=upstream-internal",
}
TRACE_CONTEXT = {"traceparent", "tracestate", "baggage"}


async def _deliver_one(admin: httpx.AsyncClient, rx: Receiver) -> dict[str, str]:
    """An event posted in the upstream's trace, delivered to `rx`; its receiver's request."""
    hook = await webhook(admin, rx.url("/hook"))
    body = {"type": "post.published", "tenant_id": "space_42", "data": {"post_id": "p"}}
    response = await admin.post("/v1/events", json=body, headers=UPSTREAM)
    assert response.status_code == 202
    delivery = response.json()["data"]["deliveries"][0]
    await wait_status(admin, hook["id"], delivery["id"], "delivered")
    [request] = rx.requests
    return request.headers


async def test_receivers_get_no_trace_context_unless_it_is_propagated(
    spans: InMemorySpanExporter,
    make_client: ClientFactory,
    in_process_worker: Callable[..., None],
) -> None:
    admin = await make_client()
    in_process_worker()
    async with Receiver() as rx:
        delivered = await _deliver_one(admin, rx)
        hook = await webhook(admin, rx.url("/test"))
        sent = await admin.post(
            "/v1/webhooks/test", json={"webhook_id": hook["id"]}, headers=UPSTREAM
        )
        assert sent.status_code == 200
        [tested] = rx.requests_to("/test")

    for headers in (delivered, tested.headers):
        assert not TRACE_CONTEXT & set(headers), headers
        assert UPSTREAM_TRACE not in repr(headers)
    # Traced all the same: the request to the receiver is still a client span of the trace.
    finished = spans.get_finished_spans()
    clients = [s for s in finished if s.kind is SpanKind.CLIENT]
    assert len(clients) == 2
    assert {format(s.context.trace_id, "032x") for s in clients} == {UPSTREAM_TRACE}


async def test_propagated_trace_context_reaches_receivers(
    spans: InMemorySpanExporter,
    make_client: ClientFactory,
    in_process_worker: Callable[..., None],
) -> None:
    admin = await make_client()
    in_process_worker(propagate_trace_context=True)
    async with Receiver() as rx:
        headers = await _deliver_one(admin, rx)

    version, trace, parent, flags = headers["traceparent"].split("-")
    assert (version, trace, flags) == ("00", UPSTREAM_TRACE, "01")
    # The receiver's parent is relay's client span for this very request.
    (client,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert parent == format(client.context.span_id, "016x")


async def test_without_a_collector_nothing_is_traced(make_client: ClientFactory) -> None:
    assert not tracing.enabled() and tracing.traceparent() is None
    admin = await make_client()
    response = await post_event(admin)
    assert response.status_code == 202


@pytest.mark.system
async def test_each_attempt_is_one_json_log_line_with_its_ids_and_no_secret(
    admin: httpx.AsyncClient, redis_server: RedisServer, tmp_path: Path
) -> None:
    log_path = tmp_path / "worker.log"
    async with Receiver() as rx:
        rx.fail(1)
        hook = await webhook(admin, rx.url("/hook?token=receiver-query-secret"))
        secret = (await admin.get(f"/v1/webhooks/{hook['id']}/secret")).json()["data"]["secret"]
        with log_path.open("wb") as log_file:
            worker = spawn_relay(
                ["worker"],
                relay_env(
                    redis_server.url,
                    RELAY_ALLOW_PRIVATE_TARGETS="true",
                    RELAY_RETRY_SCHEDULE=FAST,
                    RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
                ),
                stderr=log_file,
            )
            try:
                accepted = (await post_event(admin, data={"post_id": "body-marker-42"})).json()
                delivery = accepted["data"]["deliveries"][0]
                await wait_status(admin, hook["id"], delivery["id"], "delivered")
            finally:
                worker.terminate()
                await asyncio.to_thread(worker.wait, 30)
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    attempts = [line for line in lines if line.get("delivery_id") == delivery["id"]]
    assert [line["attempt"] for line in attempts] == [1, 2]
    for line, code in zip(attempts, (500, 200), strict=True):
        assert line["logger"] == "relay.delivery"
        assert line["event_id"] == accepted["data"]["id"]
        assert line["webhook_id"] == hook["id"] and line["tenant_id"] == "space_42"
        assert line["status_code"] == code and line["duration_ms"] >= 0
    assert [line["status"] for line in attempts] == ["pending", "delivered"]
    for secret_text in (secret, ADMIN_TOKEN, "receiver-query-secret", "body-marker-42"):
        assert secret_text not in text
