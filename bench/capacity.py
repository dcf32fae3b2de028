"""Capacity: what relay keeps in Redis and PostgreSQL as deliveries pile up, and what reads cost.

    .venv/bin/python -m bench.capacity [--quick] [--only memory,commands,queries,drop]
        [--deliveries N] [--rate R] [--sample-seconds S] [--workers W] [--command-events N]
        [--seed-deliveries N] [--tenants N] [--repeats N] [--drop-deliveries N]

One run starts redis-server (AOF, fsync every second), PostgreSQL (fsync on), `relay api`, W
`relay worker`s and the bench receiver, registers tenant `bench_ten` with 10 webhooks and
`bench_one` with 1, and measures in this order:

1. MEMORY: `--deliveries` deliveries (default 1,000,000) posted at a steady `--rate`
   deliveries/s (default 300: a third of what 2 workers manage flat out on the 2-core bench
   machine, so the figures show a system keeping up), the first half as events fanned out to
   10 webhooks, the second half to 1. Every second Redis `used_memory` and the history writer's
   lag (the age of the oldest entry of its stream) are sampled, every `--sample-seconds` a line
   is printed. Redis memory of the empty relay, at most during the run and once everything is
   delivered and written; PostgreSQL bytes per delivery, its attempt and events included.
2. COMMANDS: Redis commands per delivery (INFO commandstats, commands inside scripts included)
   for `--command-events` events at fan-out 1 whose first attempt succeeds, posted at the rate.
3. QUERIES: `--seed-deliveries` deliveries (default 10,000,000) written straight into
   PostgreSQL over the last 7 days for `--tenants` tenants with 10 registered webhooks each,
   with an attempt each and an event per two; then the lists an operator runs most, through
   the API, `--repeats` times each, p50 and p95.
4. DROP: one day 10 days back filled with `--drop-deliveries` deliveries (default 1,000,000),
   then dropped by retention's own two steps (`drop_before`: the day taken out of its tables,
   then the tables dropped), each timed, while a list query runs every 10 ms.

It prints a report and writes bench/results/capacity-<timestamp>.json. Exit status: 0 when the
figures were taken (goals met or not: they are reported), 1 when deliveries went missing, 2 when
the run could not be done, 130 when interrupted.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from bench import phases
from bench.harness import Stack, command_line, scenario, speaker
from bench.load import Api, LoadError, Posted, new_session, percentile, post_burst, post_paced
from bench.phases import TENANT_ONE, TENANT_TEN, ms
from bench.procs import Processes, redis_calls
from bench.report import columns, conclude, headline, joined, machine, num, utc, verdicts
from relay import ids
from relay.history import partitions
from relay.store import keys

PARTS = ("memory", "commands", "queries", "drop")
MB = 1024 * 1024
# The goals the figures are held to.
GOAL_MEMORY_AFTER_MB = 20.0
GOAL_COMMANDS = 30.0
GOAL_QUERY_P95_MS = 50.0
GOAL_DROP_SECONDS = 1.0
# Counters reach Redis every 5 s (relay/presence.py): wait that long and a little for the last.
FLUSH_SECONDS = 6.0
DRAIN_TIMEOUT = 300.0
SEED_DAYS = 7
WEBHOOKS_PER_TENANT = 10
DROP_DAYS_BACK = 10
PROBE_EVERY = 0.01
TYPES = ("post.published", "post.failed", "media.uploaded", "custom.ordered")


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, checked."""

    quick: bool
    only: tuple[str, ...]
    workers: int
    deliveries: int
    rate: float  # deliveries per second, whatever the fan-out
    sample_seconds: float
    command_events: int
    seed_deliveries: int
    tenants: int
    repeats: int
    drop_deliveries: int


def parse_args(argv: list[str] | None) -> Options:
    """Read and check the command line."""
    parser = command_line("bench.capacity", __doc__)
    add = parser.add_argument
    add("--quick", action="store_true", help="small numbers, a couple of minutes in all")
    add("--only", default=",".join(PARTS), help=f"comma-separated parts to run: {','.join(PARTS)}")
    add("--workers", type=int, default=2, help="relay worker processes (default 2)")
    add("--deliveries", type=int, help="deliveries of the memory run (1,000,000; quick 20,000)")
    add("--rate", type=float, default=300.0, help="deliveries/s posted (default 300)")
    add("--sample-seconds", type=float, default=10.0, help="seconds between printed samples")
    add("--command-events", type=int, help="events of the commands run (5,000; quick 2,000)")
    add("--seed-deliveries", type=int, help="deliveries seeded (10,000,000; quick 200,000)")
    add("--tenants", type=int, help="tenants seeded, 10 webhooks each (1,000; quick 100)")
    add("--repeats", type=int, default=50, help="times each list query runs (default 50)")
    add(
        "--drop-deliveries",
        type=int,
        help="deliveries in the dropped day (1,000,000; quick 100,000)",
    )
    ns = parser.parse_args(argv)
    only = tuple(part for part in PARTS if part in ns.only.split(","))
    unknown = set(ns.only.split(",")) - set(PARTS)
    if unknown or not only:
        parser.error(f"--only takes parts among {','.join(PARTS)}")

    def pick(value: int | None, full: int, quick: int) -> int:
        return value if value is not None else (quick if ns.quick else full)

    opts = Options(
        quick=ns.quick,
        only=only,
        workers=ns.workers,
        deliveries=pick(ns.deliveries, 1_000_000, 20_000),
        rate=ns.rate,
        sample_seconds=ns.sample_seconds,
        command_events=pick(ns.command_events, 5_000, 2_000),
        seed_deliveries=pick(ns.seed_deliveries, 10_000_000, 200_000),
        tenants=pick(ns.tenants, 1_000, 100),
        repeats=ns.repeats,
        drop_deliveries=pick(ns.drop_deliveries, 1_000_000, 100_000),
    )
    if not 1 <= opts.workers <= 16 or not 0 < opts.rate <= 10_000:
        parser.error("--workers must be 1..16 and --rate in (0, 10000]")
    if not 20 <= opts.deliveries <= 100_000_000 or not 0.5 <= opts.sample_seconds <= 600:
        parser.error("--deliveries must be 20..100,000,000 and --sample-seconds 0.5..600")
    if min(opts.command_events, opts.tenants, opts.repeats) < 1:
        parser.error("--command-events, --tenants and --repeats must be >= 1")
    if opts.seed_deliveries < opts.tenants * WEBHOOKS_PER_TENANT or opts.drop_deliveries < 2:
        parser.error("--seed-deliveries must cover every webhook; --drop-deliveries >= 2")
    return opts


