"""Fairness: one tenant's hanging endpoints and backlog must not slow another tenant down.

    .venv/bin/python -m bench.fairness [--hanging 100] [--backlog 10000] [--rate 20]
                                       [--seconds 20] [--workers 2] [--tenant-concurrency N]

It starts redis-server, PostgreSQL, `relay api`, `relay worker`s with relay's defaults
(RELAY_DELIVERY_TIMEOUT 15 s, RELAY_ENDPOINT_CONCURRENCY 4, RELAY_TENANT_CONCURRENCY) and the
bench receiver, with two tenants:

- A: `hanging` webhooks for posts, whose endpoints answer only well past the delivery timeout,
  and three healthy webhooks for media uploads;
- B: one healthy webhook.

1. IDLE: B posts at `rate` events/s and A uploads media at `a-rate` events/s (three deliveries
   each) for `seconds`; latency of every delivery, accepted -> received.
2. LOADED: A posts `backlog` deliveries' worth of posts (backlog / hanging events), enough to
   hold every worker slot for many timeouts over; once A's attempts have started, the same
   traffic again. A's attempts in flight are sampled meanwhile (its tenant slots in Redis).

Goals: B's p50 and p99 within 2x of idle, and A's healthy webhooks served all along (not
starved): every upload delivered within the run, at a latency of a fraction of the timeout.
Exit status: 0 when the figures were taken (met or not: they are reported), 2 when the run
could not be done, 130 when interrupted.
"""

from __future__ import annotations

import asyncio
import math
import sys
from dataclasses import dataclass

import redis.asyncio as aioredis

from bench import harness
from bench.harness import command_line, scenario, speaker
from bench.load import (
    Api,
    LoadError,
    Posted,
    ReceiverClient,
    latencies,
    media_body,
    new_session,
    percentile,
    post_burst,
    post_paced,
)
from bench.procs import Processes
from relay.config import Settings
from relay.store import keys

NOISY = "fair_a"
QUIET = "fair_b"
HEALTHY_WEBHOOKS = 3
DELIVERY_TIMEOUT = 15.0  # relay's default
TARGET_RATIO = 2.0
DEFAULT_TENANT_CONCURRENCY: int = Settings.model_fields["tenant_concurrency"].default


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, checked."""

    hanging: int
    backlog: int
    rate: float
    a_rate: float
    seconds: float
    workers: int
    tenant_concurrency: int | None = None  # None: relay's default


@dataclass(frozen=True, slots=True)
class Run:
    """One round of B's and A's healthy traffic: latencies in seconds."""

    b: list[float]
    b_expected: int
    a: list[float]
    a_expected: int


@dataclass(frozen=True, slots=True)
class Figures:
    """What the run measured."""

    idle: Run
    loaded: Run
    a_in_flight_max: int  # A's attempts in flight (tenant slots), the most sampled
    hanging_begun: int  # requests to A's hanging endpoints begun while loaded
    tenant_concurrency: int


def parse_args(argv: list[str] | None) -> Options:
    """Read and check the command line."""
    parser = command_line("bench.fairness", __doc__)
    add = parser.add_argument
    add("--hanging", type=int, default=100, help="tenant A's hanging webhooks (100)")
    add("--backlog", type=int, default=10_000, help="A's deliveries to them (10,000)")
    add("--rate", type=float, default=20.0, help="tenant B's events/s (20)")
    add("--a-rate", type=float, default=2.0, help="A's media uploads/s to its healthy ones (2)")
    add("--seconds", type=float, default=20.0, help="length of each measured round (20)")
    add("--workers", type=int, default=2, help="relay worker processes (2)")
    add("--tenant-concurrency", type=int, help="RELAY_TENANT_CONCURRENCY (relay's default)")
    ns = parser.parse_args(argv)
    if min(ns.hanging, ns.backlog, ns.workers) < 1 or min(ns.rate, ns.a_rate, ns.seconds) <= 0:
        parser.error("every figure must be positive")
    if ns.backlog < ns.hanging:
        parser.error("--backlog must be at least --hanging (one event reaches each of them)")
    if ns.tenant_concurrency is not None and ns.tenant_concurrency < 1:
        parser.error("--tenant-concurrency must be positive")
    return Options(
        ns.hanging, ns.backlog, ns.rate, ns.a_rate, ns.seconds, ns.workers, ns.tenant_concurrency
    )


say = speaker("fairness")


async def traffic(api: Api, receiver: ReceiverClient, opts: Options) -> Run:
    """B's posts and A's uploads side by side for `seconds`; every delivery's latency."""
    await receiver.reset()
    b_count = max(1, round(opts.rate * opts.seconds))
    a_count = max(1, round(opts.a_rate * opts.seconds))
    b_posted, a_posted = await asyncio.gather(
        post_paced(api, QUIET, opts.rate, b_count),
        post_paced(api, NOISY, opts.a_rate, a_count, body=media_body),
    )
    # Every delivery gets its chance to arrive: up to half a minute past the last post.
    for _ in range(300):
        b_arrived = await receiver.arrivals_under("/hook/b")
        a_arrived = await receiver.arrivals_under("/hook/a-")
        if len(b_arrived) >= b_posted.deliveries and len(a_arrived) >= a_posted.deliveries:
            break
        await asyncio.sleep(0.1)
    return Run(
        b=latencies(b_posted.accepted, {i: t for _, i, t in b_arrived}),
        b_expected=b_posted.deliveries,
        a=_each_delivery(a_posted, a_arrived),
        a_expected=a_posted.deliveries,
    )


