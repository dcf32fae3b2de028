"""What waiting costs: deliveries queued behind a hanging endpoint, and everyone else meanwhile.

    .venv/bin/python -m bench.waiting [--waiting 1000] [--seconds 20] [--rate 20]

It starts redis-server, PostgreSQL, `relay api`, two `relay worker`s
(RELAY_ENDPOINT_CONCURRENCY=1) and the bench receiver, with two tenants: one whose endpoint
answers at once, one whose endpoint hangs past RELAY_DELIVERY_TIMEOUT. It measures, in order:

1. IDLE: the healthy tenant's latency (accepted -> received) at a steady rate, nothing waiting;
   and Redis commands per second with nothing to do.
2. WAITING: N events for the hanging tenant, so one attempt is in flight and the rest wait for
   its only slot; Redis commands per second over `seconds` while they wait (INFO commandstats,
   commands inside scripts included), then the healthy tenant's latency again.

A delivery that waits for a slot should cost (next to) nothing while it waits: targets are
under 50 Redis commands/s while waiting, and a healthy p50 within 2x of the idle one.
Exit status: 0 when the figures were taken (met or not: they are reported), 2 when the run
could not be done, 130 when interrupted.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from bench import harness
from bench.harness import command_line, scenario, speaker
from bench.load import (
    Api,
    LoadError,
    ReceiverClient,
    latencies,
    new_session,
    percentile,
    post_burst,
    post_paced,
)
from bench.procs import Processes, redis_calls

HEALTHY = "wait_healthy"
HANGING = "wait_hanging"
DELIVERY_TIMEOUT = 5.0
HANG_SECONDS = 60.0
TARGET_CALLS_PER_SECOND = 50.0
TARGET_LATENCY_RATIO = 2.0


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, checked."""

    waiting: int
    seconds: float
    rate: float
    latency_seconds: float


@dataclass(frozen=True, slots=True)
class Figures:
    """What the run measured."""

    idle_calls_per_second: float
    waiting_calls_per_second: float
    idle_p50_ms: float
    waiting_p50_ms: float
    idle_p99_ms: float
    waiting_p99_ms: float
    waiting: int

    @property
    def ratio(self) -> float:
        """The healthy p50 while others wait, over the idle one."""
        return self.waiting_p50_ms / self.idle_p50_ms if self.idle_p50_ms else float("nan")


def parse_args(argv: list[str] | None) -> Options:
    """Read and check the command line."""
    parser = command_line("bench.waiting", __doc__)
    add = parser.add_argument
    add("--waiting", type=int, default=1000, help="deliveries behind the hanging endpoint")
    add("--seconds", type=float, default=20.0, help="how long to count Redis commands (20)")
    add("--rate", type=float, default=20.0, help="healthy events/s for latency (default 20)")
    add("--latency-seconds", type=float, default=10.0, help="length of each latency run (10)")
    ns = parser.parse_args(argv)
    if ns.waiting < 1 or ns.seconds <= 0 or ns.rate <= 0 or ns.latency_seconds <= 0:
        parser.error("every figure must be positive")
    return Options(ns.waiting, ns.seconds, ns.rate, ns.latency_seconds)


say = speaker("waiting")


async def calls_per_second(redis: aioredis.Redis, seconds: float) -> float:
    """Redis commands per second over the next `seconds`."""
    before = await redis_calls(redis)
    began = time.monotonic()
    await asyncio.sleep(seconds)
    # Minus our own two INFO calls.
    return (await redis_calls(redis) - before - 1) / (time.monotonic() - began)


async def healthy_latency(api: Api, receiver: ReceiverClient, opts: Options) -> list[float]:
    """Seconds from accepted to received for the healthy tenant at a steady rate."""
    await receiver.reset()
    count = max(1, round(opts.rate * opts.latency_seconds))
    posted = await post_paced(api, HEALTHY, opts.rate, count)
    await receiver.wait_for(posted.deliveries, timeout=60.0)
    return latencies(posted.accepted, await receiver.arrivals())


async def run(procs: Processes, opts: Options) -> Figures:
    """Start everything, then measure idle and waiting."""
    async with new_session(32) as session:
        stack = await harness.start(
            procs,
            session,
            endpoint_concurrency=1,
            extra={"RELAY_DELIVERY_TIMEOUT": str(DELIVERY_TIMEOUT)},
            receiver_options=("--hang-seconds", str(HANG_SECONDS)),
        )
        redis, api, receiver = stack.redis, stack.api, stack.receiver
        await stack.add_webhook("/hook/healthy", HEALTHY)
        await stack.add_webhook("/hang/hanging", HANGING)
        await stack.start_workers(2)

        # Warm up (schemas compiled, pools open), then the idle figures.
        await healthy_latency(api, receiver, Options(1, 1, opts.rate, 2))
        idle_calls = await calls_per_second(redis, opts.seconds)
        idle = await healthy_latency(api, receiver, opts)
        say(f"idle: {idle_calls:.1f} Redis commands/s; {len(idle)} healthy deliveries timed")

        posted = await post_burst(api, HANGING, opts.waiting, 16)
        if posted.deliveries != opts.waiting:
            raise LoadError(f"{opts.waiting} events for the hanging endpoint: {posted.refused}")
        await asyncio.sleep(3.0)  # the first attempts start and the rest settle into waiting
        waiting_calls = await calls_per_second(redis, opts.seconds)
        waiting = await healthy_latency(api, receiver, opts)
        await redis.aclose()
    return Figures(
        idle_calls_per_second=idle_calls,
        waiting_calls_per_second=waiting_calls,
        idle_p50_ms=percentile(idle, 0.5) * 1000,
        waiting_p50_ms=percentile(waiting, 0.5) * 1000,
        idle_p99_ms=percentile(idle, 0.99) * 1000,
        waiting_p99_ms=percentile(waiting, 0.99) * 1000,
        waiting=opts.waiting,
    )


def render(f: Figures, opts: Options) -> str:
    """The figures and the targets."""
    calls_ok = f.waiting_calls_per_second < TARGET_CALLS_PER_SECOND
    ratio_ok = f.ratio <= TARGET_LATENCY_RATIO
    return "\n".join(
        [
            f"{f.waiting:,} deliveries behind a hanging endpoint (concurrency 1, "
            f"timeout {DELIVERY_TIMEOUT:g} s); healthy tenant at {opts.rate:g} events/s",
            f"Redis commands/s, idle          {f.idle_calls_per_second:>9.1f}",
            f"Redis commands/s, while waiting {f.waiting_calls_per_second:>9.1f}"
            f"   target < {TARGET_CALLS_PER_SECOND:g}: {'met' if calls_ok else 'NOT met'}",
            f"healthy p50 / p99, idle         {f.idle_p50_ms:>9.1f} / {f.idle_p99_ms:.1f} ms",
            f"healthy p50 / p99, while waiting {f.waiting_p50_ms:>8.1f} / {f.waiting_p99_ms:.1f} ms"
            f"   {f.ratio:.2f}x idle, target <= {TARGET_LATENCY_RATIO:g}x: "
            + ("met" if ratio_ok else "NOT met"),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """One run; the exit status."""
    opts = parse_args(argv)

    def finish(figures: Figures) -> int:
        print("\n" + render(figures, opts) + "\n", flush=True)
        return 0

    return scenario("waiting", lambda procs: run(procs, opts), finish)


if __name__ == "__main__":
    sys.exit(main())
