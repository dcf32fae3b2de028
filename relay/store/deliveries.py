"""Deliveries in Redis: state hashes, attempt logs, indexes and the due set.

Every transition is one Lua script that checks the state it expects (compare-and-set), so
concurrent workers, sweepers and operators can race without a delivery being sent twice by one
cycle, skipped, or left in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from relay import ids
from relay.deliveries import Attempt, Delivery, Status
from relay.errors import NotFound
from relay.store import codec, keys
from relay.store.jobs import JOB_TTL_MS, deliver_job, job_id
from relay.store.metrics import BUMP, bucket_key
from relay.timefmt import from_timestamp, now, rfc3339

# KEYS: delivery, due, webhook, event, endpoint slots, endpoint rate.
# ARGV: attempt, now ms, lease ms, delivery id, endpoint concurrency, job id.
# 'busy' leaves the delivery untouched: over its endpoint's limits it waits without an attempt.
_CLAIM = """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt_count', 'lease_until', 'cycle_start')
if not st[1] then return {'gone'} end
if tonumber(st[2]) ~= tonumber(ARGV[1]) - 1 then return {'stale'} end
local now = tonumber(ARGV[2])
if st[1] == 'delivering' then
  if tonumber(st[3] or '0') > now then return {'stale'} end
elseif st[1] ~= 'pending' then
  return {'stale'}
end
local lease = now + tonumber(ARGV[3])
local webhook = redis.call('GET', KEYS[3])
if webhook then
  local ok, w = pcall(cjson.decode, webhook)
  if ok and w['enabled'] == true then
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
    if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[5]) then return {'busy'} end
    local rate = w['rate_limit_per_second']
    if type(rate) == 'number' then
      if tonumber(redis.call('GET', KEYS[6]) or '0') >= rate then return {'busy'} end
      redis.call('INCR', KEYS[6])
      redis.call('EXPIRE', KEYS[6], 2)
    end
    redis.call('ZADD', KEYS[5], lease, ARGV[6])
    redis.call('PEXPIRE', KEYS[5], ARGV[3])
  end
end
redis.call('HSET', KEYS[1], 'status', 'delivering', 'lease_until', lease)
redis.call('ZADD', KEYS[2], lease, ARGV[4])
return {'ok', st[4], webhook or '', redis.call('HGET', KEYS[4], 'payload') or ''}
"""

# KEYS: delivery, attempts, due, queue, next job, metrics, endpoint slots, endpoint failing,
#       metrics bucket.
# ARGV: attempt, attempt JSON ('' when none was made), status, next due ms (''), job id, job
#       payload, job ttl ms, ttl s, last status code, last error, updated_at, delivered_at,
#       delivery id, duration seconds, this attempt's job id, 'ok' / 'fail' / '' (endpoint
#       health), now ms, failing ttl ms, then counter fields to increment.
# Returns {1, failing since ms or ''}, or {0} if the delivery was taken over.
_SETTLE = (
    BUMP
    + """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt_count')
local n = tonumber(ARGV[1])
if st[1] ~= 'delivering' or tonumber(st[2]) ~= n - 1 then return {0} end
redis.call('ZREM', KEYS[7], ARGV[15])
local count = n - 1
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
  count = n
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'attempt_count', count, 'next_attempt_at', ARGV[4],
  'last_status_code', ARGV[9], 'last_error', ARGV[10], 'updated_at', ARGV[11])
if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'delivered_at', ARGV[12]) end
redis.call('HDEL', KEYS[1], 'lease_until')
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[13])
  redis.call('SET', KEYS[5], ARGV[6], 'PX', ARGV[7])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
else
  redis.call('ZREM', KEYS[3], ARGV[13])
end
if ARGV[2] ~= '' then
  redis.call('HINCRBYFLOAT', KEYS[6], 'attempt_seconds_sum', ARGV[14])
end
for i = 19, #ARGV do bump(KEYS[6], KEYS[9], ARGV[i]) end
if ARGV[16] == 'ok' then
  redis.call('DEL', KEYS[8])
elseif ARGV[16] == 'fail' then
  redis.call('SET', KEYS[8], ARGV[17], 'NX')
  redis.call('PEXPIRE', KEYS[8], ARGV[18])
  return {1, redis.call('GET', KEYS[8])}
