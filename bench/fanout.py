"""What one wide fan-out costs everyone else: how long Redis stalls while it is accepted.

    .venv/bin/python -m bench.fanout [--webhooks 20000] [--events 3]

Starts a throwaway redis-server (AOF, fsync every second), PostgreSQL and `relay api` with
RELAY_MAX_WEBHOOKS_PER_TENANT raised, stores that many webhooks for one tenant (straight into
the store: creating them is not what is measured), then posts events to that tenant one at a
time while a thread PINGs Redis in a loop. Per event it reports the longest PING — how long any
other API or worker call would have waited — the longest single call Redis logged (SLOWLOG) and
the accept's total time. No worker runs, so only the accept is measured. Exit status: 0 when
every event was accepted with a delivery per webhook, 1 when not, 2 when the run could not be
done, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from dataclasses import asdict, dataclass

import orjson
import redis.asyncio as aioredis

from bench.harness import command_line, scenario, start_api, start_stores
from bench.load import Api, event_body, new_session
from bench.pinger import Pinger
from bench.procs import Processes
from bench.report import conclude, machine
from relay.api.webhooks import WebhookCreate
from relay.secrets import Keyring
from relay.store.webhooks import WebhookStore
from relay.validation import parse
from relay.webhooks import new_webhook

TENANT = "bench_wide"
# Only what a slow call would hold up is logged: any call of a millisecond or more.
SLOWLOG_FLOOR_MICROS = 1000
# Which step of an accept a logged script call was (the start of its JSON argument).
STEP = re.compile(rb'"step":"(\w+)"')
# Which other script a logged call was, by the first two keys its JSON argument names (SLOWLOG
# keeps the first 128 bytes of an argument).
FIRST_KEYS = re.compile(rb'\{"keys":\{"(\w+)":"[^"]*","(\w+)"')
SCRIPTS = {
    (b"delivery", b"webhook"): "claim",
    (b"delivery", b"queue"): "extend",
    (b"history", b"queue"): "settle",
    (b"history", b"group"): "release",
}


@dataclass(frozen=True, slots=True)
class Accept:
    """What one accept of a wide fan-out cost."""

    status: int
    deliveries: int
    seconds: float  # POST sent to 202 read
    longest_ping_ms: float
    longest_call_ms: float
    longest_call: str  # the command of that call
    slow_calls: int  # calls of a millisecond or more


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = command_line("bench.fanout", __doc__)
    parser.add_argument("--webhooks", type=int, default=20_000, help="webhooks of the tenant")
    parser.add_argument("--events", type=int, default=3, help="events posted, one at a time")
    return parser.parse_args(argv)


async def store_webhooks(client: aioredis.Redis, keyring: Keyring, count: int) -> None:
    """`count` webhooks of one tenant, stored as the API stores them."""
    store = WebhookStore(client, count)
    spec = parse(WebhookCreate, {"url": "http://127.0.0.1:9/hook"})  # discard port; no worker
    for start in range(0, count, 500):
        batch = range(start, min(count, start + 500))
        made = [new_webhook(spec, TENANT, keyring)[0] for _ in batch]
        await asyncio.gather(*(store.add(w) for w in made))


def _named(command: bytes) -> str:
    """A logged call by its command, and for a script which one (an accept with its step)."""
    name = command.split(b" ", 1)[0].decode()
    if step := STEP.search(command):
        return f"{name} {step.group(1).decode()}"
    if (first := FIRST_KEYS.search(command)) and first.groups() in SCRIPTS:
        return f"{name} {SCRIPTS[first.groups()]}"
    return name


async def longest_call(client: aioredis.Redis) -> tuple[float, str, int]:
    """The longest call SLOWLOG holds (ms), what it was, how many it holds; then clear it."""
    entries = await client.slowlog_get(10_000)
    await client.slowlog_reset()
    if not entries:
        return 0.0, "", 0
    top = max(entries, key=lambda e: e["duration"])
    return top["duration"] / 1000, _named(top["command"]), len(entries)


async def accept_one(api: Api, client: aioredis.Redis, pinger: Pinger, number: int) -> Accept:
    """Post one event to the wide tenant and measure what it cost."""
    await client.slowlog_reset()
    await asyncio.to_thread(pinger.take)
    started = time.perf_counter()
    status, raw = await api.post_event(event_body(TENANT, number))
    seconds = time.perf_counter() - started
    stall = await asyncio.to_thread(pinger.take)
    call_ms, command, slow = await longest_call(client)
    deliveries = len(orjson.loads(raw)["data"]["deliveries"]) if status == 202 else 0
    return Accept(status, deliveries, seconds, stall * 1000, call_ms, command, slow)


async def run(procs: Processes, webhooks: int, events: int) -> list[Accept]:
    """Start the stores and the API, store the webhooks, post the events; what each accept cost."""
    stores = await start_stores(procs)
    settings = stores.settings(4, {"RELAY_MAX_WEBHOOKS_PER_TENANT": str(webhooks)})
    client = stores.client(timeout=60)
    try:
        started = time.perf_counter()
        await store_webhooks(client, Keyring.from_strings([settings.master_key]), webhooks)
        print(f"stored {webhooks} webhooks in {time.perf_counter() - started:.1f}s")
        await client.config_set("slowlog-log-slower-than", SLOWLOG_FLOOR_MICROS)
        await client.config_set("slowlog-max-len", 10_000)
        async with new_session(4) as session:
            _, api = await start_api(procs, session, settings)
            with Pinger(stores.redis_port) as pinger:
                return [await accept_one(api, client, pinger, n) for n in range(events)]
    finally:
        await client.aclose()


def render(results: list[Accept], webhooks: int) -> str:
    """The table of what each accept cost."""
    lines = [
        f"one accept fanned out to {webhooks} webhooks, while another client PINGs Redis",
        f"{'event':>5} {'status':>6} {'deliveries':>10} {'accept s':>9} "
        f"{'longest PING ms':>16} {'longest call ms':>16} {'(command)':>14} {'calls >= 1 ms':>14}",
    ]
    for n, r in enumerate(results, 1):
        lines.append(
            f"{n:>5} {r.status:>6} {r.deliveries:>10} {r.seconds:>9.2f} "
            f"{r.longest_ping_ms:>16.1f} {r.longest_call_ms:>16.1f} {r.longest_call:>14} "
            f"{r.slow_calls:>14}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the fan-out benchmark; the exit status."""
    options = parse_args(argv)

    def finish(outcome: list[Accept]) -> int:
        document = {
            "machine": machine(),
            "webhooks": options.webhooks,
            "accepts": [asdict(r) for r in outcome],
        }
        return conclude(
            "fanout",
            document,
            lambda: render(outcome, options.webhooks),
            all(r.status == 202 and r.deliveries == options.webhooks for r in outcome),
            "some events were not accepted with a delivery per webhook",
        )

    return scenario(
        "bench.fanout", lambda procs: run(procs, options.webhooks, options.events), finish
    )


if __name__ == "__main__":
    sys.exit(main())
