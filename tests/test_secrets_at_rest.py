"""Nothing secret in Redis or on its disk: what an attacker with a copy of either would find."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio

from relay.secrets import generate_master_key
from tests.fixtures import ClientFactory
from tests.flows import post_event, wait_status, webhook
from tests.receivers import Receiver
from tests.support import (
    RedisServer,
    postgres_dir,
    relay_env,
    run_relay,
    start_dev,
    stop_dev,
)

pytestmark = pytest.mark.system

PREFIXES = ("whsec_", "whsk_", "rly_")


def _shown_secrets(value: Any) -> Iterator[str]:
    """Every secret shown once in a response body, a portal link's token among them."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _shown_secrets(item)
    elif isinstance(value, list):
        for item in value:
            yield from _shown_secrets(item)
    elif isinstance(value, str) and value.startswith(PREFIXES):
        yield value
    elif isinstance(value, str) and "#token=" in value:
        yield value.partition("#token=")[2]


def _encodings(secret: str) -> set[bytes]:
    """The secret raw, and the part of its base64 that shows whatever bytes surround it."""
    raw = secret.encode()
    forms = {raw, raw.split(b"_", 1)[1]}
    for shift in range(3):  # base64 groups bytes in threes: every alignment in a longer blob
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.add(encode(b"\0" * shift + raw)[4:-4])
    return forms


async def _everything_in(client: redis.asyncio.Redis) -> bytes:
    """Every key and every value in Redis, whatever its type."""
    chunks: list[bytes] = []
    async for key in client.scan_iter(count=1000):
        chunks.append(key)
        kind = (await client.type(key)).decode()
        if kind == "string":
            chunks.append(await client.get(key))
        elif kind == "hash":
            for field, value in (await client.hgetall(key)).items():  # type: ignore[misc]
                chunks += [field, value]
        elif kind == "zset":
            chunks += await client.zrange(key, 0, -1)
        elif kind == "set":
            chunks += await client.smembers(key)  # type: ignore[misc]
        elif kind == "list":
            chunks += await client.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind == "stream":
            for _, fields in await client.xrange(key):
                for field, value in fields.items():
                    chunks += [field, value]
        else:
            raise AssertionError(f"unexpected Redis type {kind} at {key!r}")
    return b"\n".join(chunks)


