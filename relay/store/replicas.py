"""Writes answered only once replicas hold them (RELAY_REDIS_MIN_REPLICAS): what a failover
cannot take away.

Redis replicates asynchronously: a primary that dies takes with it whatever it had not yet sent
to a replica. `WAIT n timeout` blocks until n replicas acknowledge every write the *calling
connection* made; so the write and its WAIT go on one connection of their own, never on whatever
connection the shared pool hands out next. A reader that must know the replicas hold what it
read (others' writes) makes a write of its own after the reads, and waits for that: Redis
replicates in order, so what came before it is held too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from relay.errors import Unavailable
from relay.store import keys

# How long replicas get to acknowledge, in ms: under the 1.5 s after which every Redis call
# gives up, so that a replica too slow or gone is a clear 503, not a timeout. Replicas on a
# healthy network acknowledge within milliseconds.
WAIT_MS = 1000
# How long the mark a reader sets lives: only its place in the replication stream matters.
_MARK_MS = 10_000


class NotReplicated(Unavailable):
    """Fewer replicas than required acknowledged a write in time: it may be lost in a failover
    (or may be kept; it is not known)."""


class Replicas:
    """How many replicas must hold a write before relay answers that it has it."""

    def __init__(self, redis: Redis, required: int, wait_ms: int = WAIT_MS) -> None:
        self._redis = redis
        self.required = required
        self._wait_ms = wait_ms

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Redis]:
        """A client for a write that `confirm` will wait for: one connection of its own while
        replicas are waited for, the shared client otherwise."""
        if not self.required:
            yield self._redis
            return
        async with self._redis.client() as own:
            yield own

    async def confirm(self, conn: Redis) -> None:
        """Return once the required replicas hold every write made on `conn` (at once when none
        is required); NotReplicated if fewer acknowledge within the wait."""
        if not self.required:
            return
        reply = await conn.execute_command("WAIT", self.required, self._wait_ms)  # type: ignore[no-untyped-call]
        acknowledged = int(reply)
        if acknowledged < self.required:
            # It may be a primary the sentinels have replaced (paused, or cut off, and back),
            # which keeps its connections until they turn it into a replica, seconds later:
            # this connection asks them again where the primary is when it is next used.
            # (Only this one: the pool's idle ones may be taken meanwhile by other calls.)
            if conn.connection is not None:
                await conn.connection.disconnect()
            raise NotReplicated(
                f"Redis replicated this write to {acknowledged} of the {self.required} replicas "
                f"relay waits for (RELAY_REDIS_MIN_REPLICAS) within {self._wait_ms} ms, so it "
                "is not known to survive a failover. Retry with the same upstream `id` (or "
                "Idempotency-Key): relay does not store it twice."
            )

    async def confirm_read(self, conn: Redis) -> None:
        """Return once the required replicas hold everything read on `conn` so far (at once when
        none is required); NotReplicated if fewer acknowledge within the wait."""
        if self.required:
            await conn.set(keys.REPLICATED_MARK, "1", px=_MARK_MS)
            await self.confirm(conn)