def _each_delivery(posted: Posted, arrived: list[tuple[str, str, float]]) -> list[float]:
    """Seconds from accepted to received of every delivery (an event reaches several paths)."""
    created = {a.event_id: a.created_at for a in posted.accepted}
    return [t - created[i] for _, i, t in arrived if i in created]


async def sample_in_flight(redis: aioredis.Redis, stop: asyncio.Event) -> int:
    """The most attempts in flight for A seen, sampled every 0.2 s until `stop`."""
    most = 0
    while not stop.is_set():
        most = max(most, int(await redis.zcard(keys.tenant_slots(NOISY))))
        await asyncio.sleep(0.2)
    return most


async def run(procs: Processes, opts: Options) -> Figures:
    """Start everything, then measure idle and loaded."""
    tenant_concurrency = opts.tenant_concurrency or DEFAULT_TENANT_CONCURRENCY
    async with new_session(64) as session:
        stack = await harness.start(
            procs,
            session,
            endpoint_concurrency=4,  # relay's default
            extra={
                "RELAY_TENANT_CONCURRENCY": str(tenant_concurrency),
                # A's hanging webhooks and its healthy ones, past the default of 100 if need be.
                "RELAY_MAX_WEBHOOKS_PER_TENANT": str(max(100, opts.hanging + HEALTHY_WEBHOOKS)),
            },
            receiver_options=("--hang-seconds", str(DELIVERY_TIMEOUT * 2)),
        )
        redis, api, receiver = stack.redis, stack.api, stack.receiver
        hooks = [(QUIET, "/hook/b", ["*"])]
        hooks += [(NOISY, f"/hook/a-{n}", ["media.uploaded"]) for n in range(HEALTHY_WEBHOOKS)]
        hooks += [(NOISY, f"/hang/a-{n}", ["post.published"]) for n in range(opts.hanging)]
        for tenant, path, types in hooks:
            await stack.add_webhook(path, tenant, events=types)
        await stack.start_workers(opts.workers)

        await traffic(api, receiver, Options(1, 1, opts.rate, opts.a_rate, 2, 1))  # warm-up
        idle = await traffic(api, receiver, opts)
        say(f"idle: {len(idle.b)} of B's and {len(idle.a)} of A's healthy deliveries timed")

        events = math.ceil(opts.backlog / opts.hanging)
        posted = await post_burst(api, NOISY, events, 16)
        if posted.deliveries != events * opts.hanging:
            raise LoadError(f"A's backlog of {events} events: {dict(posted.refused)}")
        say(f"A's backlog: {posted.deliveries:,} deliveries to {opts.hanging} hanging webhooks")
        await asyncio.sleep(2.0)  # A's first attempts start and hang
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_in_flight(redis, stop))
        await receiver.reset()
        loaded = await traffic(api, receiver, opts)
        stop.set()
        in_flight = await sampler
        begun = (await receiver.stats()).hanging
        say(f"loaded: {len(loaded.b)} of B's and {len(loaded.a)} of A's healthy deliveries timed")
        await redis.aclose()
    return Figures(idle, loaded, in_flight, begun, tenant_concurrency)


def _ms(values: list[float], share: float) -> float:
    return percentile(values, share) * 1000


def render(f: Figures, opts: Options) -> str:
    """The figures and the goals."""
    b_p50 = _ms(f.loaded.b, 0.5) / _ms(f.idle.b, 0.5)
    b_p99 = _ms(f.loaded.b, 0.99) / _ms(f.idle.b, 0.99)
    met = b_p50 <= TARGET_RATIO and b_p99 <= TARGET_RATIO
    starved = len(f.loaded.a) < f.loaded.a_expected
    rows = [
        f"tenant A: {opts.hanging} webhooks hanging past the {DELIVERY_TIMEOUT:g} s timeout, "
        f"{opts.backlog:,} deliveries to them, {HEALTHY_WEBHOOKS} healthy webhooks at "
        f"{opts.a_rate:g} uploads/s; tenant B: {opts.rate:g} events/s; {opts.workers} workers, "
        f"RELAY_TENANT_CONCURRENCY {f.tenant_concurrency}",
        "",
        f"{'':28}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'arrived':>12}",
    ]
    for name, run_ in (("idle", f.idle), ("with A's backlog", f.loaded)):
        for who, values, expected in (
            ("B", run_.b, run_.b_expected),
            ("A healthy", run_.a, run_.a_expected),
        ):
            rows.append(
                f"{who + ', ' + name:28}{_ms(values, 0.5):>10.1f}{_ms(values, 0.99):>10.1f}"
                f"{max(values, default=math.nan) * 1000:>10.1f}{len(values):>6} of {expected:<5}"
            )
    rows += [
        "",
        f"B with A's backlog / idle: p50 {b_p50:.2f}x, p99 {b_p99:.2f}x; goal <= "
        f"{TARGET_RATIO:g}x: {'met' if met else 'NOT met'}",
        f"A's healthy webhooks: {'STARVED' if starved else 'served'} "
        f"({len(f.loaded.a)} of {f.loaded.a_expected} delivered while the backlog hung)",
        f"A's attempts in flight, most seen: {f.a_in_flight_max}; hanging requests begun "
        f"while measured: {f.hanging_begun}",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """One run; the exit status."""
    opts = parse_args(argv)

    def finish(figures: Figures) -> int:
        print("\n" + render(figures, opts) + "\n", flush=True)
        return 0

    return scenario("fairness", lambda procs: run(procs, opts), finish)


if __name__ == "__main__":
    sys.exit(main())
