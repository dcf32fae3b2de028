"""Webhooks in Redis: JSON records, a global index and one per tenant."""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from relay.errors import Invalid, NotFound
from relay.store import codec, keys, lua
from relay.store.idempotency import COMMIT, Commit
from relay.store.pages import newest_first
from relay.store.records import edit_record, transact
from relay.webhooks import Webhook


def _load(raw: bytes) -> Webhook:
    return Webhook.from_record(codec.loads(raw))


def _note_enabled(pipe: Pipeline, webhook: Webhook) -> None:
    """Keep the set of disabled webhooks (counted on /metrics) in step with the record."""
    if webhook.enabled:
        pipe.srem(keys.DISABLED_WEBHOOKS, webhook.id)
    else:
        pipe.sadd(keys.DISABLED_WEBHOOKS, webhook.id)


def _look_again(pipe: Pipeline, webhook: Webhook) -> None:
    """Have the webhook's queued deliveries looked at now, wherever they wait (for a slot, a rate
    window, their tenant): deleted or disabled, they end at once rather than in turn."""
    pipe.zadd(keys.endpoints(webhook.tenant_id), {webhook.id: 0}, xx=True, lt=True)
    pipe.zadd(keys.TENANTS, {webhook.tenant_id: 0}, xx=True, lt=True)
    pipe.lpush(keys.WAKE, 1)
    pipe.ltrim(keys.WAKE, 0, 31)  # as the scripts keep it: idle workers need one each


def _new_version() -> str:
    """A mark for the webhooks as they are after a change: never one they had before, even
    after Redis lost its last writes (a counter could then repeat a number for other data)."""
    return secrets.token_hex(8)


# Most webhook records one MGET reads.
_READ_CHUNK = 1000
# Tenants whose webhooks a process keeps a copy of (the most recently used).
_TENANTS_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class TenantWebhooks:
    """A tenant's webhooks, and the version of all webhooks (WEBHOOKS_VERSION) read before
    them: any change since makes the version another."""

    version: str
    webhooks: list[Webhook]


