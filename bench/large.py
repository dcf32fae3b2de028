"""What one large event costs everyone else: how long Redis stalls while it is delivered.

    .venv/bin/python -m bench.large [--sizes 1048576] [--webhooks 100] [--events 3]
                                    [--workers 1]

Starts a throwaway redis-server (AOF, fsync every second), PostgreSQL, `relay api`, the bench
receiver and `relay worker`s, registers that many webhooks of one tenant at the receiver, then
posts events of each body size to that tenant one at a time while another process PINGs Redis
in a loop (bench/pinger.py). Per event it reports how long the accept took, how long until the
receiver had every delivery, the longest PING from the POST until then — how long any other API
or worker call would have waited, through the accept, the claims, the settles and the history
writes — and the longest single call Redis logged (SLOWLOG). The target is a longest PING of 50 ms.

Exit status: 0 when every delivery arrived with a valid signature (the target met or not: it is
reported), 1 when not, 2 when the run could not be done, 130 when interrupted. A size whose
deliveries do not all arrive ends the run: what is stuck would skew every larger size.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import orjson
import redis.asyncio as aioredis

from bench.fanout import SLOWLOG_FLOOR_MICROS, longest_call
from bench.load import Api, LoadError, ReceiverClient, new_session
from bench.pinger import Pinger
from bench.procs import (
    Processes,
    RelaySettings,
    api_argv,
    bench_env,
    free_port,
    receiver_argv,
    run_harness,
    spawn_worker,
    start_postgres,
    start_redis,
    until_connected,
    wait_until,
)
from bench.report import RESULTS_DIR, machine
from relay.signing import generate_secret

TENANT = "bench_large"
TARGET_PING_MS = 50.0
DELIVERY_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class LargeEvent:
    """What one large event cost."""

    body_bytes: int
    status: int
    accept_seconds: float  # POST sent to 202 read
    delivered: int  # requests the receiver verified
    deliver_seconds: float  # POST sent to the last delivery in (or the timeout)
    longest_ping_ms: float
    longest_call_ms: float
    longest_call: str  # the command of that call
    slow_calls: int  # calls of a millisecond or more


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.large", description=__doc__)
    add = parser.add_argument
    add("--sizes", default="1048576", help="body sizes in bytes, comma-separated (1 MiB)")
    add("--webhooks", type=int, default=100, help="webhooks of the tenant (default 100)")
    add("--events", type=int, default=3, help="events posted per size, one at a time (3)")
    add("--workers", type=int, default=1, help="relay worker processes (default 1)")
    ns = parser.parse_args(argv)
    try:
        ns.sizes = sorted(int(s) for s in ns.sizes.split(","))
    except ValueError:
        parser.error("--sizes takes byte counts separated by commas")
    if ns.sizes[0] < 1024:
        parser.error("--sizes must be at least 1024 bytes each")
    if not 1 <= ns.webhooks <= 10_000 or not 1 <= ns.events <= 100 or not 1 <= ns.workers <= 8:
        parser.error("--webhooks must be 1..10000, --events 1..100 and --workers 1..8")
    return ns


def large_body(size: int, number: int) -> bytes:
    """A `post.published` event whose request body is `size` bytes, most of it one string."""

    def body(text: str) -> bytes:
        data = {"post_id": f"p_{number}", "platform": "bench", "text": text}
        return orjson.dumps({"type": "post.published", "tenant_id": TENANT, "data": data})

    return body("x" * (size - len(body(""))))


async def post_large(
    api: Api,
    receiver: ReceiverClient,
    client: aioredis.Redis,
    pinger: Pinger,
    size: int,
    number: int,
    webhooks: int,
) -> LargeEvent:
    """Post one event of `size` bytes and measure what it cost until every delivery is in."""
    body = large_body(size, number)
    await receiver.reset()
    await client.slowlog_reset()
    await asyncio.to_thread(pinger.take)
    started = time.perf_counter()
    status, _ = await api.post_event(body)
    accepted = time.perf_counter() - started
    arrived = await receiver.wait_for(webhooks, DELIVERY_TIMEOUT) if status == 202 else None
    delivered = time.perf_counter() - started
    stall = await asyncio.to_thread(pinger.take)
    call_ms, command, slow = await longest_call(client)
    return LargeEvent(
        size,
        status,
        accepted,
        arrived.verified if arrived else 0,
        delivered,
        stall * 1000,
        call_ms,
        command,
        slow,
    )


async def run(procs: Processes, options: argparse.Namespace) -> list[LargeEvent]:
    """Start everything, register the webhooks, post the events; what each cost."""
    redis_port, api_port, receiver_port = free_port(), free_port(), free_port()
    await start_redis(procs, redis_port)
    postgres = await start_postgres(procs)
    secret = generate_secret()
    receiver_child = procs.spawn("receiver", receiver_argv(receiver_port), bench_env(secret))
    settings = RelaySettings(
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        database_url=postgres.url,
        admin_token=secrets.token_urlsafe(24),
        endpoint_concurrency=4,
        extra={
            "RELAY_MAX_BODY_BYTES": str(max(options.sizes)),
            "RELAY_MAX_WEBHOOKS_PER_TENANT": str(max(100, options.webhooks)),
        },
    )
    api_child = procs.spawn("api", api_argv(api_port), settings.env())
    client = aioredis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=60)
    results: list[LargeEvent] = []
    try:
        async with new_session(4) as session:
            api = Api(session, f"http://127.0.0.1:{api_port}", settings.admin_token)
            receiver = ReceiverClient(session, receiver_port)
            await wait_until(receiver.ready, receiver_child, "receiver")
            await wait_until(api.ready, api_child, "relay api")
            for n in range(options.webhooks):
                hook = {"url": receiver.hook_url(f"large-{n}"), "tenant_id": TENANT}
                await api.create("/v1/webhooks", {**hook, "secret": secret})
            for n in range(options.workers):
                worker = spawn_worker(procs, f"worker{n + 1}", settings.env())
                await until_connected(worker, redis_port)
            await client.config_set("slowlog-log-slower-than", SLOWLOG_FLOOR_MICROS)
            await client.config_set("slowlog-max-len", 10_000)
            with Pinger(redis_port) as pinger:
                for size in options.sizes:
                    for number in range(options.events):
                        result = await post_large(
                            api, receiver, client, pinger, size, number, options.webhooks
                        )
                        results.append(result)
                        print(render_row(result), flush=True)
                        if result.delivered < options.webhooks:
                            return results
    finally:
        await client.aclose()
    return results


HEADER = (
    f"{'body bytes':>10} {'status':>6} {'accept s':>8} {'delivered':>9} {'all in s':>8} "
    f"{'longest PING ms':>15} {'longest call ms':>15} {'(command)':>16} {'calls >= 1 ms':>13}"
)


def render_row(r: LargeEvent) -> str:
    """One event's line of the table."""
    return (
        f"{r.body_bytes:>10} {r.status:>6} {r.accept_seconds:>8.2f} {r.delivered:>9} "
        f"{r.deliver_seconds:>8.2f} {r.longest_ping_ms:>15.1f} {r.longest_call_ms:>15.1f} "
        f"{r.longest_call:>16} {r.slow_calls:>13}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the large-event benchmark; the exit status."""
    options = parse_args(argv)
    print(f"events to {options.webhooks} webhooks, {options.workers} worker(s); a thread PINGs")
    print(HEADER, flush=True)

    async def go(procs: Processes) -> list[LargeEvent]:
        return await run(procs, options)

    outcome = run_harness("bench.large", go, (LoadError,))
    if isinstance(outcome, int):
        return outcome
    longest = max((r.longest_ping_ms for r in outcome), default=0.0)
    verdict = "met" if longest <= TARGET_PING_MS else "missed"
    print(f"longest PING {longest:.1f} ms (target {TARGET_PING_MS:.0f} ms: {verdict})")
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"large-{stamp}.json"
    document = {
        "machine": machine(),
        "webhooks": options.webhooks,
        "workers": options.workers,
        "events": [asdict(r) for r in outcome],
    }
    path.write_text(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    print(f"results: {path}")
    whole = len(outcome) == len(options.sizes) * options.events
    return 0 if whole and all(r.delivered == options.webhooks for r in outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