say = speaker("capacity")


# --- reading the stores ------------------------------------------------------------------------


async def used_memory(stack: Stack) -> int:
    """Redis INFO used_memory, in bytes."""
    return await stack.used_memory()


async def writer_lag(stack: Stack) -> tuple[int, float]:
    """(entries in the history stream, age in seconds of the oldest; 0 when it is empty)."""
    length = int(await stack.redis.xlen(keys.HISTORY))
    oldest = await stack.redis.xrange(keys.HISTORY, count=1)
    if not oldest:
        return length, 0.0
    # A stream entry's id starts with the unix ms Redis added it at.
    added_ms = int(oldest[0][0].split(b"-")[0])
    return length, max(0.0, time.time() - added_ms / 1000)


async def db_size(conn: asyncpg.Connection) -> int:
    """The bytes of relay's database: tables, indexes, TOAST (not the WAL)."""
    return int(await conn.fetchval("SELECT pg_database_size(current_database())"))


async def row_count(conn: asyncpg.Connection, table: str) -> int:
    """Rows in one history table, counted."""
    return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


async def until_written(stack: Stack, timeout: float, calls: Counter[str] | None = None) -> bool:
    """Wait until nothing is due and the history stream is empty; False if not in time.

    `calls` counts the commands this sends, so a commands run can leave them out.
    """
    deadline = time.monotonic() + timeout
    while True:
        queued = await stack.redis.exists(keys.TENANTS)
        length = await stack.redis.xlen(keys.HISTORY)
        if calls is not None:
            calls.update(("exists", "xlen"))
        if queued == 0 and length == 0:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)


# --- 1. memory under steady load --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One printed sample of the memory run."""

    elapsed: float
    posted: int  # deliveries the accepted events made
    delivered: int  # requests the receiver got
    used_memory: int
    stream: int
    lag: float
    db_bytes: int
    deliveries_rows: int


@dataclass(slots=True)
class MemoryFigures:
    """Redis and PostgreSQL while deliveries pile up, and once they are all written."""

    deliveries: int
    rate: float
    seconds: float
    refused: dict[str, int]
    delivered: int
    duplicates: int
    written: bool
    empty_memory: int
    max_memory: int
    after_memory: int
    # Per fan-out: median used_memory over the first and the second half of its posting. Each
    # has its own amount in flight; within one, memory that grows with deliveries made shows.
    halves: dict[str, tuple[float, float]]
    lag_p50: float
    lag_p99: float
    lag_max: float
    max_stream: int
    db_before: int
    db_after: int
    rows: dict[str, int]
    samples: list[Sample] = field(default_factory=list)

    @property
    def pg_bytes_per_delivery(self) -> float:
        """Database growth per delivery (its attempt, event share, stats and indexes in it)."""
        return (self.db_after - self.db_before) / self.delivered if self.delivered else math.nan


class Progress:
    """What the posting loop has done so far, read by the sampler while it runs."""

    def __init__(self) -> None:
        self.done = 0
        self.refused: Counter[str] = Counter()
        self.current: Posted | None = None
        self.fan_out = 0  # of the round being posted; 0 once posting is over

    @property
    def posted(self) -> int:
        """Deliveries made by the events accepted so far."""
        return self.done + (self.current.deliveries if self.current else 0)

    def finish(self, posted: Posted) -> None:
        """Count a finished round and let its per-event records go."""
        self.done += posted.deliveries
        self.refused.update(posted.refused)
        self.current = None


