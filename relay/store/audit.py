"""The audit trail: each entry is written to Redis with a global and a per-tenant index entry,
and handed to the history writer in the same step; once PostgreSQL has it, it leaves Redis.
Reads merge the few entries still in Redis with history's."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from relay import ids
from relay.audit import AuditEntry
from relay.store import codec, keys, lua
from relay.store.pages import Window, filtered_newest_first, merge_newest_first

if TYPE_CHECKING:
    from relay.delivery.archive import Archive


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which entries a list shows: all or one tenant's, of one action, in a time window."""

    tenant_id: str | None = None
    action: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


class AuditLog:
    """Persistence of the audit trail."""

    def __init__(self, redis: Redis, retention_seconds: int, archive: Archive) -> None:
        self._redis = redis
        self._retention = retention_seconds
        self._archive = archive
        self._add = lua.register(redis, "audit_add")

    async def add(self, entry: AuditEntry, once: str | None = None) -> None:
        """Store an entry, unless `once` (a marker key) says its change is recorded already;
        its indexes lose entries past the retention window meanwhile."""
        indexes = [keys.AUDIT]
        if entry.tenant_id is not None:
            indexes.append(keys.tenant_audit(entry.tenant_id))
        oldest_kept_ms = time.time_ns() // 1_000_000 - self._retention * 1000
        floor = f"({ids.time_floor('aud', oldest_kept_ms)}"
        key = keys.audit_entry(entry.id)
        await self._add(
            keys=[key, once or key, keys.HISTORY, *indexes],
            args=[codec.dumps(entry.record()), entry.id, self._retention, floor],
        )

    async def page(
        self, query: AuditQuery, limit: int, cursor: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        """Matching entries newest first, reading at most a bounded number of ids."""
        index = keys.tenant_audit(query.tenant_id) if query.tenant_id else keys.AUDIT

        async def load(batch: list[str]) -> list[AuditEntry]:
            raws = await self._redis.mget([keys.audit_entry(i) for i in batch])
            return [AuditEntry.from_record(codec.loads(r)) for r in raws if r is not None]

        live = await filtered_newest_first(
            self._redis,
            index,
            Window("aud", query.since_ms, query.until_ms),
            limit,
            cursor,
            load,
            lambda e: query.action is None or e.action == query.action,
            lambda e: e.id,
        )
        archived = await self._archive.audit_page(query, limit, cursor)
        return merge_newest_first([live, archived], limit, lambda e: e.id)
