"""Single-event ingest against batches: events per second each way, at the same concurrency.

    .venv/bin/python -m bench.batch [--events 20000] [--concurrency 32] [--batch 100]
        [--upstream-ids]

Starts a throwaway redis-server (AOF, fsync every second), PostgreSQL and `relay api`, gives
one tenant one webhook (on a discard port: no worker runs, so only ingest is measured), then
posts the events one per request (POST /v1/events) with C clients, and as many again in
batches of B (POST /v1/events/batch) with C clients. It prints the events/s of each and their
ratio, with the API's CPU time per accepted event each way, and writes
bench/results/batch-<timestamp>.json. With --upstream-ids every event carries an upstream id
of its own, as senders that retry safely post them: each is then looked up in history. Exit
status: 0 when every event was accepted, 1 when not, 2 when the run could not be done, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson

from bench.harness import command_line, scenario, start_api, start_stores
from bench.load import Api, event_body, identified_body, in_turn, new_session, post_burst
from bench.procs import Child, Processes
from bench.report import conclude, machine

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
    parser = command_line("bench.batch", __doc__)
    add = parser.add_argument
    add("--events", type=int, default=20_000, help="events posted each way (default 20000)")
    add("--concurrency", type=int, default=32, help="clients / requests in flight (default 32)")
    add("--batch", type=int, default=100, help="events per batch (default 100, the API's most)")
    add(
        "--upstream-ids",
        action="store_true",
        help="give every event an upstream id of its own (each is then looked up in history)",
    )
    options = parser.parse_args(argv)
    if not 100 <= options.events <= 1_000_000 or not 1 <= options.concurrency <= 1024:
        parser.error("--events must be 100..1,000,000 and --concurrency 1..1024")
    if not 1 <= options.batch <= 1000:
        parser.error("--batch must be 1..1000")
    return options


# Makes the body of one event: a tenant's, numbered.
Body = Callable[[str, int], bytes]


def batch_body(first: int, count: int, body: Body = event_body) -> bytes:
    """A batch of `count` small events, numbered from `first`."""
    events = b",".join(body(TENANT, n) for n in range(first, first + count))
    return b'{"events":[' + events + b"]}"


async def post_batches(
    api: Api, count: int, concurrency: int, size: int, body: Body = event_body
) -> Ingest:
    """POST `count` events in batches of `size` as fast as `concurrency` clients can."""
    refused: Counter[str] = Counter()
    accepted = 0

    async def send(start: int) -> None:
        nonlocal accepted
        events = min(size, count - start)
        payload = batch_body(start, events, body)
        status, raw = await api.post_event(payload, path="/v1/events/batch")
        if status != 207:
            refused[str(status)] += events
            return
        outcomes = Counter(result["status"] for result in orjson.loads(raw)["data"])
        accepted += outcomes.pop(202, 0)
        refused.update({str(code): n for code, n in outcomes.items()})

    began = time.perf_counter()
    async with asyncio.timeout(60 + count / 50):
        await in_turn(concurrency, range(0, count, size), send)
    return Ingest("batch", count, accepted, dict(refused), time.perf_counter() - began)


async def post_singly(api: Api, count: int, concurrency: int, body: Body = event_body) -> Ingest:
    """POST `count` events one per request as fast as `concurrency` clients can."""
    posted = await post_burst(api, TENANT, count, concurrency, body)
    return Ingest("single", count, len(posted.accepted), dict(posted.refused), posted.seconds)


async def run(procs: Processes, options: argparse.Namespace) -> list[Ingest]:
    """Start the stores and the API, then post singly and in batches; what each way did."""
    stores = await start_stores(procs)
    settings = stores.settings(4, {"RELAY_MAX_BATCH_EVENTS": str(options.batch)})
    async with new_session(options.concurrency) as session:
        api_child, api = await start_api(procs, session, settings)
        await api.create("/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "tenant_id": TENANT})
        body = identified_body if options.upstream_ids else event_body
        clients, size = options.concurrency, options.batch
        await post_singly(api, WARM_UP, clients, body)
        await post_batches(api, WARM_UP, clients, size, body)
        single = await _costed(api_child, post_singly(api, options.events, clients, body))
        batch = await _costed(api_child, post_batches(api, options.events, clients, size, body))
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
        f"ingest of {options.events} events with {options.concurrency} clients, no worker"
        + (", each event with an upstream id" if options.upstream_ids else ""),
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

    def finish(outcome: list[Ingest]) -> int:
        document: dict[str, Any] = {
            "machine": machine(),
            "options": vars(options),
            "ways": [
                {**asdict(r), "per_second": r.per_second, "api_cpu_us": r.api_cpu_us}
                for r in outcome
            ],
        }
        return conclude(
            "batch",
            document,
            lambda: render(outcome, options),
            all(r.accepted == r.events for r in outcome),
            "some events were refused",
        )

    return scenario("bench.batch", lambda procs: run(procs, options), finish)


if __name__ == "__main__":
    sys.exit(main())