async def post_steady(stack: Stack, opts: Options, progress: Progress) -> None:
    """Half the deliveries at fan-out 10, then half at fan-out 1, at `rate` deliveries/s."""
    half = opts.deliveries // 2
    for tenant, fan_out, share in ((TENANT_TEN, 10, half), (TENANT_ONE, 1, opts.deliveries - half)):
        progress.fan_out = fan_out
        events = max(1, share // fan_out)
        per_second = opts.rate / fan_out
        # Rounds of a sample's length keep a long run's per-event records from piling up.
        round_size = max(1, round(per_second * opts.sample_seconds))
        for first in range(0, events, round_size):
            progress.current = Posted()
            posted = await post_paced(
                stack.api, tenant, per_second, min(round_size, events - first), progress.current
            )
            progress.finish(posted)
    progress.fan_out = 0


async def memory(stack: Stack, conn: asyncpg.Connection, opts: Options) -> MemoryFigures:
    """Post steadily while sampling Redis, the history stream and PostgreSQL."""
    if not await until_written(stack, DRAIN_TIMEOUT):
        raise LoadError("relay did not settle before the memory run")
    await stack.receiver.reset()
    empty = await stack.used_memory()
    db_before = await db_size(conn)
    say(
        f"memory: {opts.deliveries:,} deliveries at {opts.rate:g}/s; empty relay uses"
        f" {empty / MB:.2f} MB of Redis"
    )
    rows: list[tuple[str, ...]] = [
        ("elapsed s", "posted", "delivered", "redis MB", "stream", "lag s", "pg MB", "pg rows")
    ]
    print(*columns(rows), sep="\n", flush=True)
    progress = Progress()
    lags: list[float] = []
    memories: list[tuple[int, int]] = []  # (fan-out being posted, used_memory) every second
    streams: list[int] = []
    samples: list[Sample] = []
    began = time.monotonic()
    posting = asyncio.create_task(post_steady(stack, opts, progress))
    posting_ended: float | None = None

    async def sample_once(printed: bool) -> None:
        elapsed = time.monotonic() - began
        used = await stack.used_memory()
        length, lag = await writer_lag(stack)
        memories.append((progress.fan_out, used))
        streams.append(length)
        lags.append(lag)
        if printed:
            delivered = (await stack.receiver.stats()).requests
            sample = Sample(
                elapsed=round(elapsed, 1),
                posted=progress.posted,
                delivered=delivered,
                used_memory=used,
                stream=length,
                lag=round(lag, 3),
                db_bytes=await db_size(conn),
                deliveries_rows=await row_count(conn, "deliveries"),
            )
            samples.append(sample)
            line = (
                f"{sample.elapsed:.0f}",
                f"{sample.posted:,}",
                f"{sample.delivered:,}",
                f"{used / MB:.1f}",
                f"{length:,}",
                f"{lag:.2f}",
                f"{sample.db_bytes / MB:.0f}",
                f"{sample.deliveries_rows:,}",
            )
            print(columns([rows[0], line])[1], flush=True)

    next_print = opts.sample_seconds
    deadline = None
    written = False
    while True:
        elapsed = time.monotonic() - began
        printed = elapsed >= next_print
        if printed:
            next_print += opts.sample_seconds
        await sample_once(printed)
        stack.check_alive()
        if posting.done():
            posting.result()  # a failed posting loop ends the run with its error
            if posting_ended is None:
                posting_ended = elapsed
                deadline = time.monotonic() + DRAIN_TIMEOUT + progress.posted / 100
            delivered = (await stack.receiver.stats()).requests
            if delivered >= progress.posted and await until_written(stack, 0):
                written = True
                break
            assert deadline is not None
            if time.monotonic() > deadline:
                break
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began - elapsed)))
    seconds = time.monotonic() - began
    await sample_once(True)
    after = await stack.used_memory()
    arrived = await stack.receiver.stats()
    halves = {}
    for fan_out in (10, 1):
        during = [used for posting_fan_out, used in memories if posting_fan_out == fan_out]
        middle = len(during) // 2
        if middle:
            halves[f"fan-out {fan_out}"] = (
                statistics.median(during[:middle]),
                statistics.median(during[middle:]),
            )
    return MemoryFigures(
        deliveries=progress.posted,
        rate=opts.rate,
        seconds=seconds,
        refused=dict(progress.refused),
        delivered=arrived.requests,
        duplicates=arrived.duplicates,
        written=written,
        empty_memory=empty,
        max_memory=max(used for _, used in memories),
        after_memory=after,
        halves=halves,
        lag_p50=percentile(lags, 0.50),
        lag_p99=percentile(lags, 0.99),
        lag_max=max(lags, default=math.nan),
        max_stream=max(streams, default=0),
        db_before=db_before,
        db_after=await db_size(conn),
        rows={t: await row_count(conn, t) for t in ("deliveries", "attempts", "events")},
        samples=samples,
    )


# --- 2. Redis commands per delivery -----------------------------------------------------------


@dataclass(slots=True)
class CommandFigures:
    """INFO commandstats over a run of fan-out 1 deliveries that succeed at once."""

    events: int
    rate: float
    delivered: int
    seconds: float
    total: int
    by_command: dict[str, int]
    idle_per_second: float  # with nothing to do: workers polling, presence, the writer waiting

    @property
    def per_delivery(self) -> float:
        """Commands per delivery, everything Redis ran in the run included."""
        return self.total / self.delivered if self.delivered else math.nan

    @property
    def idle_per_delivery(self) -> float:
        """The share of `per_delivery` an idle relay would have run over the same time."""
        return self.idle_per_second * self.seconds / self.delivered if self.delivered else 0.0


async def command_counts(stack: Stack) -> Counter[str]:
    """Calls per command since the last CONFIG RESETSTAT."""
    stats = await stack.redis.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()})


async def commands(stack: Stack, opts: Options) -> CommandFigures:
    """Warm up, measure an idle relay, then count what `command_events` deliveries cost."""
    warm = await post_burst(stack.api, TENANT_ONE, 200, 16)
    await stack.receiver.wait_for(warm.deliveries, timeout=60)
    await until_written(stack, DRAIN_TIMEOUT)
    await asyncio.sleep(FLUSH_SECONDS)

    await stack.redis.config_resetstat()
    idle_began = time.monotonic()
    await asyncio.sleep(FLUSH_SECONDS)
    idle = await redis_calls(stack.redis) - 1  # the CONFIG RESETSTAT itself
    idle_per_second = idle / (time.monotonic() - idle_began)

    await stack.receiver.reset()
    own: Counter[str] = Counter()
    await stack.redis.config_resetstat()
    own["config|resetstat"] += 1
    began = time.monotonic()
    posted = await post_paced(stack.api, TENANT_ONE, opts.rate, opts.command_events)
    arrived = await stack.receiver.wait_for(posted.deliveries, timeout=60 + posted.deliveries / 50)
    await until_written(stack, DRAIN_TIMEOUT, own)
    await asyncio.sleep(FLUSH_SECONDS)
    seconds = time.monotonic() - began
    counted = await command_counts(stack)
    counted.subtract(own)
    by_command = {name: n for name, n in counted.most_common() if n > 0}
    return CommandFigures(
        events=len(posted.accepted),
        rate=opts.rate,
        delivered=arrived.requests,
        seconds=seconds,
        total=sum(by_command.values()),
        by_command=by_command,
        idle_per_second=idle_per_second,
    )