end
return {1, ''}
"""
)

# KEYS: delivery, due, queue, job. ARGV: expected attempt_count, now ms, job id, job payload,
#       job ttl ms, updated_at, delivery id, statuses allowed (space-separated).
_RESTART = """
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt_count')
if not st[1] then return 'missing' end
if not string.find(' ' .. ARGV[8] .. ' ', ' ' .. st[1] .. ' ', 1, true) then return st[1] end
if st[2] ~= ARGV[1] then return 'moved' end
redis.call('HSET', KEYS[1], 'status', 'pending', 'cycle_start', st[2], 'next_attempt_at', ARGV[2],
  'updated_at', ARGV[6], 'delivered_at', '')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[7])
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return 'ok'
"""

# KEYS: delivery, due. ARGV: updated_at, delivery id.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'pending' then return status end
redis.call('HSET', KEYS[1], 'status', 'canceled', 'next_attempt_at', '',
  'last_error', 'canceled by an operator', 'updated_at', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 'ok'
"""

# Re-enqueue what is due but has no job (lost, expired, or never written because of a crash).
# KEYS: due, queue. ARGV: now ms, grace ms, batch size, delivery key prefix, job key prefix.
_SWEEP = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]),
  'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  local d = redis.call('HMGET', ARGV[4] .. id, 'status', 'attempt_count', 'webhook_id',
    'event_id')
  if not d[1] or (d[1] ~= 'pending' and d[1] ~= 'delivering') then
    redis.call('ZREM', KEYS[1], id)
  else
    local jid = id .. ':' .. (tonumber(d[2]) + 1)
    if redis.call('EXISTS', ARGV[5] .. jid) == 0 or not redis.call('ZSCORE', KEYS[2], jid) then
      table.insert(out, {id, tonumber(d[2]) + 1, d[3], d[4]})
    end
  end
end
return out
"""


def _text(value: bytes | None) -> str | None:
    return value.decode() if value else None


def _ms_to_rfc3339(value: bytes | None) -> str | None:
    return from_timestamp(int(value) / 1000) if value else None


def _delivery(fields: dict[bytes, bytes]) -> Delivery:
    status = Status(fields[b"status"].decode())
    code = fields.get(b"last_status_code")
    return Delivery(
        id=fields[b"id"].decode(),
        event_id=fields[b"event_id"].decode(),
        webhook_id=fields[b"webhook_id"].decode(),
        tenant_id=fields[b"tenant_id"].decode(),
        event_type=fields[b"event_type"].decode(),
        status=status,
        attempt_count=int(fields[b"attempt_count"]),
        cycle_start=int(fields[b"cycle_start"]),
        next_attempt_at=_ms_to_rfc3339(fields.get(b"next_attempt_at"))
        if status is Status.PENDING
        else None,
        last_status_code=int(code) if code else None,
        last_error=_text(fields.get(b"last_error")),
        created_at=fields[b"created_at"].decode(),
        updated_at=fields[b"updated_at"].decode(),
        delivered_at=_text(fields.get(b"delivered_at")),
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery taken for one attempt, with what the attempt needs."""

    cycle_start: int
    webhook_record: bytes | None
    payload: bytes | None


# What a claim can come back as, besides a Claim.
STALE = "stale"
BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Settlement:
    """The result of an attempt (or of deciding not to make one) to write."""

    status: Status
    attempt: Attempt | None
    next_due_ms: int | None
    last_status_code: int | None
    last_error: str | None
    updated_at: str
    delivered_at: str | None
    counters: Sequence[str] = ()
    duration_seconds: float = 0.0
    endpoint_ok: bool | None = None  # None when no request was made


@dataclass(frozen=True, slots=True)
class Settled:
    """What settling told: whether it was written, and since when the endpoint has failed."""

    written: bool
    failing_since_ms: int | None


