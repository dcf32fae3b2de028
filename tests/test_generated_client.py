"""A client generated from /openapi.json by openapi-python-client works against a live relay:
it posts an event with `tenant_id` and an upstream `id`, lists webhooks and retries a delivery,
registers an event type, a webhook and a token and posts an event of that type, all through its
typed models; and its models carry every field relay takes and answers with."""

from __future__ import annotations

import asyncio
import base64
import importlib
import inspect
import os
import signal
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import httpx
import orjson
import pytest
import redis
from standardwebhooks.webhooks import Webhook as Verifier

from relay.app import OPERATIONS
from tests.receivers import Receiver, Reply
from tests.support import RedisServer, free_port, relay_env, spawn_relay, wait_http

pytestmark = pytest.mark.system

ADMIN = "generated-client-admin"
PACKAGE = "relay_generated_client"
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def live_relay(redis_server: RedisServer) -> Iterator[str]:
    """`relay api` and `relay worker` as separate processes on the test Redis."""
    redis.Redis.from_url(redis_server.url).flushdb()
    env = relay_env(
        redis_server.url,
        RELAY_ADMIN_TOKEN=ADMIN,
        RELAY_ALLOW_PRIVATE_TARGETS="true",
        RELAY_RETRY_SCHEDULE="0.1",  # two attempts, then failed: something to retry
    )
    port = free_port()
    processes = [
        spawn_relay(["api", "--port", str(port)], env, stderr=subprocess.DEVNULL),
        spawn_relay(["worker"], env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz")
        yield base
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(15)


def _generate(base: str, into: Path) -> ModuleType:
    document = into / "openapi.json"
    document.write_bytes(httpx.get(base + "/openapi.json").content)
    # The generator formats its output with ruff, which lives beside it in the venv.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    generated = subprocess.run(
        [
            str(Path(bin_dir) / "openapi-python-client"),
            "generate",
            "--path",
            str(document),
            "--output-path",
            str(into / PACKAGE),
            "--meta",
            "none",
        ],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert b"Warning" not in generated.stdout, generated.stdout.decode()
    sys.path.insert(0, str(into))
    return importlib.import_module(PACKAGE)


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def _missing_fields(models: ModuleType) -> dict[str, set[str]]:
    """Fields of each operation's answer model that the generated model of that name lacks."""
    missing = {}
    for op in OPERATIONS:
        declared = op.answers.model_json_schema(mode="serialization")["properties"]
        # The generator appends `_` to names that would shadow a Python builtin.
        generated = {
            name.rstrip("_") for name in attrs.fields_dict(getattr(models, op.answers.__name__))
        }
        if lacking := set(declared) - generated:
            missing[op.answers.__name__] = lacking
    return missing


def _untyped_bodies(models: ModuleType) -> dict[str, set[str]]:
    """Fields of each operation's request body that a generated body model lacks.

    An operation whose body the document states as alternatives takes any one of their models,
    so each must have every field.
    """
    missing = {}
    for op in OPERATIONS:
        if op.body is None:
            continue
        declared = {field.alias or name for name, field in op.body.model_fields.items()}
        module = _module(f"api.{op.tag.replace('-', '_')}.{op.handler.__name__}")
        signature = inspect.signature(module.asyncio_detailed, eval_str=True)
        body = signature.parameters["body"].annotation
        for model in typing.get_args(body) or (body,):
            if model is not _module("types").Unset:
                generated = {n.rstrip("_") for n in attrs.fields_dict(model)}
                if lacking := declared - generated:
                    missing[model.__name__] = lacking
    return missing


async def test_a_generated_client_posts_lists_and_retries(live_relay: str, tmp_path: Path) -> None:
    package = _generate(live_relay, tmp_path)
    try:
        client = package.AuthenticatedClient(base_url=live_relay, token=ADMIN)
        models = _module("models")
        assert _missing_fields(models) == {}
        async with Receiver() as rx:
            rx.answer(Reply(500))
            made = await _module("api.webhooks.create_webhook").asyncio(
                client=client, body=models.WebhookCreate(url=rx.url("/hook"), tenant_id="space_42")
            )
            hook_id = made.data.id

            event = models.PostPublishedEvent(
                type_="post.published",
                tenant_id="space_42",
                id="upstream-1",
                data=models.PostPublished(post_id="p_1"),
            )
            posted = await _module("api.events.post_event").asyncio_detailed(
                client=client, body=event
            )
            assert posted.status_code == 202, posted.content
            accepted = posted.parsed.data
            assert accepted.tenant_id == "space_42" and accepted.upstream_id == "upstream-1"
            [delivery] = accepted.deliveries
            await rx.wait_for(2, timeout=20)

            listed = await _module("api.webhooks.list_webhooks").asyncio(client=client)
            assert [w.id for w in listed.data] == [hook_id]
            assert listed.data[0].signature_scheme == models.Scheme.HMAC_SHA256

            rx.answer(Reply(200))
            read = _module("api.deliveries.get_delivery_by_id")
            for _ in range(400):  # the last attempt is settled a moment after it was received
                found = await read.asyncio(delivery.id, client=client)
                if found.data.status == "failed":
                    break
                await asyncio.sleep(0.05)
            assert found.data.status == "failed"
            assert [a.status_code for a in found.data.attempts] == [500, 500]
            retry = _module("api.deliveries.retry_delivery")
            retried = await retry.asyncio_detailed(hook_id, delivery.id, client=client)
            assert retried.status_code == 202, retried.content
            assert retried.parsed.data.id == delivery.id
            await rx.wait_for(3, timeout=20)

            # A batch: the events typed as for a single post, one typed result each.
            media = models.MediaUploadedEvent(
                type_="media.uploaded",
                tenant_id="space_42",
                data=models.MediaUploaded(
                    media_id="m_1", url="https://cdn.example.com/m_1.png", mime="image/png"
                ),
            )
            batch = await _module("api.events.post_batch").asyncio_detailed(
                client=client, body=models.BatchIn(events=[event, media])
            )
            assert batch.status_code == 207, batch.content
            repeat, made = batch.parsed.data
            assert (repeat.status, repeat.data.id) == (200, accepted.id)
            assert made.status == 202 and made.data.type_ == "media.uploaded"
            assert [d.webhook_id for d in made.data.deliveries] == [hook_id]
    finally:
        _forget(tmp_path)


def _forget(into: Path) -> None:
    sys.path.remove(str(into))
    for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
        del sys.modules[name]


async def test_a_generated_client_registers_a_type_and_a_webhook_and_posts_to_them(
    live_relay: str, tmp_path: Path
) -> None:
    package = _generate(live_relay, tmp_path)
    try:
        client = package.AuthenticatedClient(base_url=live_relay, token=ADMIN)
        models = _module("models")
        assert _untyped_bodies(models) == {}

        schema = models.EventTypeSpecSchema()
        schema["type"] = "object"
        schema["required"] = ["order_id"]
        spec = models.EventTypeSpec(name="custom.ordered", schema=schema)
        registered = await _module("api.events.create_event_type").asyncio_detailed(
            client=client, body=spec
        )
        assert registered.status_code == 201, registered.content
        assert registered.parsed.data.builtin is False

        issued = await _module("api.tokens.create_token").asyncio_detailed(
            client=client,
            body=models.TokenSpec(role=models.Role.TENANT, tenant_id="space_42", name="orders"),
        )
        assert issued.status_code == 201, issued.content
        token = issued.parsed.data
        assert (token.role, token.tenant_id, token.name) == (
            models.Role.TENANT,
            "space_42",
            "orders",
        )
        tenant = package.AuthenticatedClient(base_url=live_relay, token=token.token)

        create = _module("api.webhooks.create_webhook")
        async with Receiver() as rx:
            created = await create.asyncio_detailed(
                client=tenant,
                body=models.WebhookCreate(
                    url=rx.url("/orders"), events=["custom.*"], description="orders", secret=SECRET
                ),
            )
            assert created.status_code == 201, created.content
            hook = created.parsed.data
            assert isinstance(hook, models.CreatedWebhook)
            assert (hook.tenant_id, hook.events, hook.secret) == ("space_42", ["custom.*"], SECRET)

            data = models.RegisteredEventData()
            data["order_id"] = "o_1"
            event = models.RegisteredEvent(
                type_="custom.ordered", tenant_id="space_42", data=data, id="order-1"
            )
            post = _module("api.events.post_event")
            posted = await post.asyncio_detailed(client=client, body=event)
            assert posted.status_code == 202, posted.content
            accepted = posted.parsed.data
            assert (accepted.type_, accepted.upstream_id) == ("custom.ordered", "order-1")
            assert [d.webhook_id for d in accepted.deliveries] == [hook.id]

            [request] = await rx.wait_for(1, timeout=20)
            Verifier(hook.secret).verify(request.body, request.headers)
            sent = orjson.loads(request.body)
            assert (sent["id"], sent["type"], sent["data"]) == (
                accepted.id,
                "custom.ordered",
                {"order_id": "o_1"},
            )

        # What the typed models let through, the server still refuses: data that does not match
        # the registered schema, and an imported secret on an ed25519 webhook.
        unordered = models.RegisteredEvent(
            type_="custom.ordered", tenant_id="space_42", data=models.RegisteredEventData()
        )
        refused = await post.asyncio_detailed(client=client, body=unordered)
        assert refused.status_code == 422, refused.content
        assert refused.parsed.errors["data.order_id"] == ["Field required"]
        signed_otherwise = models.WebhookCreate(
            url="https://hooks.example.com/orders",
            tenant_id="space_42",
            signature_scheme=models.Scheme.ED25519,
            secret=SECRET,
        )
        refused = await create.asyncio_detailed(client=client, body=signed_otherwise)
        assert refused.status_code == 422, refused.content
        assert list(refused.parsed.errors.additional_properties) == ["secret"]
    finally:
        _forget(tmp_path)