# --- seeding PostgreSQL ------------------------------------------------------------------------

# Crockford base32 as relay's ids spell it, read back through the public helper.
ALPHABET = "".join(ids.time_floor("x", n)[-1] for n in range(32))
FAN = 2  # deliveries per seeded event
FAILED_PER_1024 = 51  # about 5 % of seeded deliveries failed
SEED_CHUNK = 100_000  # events per INSERT round


def _time_sql(ms: str) -> str:
    """SQL for the 10 base32 characters of an id's time part, from a bigint of unix ms."""
    return " || ".join(
        f"substr('{ALPHABET}', (({ms} >> {5 * shift}) & 31)::int + 1, 1)"
        for shift in range(9, -1, -1)
    )


def _id_sql(prefix: str, ms: str, key: str, salt: int) -> str:
    """SQL for a relay id: the time part, then 16 hex digits of a hash (hex is base32 too)."""
    return (
        f"'{prefix}_' || {_time_sql(ms)} || lpad(to_hex(hashint8extended({key}, {salt})), 16, '0')"
    )


def _pick(key: str, salt: int, modulo: str) -> str:
    """SQL for a stable pseudo-random integer in [0, modulo) from a row's key."""
    return f"((hashint8extended({key}, {salt}) & 2147483647) % {modulo})"


# One round of events keyed [$1, $2) of a day starting at $3 (unix ms) holding $4 events keyed
# from $7, for the tenants $5 and the webhooks $6 (tenant i's are $6[i*10+1 .. i*10+10]). Every
# choice is a hash of the row's key, so the three statements of a round agree on each row.
_EVENTS_CTE = f"""
WITH ev AS (
    SELECT e, ms, t, ($5::text[])[t + 1] AS tenant,
           (ARRAY{list(TYPES)!r})[{_pick("e", 12, str(len(TYPES)))} + 1] AS type,
           timestamptz 'epoch' + ms * interval '1 millisecond' AS at
    FROM (
        SELECT e, $3::bigint + (e - $7::bigint) * 86399000 / $4::bigint AS ms,
               {_pick("e", 11, "array_length($5::text[], 1)")} AS t
        FROM generate_series($1::bigint, $2::bigint - 1) AS e
    ) s
), dl AS (
    SELECT ev.*, e * {FAN} + k AS n, {_id_sql("dlv", "ms", f"e * {FAN} + k", 21)} AS id,
           ($6::text[])[t * {WEBHOOKS_PER_TENANT} + {_pick(f"e * {FAN} + k", 13, "10")} + 1]
               AS webhook,
           {_pick(f"e * {FAN} + k", 14, "1024")} < {FAILED_PER_1024} AS failed
    FROM ev CROSS JOIN generate_series(0, {FAN - 1}) AS k
)
"""
_EVENT_ID = _id_sql("evt", "ms", "e", 20)
SEED_EVENTS = (
    _EVENTS_CTE
    + f"""
INSERT INTO events (tenant_id, id, created_at, type, upstream_id, payload, delivery_ids)
SELECT tenant, {_EVENT_ID}, at, type, 'up-' || e,
       convert_to('{{"type":"' || type || '","data":{{"post_id":"p_' || e
                  || '","platform":"bench","url":"https://example.com/p"}}}}', 'UTF8'),
       ARRAY[{", ".join(_id_sql("dlv", "ms", f"e * {FAN} + {k}", 21) for k in range(FAN))}]
FROM ev
"""
)
SEED_DELIVERIES = (
    _EVENTS_CTE
    + f"""
INSERT INTO deliveries (tenant_id, id, created_at, event_id, webhook_id, event_type, status,
                        attempt_count, cycle_start, last_status_code, last_error, updated_at,
                        delivered_at)
SELECT tenant, id, at, {_EVENT_ID}, webhook, type,
       CASE WHEN failed THEN 'failed' ELSE 'delivered' END, 1, 0,
       CASE WHEN failed THEN 500 ELSE 200 END,
       CASE WHEN failed THEN 'HTTP 500' END,
       at + interval '40 milliseconds',
       CASE WHEN failed THEN NULL ELSE at + interval '40 milliseconds' END
FROM dl
"""
)
SEED_ATTEMPTS = (
    _EVENTS_CTE
    + """
INSERT INTO attempts (tenant_id, delivery_id, number, created_at, webhook_id, started_at,
                      duration_ms, status_code, error, response_body, request_headers, url)
SELECT tenant, id, 1, at, webhook, at + interval '5 milliseconds', 35,
       CASE WHEN failed THEN 500 ELSE 200 END,
       CASE WHEN failed THEN 'HTTP 500' END,
       CASE WHEN failed THEN 'internal error' ELSE 'ok' END,
       jsonb_build_object('content-type', 'application/json', 'user-agent', 'relay',
                          'webhook-id', id, 'webhook-timestamp', (ms / 1000)::text),
       'https://hooks.example.com/' || tenant
FROM dl
"""
)


@dataclass(frozen=True, slots=True)
class SeedFigures:
    """What seeding wrote and how long it took."""

    deliveries: int
    events: int
    days: list[str]
    seconds: float
    db_bytes_added: int

    @property
    def per_second(self) -> float:
        """Deliveries written per second (with their attempts and events)."""
        return self.deliveries / self.seconds if self.seconds else math.nan


