"""The phases of a benchmark run, each returning its figures.

The order matters and is set in bench/__main__.py: the LIMIT runs while relay is idle, ingest
runs before any worker exists (so it measures the API and Redis alone), then the workers start.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import redis.asyncio as aioredis

from bench import limit
from bench.load import Api, ReceiverClient, latencies, percentile, post_burst, post_paced
from bench.procs import (
    Child,
    Postgres,
    Processes,
    RelaySettings,
    SetupError,
    api_argv,
    bench_env,
    free_port,
    harness_cpu_seconds,
    machine_cpu_seconds,
    receiver_argv,
    redis_calls,
    spawn_worker,
    start_postgres,
    start_redis,
    stop,
    until_connected,
    wait_exit,
    wait_until,
)
from relay.signing import generate_secret
from relay.store import keys

TENANT_NONE = "bench_none"  # no webhooks: an event fans out to nothing
TENANT_ONE = "bench_one"  # one webhook
TENANT_TEN = "bench_ten"  # ten webhooks: fan-out 10
FAN_OUT = {TENANT_ONE: 1, TENANT_TEN: 10}
SETTLE_TIMEOUT = 60.0
PLAIN_HTTPX_MAX = 2000


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, checked."""

    quick: bool
    workers: int
    events: int
    concurrency: int
    rate: float
    latency_seconds: float
    # RELAY_ENDPOINT_CONCURRENCY: high enough that relay's default of 4 does not cap the one
    # receiver every webhook points at.
    endpoint_concurrency: int


@dataclass(slots=True)
class Bench:
    """The running system and the clients that drive and watch it."""

    opts: Options
    procs: Processes
    settings: RelaySettings
    redis_child: Child
    postgres: Postgres
    api_child: Child
    receiver_child: Child
    redis: aioredis.Redis
    redis_port: int
    api: Api  # with an ingest token, as an upstream service would post
    receiver: ReceiverClient
    webhook_secret: str
    workers: list[Child] = field(default_factory=list)

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process, and by the workers together."""
        used = {"api": self.api_child.cpu_seconds()}
        for worker in self.workers:
            used[worker.name] = worker.cpu_seconds()
        used["workers"] = sum(used[w.name] for w in self.workers)
        used["redis"] = self.redis_child.cpu_seconds()
        used["postgres"] = self.postgres.cpu_seconds()
        used["receiver"] = self.receiver_child.cpu_seconds()
        used["harness"] = harness_cpu_seconds()
        # Not a process: the whole machine (all cores, everyone), and time stolen from it.
        used["machine"], used["stolen"] = machine_cpu_seconds()
        return used

    def check_alive(self) -> None:
        """Raise SetupError if a relay process, a store or the receiver has exited."""
        for child in (self.redis_child, self.api_child, self.receiver_child, *self.workers):
            child.check_alive()
        self.postgres.check_alive()

    async def redis_calls(self) -> int:
        """Commands Redis has run so far, those inside Lua scripts included."""
        return await redis_calls(self.redis)

    async def used_memory(self) -> int:
        """Redis INFO used_memory, in bytes."""
        info = await self.redis.info("memory")
        return int(info["used_memory"])

    async def settle(self) -> bool:
        """Wait until no delivery is pending or in flight; False if some still are at the end."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        # A tenant with anything queued stays in the tenants' set until its last delivery ends.
        while await self.redis.exists(keys.TENANTS):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True


# --- start-up ----------------------------------------------------------------------------------