class WebhookStore:
    """Persistence of webhooks; every change is atomic."""

    def __init__(self, redis: Redis, max_per_tenant: int) -> None:
        self._redis = redis
        self._max_per_tenant = max_per_tenant
        self._add = lua.register(redis, "webhook_add", COMMIT)
        # Every event reads its tenant's webhooks, and most events find them unchanged.
        self._copies: OrderedDict[str, TenantWebhooks] = OrderedDict()

    async def add(self, webhook: Webhook, commit: Commit[Webhook] | None = None) -> None:
        """Store a new webhook with its index entries; Invalid once its tenant has the most
        webhooks RELAY_MAX_WEBHOOKS_PER_TENANT allows (each one is fanned out to per event)."""
        added = await self._add(
            keys=[
                keys.webhook(webhook.id),
                keys.WEBHOOKS,
                keys.tenant_webhooks(webhook.tenant_id),
                keys.DISABLED_WEBHOOKS,
                keys.WEBHOOKS_VERSION,
            ],
            args=[
                codec.dumps(webhook.record()),
                webhook.id,
                self._max_per_tenant,
                int(webhook.enabled),
                codec.dumps(None if commit is None else commit.lua(webhook)),
                _new_version(),
            ],
        )
        if not added:
            limit = self._max_per_tenant
            raise Invalid(
                f"The tenant already has {limit} webhooks, the most RELAY_MAX_WEBHOOKS_PER_TENANT "
                "allows; delete one first.",
                {"tenant_id": [f"at most {limit} webhooks per tenant"]},
            )

    async def get(self, webhook_id: str) -> Webhook:
        """A webhook by id, or NotFound."""
        return self._found(await self._redis.get(keys.webhook(webhook_id)))

    async def page(
        self, tenant_id: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Webhook], str | None]:
        """Webhooks newest first, all or one tenant's."""
        index = keys.tenant_webhooks(tenant_id) if tenant_id else keys.WEBHOOKS
        page = await newest_first(self._redis, index, limit, cursor)
        raws = await self._redis.mget([keys.webhook(i) for i in page.ids]) if page.ids else []
        return [_load(r) for r in raws if r], page.next_cursor

    async def concurrency(self, webhook_ids: list[str]) -> list[int | None]:
        """Each webhook's concurrency as its answers adapted it (None: never adapted, or not
        for a day), in one read."""
        if not webhook_ids:
            return []
        stored = await self._redis.mget([keys.endpoint_concurrency(i) for i in webhook_ids])
        return [None if value is None else int(value) for value in stored]

    async def of_tenant(self, tenant_id: str, checked: bool = False) -> TenantWebhooks:
        """Every webhook of a tenant, for fan-out: one read while none has changed since this
        process last read them (a change anywhere is seen by the next event).

        `checked` says the caller's write checks their version (the accept script does): then
        this process's copy, if it has one, is taken without asking Redis at all.
        """
        copy = self._copies.get(tenant_id)
        if checked and copy is not None:
            self._copies.move_to_end(tenant_id)
            return copy
        version = (await self._redis.get(keys.WEBHOOKS_VERSION) or b"0").decode()
        if copy is not None and copy.version == version:
            self._copies.move_to_end(tenant_id)
            return copy
        copy = TenantWebhooks(version, await self._read_tenant(tenant_id))
        self._copies[tenant_id] = copy
        self._copies.move_to_end(tenant_id)
        if len(self._copies) > _TENANTS_CACHED:
            self._copies.popitem(last=False)
        return copy

    async def _read_tenant(self, tenant_id: str) -> list[Webhook]:
        ids = await self._redis.zrange(keys.tenant_webhooks(tenant_id), 0, -1)
        # Bounded MGETs in one round trip: one MGET of a raised cap's worth of records would
        # hold Redis for tens of milliseconds while it builds a reply of megabytes.
        async with self._redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(ids), _READ_CHUNK):
                pipe.mget([keys.webhook(i.decode()) for i in ids[start : start + _READ_CHUNK]])
            batches = await pipe.execute()
        return [_load(r) for batch in batches for r in batch if r]

    async def all_ids(self) -> list[str]:
        """Every webhook id (for maintenance commands)."""
        return [i.decode() for i in await self._redis.zrange(keys.WEBHOOKS, 0, -1)]

    async def change(
        self,
        webhook_id: str,
        edit: Callable[[Webhook], Webhook],
        commit: Commit[Webhook] | None = None,
        *,
        forget_failures: bool = False,
    ) -> Webhook:
        """Read, edit and write a webhook atomically; retried if it changed meanwhile.

        `forget_failures` starts its failure streak afresh (when it is enabled again).
        """

        def apply(record: dict[str, Any]) -> tuple[Webhook, object]:
            webhook = edit(Webhook.from_record(record))
            return webhook, webhook.record()

        def also(pipe: Pipeline, webhook: Webhook) -> None:
            _note_enabled(pipe, webhook)
            _look_again(pipe, webhook)
            pipe.set(keys.WEBHOOKS_VERSION, _new_version())
            if forget_failures:
                pipe.delete(keys.endpoint_failing(webhook.id))

        key = keys.webhook(webhook_id)
        return await edit_record(self._redis, key, apply, "webhook", also, commit)

    async def delete(self, webhook_id: str, commit: Commit[Webhook] | None = None) -> Webhook:
        """Remove a webhook and its index entries."""

        def write(pipe: Pipeline, webhook: Webhook) -> None:
            # Its slots too: deleted, its deliveries end needing none, so nothing frees them
            # or the mark of a claim that found them full, which would stay for good.
            pipe.delete(
                keys.webhook(webhook_id),
                keys.endpoint_failing(webhook_id),
                keys.endpoint_slots(webhook_id),
                keys.endpoint_quick(webhook_id),
                keys.endpoint_concurrency(webhook_id),
            )
            pipe.zrem(keys.WEBHOOKS, webhook_id)
            pipe.zrem(keys.tenant_webhooks(webhook.tenant_id), webhook_id)
            pipe.srem(keys.DISABLED_WEBHOOKS, webhook_id)
            _look_again(pipe, webhook)
            pipe.set(keys.WEBHOOKS_VERSION, _new_version())

        return await transact(
            self._redis, keys.webhook(webhook_id), self._found, write, "webhook", commit
        )

    @staticmethod
    def _found(raw: bytes | None) -> Webhook:
        if raw is None:
            raise NotFound("No such webhook.")
        return _load(raw)

    async def troubled(
        self, scan: int, tenant_id: str | None = None
    ) -> list[tuple[Webhook, int | None]]:
        """Of the newest `scan` webhooks (all or one tenant's), the disabled or failing ones,
        with failing since (ms)."""
        index = keys.tenant_webhooks(tenant_id) if tenant_id else keys.WEBHOOKS
        ids = [i.decode() for i in await self._redis.zrange(index, 0, scan - 1, desc=True)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for webhook_id in ids:
                pipe.get(keys.webhook(webhook_id))
                pipe.get(keys.endpoint_failing(webhook_id))
            rows = await pipe.execute()
        found = []
        for raw, failing in zip(rows[::2], rows[1::2], strict=True):
            if raw is None:
                continue
            webhook = _load(raw)
            if failing or not webhook.enabled:
                found.append((webhook, int(failing) if failing else None))
        return found
