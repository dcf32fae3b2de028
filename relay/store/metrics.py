"""The shared counters behind GET /metrics: adding to them, reading them; and the workers'
presence.

The counters live in one all-time hash (Prometheus takes its own rates); each process adds its
counts every few seconds. The overview's figures over time come from PostgreSQL instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from relay.store import keys, lua, memory
from relay.store.memory import Memory

# A worker that has not announced itself for this long is counted as gone.
WORKER_SILENCE_MS = 30_000
# The top of a queue's deliveries: a claim waiting for a slot leaves a mark at +inf.
_DELIVERIES = "(+inf"


@dataclass(slots=True, frozen=True)
class Queued:
    """Deliveries in the endpoints' queues."""

    pending: int  # all of them: pending, or in flight
    due: int  # due by then and not in flight
    oldest_due_ms: int | None = None  # when the one due longest became due (Redis ms)


@dataclass(slots=True, frozen=True)
class Snapshot:
    """Everything /metrics shows, read in a few round trips."""

    counters: dict[bytes, bytes]
    pending: int
    due: int
    workers: int
    disabled_webhooks: int
    history_backlog: int = 0
    history_lag_ms: int = 0
    delivery_lag_ms: int = 0
    history_held: int = 0
    # None when relay's user may not run INFO.
    memory: Memory | None = None


async def snapshot(redis: Redis, now_ms: int) -> Snapshot:
    """The counters hash and the gauges."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS)
        pipe.zcount(keys.WORKERS, now_ms - WORKER_SILENCE_MS, "+inf")
        pipe.scard(keys.DISABLED_WEBHOOKS)
        pipe.xlen(keys.HISTORY)
        pipe.xrange(keys.HISTORY, "-", "+", count=1)
        pipe.xlen(keys.HISTORY_HELD)
        results = await pipe.execute()
    counters, workers, disabled, waiting, oldest, held = results[-6:]
    queues = await queued(redis, now_ms)
    # A stream entry's id starts with the Redis time (ms) it was added at.
    lag = now_ms - int(oldest[0][0].decode().partition("-")[0]) if oldest else 0
    try:
        used = await memory.read(redis)
    except ResponseError:
        used = None
    return Snapshot(
        counters,
        queues.pending,
        queues.due,
        int(workers),
        int(disabled),
        int(waiting),
        max(lag, 0),
        0 if queues.oldest_due_ms is None else max(now_ms - queues.oldest_due_ms, 0),
        int(held),
        used,
    )


async def backlog(redis: Redis, tenant_id: str | None = None) -> int:
    """How many deliveries are pending (due, waiting for a slot or their time) or in flight,
    of every tenant or of one."""
    return (await queued(redis, None, tenant_id)).pending


async def webhook_backlog(redis: Redis, webhook_id: str) -> int:
    """How many deliveries of one webhook are pending or in flight."""
    return int(await redis.zcount(keys.endpoint_queue(webhook_id), "-inf", _DELIVERIES))


async def queued(redis: Redis, now_ms: int | None, tenant_id: str | None = None) -> Queued:
    """Deliveries in the endpoints' queues (of every tenant, or of one): all of them, and (by
    `now_ms`; none when None) those due and not in flight, with when the one due longest
    became due. Read through the schedule: every tenant with deliveries queued is in the
    tenants' set, and each of its endpoints with any in its own; each queue costs the same few
    calls, however long it is."""
    if tenant_id is not None:
        tenants = [tenant_id]
    else:
        tenants = [t.decode() for t in await redis.zrange(keys.TENANTS, 0, -1)]
    if not tenants:
        return Queued(0, 0)
    async with redis.pipeline(transaction=False) as pipe:
        for tenant in tenants:
            pipe.zrange(keys.endpoints(tenant), 0, -1)
        listed = await pipe.execute()
    endpoints = sorted({e.decode() for found in listed for e in found})
    # In a queue, the attempts in flight come first, scored by their lease less IN_FLIGHT, then
    # the pending ones by due time (see keys.endpoint_queue). Due: a pending one whose time
    # came, or a lease run out (due again, to be taken over).
    reads = 1 if now_ms is None else 5
    async with redis.pipeline(transaction=False) as pipe:
        for webhook_id in endpoints:
            queue = keys.endpoint_queue(webhook_id)
            pipe.zcount(queue, "-inf", _DELIVERIES)
            if now_ms is not None:
                pipe.zcount(queue, 0, now_ms)
                pipe.zcount(queue, "-inf", now_ms - keys.IN_FLIGHT)
                # The first pending one, and the first lease to run out (rank 0, unless none
                # is in flight: then it is the first pending one again).
                pipe.zrange(queue, 0, now_ms, byscore=True, offset=0, num=1, withscores=True)
                pipe.zrange(queue, 0, 0, withscores=True)
        answers = await pipe.execute()
    total = sum(int(n) for n in answers[::reads])
    if now_ms is None:
        return Queued(total, 0)
    due_since = [int(first[0][1]) for first in answers[3::reads] if first]
    for first in answers[4::reads]:
        if first and first[0][1] < 0 and (lease := int(first[0][1]) + keys.IN_FLIGHT) <= now_ms:
            due_since.append(lease)
    return Queued(
        total,
        sum(int(n) for n in answers[1::reads]) + sum(int(n) for n in answers[2::reads]),
        min(due_since, default=None),
    )


async def announce(
    redis: Redis, worker_id: str | None, now_ms: int, counts: Mapping[str, float]
) -> None:
    """Add a process's counts to the shared counters; and say that worker `worker_id` (if
    one) is alive."""
    added = [part for field, count in counts.items() if count for part in (field, count)]
    await lua.register(redis, "announce")(
        keys=[keys.METRICS, keys.WORKERS],
        args=[worker_id or "", now_ms, 10 * WORKER_SILENCE_MS, *added],
    )
