"""The audit trail in Redis: one JSON record per entry (expiring after retention), a global
index and one per tenant, each trimmed to the retention window as entries are added."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from relay import ids
from relay.audit import AuditEntry
from relay.store import codec, keys
from relay.store.pages import Window, filtered_newest_first


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which entries a list shows: all or one tenant's, of one action, in a time window."""

    tenant_id: str | None = None
    action: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


class AuditLog:
    """Persistence of the audit trail."""

    def __init__(self, redis: Redis, retention_seconds: int) -> None:
        self._redis = redis
        self._retention = retention_seconds

    async def add(self, entry: AuditEntry) -> None:
        """Store an entry; its indexes lose entries past the retention window meanwhile."""
        indexes = [keys.AUDIT]
        if entry.tenant_id is not None:
            indexes.append(keys.tenant_audit(entry.tenant_id))
        oldest_kept_ms = time.time_ns() // 1_000_000 - self._retention * 1000
        floor = f"({ids.time_floor('aud', oldest_kept_ms)}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.audit_entry(entry.id), codec.dumps(entry.record()), ex=self._retention)
            for index in indexes:
                pipe.zadd(index, {entry.id: 0})
                pipe.zremrangebylex(index, "-", floor)
                # A tenant's index lapses a retention period after its last entry.
                pipe.expire(index, self._retention)
            await pipe.execute()

    async def page(
        self, query: AuditQuery, limit: int, cursor: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        """Matching entries newest first, reading at most a bounded number of ids."""
        index = keys.tenant_audit(query.tenant_id) if query.tenant_id else keys.AUDIT

        async def load(batch: list[str]) -> list[AuditEntry]:
            raws = await self._redis.mget([keys.audit_entry(i) for i in batch])
            return [AuditEntry.from_record(codec.loads(r)) for r in raws if r is not None]

        return await filtered_newest_first(
            self._redis,
            index,
            Window("aud", query.since_ms, query.until_ms),
            limit,
            cursor,
            load,
            lambda e: query.action is None or e.action == query.action,
            lambda e: e.id,
        )
