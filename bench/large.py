"""What one large event costs everyone else: how long Redis stalls while it is delivered.

    .venv/bin/python -m bench.large [--sizes 1048576] [--webhooks 100] [--events 3]
                                    [--together 1] [--workers 1]

Starts a throwaway redis-server (AOF, fsync every second), PostgreSQL, `relay api`, the bench
receiver and `relay worker`s, registers that many webhooks of one tenant at the receiver, then
posts events of each body size to that tenant, one per round (or `--together` at once), while
another process PINGs Redis in a loop (bench/pinger.py). First it reports the longest PING over
10 s with relay idle: what the busy machine alone costs. Per round it reports how long the
accepts took, how long until the receiver had every delivery, the longest PING from the first
POST until then — how long any other API or worker call would have waited, through the accepts,
claims, starts, settles and history writes — the longest single call Redis logged (SLOWLOG),
and the longest time Redis's latency monitor saw it busy with one thing (a command, an AOF
write, a fork). The target is a longest PING of 50 ms.

Exit status: 0 when every delivery arrived with a valid signature (the target met or not: it is
reported), 1 when not, 2 when the run could not be done, 130 when interrupted. A size whose
deliveries do not all arrive ends the run: what is stuck would skew every larger size.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict, dataclass

import orjson
import redis.asyncio as aioredis

from bench import harness
from bench.fanout import SLOWLOG_FLOOR_MICROS, longest_call
from bench.harness import command_line, scenario
from bench.load import Api, ReceiverClient, event, new_session, post_data
from bench.pinger import Pinger
from bench.procs import Processes
from bench.report import conclude, machine
from relay.config import MAX_BODY_BYTES_CEILING

TENANT = "bench_large"
TARGET_PING_MS = 50.0
# Redis's latency monitor keeps what held it for this long or longer (its finest grain).
LATENCY_FLOOR_MS = 1
# The first row: the longest PING over this long with relay idle, what the machine alone costs.
IDLE_SECONDS = 10.0
DELIVERY_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class LargeEvent:
    """What one round cost: `together` large events posted at once, until all were delivered."""

    body_bytes: int
    together: int
    statuses: list[int]
    accept_seconds: float  # first POST sent to the last 202 read
    delivered: int  # requests the receiver verified
    deliver_seconds: float  # first POST sent to the last delivery in (or the timeout)
    longest_ping_ms: float
    longest_call_ms: float
    longest_call: str  # the command of that call
    slow_calls: int  # calls of a millisecond or more
    # The longest time Redis's own latency monitor saw it busy with one thing, and what: a
    # command, an AOF write, a fork for an AOF rewrite. A PING that waited much longer than
    # this waited for the CPU, which relay's other processes share with Redis here.
    longest_busy_ms: float
    longest_busy: str


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = command_line("bench.large", __doc__)
    add = parser.add_argument
    add("--sizes", default="1048576", help="body sizes in bytes, comma-separated (1 MiB)")
    add("--webhooks", type=int, default=100, help="webhooks of the tenant (default 100)")
    add("--events", type=int, default=3, help="rounds per size, one after another (3)")
    add("--together", type=int, default=1, help="events posted at once in a round (1)")
    add("--workers", type=int, default=1, help="relay worker processes (default 1)")
    ns = parser.parse_args(argv)
    try:
        ns.sizes = sorted(int(s) for s in ns.sizes.split(","))
    except ValueError:
        parser.error("--sizes takes byte counts separated by commas")
    if ns.sizes[0] < 1024 or ns.sizes[-1] > MAX_BODY_BYTES_CEILING:
        parser.error(f"--sizes must be 1024..{MAX_BODY_BYTES_CEILING} bytes (RELAY_MAX_BODY_BYTES)")
    if not 1 <= ns.webhooks <= 10_000 or not 1 <= ns.events <= 100 or not 1 <= ns.workers <= 8:
        parser.error("--webhooks must be 1..10000, --events 1..100 and --workers 1..8")
    if not 1 <= ns.together <= 1000:
        parser.error("--together must be 1..1000")
    return ns


def large_body(size: int, number: int) -> bytes:
    """A `post.published` event whose request body is `size` bytes, most of it one string."""

    def body(text: str) -> bytes:
        return orjson.dumps(event("post.published", TENANT, post_data(number, text=text)))

    return body("x" * (size - len(body(""))))


async def idle(client: aioredis.Redis, pinger: Pinger, seconds: float) -> LargeEvent:
    """The longest PING while relay has nothing to do: what the machine alone costs."""
    await client.slowlog_reset()
    await client.execute_command("LATENCY", "RESET")
    await asyncio.to_thread(pinger.take)
    await asyncio.sleep(seconds)
    stall = await asyncio.to_thread(pinger.take)
    call_ms, command, slow = await longest_call(client)
    busy_ms, busy = await longest_busy(client)
    return LargeEvent(
        0, 0, [], 0.0, 0, seconds, stall * 1000, call_ms, command, slow, busy_ms, busy
    )


async def longest_busy(client: aioredis.Redis) -> tuple[float, str]:
    """The longest event Redis's latency monitor holds (ms), and its name."""
    events = await client.execute_command("LATENCY", "LATEST")
    if not events:
        return 0.0, ""
    worst = max(events, key=lambda e: int(e[3]))
    name = worst[0].decode() if isinstance(worst[0], bytes) else str(worst[0])
    return float(worst[3]), name


