"""A client generated from /openapi.json by openapi-python-client works against a live relay:
it posts an event with `tenant_id` and an upstream `id`, lists webhooks and retries a delivery,
and its models carry every field relay answers with."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import httpx
import pytest
import redis

from relay.app import OPERATIONS
from tests.receivers import Receiver, Reply
from tests.support import RedisServer, free_port, relay_env, spawn_relay, wait_http

ADMIN = "generated-client-admin"
AUTH = {"authorization": f"Bearer {ADMIN}"}
PACKAGE = "relay_generated_client"


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


async def test_a_generated_client_posts_lists_and_retries(live_relay: str, tmp_path: Path) -> None:
    package = _generate(live_relay, tmp_path)
    try:
        client = package.AuthenticatedClient(base_url=live_relay, token=ADMIN)
        models = _module("models")
        assert _missing_fields(models) == {}
        async with Receiver() as rx:
            rx.answer(Reply(500))
            async with httpx.AsyncClient(base_url=live_relay, headers=AUTH) as plain:
                made = await plain.post(
                    "/v1/webhooks", json={"url": rx.url("/hook"), "tenant_id": "space_42"}
                )
            hook_id = made.json()["data"]["id"]

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
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
            del sys.modules[name]