def day_start_ms(day: date) -> int:
    """Unix ms of a UTC day's midnight."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


async def seed(
    url: str,
    days: list[date],
    deliveries: int,
    tenants: list[str],
    webhooks: list[str],
    first_event: int,
) -> SeedFigures:
    """Write `deliveries` deliveries spread evenly over `days`, in rounds over two connections.

    Rows go in through the partitioned tables, their indexes kept as the writer keeps them; the
    session skips waiting for its commits to be flushed, which changes nothing in what is read.
    """
    per_day = max(1, deliveries // FAN // len(days))
    rounds = [
        (day, lo, min(lo + SEED_CHUNK, per_day))
        for day in days
        for lo in range(0, per_day, SEED_CHUNK)
    ]
    queue: asyncio.Queue[tuple[date, int, int]] = asyncio.Queue()
    for item in rounds:
        queue.put_nowait(item)
    conn = await asyncpg.connect(url)
    before = await db_size(conn)
    await partitions.ensure(conn, days)
    began = time.monotonic()
    shown = [began]
    total = per_day * FAN * len(days)
    written = 0

    async def writer() -> None:
        nonlocal written
        own = await asyncpg.connect(url, command_timeout=None)
        try:
            await own.execute("SET synchronous_commit = off")
            while not queue.empty():
                day, lo, hi = queue.get_nowait()
                # A key per event unique over the whole run, so ids never repeat across days.
                base = first_event + days.index(day) * per_day
                args = (base + lo, base + hi, day_start_ms(day), per_day, tenants, webhooks, base)
                async with own.transaction():
                    for statement in (SEED_EVENTS, SEED_DELIVERIES, SEED_ATTEMPTS):
                        await own.execute(statement, *args)
                written += (hi - lo) * FAN
                if time.monotonic() - shown[0] >= 10 or queue.empty():
                    shown[0] = time.monotonic()
                    rate = written / (shown[0] - began)
                    say(f"seeded {written:,} of {total:,} deliveries ({rate:,.0f}/s)")
        finally:
            await own.close()

    try:
        await asyncio.gather(writer(), writer())
        await conn.execute("ANALYZE events; ANALYZE deliveries; ANALYZE attempts")
        seconds = time.monotonic() - began
        after = await db_size(conn)
    finally:
        await conn.close()
    return SeedFigures(
        deliveries=per_day * FAN * len(days),
        events=per_day * len(days),
        days=[d.isoformat() for d in days],
        seconds=seconds,
        db_bytes_added=after - before,
    )


# --- 3. list queries ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryFigures:
    """One kind of list, run `repeats` times with different tenants or webhooks."""

    name: str
    request: str
    runs: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    mean_items: float  # items per answer: the query found rows


@dataclass(slots=True)
class QueriesFigures:
    """Seeding, then the lists."""

    tenants: int
    webhooks: int
    register_seconds: float
    seeded: SeedFigures
    rows: dict[str, int]
    queries: list[QueryFigures]


async def register_tenants(admin: Api, count: int, hook_url: str, secret: str) -> list[list[str]]:
    """`count` tenants with 10 webhooks each, through the API; their webhook ids per tenant."""
    gate = asyncio.Semaphore(16)

    async def one(tenant: str) -> str:
        body = {"url": hook_url, "tenant_id": tenant, "events": ["*"], "secret": secret}
        async with gate:
            return str((await admin.create("/v1/webhooks", body))["id"])

    flat = await asyncio.gather(
        *(one(tenant_name(t)) for t in range(count) for _ in range(WEBHOOKS_PER_TENANT))
    )
    return [flat[i * WEBHOOKS_PER_TENANT : (i + 1) * WEBHOOKS_PER_TENANT] for i in range(count)]


def tenant_name(index: int) -> str:
    """Seeded tenant number `index`."""
    return f"cap_{index:04d}"


async def timed(api: Api, path: str, params: dict[str, str]) -> tuple[float, int]:
    """One GET through the API: (seconds, items in its answer)."""
    began = time.perf_counter()
    answer = await api.get(path, params)
    seconds = time.perf_counter() - began
    data = answer["data"]
    return seconds, len(data) if isinstance(data, list) else 1


def rfc3339(moment: datetime) -> str:
    """An API timestamp."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def _sample(
    conn: asyncpg.Connection, columns: str, table: str, share: float, opts: Options
) -> list[asyncpg.Record]:
    """Up to `repeats` seeded rows picked at random, from a sample of the table's pages; on a
    table of a few pages the sample can miss every seeded one, so then from the whole table."""
    for sample in (f"TABLESAMPLE SYSTEM ({share})", ""):
        rows = await conn.fetch(
            f"SELECT {columns} FROM {table} {sample} "
            "WHERE tenant_id LIKE 'cap\\_%' ORDER BY random() LIMIT $1",
            opts.repeats,
        )
        if rows:
            return rows
    return []


