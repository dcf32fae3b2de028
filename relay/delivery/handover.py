"""The hand-over of records from Redis to history.

Scripts that end a record add it to the history stream in the same atomic step; the history
writer reads that stream as one consumer of a group and, once PostgreSQL holds a batch,
releases its records from Redis (`release.lua`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from relay.audit import AuditEntry
from relay.delivery.model import FINISHED, Transition
from relay.delivery.store import (
    PAYLOAD_BYTES_PER_CALL,
    UPSTREAM_GRACE_SECONDS,
    _upstream_key,
    script_text,
)
from relay.store import codec, keys, lua
from relay.store.events import StoredEvent
from relay.store.replicas import Replicas

# Records held apart because PostgreSQL refused them, at most: so many means that it refuses
# every record, not a few, and the writer stops at the next one instead (see history_hold.lua).
HELD_MAX = 10_000
# A delivery's fields as its Redis hash holds them: text (`""` for none), but for a number a
# settle passed straight through (a status code), which comes as one.
DeliveryRecord = dict[str, str]
# Its status once it has ended: the record then leaves Redis with its release.
_FINISHED = frozenset(status.value for status in FINISHED)


@dataclass(frozen=True, slots=True)
class Handover:
    """One record handed to history: an event with its fan-out, a delivery (as it ended, or
    back in flight) with its attempts, or an audit entry (None when it left Redis already).

    A delivery and its attempts are as the scripts wrote them (`DeliveryRecord`): history's
    writer turns them into rows as they are, with no Delivery or Attempt made on the way.
    """

    entry_id: str
    event: StoredEvent | None = None
    fanout: list[tuple[str, str]] = field(default_factory=list)  # (delivery, webhook) ids
    delivery: DeliveryRecord | None = None
    audit: AuditEntry | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def version(self) -> str:
        """The delivery's `updated_ms`: it leaves Redis only if that is still unchanged."""
        return self.delivery["updated_ms"] if self.delivery is not None else ""