async def post_large(
    api: Api,
    receiver: ReceiverClient,
    client: aioredis.Redis,
    pinger: Pinger,
    size: int,
    together: int,
    webhooks: int,
) -> LargeEvent:
    """Post `together` events of `size` bytes at once; what they cost until all were in."""
    bodies = [large_body(size, n) for n in range(together)]
    await receiver.reset()
    await client.slowlog_reset()
    await client.execute_command("LATENCY", "RESET")
    await asyncio.to_thread(pinger.take)
    started = time.perf_counter()
    answers = await asyncio.gather(*(api.post_event(body) for body in bodies))
    accepted = time.perf_counter() - started
    statuses = [status for status, _ in answers]
    expected = webhooks * statuses.count(202)
    arrived = await receiver.wait_for(expected, DELIVERY_TIMEOUT) if expected else None
    delivered = time.perf_counter() - started
    stall = await asyncio.to_thread(pinger.take)
    call_ms, command, slow = await longest_call(client)
    busy_ms, busy = await longest_busy(client)
    return LargeEvent(
        size,
        together,
        statuses,
        accepted,
        arrived.verified if arrived else 0,
        delivered,
        stall * 1000,
        call_ms,
        command,
        slow,
        busy_ms,
        busy,
    )


async def run(procs: Processes, options: argparse.Namespace) -> list[LargeEvent]:
    """Start everything, register the webhooks, post the events; what each cost."""
    results: list[LargeEvent] = []
    async with new_session(4) as session:
        stack = await harness.start(
            procs,
            session,
            endpoint_concurrency=4,
            extra={
                "RELAY_MAX_BODY_BYTES": str(max(options.sizes)),
                "RELAY_MAX_WEBHOOKS_PER_TENANT": str(max(100, options.webhooks)),
            },
            redis_timeout=60,
        )
        client, api, receiver = stack.redis, stack.admin, stack.receiver
        try:
            for n in range(options.webhooks):
                await stack.add_webhook(f"/hook/large-{n}", TENANT)
            await stack.start_workers(options.workers)
            await client.config_set("slowlog-log-slower-than", SLOWLOG_FLOOR_MICROS)
            await client.config_set("slowlog-max-len", 10_000)
            await client.config_set("latency-monitor-threshold", LATENCY_FLOOR_MS)
            with Pinger(stack.stores.redis_port) as pinger:
                results.append(await idle(client, pinger, IDLE_SECONDS))
                print(render_row(results[-1]), flush=True)
                expected = options.webhooks * options.together
                for size in options.sizes:
                    for _ in range(options.events):
                        result = await post_large(
                            api, receiver, client, pinger, size, options.together, options.webhooks
                        )
                        results.append(result)
                        print(render_row(result), flush=True)
                        if result.delivered < expected:
                            return results
        finally:
            await client.aclose()
    return results


HEADER = (
    f"{'body bytes':>10} {'events':>6} {'all 202':>7} {'accept s':>8} {'delivered':>9} "
    f"{'all in s':>8} {'longest PING ms':>15} {'longest call ms':>15} {'(command)':>14} "
    f"{'calls >= 1 ms':>13} {'Redis busy ms':>13} {'(with)':>12}"
)


def render_row(r: LargeEvent) -> str:
    """One round's line of the table (the idle one: no events, its length as `all in s`)."""
    whole = "idle" if not r.together else "yes" if set(r.statuses) == {202} else "no"
    return (
        f"{r.body_bytes:>10} {r.together:>6} {whole:>7} {r.accept_seconds:>8.2f} "
        f"{r.delivered:>9} {r.deliver_seconds:>8.2f} {r.longest_ping_ms:>15.1f} "
        f"{r.longest_call_ms:>15.1f} {r.longest_call:>14} {r.slow_calls:>13} "
        f"{r.longest_busy_ms:>13.0f} {r.longest_busy:>12}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the large-event benchmark; the exit status."""
    options = parse_args(argv)
    print(f"events to {options.webhooks} webhooks, {options.workers} worker(s); PINGs meanwhile")
    print(HEADER, flush=True)

    def finish(outcome: list[LargeEvent]) -> int:
        longest = max((r.longest_ping_ms for r in outcome if r.together), default=0.0)
        verdict = "met" if longest <= TARGET_PING_MS else "missed"
        document = {
            "machine": machine(),
            "webhooks": options.webhooks,
            "workers": options.workers,
            "events": [asdict(r) for r in outcome],
        }
        rounds = [r for r in outcome if r.together]
        expected = options.webhooks * options.together
        whole = len(rounds) == len(options.sizes) * options.events
        return conclude(
            "large",
            document,
            lambda: f"longest PING {longest:.1f} ms (target {TARGET_PING_MS:.0f} ms: {verdict})",
            whole and all(r.delivered == expected for r in rounds),
            "some deliveries did not arrive",
        )

    return scenario("bench.large", lambda procs: run(procs, options), finish)


if __name__ == "__main__":
    sys.exit(main())