async def queries(
    stack: Stack, admin: Api, opts: Options, hooks: list[list[str]], seeded: SeedFigures
) -> QueriesFigures:
    """Time the lists an operator runs most, each `repeats` times with other tenants."""
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        rows = {t: await row_count(conn, t) for t in ("deliveries", "attempts", "events")}
        # Samples spread over every partition, so answers come from all days, not a warm one;
        # enough pages that the seeded tenants' rows fill the sample even on a small table.
        share = min(100.0, 100.0 * opts.repeats * 50 / max(1, rows["deliveries"]))
        sampled_events = await _sample(conn, "tenant_id, upstream_id", "events", share, opts)
        sampled_deliveries = await _sample(conn, "id", "deliveries", share, opts)
        if not sampled_events or not sampled_deliveries:
            raise LoadError("no seeded rows to look up")
    finally:
        await conn.close()
    rng = random.Random(11)
    picked = [rng.randrange(len(hooks)) for _ in range(opts.repeats)]
    tenant_tokens = {}
    for index in dict.fromkeys(picked):
        spec = {"role": "tenant", "tenant_id": tenant_name(index), "name": "capacity"}
        tenant_tokens[index] = (await admin.create("/v1/tokens", spec))["token"]
    first_day = datetime.fromisoformat(seeded.days[0]).replace(tzinfo=UTC)
    span = timedelta(days=len(seeded.days)) - timedelta(hours=6)

    def window(n: int) -> dict[str, str]:
        since = first_day + span * rng.random()
        return {"since": rfc3339(since), "until": rfc3339(since + timedelta(hours=6))}

    cases: list[tuple[str, str, Any]] = [
        (
            "a webhook's failed deliveries",
            "GET /v1/webhooks/{id}/deliveries?status=failed",
            lambda n: (
                admin,
                f"/v1/webhooks/{rng.choice(hooks[picked[n]])}/deliveries",
                {"status": "failed"},
            ),
        ),
        (
            "a tenant's deliveries in 6 hours",
            "GET /v1/deliveries?tenant_id=&since=&until= (tenant token)",
            lambda n: (
                admin.with_token(tenant_tokens[picked[n]]),
                "/v1/deliveries",
                {"tenant_id": tenant_name(picked[n]), **window(n)},
            ),
        ),
        (
            "a tenant's events of a type",
            "GET /v1/events?tenant_id=&type=",
            lambda n: (
                admin,
                "/v1/events",
                {"tenant_id": tenant_name(picked[n]), "type": rng.choice(TYPES)},
            ),
        ),
        (
            "an event by upstream id",
            "GET /v1/events?tenant_id=&id=",
            lambda n: (
                admin,
                "/v1/events",
                {
                    "tenant_id": sampled_events[n % len(sampled_events)]["tenant_id"],
                    "id": sampled_events[n % len(sampled_events)]["upstream_id"],
                },
            ),
        ),
        (
            "a delivery with its attempts",
            "GET /v1/deliveries/{id}",
            lambda n: (
                admin,
                f"/v1/deliveries/{sampled_deliveries[n % len(sampled_deliveries)]['id']}",
                {},
            ),
        ),
    ]
    results = []
    for name, request, make in cases:
        for n in range(3):  # opens the API's pools and plans; not counted
            await timed(*make(n))
        seconds, items = [], []
        for n in range(opts.repeats):
            took, found = await timed(*make(n))
            seconds.append(took)
            items.append(found)
        results.append(
            QueryFigures(
                name=name,
                request=request,
                runs=len(seconds),
                p50_ms=ms(percentile(seconds, 0.50)),
                p95_ms=ms(percentile(seconds, 0.95)),
                max_ms=ms(max(seconds)),
                mean_items=round(statistics.mean(items), 1),
            )
        )
        say(f"{name}: p50 {results[-1].p50_ms:.1f} ms, p95 {results[-1].p95_ms:.1f} ms")
    return QueriesFigures(
        tenants=len(hooks),
        webhooks=sum(len(h) for h in hooks),
        register_seconds=0.0,
        seeded=seeded,
        rows=rows,
        queries=results,
    )


# --- 4. dropping a day ------------------------------------------------------------------------


@dataclass(slots=True)
class DropFigures:
    """Retention dropping one full day while lists are read."""

    day: str
    seeded: SeedFigures
    dropped: list[str]
    seconds: float  # the whole of drop_before: the day taken out of its tables, then dropped
    detach_seconds: float  # until the day had left its tables: no query sees it from then on
    probes: int
    probe_p50_ms: float  # before the drop
    worst_wait_ms: float  # the longest probe that overlapped the drop
    probes_during: int


async def drop(
    stack: Stack, admin: Api, opts: Options, tenants: list[str], webhooks: list[str]
) -> DropFigures:
    """Fill a day 10 days back, then time `drop_before` for it under a list every 10 ms."""
    day = datetime.now(UTC).date() - timedelta(days=DROP_DAYS_BACK)
    seeded = await seed(
        stack.postgres.url, [day], opts.drop_deliveries, tenants, webhooks, first_event=10**12
    )
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        probes: list[tuple[float, float]] = []
        stop = asyncio.Event()

        async def probe() -> None:
            while not stop.is_set():
                began = time.perf_counter()
                await admin.get("/v1/deliveries", {"tenant_id": tenants[0], "limit": "50"})
                probes.append((began, time.perf_counter()))
                await asyncio.sleep(PROBE_EVERY)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(2.0)
        # drop_before's two steps, timed apart: the day leaves its tables, then its tables go.
        began = time.perf_counter()
        await partitions.detach_before(conn, day + timedelta(days=1))
        detached = time.perf_counter()
        dropped = await partitions.drop_detached(conn)
        ended = time.perf_counter()
        await asyncio.sleep(2.0)
        stop.set()
        await prober
    finally:
        await conn.close()
    before = [b - a for a, b in probes if b < began]
    during = [b - a for a, b in probes if a < ended and b > began]
    return DropFigures(
        day=day.isoformat(),
        seeded=seeded,
        dropped=dropped,
        seconds=ended - began,
        detach_seconds=detached - began,
        probes=len(probes),
        probe_p50_ms=ms(percentile(before, 0.50)),
        worst_wait_ms=ms(max(during, default=math.nan)),
        probes_during=len(during),
    )