@dataclass(frozen=True, slots=True)
class Lost:
    """A delivery that is due but whose job is missing."""

    delivery_id: str
    attempt: int
    webhook_id: str
    event_id: str


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which deliveries a list shows."""

    index: str
    status: Status | None = None
    event_type: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


# A filtered list reads at most this many ids per request; a sparse match returns a short page
# with a cursor rather than scanning an index of millions.
_SCAN_BUDGET = 1000


class DeliveryStore:
    """Persistence and transitions of deliveries."""

    def __init__(self, redis: Redis, retention_seconds: int, disable_after_seconds: int) -> None:
        self._redis = redis
        self._ttl = retention_seconds
        # A failure streak is forgotten after twice the disable threshold without failures.
        self._failing_ttl_ms = disable_after_seconds * 2000
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)
        self._restart = redis.register_script(_RESTART)
        self._cancel = redis.register_script(_CANCEL)
        self._sweep = redis.register_script(_SWEEP)

    async def get(self, delivery_id: str) -> Delivery:
        """A delivery by id, or NotFound."""
        fields: dict[bytes, bytes] = await self._redis.hgetall(keys.delivery(delivery_id))  # type: ignore[misc]
        if not fields:
            raise NotFound("No such delivery.")
        return _delivery(fields)

    async def many(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        """Deliveries by id, in order, skipping any that expired."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.hgetall(keys.delivery(delivery_id))
            rows = await pipe.execute()
        return [_delivery(r) for r in rows if r]

    async def attempts(self, delivery_id: str) -> list[dict[str, object]]:
        """The attempt log, oldest first."""
        rows = await self._redis.lrange(keys.attempts(delivery_id), 0, -1)  # type: ignore[misc]
        return [codec.loads(r) for r in rows]

    async def claim(
        self,
        delivery_id: str,
        attempt: int,
        webhook_id: str,
        event_id: str,
        now_ms: int,
        lease_ms: int,
        concurrency: int,
    ) -> Claim | str:
        """Take a pending delivery for attempt `attempt`.

        Returns STALE when the job has nothing to do (canceled, done, taken over), BUSY when
        the endpoint is at its concurrency or rate limit (try again shortly), else the Claim.
        """
        reply = await self._claim(
            keys=[
                keys.delivery(delivery_id),
                keys.DUE,
                keys.webhook(webhook_id),
                keys.event(event_id),
                keys.endpoint_slots(webhook_id),
                keys.endpoint_rate(webhook_id, now_ms // 1000),
            ],
            args=[
                attempt,
                now_ms,
                lease_ms,
                delivery_id,
                concurrency,
                job_id(delivery_id, attempt),
            ],
        )
        if reply[0] == b"busy":
            return BUSY
        if reply[0] != b"ok":
            return STALE
        return Claim(int(reply[1]), reply[2] or None, reply[3] or None)

    async def settle(
        self,
        delivery_id: str,
        attempt: int,
        webhook_id: str,
        event_id: str,
        result: Settlement,
        now_ms: int,
    ) -> Settled:
        """Record an attempt and the next state, and the endpoint's failure streak."""
        job = deliver_job(delivery_id, attempt + 1, webhook_id, event_id, now_ms)
        due = result.next_due_ms
        args: list[str | int | float | bytes] = [
            attempt,
            codec.dumps(asdict(result.attempt)) if result.attempt else "",
            result.status.value,
            due if due is not None else "",
            job.id,
            job.payload,
            (due - now_ms if due else 0) + JOB_TTL_MS,
            self._ttl,
            result.last_status_code if result.last_status_code is not None else "",
            result.last_error or "",
            result.updated_at,
            result.delivered_at or "",
            delivery_id,
            result.duration_seconds,
            job_id(delivery_id, attempt),
            {True: "ok", False: "fail", None: ""}[result.endpoint_ok],
            now_ms,
            self._failing_ttl_ms,
            *result.counters,
        ]
        done = await self._settle(
            keys=[
                keys.delivery(delivery_id),
                keys.attempts(delivery_id),
                keys.DUE,
                keys.QUEUE,
                job.key,
                keys.METRICS,
                keys.endpoint_slots(webhook_id),
                keys.endpoint_failing(webhook_id),
                bucket_key(now_ms),
            ],
            args=args,
        )
        failing = done[1] if len(done) > 1 and done[1] else None
        return Settled(bool(done[0]), int(failing) if failing else None)

    async def restart(self, delivery: Delivery, allowed: frozenset[Status]) -> str:
        """Start a new attempt cycle now if the delivery's status is in `allowed`.

        Returns "ok", or the status that prevented it ("missing" if gone).
        """
        moment = now()
        now_ms, updated_at = int(moment.timestamp() * 1000), rfc3339(moment)
        job = deliver_job(
            delivery.id, delivery.attempt_count + 1, delivery.webhook_id, delivery.event_id, now_ms
        )
        reply = await self._restart(
            keys=[keys.delivery(delivery.id), keys.DUE, keys.QUEUE, job.key],
            args=[
                delivery.attempt_count,
                now_ms,
                job.id,
                job.payload,
                JOB_TTL_MS,
                updated_at,
                delivery.id,
                " ".join(s.value for s in allowed),
            ],
        )
        return str(reply.decode())

    async def requeue_failed(self, deliveries: Sequence[Delivery]) -> int:
        """Restart every failed one of `deliveries`; how many were restarted."""
        failed_only = frozenset({Status.FAILED})
        restarted = 0
        for delivery in deliveries:
            if delivery.status is Status.FAILED:
                restarted += await self.restart(delivery, failed_only) == "ok"
        return restarted

    async def cancel(self, delivery_id: str) -> str:
        """Cancel a pending delivery; "ok", or the status that prevented it."""
        reply = await self._cancel(
            keys=[keys.delivery(delivery_id), keys.DUE], args=[rfc3339(now()), delivery_id]
        )
        return str(reply.decode())

    async def lost(self, now_ms: int, grace_ms: int = 2000, batch: int = 500) -> list[Lost]:
        """Deliveries due for a while whose job is missing from the queue."""
        rows = await self._sweep(
            keys=[keys.DUE, keys.QUEUE],
            args=[now_ms, grace_ms, batch, keys.delivery(""), keys.job("")],
        )
        return [Lost(r[0].decode(), int(r[1]), r[2].decode(), r[3].decode()) for r in rows]

    async def enqueue(self, lost: Lost, now_ms: int) -> None:
        """Write the job of a lost delivery again, due now."""
        job = deliver_job(lost.delivery_id, lost.attempt, lost.webhook_id, lost.event_id, now_ms)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(job.key, job.payload, px=JOB_TTL_MS)
            pipe.zadd(keys.QUEUE, {job.id: now_ms})
            pipe.hincrby(keys.METRICS, "sweeper_requeued", 1)
            await pipe.execute()

    async def page(
        self, query: DeliveryFilter, limit: int, cursor: str | None
    ) -> tuple[list[Delivery], str | None]:
        """Matching deliveries newest first, reading at most a bounded number of ids."""
        high = f"({cursor}" if cursor else "+"
        if query.until_ms is not None:
            until = f"({ids.time_floor('dlv', query.until_ms + 1)}"
            high = min(high, until) if cursor else until
        low = f"[{ids.time_floor('dlv', query.since_ms)}" if query.since_ms is not None else "-"
        found: list[Delivery] = []
        scanned = 0
        # One match more than the page holds tells whether a next page exists.
        while len(found) <= limit and scanned < _SCAN_BUDGET:
            batch = await self._redis.zrange(
                query.index,
                high,  # type: ignore[arg-type]
                low,  # type: ignore[arg-type]
                desc=True,
                bylex=True,
                offset=0,
                num=min(limit * 2, 200),
            )
            if not batch:
                return found, None
            batch_ids = [m.decode() for m in batch]
            scanned += len(batch_ids)
            for delivery in await self.many(batch_ids):
                if query.status and delivery.status is not query.status:
                    continue
                if query.event_type and delivery.event_type != query.event_type:
                    continue
                found.append(delivery)
                if len(found) > limit:
                    return found[:limit], found[limit - 1].id
            high = f"({batch_ids[-1]}"
        return found, high[1:]  # the scan budget ran out: carry on from here next time

    async def ids_between(self, index: str, since_ms: int, until_ms: int) -> list[str]:
        """Every delivery id of an index created in [since, until]."""
        raw = await self._redis.zrange(
            index,
            f"[{ids.time_floor('dlv', since_ms)}",  # type: ignore[arg-type]
            f"({ids.time_floor('dlv', until_ms + 1)}",  # type: ignore[arg-type]
            bylex=True,
        )
        return [m.decode() for m in raw]

    async def trim(self, now_ms: int) -> int:
        """Drop index entries older than the retention window; returns how many."""
        floor = f"({ids.time_floor('dlv', now_ms - self._ttl * 1000)}"
        event_floor = f"({ids.time_floor('evt', now_ms - self._ttl * 1000)}"
        removed = 0
        indexes = [m.decode() for m in await self._redis.smembers(keys.INDEXES)]  # type: ignore[misc]
        for index in [keys.DELIVERIES, keys.EVENTS, *indexes]:
            bound = event_floor if index.startswith(keys.EVENTS) else floor
            removed += await self._redis.zremrangebylex(index, "-", bound)
            if index in indexes and not await self._redis.exists(index):
                await self._redis.srem(keys.INDEXES, index)  # type: ignore[misc]
        return removed
