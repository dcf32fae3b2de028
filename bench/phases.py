"""The phases of a benchmark run, each returning its figures.

The order matters and is set in bench/__main__.py: the LIMIT runs while relay is idle, ingest
runs before any worker exists (so it measures the API and Redis alone), then the workers start.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import aiohttp

from bench import harness, limit
from bench.harness import Stack
from bench.load import latencies, percentile, post_burst, post_paced
from bench.procs import Processes, SetupError, bench_env, stop, wait_exit

TENANT_NONE = "bench_none"  # no webhooks: an event fans out to nothing
TENANT_ONE = "bench_one"  # one webhook
TENANT_TEN = "bench_ten"  # ten webhooks: fan-out 10
FAN_OUT = {TENANT_ONE: 1, TENANT_TEN: 10}
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


async def start(procs: Processes, opts: Options, session: aiohttp.ClientSession) -> Stack:
    """The system up, with the bench tenants' webhooks registered (one secret for all, so that
    the receiver can check them all).

    Workers are started later, once ingest has been measured without them.
    """
    stack = await harness.start(procs, session, opts.endpoint_concurrency)
    for tenant, fan_out in FAN_OUT.items():
        for n in range(fan_out):
            await stack.add_webhook(
                f"/hook/{tenant}-{n}", tenant, events=["*"], description="bench receiver"
            )
    return stack


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


async def limit_run(
    stack: Stack, opts: Options, client: limit.ClientName, loop: limit.LoopName
) -> LimitFigures:
    """Run the bare loop once in its own process (so its CPU is its own) and collect."""
    count = opts.events
    if client == "httpx":
        # httpx's own pool manages ~300/s at this concurrency: 10,000 sends would take half a
        # minute to show what a couple of thousand show as well.
        count = min(count, PLAIN_HTTPX_MAX)
    out = stack.procs.workdir / f"limit-{loop}-{client}.json"
    argv = [sys.executable, "-m", "bench.limit", "--url", stack.receiver.hook_url("limit")]
    argv += ["--count", str(count), "--concurrency", str(opts.concurrency)]
    argv += ["--client", client, "--loop", loop, "--out", str(out)]
    await stack.receiver.reset()
    receiver_before = stack.receiver_child.cpu_seconds()
    child = stack.procs.spawn(f"limit-{loop}-{client}", argv, bench_env(stack.secret))
    if not await wait_exit(child, timeout=90 + count / 100):
        stop([child])
        raise SetupError(f"{child.name} did not finish in time")
    receiver_cpu = stack.receiver_child.cpu_seconds() - receiver_before
    if child.process.returncode != 0 or not out.exists():
        raise SetupError(f"the {loop}+{client} loop failed:\n{child.tail()}")
    result = json.loads(out.read_text())
    arrived = await stack.receiver.stats()
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


async def ingest(stack: Stack, opts: Options, case: str, tenant: str) -> IngestFigures:
    """Post `events` events of one tenant with `concurrency` clients."""
    cpu_before = stack.cpu()
    posted = await post_burst(stack.api, tenant, opts.events, opts.concurrency)
    cpu_after = stack.cpu()
    stack.check_alive()
    accepted = len(posted.accepted)
    return IngestFigures(
        case=case,
        events=opts.events,
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


async def drain_backlog(stack: Stack, opts: Options, expected: int) -> DrainFigures:
    """Start the workers on a full queue; time first receipt to last."""
    await stack.receiver.reset()
    await stack.start_workers(opts.workers)
    arrived = await stack.receiver.wait_for(expected, timeout=60 + expected / 50)
    seconds = (arrived.last or 0.0) - (arrived.first or 0.0)
    await stack.settle()
    return DrainFigures(
        workers=len(stack.workers),
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


async def end_to_end(
    stack: Stack, opts: Options, tenant: str, events: int | None = None
) -> E2EFigures:
    """One throughput run of `events` events (the run's --events over the fan-out unless
    given); CPU and Redis memory are measured from settled to settled."""
    fan_out = FAN_OUT[tenant]
    events = events if events is not None else max(1, opts.events // fan_out)
    await stack.settle()
    await stack.receiver.reset()
    memory_before = await stack.used_memory()
    calls_before = await stack.redis_calls()
    logged_before = sum(w.log_bytes() for w in stack.workers)
    cpu_before = stack.cpu()
    posted = await post_burst(stack.api, tenant, events, opts.concurrency)
    arrived = await stack.receiver.wait_for(posted.deliveries, timeout=60 + posted.deliveries / 50)
    settled = await stack.settle()
    # Taken once every delivery is settled in Redis: its last writes are part of the cost.
    cpu_after = stack.cpu()
    wall = time.time() - posted.started
    memory_after = await stack.used_memory()
    calls = await stack.redis_calls() - calls_before
    logged = sum(w.log_bytes() for w in stack.workers) - logged_before
    stack.check_alive()
    seconds = (arrived.last or posted.started) - posted.started
    delivered = arrived.requests
    return E2EFigures(
        fan_out=fan_out,
        workers=len(stack.workers),
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


async def steady_latency(stack: Stack, opts: Options) -> LatencyFigures:
    """Post at `rate` events/s for `latency_seconds`; latency per event from the arrival times."""
    count = max(1, round(opts.rate * opts.latency_seconds))
    await stack.settle()
    await stack.receiver.reset()
    posted = await post_paced(stack.api, TENANT_ONE, opts.rate, count)
    await stack.receiver.wait_for(posted.deliveries, timeout=60.0)
    first_seen = await stack.receiver.arrivals()
    stack.check_alive()
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
