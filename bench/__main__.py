"""relay's benchmark: throughput, latency and cost, against the limit of a bare loop.

    .venv/bin/python -m bench [--quick] [--workers 2] [--events N] [--concurrency C]
                              [--rate R] [--latency-seconds S] [--endpoint-concurrency E]

One run starts a throwaway redis-server (AOF, fsync every second), PostgreSQL (fsync and
synchronous commit on), `relay api`, a fast receiver on loopback (a separate process that
verifies every signature) and later the `relay worker`s, all exactly as in production, and
measures in this order:

1. LIMIT: a bare asyncio loop (asyncio and uvloop; aiohttp, httpx and httpx over aiohttp)
   signing and posting straight to the receiver, while relay is idle; the fastest is the limit.
2. INGEST: POST /v1/events with C concurrent clients, events matching no webhook and one,
   before any worker runs, so the API and Redis are measured alone; then the workers start on
   the queued deliveries (backlog drain).
3. END TO END: events posted as fast as possible until the receiver has every delivery, with
   fan-out 1 and 10; CPU per 1,000 deliveries of each process and Redis memory per delivery.
4. LATENCY: a steady R events/s, accepted -> received, per event.
5. SCALING: end to end again with one worker.

It prints a table and writes bench/results/bench-<timestamp>.json. Exit status: 0 when every
delivery arrived with a valid signature, 1 when not, 2 when the run could not be done, 130 when
interrupted. Whether the targets were met is reported, not turned into an exit status.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from bench import limit
from bench.harness import Stack, command_line, scenario, speaker
from bench.load import new_session, post_burst
from bench.phases import (
    TENANT_NONE,
    TENANT_ONE,
    TENANT_TEN,
    Options,
    drain_backlog,
    end_to_end,
    ingest,
    limit_run,
    start,
    steady_latency,
)
from bench.procs import Processes
from bench.report import Results, conclude, machine, render, utc, write_document

say = speaker("bench")


def parse_args(argv: list[str] | None) -> Options:
    """Read and check the command line."""
    parser = command_line("bench", __doc__)
    add = parser.add_argument
    add("--quick", action="store_true", help="a small run, for a smoke check (< 1 min)")
    add("--workers", type=int, default=2, help="relay worker processes (default 2)")
    add("--events", type=int, help="events per ingest run, deliveries per e2e and limit run")
    add("--concurrency", type=int, default=32, help="clients / requests in flight (default 32)")
    add("--rate", type=float, default=200.0, help="events/s of the latency run (default 200)")
    add("--latency-seconds", type=float, help="length of the latency run (20; quick 5)")
    add("--endpoint-concurrency", type=int, default=64, help="RELAY_ENDPOINT_CONCURRENCY (64)")
    ns = parser.parse_args(argv)
    events = ns.events if ns.events is not None else (1000 if ns.quick else 10_000)
    seconds = ns.latency_seconds if ns.latency_seconds is not None else (5 if ns.quick else 20)
    if not 1 <= ns.workers <= 16 or not 1 <= ns.concurrency <= 1024:
        parser.error("--workers must be 1..16 and --concurrency 1..1024")
    if not 1 <= ns.endpoint_concurrency <= 10_000:
        parser.error("--endpoint-concurrency must be 1..10000")
    if not 10 <= events <= 1_000_000:
        parser.error("--events must be 10..1,000,000")
    if not 0 < ns.rate <= 10_000 or not 0 < seconds <= 600:
        parser.error("--rate must be in (0, 10000] and --latency-seconds in (0, 600]")
    return Options(
        quick=ns.quick,
        workers=ns.workers,
        events=events,
        concurrency=ns.concurrency,
        rate=ns.rate,
        latency_seconds=seconds,
        endpoint_concurrency=ns.endpoint_concurrency,
    )


async def measure(stack: Stack, opts: Options, started: float) -> Results:
    """Every phase, in order (see the module docstring for why this order)."""
    limits = []
    for loop in limit.LOOPS:
        for client in limit.CLIENTS:
            run = await limit_run(stack, opts, client, loop)
            limits.append(run)
            say(f"limit {loop} + {client}: {run.per_second:,.0f}/s")

    # Warm the API (first requests compile schemas, open pools) without counting it.
    await post_burst(stack.api, TENANT_NONE, min(500, opts.events), opts.concurrency)
    ingests = [
        await ingest(stack, opts, "no matching webhook", TENANT_NONE),
        await ingest(stack, opts, "one webhook (no workers yet)", TENANT_ONE),
    ]
    for run_ in ingests:
        say(f"ingest {run_.case}: {run_.per_second:,.0f} events/s")
    drain = await drain_backlog(stack, opts, ingests[-1].deliveries)
    say(f"backlog drain with {drain.workers} workers: {drain.per_second:,.0f} deliveries/s")

    e2e = []
    for tenant in (TENANT_ONE, TENANT_TEN):
        e2e.append(await end_to_end(stack, opts, tenant))
        say(
            f"e2e fan-out {e2e[-1].fan_out}, {e2e[-1].workers} workers: {e2e[-1].per_second:,.0f}/s"
        )
    latency = await steady_latency(stack, opts)
    say(f"latency at {latency.rate:g}/s: p50 {latency.p50_ms:.1f} ms, p99 {latency.p99_ms:.1f} ms")
    if opts.workers > 1:
        stack.stop_workers(stack.workers[1:])
        for tenant in (TENANT_ONE, TENANT_TEN):
            e2e.append(await end_to_end(stack, opts, tenant))
            say(f"e2e fan-out {e2e[-1].fan_out}, 1 worker: {e2e[-1].per_second:,.0f}/s")

    server = await stack.redis.info("server")
    stats = await stack.redis.info("stats")
    persistence = await stack.redis.info("persistence")
    return Results(
        started_at=utc(started),
        seconds=time.time() - started,
        options=opts,
        machine=machine(),
        settings=stack.settings.shown(),
        redis={
            "version": str(server["redis_version"]),
            # Forks are AOF rewrites: on two cores their CPU competes with everything else.
            "forks": int(stats["total_forks"]),
            "aof_rewrites": int(persistence.get("aof_rewrites", 0)),
            "used_memory_end": await stack.used_memory(),
        },
        load_average={},
        limit=limits,
        ingest=ingests,
        drain=drain,
        e2e=e2e,
        latency=latency,
    )


async def run(procs: Processes, opts: Options) -> Results:
    """Start everything, measure, and hand back the figures (the children stop in main)."""
    started = time.time()
    load_before = list(os.getloadavg())
    say(f"starting redis-server, postgres, relay api and the receiver in {procs.workdir}")
    async with new_session(opts.concurrency) as session:
        stack = await start(procs, opts, session)
        try:
            # A bound on the whole run, on top of each phase's own.
            async with asyncio.timeout(900 + opts.events / 10):
                results = await measure(stack, opts, started)
        finally:
            await stack.redis.aclose()
    results.load_average = {"before": load_before, "after": list(os.getloadavg())}
    return results


def complete(results: Results) -> bool:
    """Whether every delivery arrived, exactly once per endpoint, with a valid signature."""
    runs = results.e2e
    return (
        all(
            r.arrived == r.deliveries and not (r.rejected or r.refused or r.duplicates)
            for r in runs
        )
        and results.drain.arrived == results.drain.deliveries
        and results.latency.arrived == results.latency.events
        and all(r.failed == 0 and r.rejected == 0 for r in results.limit)
    )


def main(argv: list[str] | None = None) -> int:
    """One benchmark run; the exit status."""
    opts = parse_args(argv)

    def finish(results: Results) -> int:
        return conclude(
            "bench",
            write_document(results),
            lambda: render(results),
            complete(results),
            "some deliveries are missing, duplicated or badly signed",
        )

    return scenario("bench", lambda procs: run(procs, opts), finish)


if __name__ == "__main__":
    sys.exit(main())