async def start(procs: Processes, opts: Options, session: aiohttp.ClientSession) -> Bench:
    """Redis, PostgreSQL, the receiver and the API up; an ingest token and the webhooks
    registered.

    Workers are started later (`start_workers`), once ingest has been measured without them.
    """
    redis_port = free_port()
    redis_child = await start_redis(procs, redis_port)
    redis = aioredis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5)
    postgres = await start_postgres(procs)

    webhook_secret = generate_secret()
    receiver_port = free_port()
    receiver_child = procs.spawn(
        "receiver", receiver_argv(receiver_port), bench_env(webhook_secret)
    )

    settings = RelaySettings(
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        database_url=postgres.url,
        admin_token=secrets.token_urlsafe(32),
        endpoint_concurrency=opts.endpoint_concurrency,
    )
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    api_child = procs.spawn("api", api_argv(api_port), settings.env())

    admin = Api(session, api_url, settings.admin_token)
    receiver = ReceiverClient(session, receiver_port)
    await wait_until(receiver.ready, receiver_child, "receiver")
    await wait_until(admin.ready, api_child, "relay api")

    token = await admin.create("/v1/tokens", {"role": "ingest", "name": "bench"})
    for tenant, fan_out in FAN_OUT.items():
        for n in range(fan_out):
            webhook = {
                "url": receiver.hook_url(f"{tenant}-{n}"),
                "tenant_id": tenant,
                "events": ["*"],
                "description": "bench receiver",
                # One imported secret for every webhook, so the receiver can check them all.
                "secret": webhook_secret,
            }
            await admin.create("/v1/webhooks", webhook)
    return Bench(
        opts=opts,
        procs=procs,
        settings=settings,
        redis_child=redis_child,
        postgres=postgres,
        api_child=api_child,
        receiver_child=receiver_child,
        redis=redis,
        redis_port=redis_port,
        api=admin.with_token(token["token"]),
        receiver=receiver,
        webhook_secret=webhook_secret,
    )


async def start_workers(bench: Bench, count: int) -> None:
    """Start `count` `relay worker` processes and wait until each has connected to Redis."""
    first = len(bench.workers) + 1
    started = [
        spawn_worker(bench.procs, f"worker{n}", bench.settings.env())
        for n in range(first, first + count)
    ]
    for worker in started:
        await until_connected(worker, bench.redis_port)
    bench.workers += started


def stop_workers_down_to(bench: Bench, count: int) -> None:
    """Stop workers (SIGTERM, as a deploy would) until `count` remain."""
    while len(bench.workers) > count:
        stop([bench.workers.pop()])


# --- figures -----------------------------------------------------------------------------------


def per_thousand(
    cpu_before: dict[str, float], cpu_after: dict[str, float], n: int
) -> dict[str, float]:
    """CPU seconds per 1,000 of `n` things, per role."""
    return {
        role: (cpu_after[role] - cpu_before[role]) * 1000 / n if n else 0.0 for role in cpu_after
    }


