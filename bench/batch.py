"""Single-event ingest against batches: events per second each way, at the same concurrency.

    .venv/bin/python -m bench.batch [--events 20000] [--concurrency 32] [--batch 100]

Starts a throwaway redis-server (AOF, fsync every second), PostgreSQL and `relay api`, gives
one tenant one webhook (on a discard port: no worker runs, so only ingest is measured), then
posts the events one per request (POST /v1/events) with C clients, and as many again in
batches of B (POST /v1/events/batch) with C clients. It prints the events/s of each and their
ratio, with the API's CPU time per accepted event each way, and writes
bench/results/batch-<timestamp>.json. Exit status: 0 when every event was
accepted, 1 when not, 2 when the run could not be done, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson

from bench.load import Api, LoadError, event_body, new_session, post_burst
from bench.procs import (
    Child,
    Processes,
    RelaySettings,
    api_argv,
    free_port,
    run_harness,
    start_postgres,
    start_redis,
    wait_until,
)
from bench.report import machine, save

TENANT = "bench_batch"
# Events posted each way before measuring: scripts cached, connections open, code warm.
WARM_UP = 500


@dataclass(frozen=True, slots=True)
class Ingest:
    """One way of posting: how many events went in, how fast."""

    way: str
    events: int
    accepted: int
    refused: dict[str, int]
    seconds: float
    api_cpu_seconds: float = 0.0  # what the API process spent meanwhile

    @property
    def per_second(self) -> float:
        """Accepted events per second."""
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    @property
    def api_cpu_us(self) -> float:
        """The API's CPU time per accepted event, in microseconds."""
        return self.api_cpu_seconds * 1e6 / self.accepted if self.accepted else 0.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read and check the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    add = parser.add_argument
    add("--events", type=int, default=20_000, help="events posted each way (default 20000)")
    add("--concurrency", type=int, default=32, help="clients / requests in flight (default 32)")
    add("--batch", type=int, default=100, help="events per batch (default 100, the API's most)")
    options = parser.parse_args(argv)
    if not 100 <= options.events <= 1_000_000 or not 1 <= options.concurrency <= 1024:
        parser.error("--events must be 100..1,000,000 and --concurrency 1..1024")
    if not 1 <= options.batch <= 1000:
        parser.error("--batch must be 1..1000")
    return options


def batch_body(first: int, count: int) -> bytes:
    """A batch of `count` small events, numbered from `first`."""
    events = b",".join(event_body(TENANT, n) for n in range(first, first + count))
    return b'{"events":[' + events + b"]}"


async def post_batches(api: Api, count: int, concurrency: int, size: int) -> Ingest:
    """POST `count` events in batches of `size` as fast as `concurrency` clients can."""
    starts = iter(range(0, count, size))  # shared: whichever client frees up takes the next
    refused: Counter[str] = Counter()
    accepted = 0

    async def client() -> None:
        nonlocal accepted
        for start in starts:
            events = min(size, count - start)
            status, raw = await api.post_event(batch_body(start, events), path="/v1/events/batch")
            if status != 207:
                refused[str(status)] += events
                continue
            outcomes = Counter(result["status"] for result in orjson.loads(raw)["data"])
            accepted += outcomes.pop(202, 0)
            refused.update({str(code): n for code, n in outcomes.items()})

    began = time.perf_counter()
    async with asyncio.timeout(60 + count / 50):
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return Ingest("batch", count, accepted, dict(refused), time.perf_counter() - began)


async def post_singly(api: Api, count: int, concurrency: int) -> Ingest:
    """POST `count` events one per request as fast as `concurrency` clients can."""
    posted = await post_burst(api, TENANT, count, concurrency)
    return Ingest("single", count, len(posted.accepted), dict(posted.refused), posted.seconds)


async def run(procs: Processes, options: argparse.Namespace) -> list[Ingest]:
    """Start the stores and the API, then post singly and in batches; what each way did."""
    redis_port, api_port = free_port(), free_port()
    await start_redis(procs, redis_port)
    postgres = await start_postgres(procs)
    token = secrets.token_urlsafe(24)
    settings = RelaySettings(
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        database_url=postgres.url,
        admin_token=token,
        endpoint_concurrency=4,
        extra={"RELAY_MAX_BATCH_EVENTS": str(options.batch)},
    )
    api_child = procs.spawn("api", api_argv(api_port), settings.env())
    async with new_session(options.concurrency) as session:
        api = Api(session, f"http://127.0.0.1:{api_port}", token)
        await wait_until(api.ready, api_child, "relay api")
        await api.create("/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "tenant_id": TENANT})
        await post_singly(api, WARM_UP, options.concurrency)
        await post_batches(api, WARM_UP, options.concurrency, options.batch)
        single = await _costed(api_child, post_singly(api, options.events, options.concurrency))
        batch = await _costed(
            api_child, post_batches(api, options.events, options.concurrency, options.batch)
        )
        api_child.check_alive()
    return [single, batch]


async def _costed(api_child: Child, posting: Awaitable[Ingest]) -> Ingest:
    """What `posting` did, with the API process's CPU time meanwhile."""
    before = api_child.cpu_seconds()
    done = await posting
    return replace(done, api_cpu_seconds=api_child.cpu_seconds() - before)


def render(results: list[Ingest], options: argparse.Namespace) -> str:
    """The table of both ways, and the ratio."""
    single, batch = results
    lines = [
        f"ingest of {options.events} events with {options.concurrency} clients, no worker",
        f"{'way':>24} {'accepted':>9} {'refused':>8} {'seconds':>8} {'events/s':>9} "
        f"{'API CPU/event':>14}",
    ]
    for r, way in ((single, "POST /v1/events"), (batch, f"batch of {options.batch}")):
        lines.append(
            f"{way:>24} {r.accepted:>9} {sum(r.refused.values()):>8} {r.seconds:>8.2f} "
            f"{r.per_second:>9.0f} {r.api_cpu_us:>11.0f} µs"
        )
    ratio = batch.per_second / single.per_second if single.per_second else float("inf")
    lines.append(f"batch / single: {ratio:.1f}x the events/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the batch benchmark; the exit status."""
    options = parse_args(argv)

    async def go(procs: Processes) -> list[Ingest]:
        return await run(procs, options)

    outcome = run_harness("bench.batch", go, (LoadError,))
    if isinstance(outcome, int):
        return outcome
    print(render(outcome, options))
    document: dict[str, Any] = {
        "machine": machine(),
        "options": vars(options),
        "ways": [
            {**asdict(r), "per_second": r.per_second, "api_cpu_us": r.api_cpu_us} for r in outcome
        ],
    }
    print(f"results: {save('batch', document)}")
    return 0 if all(r.accepted == r.events for r in outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