# --- the run -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    """Everything one run measured."""

    started_at: str
    seconds: float
    options: Options
    machine: dict[str, Any]
    redis_version: str
    memory: MemoryFigures | None = None
    commands: CommandFigures | None = None
    queries: QueriesFigures | None = None
    drop: DropFigures | None = None

    def targets(self) -> list[tuple[str, str, bool]]:
        """(goal, what was measured, met) for each part that ran."""
        found = []
        if (m := self.memory) is not None:
            growth = (m.after_memory - m.empty_memory) / MB
            found.append(
                (
                    f"Redis after all is written within {GOAL_MEMORY_AFTER_MB:g} MB of empty",
                    f"{growth:+.2f} MB",
                    growth <= GOAL_MEMORY_AFTER_MB,
                )
            )
        if (c := self.commands) is not None:
            found.append(
                (
                    f"Redis commands per delivery <= {GOAL_COMMANDS:g}",
                    f"{c.per_delivery:.1f}",
                    c.per_delivery <= GOAL_COMMANDS,
                )
            )
        if (q := self.queries) is not None:
            worst = max(q.queries, key=lambda x: x.p95_ms)
            found.append(
                (
                    f"every list p95 < {GOAL_QUERY_P95_MS:g} ms on {q.rows['deliveries']:,}"
                    " deliveries",
                    f"{worst.p95_ms:.1f} ms ({worst.name})",
                    worst.p95_ms < GOAL_QUERY_P95_MS,
                )
            )
        if (d := self.drop) is not None:
            # What retention costs the service: how long until the day is out of every query,
            # and the longest a list waited meanwhile or while its tables were dropped after
            # (their files' unlinking, which no query waits for, is shown beside).
            worst = max(d.detach_seconds, d.worst_wait_ms / 1000)
            found.append(
                (
                    f"dropping a day of {d.seeded.deliveries:,} deliveries takes it out of"
                    f" history < {GOAL_DROP_SECONDS:g} s, and no list waits longer",
                    f"{d.detach_seconds:.3f} s, lists {d.worst_wait_ms:.0f} ms"
                    f" ({d.seconds:.3f} s with its files)",
                    worst < GOAL_DROP_SECONDS,
                )
            )
        return found


def seeded_tenants(hooks: list[list[str]]) -> tuple[list[str], list[str]]:
    """The seeding arrays: tenant names, and every tenant's webhooks in tenant order."""
    return [tenant_name(i) for i in range(len(hooks))], [h for row in hooks for h in row]


async def measure(stack: Stack, opts: Options, results: Results) -> None:
    """Each part asked for, in order."""
    admin = stack.admin
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        if "memory" in opts.only:
            results.memory = await memory(stack, conn, opts)
            m = results.memory
            say(
                f"memory: Redis empty {m.empty_memory / MB:.2f} MB, max {m.max_memory / MB:.2f} MB,"
                f" after {m.after_memory / MB:.2f} MB"
            )
        if "commands" in opts.only:
            results.commands = await commands(stack, opts)
            say(f"commands: {results.commands.per_delivery:.1f} per delivery")
    finally:
        await conn.close()
    if "queries" not in opts.only and "drop" not in opts.only:
        return
    tenants_wanted = opts.tenants if "queries" in opts.only else 1
    began = time.monotonic()
    hooks = await register_tenants(
        admin, tenants_wanted, stack.receiver.hook_url("seeded"), stack.secret
    )
    registered = time.monotonic() - began
    say(
        f"registered {tenants_wanted:,} tenants' {len(hooks) * WEBHOOKS_PER_TENANT:,} webhooks"
        f" in {registered:.1f} s"
    )
    tenants, webhooks = seeded_tenants(hooks)
    if "queries" in opts.only:
        today = datetime.now(UTC).date()
        days = [today - timedelta(days=n) for n in range(SEED_DAYS - 1, -1, -1)]
        seeded = await seed(
            stack.postgres.url, days, opts.seed_deliveries, tenants, webhooks, first_event=0
        )
        say(
            f"seeded {seeded.deliveries:,} deliveries in {seeded.seconds:.0f} s"
            f" ({seeded.per_second:,.0f}/s, {seeded.db_bytes_added / MB:,.0f} MB)"
        )
        results.queries = await queries(stack, admin, opts, hooks, seeded)
        results.queries.register_seconds = registered
    if "drop" in opts.only:
        results.drop = await drop(stack, admin, opts, tenants, webhooks)
        say(f"drop: {results.drop.seconds:.3f} s, worst wait {results.drop.worst_wait_ms:.1f} ms")


def bound_seconds(opts: Options) -> float:
    """How long the whole run may take before it is called off."""
    bound = 600.0
    if "memory" in opts.only:
        bound += opts.deliveries / opts.rate * 1.5 + DRAIN_TIMEOUT
    if "commands" in opts.only:
        bound += opts.command_events / opts.rate * 2 + DRAIN_TIMEOUT
    if "queries" in opts.only:
        bound += opts.tenants * 0.2 + opts.seed_deliveries / 2_000
    if "drop" in opts.only:
        bound += opts.drop_deliveries / 2_000
    return bound


async def run(procs: Processes, opts: Options) -> Results:
    """Start everything, measure, and hand back the figures (the children stop in main)."""
    started = time.time()
    say(f"starting redis-server, postgres, relay api, the receiver and workers in {procs.workdir}")
    bench_opts = phases.Options(
        quick=opts.quick,
        workers=opts.workers,
        events=opts.deliveries,
        concurrency=32,
        rate=opts.rate,
        latency_seconds=0.0,
        endpoint_concurrency=64,
    )
    async with new_session(32) as session:
        stack = await phases.start(procs, bench_opts, session)
        try:
            await stack.start_workers(opts.workers)
            server = await stack.redis.info("server")
            results = Results(
                started_at=utc(started),
                seconds=0.0,
                options=opts,
                machine=machine(),
                redis_version=str(server["redis_version"]),
            )
            async with asyncio.timeout(bound_seconds(opts)):
                await measure(stack, opts, results)
        finally:
            await stack.redis.aclose()
    results.seconds = time.time() - started
    return results


# --- the report --------------------------------------------------------------------------------