def busy_share(
    cpu_before: dict[str, float], cpu_after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Share of one core each role used over `seconds` (1.0 = one core flat out)."""
    return {
        role: (cpu_after[role] - cpu_before[role]) / seconds if seconds > 0 else 0.0
        for role in cpu_after
    }


def ms(seconds: float) -> float:
    """Seconds as milliseconds, rounded for the results file."""
    return round(seconds * 1000, 2)


@dataclass(frozen=True, slots=True)
class LimitFigures:
    """One bare-loop run against the receiver."""

    client: str
    loop: str
    count: int
    ok: int
    failed: int
    seconds: float
    per_second: float
    verified: int
    rejected: int
    cpu_per_1k: dict[str, float]  # the loop itself and the receiver


async def limit_run(bench: Bench, client: limit.ClientName, loop: limit.LoopName) -> LimitFigures:
    """Run the bare loop once in its own process (so its CPU is its own) and collect."""
    count = bench.opts.events
    if client == "httpx":
        # httpx's own pool manages ~300/s at this concurrency: 10,000 sends would take half a
        # minute to show what a couple of thousand show as well.
        count = min(count, PLAIN_HTTPX_MAX)
    out = bench.procs.workdir / f"limit-{loop}-{client}.json"
    argv = [sys.executable, "-m", "bench.limit", "--url", bench.receiver.hook_url("limit")]
    argv += ["--count", str(count), "--concurrency", str(bench.opts.concurrency)]
    argv += ["--client", client, "--loop", loop, "--out", str(out)]
    await bench.receiver.reset()
    receiver_before = bench.receiver_child.cpu_seconds()
    child = bench.procs.spawn(f"limit-{loop}-{client}", argv, bench_env(bench.webhook_secret))
    if not await wait_exit(child, timeout=90 + count / 100):
        stop([child])
        raise SetupError(f"{child.name} did not finish in time")
    receiver_cpu = bench.receiver_child.cpu_seconds() - receiver_before
    if child.process.returncode != 0 or not out.exists():
        raise SetupError(f"the {loop}+{client} loop failed:\n{child.tail()}")
    result = json.loads(out.read_text())
    arrived = await bench.receiver.stats()
    ok: int = result["ok"]
    return LimitFigures(
        client=client,
        loop=loop,
        count=count,
        ok=ok,
        failed=result["failed"],
        seconds=result["seconds"],
        per_second=result["per_second"],
        verified=arrived.verified,
        rejected=arrived.rejected,
        cpu_per_1k={
            "loop": result["cpu_seconds"] * 1000 / ok if ok else 0.0,
            "receiver": receiver_cpu * 1000 / ok if ok else 0.0,
        },
    )


@dataclass(frozen=True, slots=True)
class IngestFigures:
    """POST /v1/events as fast as the clients can."""

    case: str
    events: int
    accepted: int
    refused: dict[str, int]
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    deliveries: int  # created by the accepted events
    cpu_per_1k: dict[str, float]  # per 1,000 accepted events
    busy: dict[str, float]


async def ingest(bench: Bench, case: str, tenant: str) -> IngestFigures:
    """Post `events` events of one tenant with `concurrency` clients."""
    cpu_before = bench.cpu()
    posted = await post_burst(bench.api, tenant, bench.opts.events, bench.opts.concurrency)
    cpu_after = bench.cpu()
    bench.check_alive()
    accepted = len(posted.accepted)
    return IngestFigures(
        case=case,
        events=bench.opts.events,
        accepted=accepted,
        refused=dict(posted.refused),
        seconds=posted.seconds,
        per_second=posted.per_second,
        p50_ms=ms(percentile(posted.latencies, 0.50)),
        p99_ms=ms(percentile(posted.latencies, 0.99)),
        deliveries=posted.deliveries,
        cpu_per_1k=per_thousand(cpu_before, cpu_after, accepted),
        busy=busy_share(cpu_before, cpu_after, posted.seconds),
    )


@dataclass(frozen=True, slots=True)
class DrainFigures:
    """Workers emptying a backlog that built up while none ran."""

    workers: int
    deliveries: int
    arrived: int
    seconds: float  # first receipt to last
    per_second: float


async def drain_backlog(bench: Bench, expected: int) -> DrainFigures:
    """Start the workers on a full queue; time first receipt to last."""
    await bench.receiver.reset()
    await start_workers(bench, bench.opts.workers)
    arrived = await bench.receiver.wait_for(expected, timeout=60 + expected / 50)
    seconds = (arrived.last or 0.0) - (arrived.first or 0.0)
    await bench.settle()
    return DrainFigures(
        workers=len(bench.workers),
        deliveries=expected,
        arrived=arrived.requests,
        seconds=seconds,
        per_second=arrived.requests / seconds if seconds > 0 else 0.0,
    )


@dataclass(frozen=True, slots=True)
class E2EFigures:
    """Events posted as fast as the clients can, until the receiver has every delivery."""

    fan_out: int
    workers: int
    events: int
    refused: int
    deliveries: int
    arrived: int
    verified: int
    rejected: int
    duplicates: int
    seconds: float  # first POST to last receipt
    per_second: float  # deliveries
    ingest_per_second: float  # events accepted while the workers delivered
    ingest_p50_ms: float
    ingest_p99_ms: float
    settled: bool
    cpu_per_1k: dict[str, float]  # per 1,000 deliveries
    busy: dict[str, float]
    redis_bytes_per_delivery: float
    redis_calls_per_delivery: float  # API's and workers' together, scripts' commands included
    worker_log_bytes_per_delivery: float  # what the workers print is work too


async def end_to_end(bench: Bench, tenant: str, events: int | None = None) -> E2EFigures:
    """One throughput run of `events` events (the run's --events over the fan-out unless
    given); CPU and Redis memory are measured from settled to settled."""
    fan_out = FAN_OUT[tenant]
    events = events if events is not None else max(1, bench.opts.events // fan_out)
    await bench.settle()
    await bench.receiver.reset()
    memory_before = await bench.used_memory()
    calls_before = await bench.redis_calls()
    logged_before = sum(w.log_bytes() for w in bench.workers)
    cpu_before = bench.cpu()
    posted = await post_burst(bench.api, tenant, events, bench.opts.concurrency)
    arrived = await bench.receiver.wait_for(posted.deliveries, timeout=60 + posted.deliveries / 50)
    settled = await bench.settle()
    # Taken once every delivery is settled in Redis: its last writes are part of the cost.
    cpu_after = bench.cpu()
    wall = time.time() - posted.started
    memory_after = await bench.used_memory()
    calls = await bench.redis_calls() - calls_before
    logged = sum(w.log_bytes() for w in bench.workers) - logged_before
    bench.check_alive()
    seconds = (arrived.last or posted.started) - posted.started
    delivered = arrived.requests
    return E2EFigures(
        fan_out=fan_out,
        workers=len(bench.workers),
        events=len(posted.accepted),
        refused=sum(posted.refused.values()),
        deliveries=posted.deliveries,
        arrived=delivered,
        verified=arrived.verified,
        rejected=arrived.rejected,
        duplicates=arrived.duplicates,
        seconds=seconds,
        per_second=delivered / seconds if seconds > 0 else 0.0,
        ingest_per_second=posted.per_second,
        ingest_p50_ms=ms(percentile(posted.latencies, 0.50)),
        ingest_p99_ms=ms(percentile(posted.latencies, 0.99)),
        settled=settled,
        cpu_per_1k=per_thousand(cpu_before, cpu_after, delivered),
        busy=busy_share(cpu_before, cpu_after, wall),
        redis_bytes_per_delivery=(memory_after - memory_before) / delivered if delivered else 0.0,
        redis_calls_per_delivery=calls / delivered if delivered else 0.0,
        worker_log_bytes_per_delivery=logged / delivered if delivered else 0.0,
    )


@dataclass(frozen=True, slots=True)
class LatencyFigures:
    """Events at a steady rate well below saturation, fan-out 1."""

    rate: float
    seconds: float
    events: int
    arrived: int
    # From relay's created_at (set as the API accepts the event; milliseconds, so up to 1 ms
    # more than the truth) to the receiver having the body.
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    # From the client starting its POST: what an upstream service would see.
    client_p50_ms: float
    client_p99_ms: float
    ingest_p50_ms: float
    ingest_p99_ms: float
    max_lag_ms: float  # how late the pacing loop started its latest POST


async def steady_latency(bench: Bench) -> LatencyFigures:
    """Post at `rate` events/s for `latency_seconds`; latency per event from the arrival times."""
    opts = bench.opts
    count = max(1, round(opts.rate * opts.latency_seconds))
    await bench.settle()
    await bench.receiver.reset()
    posted = await post_paced(bench.api, TENANT_ONE, opts.rate, count)
    await bench.receiver.wait_for(posted.deliveries, timeout=60.0)
    first_seen = await bench.receiver.arrivals()
    bench.check_alive()
    relay_side = latencies(posted.accepted, first_seen)
    client_side = [
        first_seen[event.event_id] - event.sent_at
        for event in posted.accepted
        if event.event_id in first_seen
    ]
    return LatencyFigures(
        rate=opts.rate,
        seconds=posted.seconds,
        events=len(posted.accepted),
        arrived=len(relay_side),
        p50_ms=ms(percentile(relay_side, 0.50)),
        p90_ms=ms(percentile(relay_side, 0.90)),
        p99_ms=ms(percentile(relay_side, 0.99)),
        max_ms=ms(max(relay_side, default=float("nan"))),
        client_p50_ms=ms(percentile(client_side, 0.50)),
        client_p99_ms=ms(percentile(client_side, 0.99)),
        ingest_p50_ms=ms(percentile(posted.latencies, 0.50)),
        ingest_p99_ms=ms(percentile(posted.latencies, 0.99)),
        max_lag_ms=ms(posted.max_lag),
    )
