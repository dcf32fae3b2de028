"""The store's Lua scripts, each run through the function that uses it against the test Redis:
the state each leaves behind."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path

import pytest
import redis.asyncio

import relay.delivery
import relay.store
from relay import ids
from relay.api.webhooks import WebhookCreate
from relay.audit import Actor, AuditEntry
from relay.delivery.archive import Archive
from relay.delivery.model import EventField, Field, Status, Transition, Trigger
from relay.delivery.store import NAMES, DeliveryStore, script_text
from relay.errors import Conflict, Invalid
from relay.roles import Role
from relay.secrets import Keyring, generate_master_key
from relay.store import codec, keys, lua, metrics
from relay.store.audit import AuditLog
from relay.store.idempotency import KEEP_SECONDS, ClaimMoved, IdempotencyStore, StoredResponse
from relay.store.ratelimit import WindowLimiter
from relay.store.tokens import TokenStore
from relay.store.webhooks import WebhookStore
from relay.timefmt import now, rfc3339
from relay.tokens import TokenSpec, token_hash
from relay.webhooks import new_webhook
from tests.support import TEST_MASTER_KEY, script_calls

KEYRING = Keyring.from_strings([TEST_MASTER_KEY])


async def test_a_claim_is_pending_for_its_lease_and_kept_a_day(
    redis_client: redis.asyncio.Redis,
) -> None:
    store = IdempotencyStore(redis_client, KEYRING)
    held = await store.claim("tok_1", "k", "fp", lease_seconds=30)

    record = codec.loads(await redis_client.get(held.key))
    assert record["state"] == "pending" and record["run"] == held.run
    assert record["lease_until"] > time.time() * 1000 + 25_000
    assert KEEP_SECONDS - 5 <= await redis_client.ttl(held.key) <= KEEP_SECONDS
    with pytest.raises(Conflict, match="still in progress"):
        await store.claim("tok_1", "k", "fp", lease_seconds=30)


async def test_a_settled_claim_replays_its_answer_and_a_released_one_is_gone(
    redis_client: redis.asyncio.Redis,
) -> None:
    store = IdempotencyStore(redis_client, KEYRING)
    done = await store.claim("tok_1", "done", "fp", lease_seconds=30)
    await store.complete(done, StoredResponse(201, {"a": "b"}, b"{}"))
    released = await store.claim("tok_1", "released", "fp", lease_seconds=30)
    await store.release(released)

    assert codec.loads(await redis_client.get(done.key))["state"] == "done"
    assert await store.claim("tok_1", "done", "fp", lease_seconds=30) == StoredResponse(
        201, {"a": "b"}, b"{}"
    )
    assert not await redis_client.exists(released.key)


async def test_a_write_whose_claim_was_released_is_refused(
    redis_client: redis.asyncio.Redis,
) -> None:
    store = IdempotencyStore(redis_client, KEYRING)
    held = await store.claim("tok_1", "k", "fp", lease_seconds=30)
    commit = held.commit(lambda _: StoredResponse(200, {}, b""))
    await store.release(held)

    async with redis_client.pipeline() as pipe:
        with pytest.raises(ClaimMoved):
            await commit.hold(pipe)


async def test_reencrypting_rewrites_a_record_under_the_current_key(
    redis_client: redis.asyncio.Redis,
) -> None:
    old = Keyring.from_strings([TEST_MASTER_KEY])
    held = await IdempotencyStore(redis_client, old).claim("tok_1", "k", "fp", lease_seconds=30)
    await IdempotencyStore(redis_client, old).complete(held, StoredResponse(200, {}, b"{}"))
    await redis_client.expire(held.key, 1000)
    rotated = Keyring.from_strings([generate_master_key(), TEST_MASTER_KEY])

    assert await IdempotencyStore(redis_client, rotated).reencrypt() == (1, 1)
    record = codec.loads(await redis_client.get(held.key))
    assert rotated.is_current(record["response"])
    assert 990 <= await redis_client.ttl(held.key) <= 1000


async def test_an_audit_entry_with_a_marker_is_added_once_to_each_index(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    log = AuditLog(redis_client, 3600, archive)
    actor = Actor("tok_1", "admin")
    for _ in range(2):
        entry = AuditEntry(ids.new_id("aud"), rfc3339(now()), "x", actor, None, "t1", None)
        await log.add(entry, once="marker")

    assert await redis_client.zcard(keys.AUDIT) == 1
    assert await redis_client.zcard(keys.tenant_audit("t1")) == 1
    assert await redis_client.xlen(keys.HISTORY) == 1
    assert 3590 <= await redis_client.ttl(keys.tenant_audit("t1")) <= 3600
    assert 3590 <= await redis_client.ttl("marker") <= 3600


async def test_a_window_counts_each_use_and_lapses_a_second_after_it(
    redis_client: redis.asyncio.Redis,
) -> None:
    limiter = WindowLimiter(redis_client, 2, 60, lambda s, w: f"count:{s}:{w}")

    waits = [await limiter.wait("a") for _ in range(3)]
    assert waits[:2] == [0, 0] and waits[2] >= 1
    [key] = await redis_client.keys("count:a:*")
    assert await redis_client.get(key) == b"3"
    assert 55 <= await redis_client.ttl(key) <= 61


async def test_uses_made_at_once_are_counted_in_one_call_each_as_if_alone(
    redis_client: redis.asyncio.Redis,
) -> None:
    limiter = WindowLimiter(redis_client, 5, 60, lambda s, w: f"count:{s}:{w}")
    await limiter.wait("warm")  # Redis learns the script
    before = await script_calls(redis_client)

    waits = await asyncio.gather(*(limiter.wait(s) for s in ["a"] * 8 + ["b"] * 2))
    assert await script_calls(redis_client) - before == 1
    # Each use is counted in its turn: the first five of "a" are within its budget, the other
    # three over it, and "b", counted apart, is within its own.
    assert waits[:5] == [0] * 5 and all(w >= 1 for w in waits[5:8]) and waits[8:] == [0, 0]
    [a] = await redis_client.keys("count:a:*")
    assert await redis_client.get(a) == b"8"


async def test_a_token_use_is_noted_for_as_long_as_its_record_lives(
    redis_client: redis.asyncio.Redis,
) -> None:
    store = TokenStore(redis_client)
    record, plaintext = await store.issue(TokenSpec(role=Role.ADMIN))
    digest = token_hash(plaintext)
    await redis_client.pexpire(keys.token_by_hash(digest), 50_000)

    await store.by_hash(digest, 123_456_789)
    assert await redis_client.get(keys.token_used(digest)) == b"123456789"
    assert 45_000 <= await redis_client.pttl(keys.token_used(digest)) <= 50_000
    assert record.hash == digest


async def test_counts_and_presence_are_announced_even_out_of_memory(
    redis_client: redis.asyncio.Redis,
) -> None:
    await metrics.announce(redis_client, "w1", 1_000, {"sent": 1.5})
    (maxmemory,) = (await redis_client.config_get("maxmemory")).values()
    await redis_client.config_set("maxmemory", 1)
    try:
        await metrics.announce(redis_client, "w2", 900_000, {"sent": 1})
    finally:
        await redis_client.config_set("maxmemory", maxmemory)

    assert await redis_client.hget(keys.METRICS, "sent") == b"2.5"
    # w1 announced more than ten silences before: counted out.
    assert await redis_client.zrange(keys.WORKERS, 0, -1, withscores=True) == [(b"w2", 900_000)]


async def test_a_webhook_past_its_tenants_cap_is_not_added(
    redis_client: redis.asyncio.Redis,
) -> None:
    store = WebhookStore(redis_client, max_per_tenant=1)
    spec = WebhookCreate(url="https://hooks.example.com/a", enabled=False)
    first, _ = new_webhook(spec, "t1", KEYRING)
    second, _ = new_webhook(spec, "t1", KEYRING)
    await store.add(first)
    version = await redis_client.get(keys.WEBHOOKS_VERSION)

    with pytest.raises(Invalid):
        await store.add(second)
    assert await redis_client.zrange(keys.tenant_webhooks("t1"), 0, -1) == [first.id.encode()]
    assert await redis_client.smembers(keys.DISABLED_WEBHOOKS) == {first.id.encode()}
    assert await redis_client.get(keys.WEBHOOKS_VERSION) == version is not None


# Every delivery script: one per transition, and the move from the layout before endpoint queues.
DELIVERY_SCRIPTS = [*(t.value for t in Transition), "requeue"]


@pytest.mark.parametrize("name", DELIVERY_SCRIPTS)
async def test_a_delivery_script_spells_the_names_model_py_declares(
    redis_client: redis.asyncio.Redis, name: str
) -> None:
    text = script_text(name)
    body = lua.source(name, "relay.delivery")
    # What the loader puts before the file, as Redis runs it (with an empty argument).
    probe = text.removesuffix(body.partition("\n")[2] if body.startswith("#!") else body)
    tables = await redis_client.eval(
        probe + "return cjson.encode({S = S, F = F, EVENT = EVENT, TRIGGER = TRIGGER})",
        0,
        codec.dumps({"keys": {}}),
    )

    declared = {"S": Status, "F": Field, "EVENT": EventField, "TRIGGER": Trigger}
    assert codec.loads(tables) == {
        table: {v.value: v.value for v in values} for table, values in declared.items()
    }
    if body.startswith("#!"):  # its flags: Redis reads them on the first line only
        assert text.splitlines()[0] == body.splitlines()[0]


async def test_redis_runs_a_delivery_script_by_the_digest_of_its_generated_names_too(
    redis_client: redis.asyncio.Redis, archive: Archive
) -> None:
    store = DeliveryStore(redis_client, 3600, 3600, archive)
    await redis_client.script_flush()
    assert not (await store.claim("w", 10, lease_ms=60_000, concurrency=10)).claims

    # A process with other generated names (another version, in a rolling upgrade) asks for
    # another digest, told NOSCRIPT until it loads its own text: it never runs this one.
    ran = hashlib.sha1(script_text("claim").encode()).hexdigest()
    other = hashlib.sha1(script_text("claim").replace(NAMES, "").encode()).hexdigest()
    assert NAMES in script_text("claim")
    assert await redis_client.script_exists(ran, other) == [True, False]


# What the loader generates into every delivery script, by the table it spells them from.
GENERATED = {"S": Status, "F": Field, "EVENT": EventField, "TRIGGER": Trigger}
DELIVERY_LUA = sorted(Path(relay.delivery.__file__).parent.glob("scripts/*.lua"))
STORE_LUA = sorted(Path(relay.store.__file__).parent.glob("scripts/*.lua"))
# A quoted string, or a comment (prose: its words are no literals).
_LUA_TOKEN = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|--[^\n]*""")


def _quoted(lua_text: str) -> set[str]:
    """The string literals of a Lua text, outside its comments."""
    tokens = (m.group() for m in _LUA_TOKEN.finditer(lua_text))
    return {t[1:-1] for t in tokens if not t.startswith("--")}


@pytest.mark.parametrize("path", DELIVERY_LUA, ids=lambda p: p.name)
def test_a_delivery_script_spells_statuses_fields_and_triggers_by_their_generated_names(
    path: Path,
) -> None:
    text = path.read_text()
    declared = {v.value for values in GENERATED.values() for v in values}
    assert _quoted(text) & declared == set()
    # And every generated name it spells is one model.py declares.
    code = _LUA_TOKEN.sub("''", text)
    for table, member in re.findall(r"(?<![\w.])(S|F|EVENT|TRIGGER)\.(\w+)", code):
        assert member in {v.value for v in GENERATED[table]}, f"{table}.{member}"


@pytest.mark.parametrize("path", DELIVERY_LUA + STORE_LUA, ids=lambda p: p.name)
def test_no_script_reads_redis_clock_but_through_the_loader(path: Path) -> None:
    assert "TIME" not in _quoted(path.read_text())