def render_memory(m: MemoryFigures) -> list[str]:
    """The memory run's summary lines."""
    refused = sum(m.refused.values())
    halves = "; ".join(
        f"{name} {first / MB:.2f} -> {second / MB:.2f} MB"
        for name, (first, second) in m.halves.items()
    )
    return [
        f"MEMORY under steady load: {m.deliveries:,} deliveries at {m.rate:g}/s (half fan-out 10,"
        f" half fan-out 1), {m.seconds:.0f} s",
        f"  delivered {m.delivered:,} ({m.duplicates} duplicates, {refused} events refused);"
        f" all written to PostgreSQL and the stream empty: {'yes' if m.written else 'NO'}",
        f"  Redis used_memory: empty {m.empty_memory / MB:.2f} MB, max {m.max_memory / MB:.2f} MB,"
        f" after {m.after_memory / MB:.2f} MB"
        f" (after - empty {(m.after_memory - m.empty_memory) / MB:+.2f} MB)",
        f"  Redis median, first half -> second half of each fan-out's posting: {halves}",
        f"  history writer lag (1 s samples): p50 {m.lag_p50:.2f} s, p99 {m.lag_p99:.2f} s,"
        f" max {m.lag_max:.2f} s; stream at most {m.max_stream:,} entries",
        f"  PostgreSQL: {(m.db_after - m.db_before) / MB:,.1f} MB more for {m.delivered:,}"
        f" deliveries = {num(m.pg_bytes_per_delivery)} bytes per delivery"
        f" (rows: {', '.join(f'{k} {v:,}' for k, v in m.rows.items())})",
    ]


def render_commands(c: CommandFigures) -> list[str]:
    """Commands per delivery, with the breakdown."""
    rows: list[tuple[str, ...]] = [("command", "calls", "per delivery")]
    for name, calls in c.by_command.items():
        rows.append((name, f"{calls:,}", f"{calls / c.delivered:.2f}" if c.delivered else "-"))
    return [
        f"REDIS COMMANDS per delivery: {c.events:,} events at fan-out 1 posted at {c.rate:g}/s,"
        f" first attempt succeeds, {c.delivered:,} delivered; {c.seconds:.1f} s until delivered,"
        " written and counters flushed",
        f"  {c.total:,} commands = {c.per_delivery:.1f} per delivery (inside scripts included);"
        f" an idle relay runs {c.idle_per_second:.1f}/s, {c.idle_per_delivery:.1f} of them",
        *columns(rows),
    ]


def render_queries(q: QueriesFigures) -> list[str]:
    """The lists' latencies."""
    s = q.seeded
    rows: list[tuple[str, ...]] = [
        ("query", "request", "runs", "p50 ms", "p95 ms", "max ms", "items")
    ]
    for x in q.queries:
        rows.append(
            (
                x.name,
                x.request,
                str(x.runs),
                f"{x.p50_ms:.1f}",
                f"{x.p95_ms:.1f}",
                f"{x.max_ms:.1f}",
                f"{x.mean_items:g}",
            )
        )
    return [
        f"LIST QUERIES through the API on {q.rows['deliveries']:,} deliveries,"
        f" {q.rows['attempts']:,} attempts, {q.rows['events']:,} events ({q.tenants:,} tenants,"
        f" {q.webhooks:,} webhooks, {len(s.days)} days)",
        f"  seeded {s.deliveries:,} deliveries in {s.seconds:.0f} s ({s.per_second:,.0f}/s,"
        f" {s.db_bytes_added / MB:,.0f} MB with indexes); webhooks registered in"
        f" {q.register_seconds:.1f} s",
        *columns(rows),
    ]


def render_drop(d: DropFigures) -> list[str]:
    """The drop."""
    return [
        f"DROP of day {d.day}: {d.seeded.deliveries:,} deliveries, their attempts and"
        f" {d.seeded.events:,} events ({d.seeded.db_bytes_added / MB:,.0f} MB)",
        f"  drop_before took {d.seconds * 1000:.1f} ms for {len(d.dropped)} partitions"
        f" ({', '.join(d.dropped)}): the day had left its tables after"
        f" {d.detach_seconds * 1000:.1f} ms, dropping them (unlinking their files) took the rest",
        f"  a tenant's list every 10 ms: p50 {d.probe_p50_ms:.1f} ms before; the longest of the"
        f" {d.probes_during} that overlapped the drop took {d.worst_wait_ms:.1f} ms",
    ]


def render(results: Results) -> str:
    """The whole report."""
    head = (
        headline("capacity", results.started_at, results.machine)
        + f", Redis {results.redis_version}; {results.options.workers} workers;"
        f" {results.seconds:.0f} s in all"
    )
    sections = [[head]]
    if results.memory:
        sections.append(render_memory(results.memory))
    if results.commands:
        sections.append(render_commands(results.commands))
    if results.queries:
        sections.append(render_queries(results.queries))
    if results.drop:
        sections.append(render_drop(results.drop))
    sections.append(verdicts("GOALS", "goal", results.targets()))
    return joined(sections)


def complete(results: Results) -> bool:
    """Whether every delivery of the measured runs arrived and was written."""
    m, c = results.memory, results.commands
    return (m is None or (m.written and m.delivered >= m.deliveries)) and (
        c is None or c.delivered >= c.events
    )


def main(argv: list[str] | None = None) -> int:
    """One capacity run; the exit status."""
    opts = parse_args(argv)

    def finish(results: Results) -> int:
        document = asdict(results)
        document["targets"] = [
            {"goal": what, "measured": measured, "met": met}
            for what, measured, met in results.targets()
        ]
        return conclude(
            "capacity",
            document,
            lambda: render(results),
            complete(results),
            "some deliveries did not arrive or were not written",
        )

    return scenario("capacity", lambda procs: run(procs, opts), finish)


if __name__ == "__main__":
    sys.exit(main())