def _files_under(directory: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


async def _idempotent_post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Any:
    """POST with an Idempotency-Key, replay it, and check the replay is the same response."""
    headers = {"Idempotency-Key": f"{path} {sorted(body.items())}"}
    first = await client.post(path, json=body, headers=headers)
    again = await client.post(path, json=body, headers=headers)
    assert first.status_code in (200, 201), first.text
    assert again.headers["idempotent-replayed"] == "true"
    assert (again.status_code, again.content) == (first.status_code, first.content)
    return first.json()


async def test_no_secret_shown_once_is_in_redis_or_its_aof(
    make_client: ClientFactory, own_redis: RedisServer, master_key: str
) -> None:
    admin = await make_client(redis_url=own_redis.url)
    bodies = [
        await _idempotent_post(admin, "/v1/tokens", {"role": "admin"}),
        await _idempotent_post(admin, "/v1/tokens", {"role": "tenant", "tenant_id": "t1"}),
        made := await _idempotent_post(
            admin, "/v1/webhooks", {"url": "https://hooks.example.com/a", "tenant_id": "t1"}
        ),
        await _idempotent_post(
            admin,
            "/v1/webhooks",
            {
                "url": "https://hooks.example.com/b",
                "tenant_id": "t1",
                "secret": "whsec_" + base64.b64encode(b"imported secret of 32 bytes ....").decode(),
            },
        ),
        await _idempotent_post(
            admin, f"/v1/webhooks/{made['data']['id']}/rotate-secret", {"grace_seconds": 60}
        ),
        await _idempotent_post(admin, "/v1/portal-sessions", {"tenant_id": "t1"}),
    ]
    secrets = {s for body in bodies for s in _shown_secrets(body)}
    assert len(secrets) == 6, secrets
    assert all(s.startswith(PREFIXES) for s in secrets), secrets
    # The stored token must not authenticate a replayed request either: it is the real one.
    token = bodies[0]["data"]["token"]
    assert (
        await admin.get("/v1/tokens", headers={"authorization": f"Bearer {token}"})
    ).status_code == 200

    # A master-key rotation re-encrypts the stored responses too, and replays still work.
    new_key = generate_master_key()
    result = await run_relay(
        ["keys", "reencrypt"], relay_env(own_redis.url, RELAY_SECRET_KEYS=f"{new_key},{master_key}")
    )
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 6 of 6 stored idempotent responses" in result.stdout.decode()
    rotated = await make_client(redis_url=own_redis.url, secret_keys=new_key)
    body = {"role": "admin"}
    key = f"/v1/tokens {sorted(body.items())}"
    replay = await rotated.post("/v1/tokens", json=body, headers={"Idempotency-Key": key})
    assert replay.headers.get("idempotent-replayed") == "true", replay.text
    assert replay.json() == bodies[0]

    client = redis.asyncio.Redis.from_url(own_redis.url)
    try:
        in_redis = await _everything_in(client)
    finally:
        await client.aclose()
    on_disk = _files_under(own_redis.directory)
    assert b"relay:idem:" in on_disk, "the AOF holds the idempotency records"
    for secret in secrets:
        for form in _encodings(secret):
            assert form not in in_redis, f"{secret[:8]}… stored in Redis as {form[:12]!r}"
            assert form not in on_disk, f"{secret[:8]}… in the AOF as {form[:12]!r}"
    for prefix in PREFIXES:
        assert prefix.encode() not in in_redis
        assert prefix.encode() not in on_disk


# Custom header values as a receiver's credentials look, each one distinctive: one kept, one
# set by a change, one of a webhook deleted later, one replaced by a change.
HEADER_VALUES = (
    "Bearer hdrval_0f3a9c1e77b2d4",
    "hdrval_api_key_5e8d21c0",
    "hdrval_gone_9b47e6a3",
    "hdrval_replaced_d2c6f04e",
)


async def _in_history(api: httpx.AsyncClient, webhook_id: str) -> bool:
    # Delivery lists read PostgreSQL: a delivered one listed there has its attempts written.
    listed = await api.get("/v1/deliveries", params={"webhook_id": webhook_id})
    return [d["status"] for d in listed.json()["data"]] == ["delivered"]


async def test_no_custom_header_value_is_in_redis_postgresql_or_logs() -> None:
    with postgres_dir() as data_dir:
        log = data_dir / "relay.log"
        dev = start_dev(data_dir, own_database=True, log=log, RELAY_LOG_LEVEL="debug")
        try:
            auth = {"authorization": f"Bearer {dev.token}"}
            async with (
                Receiver() as rx,
                httpx.AsyncClient(base_url=dev.url, headers=auth, timeout=30) as api,
            ):
                kept = await webhook(
                    api,
                    rx.url("/kept"),
                    headers={"Authorization": HEADER_VALUES[0], "X-Api-Key": HEADER_VALUES[3]},
                )
                gone = await webhook(api, rx.url("/gone"), headers={"X-Api-Key": HEADER_VALUES[2]})
                changed = await api.patch(
                    f"/v1/webhooks/{kept['id']}",
                    json={
                        "headers": {"Authorization": "[redacted]", "X-Api-Key": HEADER_VALUES[1]}
                    },
                )
                assert changed.status_code == 200, changed.text
                event = (await post_event(api)).json()["data"]
                for delivery in event["deliveries"]:
                    await wait_status(api, delivery["webhook_id"], delivery["id"], "delivered")
                tested = await api.post("/v1/webhooks/test", json={"webhook_id": kept["id"]})
                assert tested.status_code == 200, tested.text
                deadline = time.monotonic() + 30
                while not (
                    await _in_history(api, kept["id"]) and await _in_history(api, gone["id"])
                ):
                    assert time.monotonic() < deadline, "history was not written in time"
                    await asyncio.sleep(0.2)
                assert (await api.delete(f"/v1/webhooks/{gone['id']}")).status_code == 200
                sent = {r.path: r.headers for r in rx.requests}
        finally:
            stop_dev(dev)
        # The values did reach the receivers: they were planted, and encryption lost nothing.
        assert sent["/kept"]["authorization"] == HEADER_VALUES[0]
        assert sent["/kept"]["x-api-key"] == HEADER_VALUES[1]
        assert sent["/gone"]["x-api-key"] == HEADER_VALUES[2]

        redis_files = _files_under(data_dir / "redis")
        postgres_files = _files_under(data_dir / "postgres")
        logs = b"\n".join(p.read_bytes() for p in data_dir.glob("*.log"))
        assert kept["id"].encode() in redis_files, "the AOF holds the webhooks"
        assert event["id"].encode() in postgres_files, "PostgreSQL holds the attempts"
        assert kept["id"].encode() in logs, "relay logged the deliveries"
        for value in HEADER_VALUES:
            for form in _encodings(value):
                assert form not in redis_files, f"{value[:10]}… in Redis's files as {form[:12]!r}"
                assert form not in postgres_files, f"{value[:10]}… in PostgreSQL as {form[:12]!r}"
                assert form not in logs, f"{value[:10]}… in a log as {form[:12]!r}"