class HistoryHandover:
    """The history stream: records handed over, read by a consumer group, released from Redis."""

    def __init__(
        self,
        redis: Redis,
        replicas: Replicas | None = None,
        payload_bytes_per_call: int = PAYLOAD_BYTES_PER_CALL,
    ) -> None:
        self._redis = redis
        self._replicas = replicas or Replicas(redis, 0)
        self._payload_bytes = payload_bytes_per_call
        self._group_ready = False
        self._release = redis.register_script(script_text(Transition.RELEASE.value))
        self._hold = lua.register(redis, "history_hold")
        self._return = lua.register(redis, "history_return")

    # Records reach history only once the replicas relay waits for hold them: then whatever
    # history has, a failover keeps in Redis too, and the two never tell different stories
    # (an attempt history lists that the new primary never made, an event no one was told of).

    async def handed_over(self, consumer: str, count: int, block_ms: int | None) -> list[Handover]:
        """The next new records for history, waiting up to `block_ms` for one to come (None:
        not waiting)."""
        await self._ensure_group()
        async with self._replicas.connection() as conn:
            entries = await self._read_group(consumer, ">", count, block_ms, conn)
            if entries:
                await self._replicas.confirm_read(conn)
        return await self._load(entries)

    async def unreleased(self, consumer: str, count: int) -> list[Handover]:
        """Records this consumer read before and has not released (a write failed)."""
        await self._ensure_group()
        async with self._replicas.connection() as conn:
            entries = await self._read_group(consumer, "0", count, None, conn)
            if entries:
                await self._replicas.confirm_read(conn)
        return await self._load(entries)

    async def adopt(self, consumer: str, idle_ms: int, count: int) -> list[Handover]:
        """Records another writer read and left unreleased for `idle_ms` (it died): now this
        consumer's."""
        await self._ensure_group()
        async with self._replicas.connection() as conn:
            reply = await conn.xautoclaim(
                keys.HISTORY, keys.HISTORY_GROUP, consumer, idle_ms, "0-0", count=count
            )
            entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields]
            if entries:
                await self._replicas.confirm_read(conn)
        return await self._load(entries)

    async def release(self, handed: Sequence[Handover]) -> int:
        """Let records that history now holds go from Redis; how many deliveries left."""
        arg = {
            "keys": {
                "history": keys.HISTORY,
                "group": keys.HISTORY_GROUP,
                "event": keys.event(""),
                "delivery": keys.delivery(""),
                "attempts_suffix": keys.ATTEMPTS_SUFFIX,
                "audit": keys.audit_entry(""),
                "audits": keys.AUDIT,
                "tenant_audit": keys.tenant_audit(""),
            },
            "entries": [h.entry_id for h in handed],
            "upstream_grace": UPSTREAM_GRACE_SECONDS,
            "events": [
                [
                    e.id,
                    _upstream_key(e.tenant_id, e.upstream_id) or "",
                    len(e.delivery_ids),
                ]
                for h in handed
                if (e := h.event) is not None
            ],
            "audits": [
                [h.audit.id, h.audit.tenant_id or ""] for h in handed if h.audit is not None
            ],
            "deliveries": [
                [d["id"], d["status"], h.version]
                for h in handed
                if (d := h.delivery) is not None and d["status"] in _FINISHED
            ],
        }
        released = await self._release(keys=[], args=[codec.dumps(arg)])
        return int(released)

    async def hold(self, handed: Handover, why: str) -> bool:
        """Set apart an entry whose record PostgreSQL refused, saying why: the writers' stream
        goes on without it, and its record stays in Redis until it is written. False when
        `HELD_MAX` are held already: then it stays in the stream."""
        held = await self._hold(
            keys=[keys.HISTORY, keys.HISTORY_HELD],
            args=[keys.HISTORY_GROUP, handed.entry_id, why, HELD_MAX],
        )
        return int(held) >= 0

    async def return_held(self, count: int) -> int:
        """Put up to `count` held entries back for the writers to try again; how many went."""
        return int(await self._return(keys=[keys.HISTORY_HELD, keys.HISTORY], args=[count]))

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(keys.HISTORY, keys.HISTORY_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            # A full Redis refuses XGROUP CREATE even for a group that exists, and the writer
            # reading that group is what gives it room back: go by what is there.
            if "BUSYGROUP" not in str(exc) and not await self._group_exists():
                raise
        self._group_ready = True

    async def _group_exists(self) -> bool:
        try:
            groups = await self._redis.xinfo_groups(keys.HISTORY)
        except ResponseError:  # no stream yet
            return False
        return any(g["name"] in (keys.HISTORY_GROUP, keys.HISTORY_GROUP.encode()) for g in groups)

    async def _read_group(
        self, consumer: str, start: str, count: int, block_ms: int | None, client: Redis
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        try:
            reply = await client.xreadgroup(
                keys.HISTORY_GROUP,
                consumer,
                {keys.HISTORY: start},
                count=count,
                block=block_ms,
            )
        except ResponseError as exc:
            # Redis restarted without the group (or the stream): make it again, read again.
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False
            return []
        return [(i, f) for _, entries in reply for i, f in entries if f] if reply else []

    async def _load(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Handover]:
        """Each entry with the record it carries (an audit entry's is read from Redis; None when
        it is gone; so is a large event's payload)."""
        audits = [f[b"i"].decode() for _, f in entries if f[b"k"] == b"a"]
        raw_audits = await self._redis.mget([keys.audit_entry(i) for i in audits]) if audits else []
        audit_of = dict(zip(audits, raw_audits, strict=True))
        payload_of = await self._payloads(
            {f[b"i"].decode(): int(f[b"n"]) for _, f in entries if f[b"k"] == b"e" and b"n" in f}
        )
        handed = []
        for raw_id, fields in entries:
            entry_id, record_id = raw_id.decode(), fields[b"i"].decode()
            if fields[b"k"] == b"a":
                raw = audit_of[record_id]
                audit = AuditEntry.from_record(codec.loads(raw)) if raw else None
                handed.append(Handover(entry_id, audit=audit))
                continue
            record = codec.loads(fields[b"r"])
            if fields[b"k"] == b"e":
                payload = fields[b"p"] if b"p" in fields else payload_of[record_id]
                if payload is None:
                    # The event left Redis: only once history had it (another writer adopted
                    # this entry and wrote it first). Nothing is left to write.
                    handed.append(Handover(entry_id))
                    continue
                fanout = [(d, w) for d, w in record["deliveries"]]
                event = StoredEvent(
                    id=record_id,
                    type=record["type"],
                    tenant_id=record["tenant_id"],
                    created_at=record["created_at"],
                    upstream_id=record["upstream_id"],
                    payload=payload,
                    delivery_ids=[d for d, _ in fanout],
                )
                handed.append(Handover(entry_id, event=event, fanout=fanout))
                continue
            attempts = [codec.loads(a) for a in record.get("attempts", [])]
            handed.append(Handover(entry_id, delivery=record["delivery"], attempts=attempts))
        return handed

    async def _payloads(self, sizes: dict[str, int]) -> dict[str, bytes | None]:
        """The payloads of events (by id, with their sizes) from Redis, in calls of at most
        the store's payload bytes each; None for an event that is gone."""
        groups: list[list[str]] = [[]]
        total = 0
        for event_id, size in sizes.items():
            if groups[-1] and total + size > self._payload_bytes:
                groups.append([])
                total = 0
            groups[-1].append(event_id)
            total += size
        found: dict[str, bytes | None] = {}
        for group in groups if sizes else []:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event_id in group:
                    pipe.hget(keys.event(event_id), "payload")
                found.update(zip(group, await pipe.execute(), strict=True))
        return found
