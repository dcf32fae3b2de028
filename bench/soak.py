"""Soak run: relay under steady load for a while, watching for anything that keeps growing.

    .venv/bin/python -m bench.soak [--seconds 60] [--rate 100] [--failing-share 0.2] [--workers 2]

It starts a throwaway redis-server (AOF on), PostgreSQL, `relay api` and N `relay worker`
processes, runs receivers on loopback (healthy ones, ones answering 500 and one slower than the
delivery timeout), registers webhooks through the API and posts events at a steady rate. Every
few seconds it samples the processes (RSS, open files) and Redis (memory, keys, queue, pending
deliveries); at the end it prints start against end with a verdict per measure and writes every
sample to bench/results/soak-<timestamp>.json.

Exit status: 0 when every measure stayed bounded and every healthy delivery arrived, 1 when
not, 2 when the run itself could not be done, 130 when interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
import psutil  # type: ignore[import-untyped]  # psutil ships no type information
import redis.asyncio as aioredis

from bench import harness
from bench.harness import Stack, command_line, scenario
from bench.load import Api, PathTally, event, in_turn, media_data, new_session, post_data
from bench.procs import Processes
from bench.report import save
from relay.store.metrics import queued as queued_deliveries

# Short retry steps so whole schedules, and the retry traffic they make, fit in the run.
RETRY_SCHEDULE = (1, 2, 4)
DELIVERY_TIMEOUT = 2.0
# Also relay's default; set explicitly because the slow endpoint's share of events is derived
# from it (see `slow_event_every`).
ENDPOINT_CONCURRENCY = 4
SLOW_REPLY_SECONDS = DELIVERY_TIMEOUT + 1.0
PRINT_EVERY = 10.0

ReceiverKind = Literal["healthy", "error", "slow"]
MeasureKind = Literal["level", "stored", "counter"]
Phase = Literal["start", "load", "end", "drained"]


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, checked."""

    seconds: float
    rate: float
    failing_share: float
    workers: int
    retention_days: int
    tenants: int
    webhooks_per_tenant: int
    concurrency: int
    interval: float
    drain: float
    threshold: float


def parse_args(argv: list[str] | None) -> Options:
    """Read and check the command line."""
    parser = command_line("bench.soak", __doc__)
    add = parser.add_argument
    add("--seconds", type=float, default=60.0, help="how long to post events (default 60)")
    add("--rate", type=float, default=100.0, help="events posted per second (default 100)")
    add("--failing-share", type=float, default=0.2, help="share of failing webhooks (0.2)")
    add("--workers", type=int, default=2, help="relay worker processes (default 2)")
    add("--retention-days", type=int, default=30, help="RELAY_RETENTION_DAYS (default 30)")
    add("--tenants", type=int, default=4, help="tenants to register (default 4)")
    add("--webhooks-per-tenant", type=int, default=2, help="webhooks per tenant (default 2)")
    add("--concurrency", type=int, default=8, help="event posts in flight at most (default 8)")
    add("--interval", type=float, default=2.0, help="seconds between samples (default 2)")
    add("--drain", type=float, default=30.0, help="seconds to wait for retries to end (30)")
    add("--threshold", type=float, default=0.10, help="growth tolerated, last vs middle third")
    ns = parser.parse_args(argv)
    if ns.seconds <= 0 or ns.rate <= 0 or ns.interval <= 0 or ns.drain < 0:
        parser.error("--seconds, --rate and --interval must be positive, --drain not negative")
    if not 0 <= ns.failing_share <= 1:
        parser.error("--failing-share must be between 0 and 1")
    if min(ns.workers, ns.tenants, ns.webhooks_per_tenant, ns.concurrency) < 1:
        parser.error("--workers, --tenants, --webhooks-per-tenant and --concurrency must be >= 1")
    if ns.retention_days < 1:
        parser.error("--retention-days must be >= 1")
    return Options(**vars(ns))


# --- the system under test ----------------------------------------------------------------------


async def start(procs: Processes, opts: Options, session: aiohttp.ClientSession) -> Stack:
    """Start the stores, the receiver, the API and the workers; wait until all are up."""
    stack = await harness.start(
        procs,
        session,
        endpoint_concurrency=ENDPOINT_CONCURRENCY,
        extra={
            "RELAY_RETRY_SCHEDULE": ",".join(map(str, RETRY_SCHEDULE)),
            "RELAY_DELIVERY_TIMEOUT": str(DELIVERY_TIMEOUT),
            "RELAY_RETENTION_DAYS": str(opts.retention_days),
            "RELAY_API_RATE_LIMIT": "1000",  # production's default: it is part of what is soaked
        },
        receiver_options=("--hang-seconds", str(SLOW_REPLY_SECONDS)),
    )
    # Waiting for the connection keeps the workers' slow start-up out of the "start" figures.
    await stack.start_workers(opts.workers)
    return stack


# --- receivers and webhooks --------------------------------------------------------------------


# Where each kind of endpoint lives on the bench receiver.
PATHS: dict[ReceiverKind, str] = {"healthy": "hook", "error": "fail", "slow": "hang"}


@dataclass(frozen=True, slots=True)
class Webhook:
    """A registered webhook and the receiver path behind it."""

    id: str
    tenant: str
    kind: ReceiverKind
    path: str


def tenant_name(index: int) -> str:
    """The tenant id of tenant number `index`."""
    return f"soak_{index}"


def webhook_kinds(tenants: int, per_tenant: int, failing_share: float) -> list[list[ReceiverKind]]:
    """Each tenant's receivers: the failing ones are spread over tenants, each tenant's last
    webhooks first, so every tenant keeps healthy ones as long as there are enough."""
    kinds: list[list[ReceiverKind]] = [["healthy"] * per_tenant for _ in range(tenants)]
    failing = round(tenants * per_tenant * failing_share)
    # One slow endpoint is enough to exercise timeouts; the rest of the failing ones fail fast.
    failing_kinds: list[ReceiverKind] = ["error"] * failing
    if failing > 1:
        failing_kinds[0] = "slow"
    slots = [(t, w) for w in reversed(range(per_tenant)) for t in range(tenants)]
    for (t, w), kind in zip(slots[: len(failing_kinds)], failing_kinds, strict=True):
        kinds[t][w] = kind
    return kinds


async def register(stack: Stack, kinds: list[list[ReceiverKind]]) -> list[Webhook]:
    """Create one webhook per receiver path through the API."""
    webhooks: list[Webhook] = []
    for index, tenant_kinds in enumerate(kinds):
        for number, kind in enumerate(tenant_kinds):
            path = f"/{PATHS[kind]}/{tenant_name(index)}-{number}"
            made = await stack.add_webhook(
                path,
                tenant_name(index),
                # The slow endpoint gets only the rare media events: see `slow_event_every`.
                events=["media.uploaded"] if kind == "slow" else ["*"],
                description=f"soak {kind}",
            )
            webhooks.append(Webhook(made["id"], tenant_name(index), kind, path))
    return webhooks


# --- load --------------------------------------------------------------------------------------


def slow_event_every(rate: float) -> int:
    """Every how many events one is a media event, the only type the slow endpoint takes.

    An endpoint that never answers in time takes at most ENDPOINT_CONCURRENCY / DELIVERY_TIMEOUT
    attempts a second, and each of its deliveries uses every attempt of the schedule. Sending it
    half of that keeps it failing all the time without a backlog that grows by construction.
    """
    attempts = len(RETRY_SCHEDULE) + 1
    deliveries_per_second = ENDPOINT_CONCURRENCY / DELIVERY_TIMEOUT / attempts
    return max(1, math.ceil(rate / (deliveries_per_second / 2)))


def event_body(number: int, tenants: int, media_every: int) -> dict[str, Any]:
    """Event `number` of the run: mostly posts published, some failed, a few media uploads."""
    if number % media_every == 0:
        # Tenant 0 is where the slow endpoint is (see `webhook_kinds`).
        return event("media.uploaded", tenant_name(0), media_data(number))
    tenant = tenant_name(number % tenants)
    if number % 10 == 9:
        failure = {"post_id": f"p_{number}", "error": {"message": "quota exceeded", "code": "q"}}
        return event("post.failed", tenant, failure)
    data = post_data(number, "soak", url=f"https://example.com/{number}")
    return event("post.published", tenant, data)


@dataclass(slots=True)
class LoadStats:
    """What posting events gave."""

    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # status code or error → count
    latencies: list[float] = field(default_factory=list)
    expected: Counter[str] = field(default_factory=Counter)  # webhook id → deliveries made


async def post_event(api: Api, body: dict[str, Any], stats: LoadStats) -> None:
    """Post one event and count what the API answered."""
    began = time.perf_counter()
    try:
        status, answer = await api.post_event(orjson.dumps(body))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        stats.refused[type(exc).__name__] += 1
        return
    stats.latencies.append(time.perf_counter() - began)
    if status != 202:
        stats.refused[str(status)] += 1
        return
    stats.accepted += 1
    for delivery in orjson.loads(answer)["data"]["deliveries"]:
        stats.expected[delivery["webhook_id"]] += 1


async def post_events(api: Api, opts: Options, stats: LoadStats) -> None:
    """Post events on a fixed timetable (event n at n / rate) until the time is up.

    A few senders share one timetable: when the API falls behind they post back to back, at
    most `concurrency` at once, instead of piling up requests; either way it ends on time.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + opts.seconds
    media_every = slow_event_every(opts.rate)

    def on_time(number: int) -> bool:
        return start + number / opts.rate < deadline and loop.time() < deadline

    async def send(number: int) -> None:
        await asyncio.sleep(max(0.0, start + number / opts.rate - loop.time()))
        await post_event(api, event_body(number, opts.tenants, media_every), stats)

    await in_turn(opts.concurrency, itertools.takewhile(on_time, itertools.count()), send)


# --- samples -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measure:
    """One figure sampled over the run, and how to judge it.

    level: should stay flat under steady load (process memory, open files, backlogs).
    stored: grows with the data retention keeps, so it is judged per accepted event.
    counter: grows by nature; shown as a rate.
    """

    name: str
    kind: MeasureKind
    unit: Literal["bytes", "count"]
    slack: float = 0.0  # absolute growth tolerated on top of the relative threshold


def measures(workers: int, rate: float) -> list[Measure]:
    """Everything sampled, in the order it is shown."""
    names = ["api", *(f"worker{n}" for n in range(1, workers + 1))]
    mib = 1024 * 1024
    return [
        *(Measure(f"{name} rss", "level", "bytes", slack=2 * mib) for name in names),
        Measure("redis rss", "stored", "bytes"),
        *(Measure(f"{name} fds", "level", "count", slack=2) for name in names),
        Measure("redis used_memory", "stored", "bytes"),
        Measure("redis keys", "stored", "count"),
        # Backlogs jitter with retry timing; one second of events is noise, not growth.
        Measure("due deliveries", "level", "count", slack=rate),
        Measure("queued deliveries", "level", "count", slack=rate),
        Measure("events accepted", "counter", "count"),
        Measure("receiver requests", "counter", "count"),
        Measure("delivered", "counter", "count"),
    ]


@dataclass(frozen=True, slots=True)
class Sample:
    """Every measure at one moment; `t` is seconds since the load started."""

    t: float
    phase: Phase
    values: dict[str, float]


@dataclass(slots=True)
class Watch:
    """What a sample reads from."""

    stack: Stack
    redis: aioredis.Redis
    stats: LoadStats
    processes: dict[str, Any]  # name → psutil.Process

    @classmethod
    def of(cls, stack: Stack, stats: LoadStats) -> Watch:
        """Watch these processes, Redis and the receiver."""
        redis = stack.stores.redis_child
        processes = {c.name: psutil.Process(c.pid) for c in [*stack.relay, redis]}
        return cls(stack, stack.redis, stats, processes)


async def take_sample(watch: Watch, t: float, phase: Phase) -> Sample:
    """Read every measure now."""
    watch.stack.check_alive()
    values: dict[str, float] = {}
    for name, process in watch.processes.items():
        values[f"{name} rss"] = process.memory_info().rss
    for child in watch.stack.relay:
        values[f"{child.name} fds"] = watch.processes[child.name].num_fds()
    memory = await watch.redis.info("memory")
    values["redis used_memory"] = memory["used_memory"]
    values["redis keys"] = await watch.redis.dbsize()
    # Every delivery in flight is in its endpoint's queue: due (ready to go, or waiting for a
    # slot of its endpoint or tenant), or not yet (a retry later, an attempt under way).
    queued = await queued_deliveries(watch.redis, int(time.time() * 1000))
    values["due deliveries"] = queued.due
    values["queued deliveries"] = queued.pending
    values["events accepted"] = watch.stats.accepted
    paths = await watch.stack.receiver.paths()
    values["receiver requests"] = sum(p.requests for p in paths.values())
    values["delivered"] = sum(len(p.accepted) for p in paths.values())
    return Sample(round(t, 2), phase, values)


def sample_line(sample: Sample, workers: int) -> str:
    """One sample as one printed line."""
    v = sample.values
    names = [f"worker{n}" for n in range(1, workers + 1)]
    mib = 1024 * 1024
    rate = v["events accepted"] / sample.t if sample.t > 0 else 0.0
    worker_rss = "/".join(f"{v[name + ' rss'] / mib:.1f}" for name in names)
    worker_fds = "/".join(f"{v[name + ' fds']:.0f}" for name in names)
    return (
        f"[{sample.t:5.0f}s {sample.phase:7}] accepted {v['events accepted']:,.0f} ({rate:.0f}/s)"
        f"  received {v['receiver requests']:,.0f}"
        f" | rss MiB api {v['api rss'] / mib:.1f} workers {worker_rss}"
        f" redis {v['redis rss'] / mib:.1f}"
        f" | fds api {v['api fds']:.0f} workers {worker_fds}"
        f" | redis {v['redis used_memory'] / mib:.1f} MiB {v['redis keys']:,.0f} keys"
        f" | queued {v['queued deliveries']:,.0f} due {v['due deliveries']:,.0f}"
    )


async def watch_load(
    load: asyncio.Task[None], watch: Watch, began: float, opts: Options, samples: list[Sample]
) -> None:
    """Sample every `interval` seconds while the load runs; print one line every ~10 s."""
    loop = asyncio.get_running_loop()
    next_print = PRINT_EVERY
    for tick in itertools.count(1):
        wait = began + tick * opts.interval - loop.time()
        if wait > 0:
            await asyncio.wait({load}, timeout=wait)  # wakes early when the load ends
        if load.done():
            return
        sample = await take_sample(watch, loop.time() - began, "load")
        samples.append(sample)
        if sample.t >= next_print - opts.interval / 2:
            print(sample_line(sample, opts.workers), flush=True)
            next_print += PRINT_EVERY


@dataclass(slots=True)
class Report:
    """Everything one run measured."""

    samples: list[Sample]
    stats: LoadStats
    webhooks: list[Webhook]
    received: dict[str, PathTally]  # what the receiver got, per webhook path
    load_seconds: float
    drained: bool


async def soak(procs: Processes, opts: Options) -> Report:
    """Everything up, webhooks registered, the load posted and watched, then drained."""
    kinds = webhook_kinds(opts.tenants, opts.webhooks_per_tenant, opts.failing_share)
    stats = LoadStats()
    samples: list[Sample] = []
    async with new_session(opts.concurrency) as session:
        stack = await start(procs, opts, session)
        try:
            webhooks = await register(stack, kinds)
            counts = Counter(kind for tenant_kinds in kinds for kind in tenant_kinds)
            print(
                f"soak: {opts.tenants} tenants, {len(webhooks)} webhooks ({counts['healthy']}"
                f" healthy, {counts['error']} answering 500, {counts['slow']} slower than the"
                f" {DELIVERY_TIMEOUT:g}s timeout); {opts.rate:g} events/s for {opts.seconds:g}s,"
                f" {opts.workers} workers",
                flush=True,
            )

            watch = Watch.of(stack, stats)
            loop = asyncio.get_running_loop()
            samples.append(await take_sample(watch, 0.0, "start"))
            print(sample_line(samples[-1], opts.workers), flush=True)
            began = loop.time()
            load = asyncio.create_task(post_events(stack.api, opts, stats))
            try:
                await watch_load(load, watch, began, opts, samples)
                await load
            finally:
                load.cancel()  # does nothing once it is done; stops it if watching failed
                with contextlib.suppress(asyncio.CancelledError):
                    await load
            load_seconds = loop.time() - began
            samples.append(await take_sample(watch, load_seconds, "end"))
            print(sample_line(samples[-1], opts.workers), flush=True)

            print(f"soak: load done; waiting up to {opts.drain:g}s for retries to end", flush=True)
            drained = await stack.settle(opts.drain)
            samples.append(await take_sample(watch, loop.time() - began, "drained"))
            print(sample_line(samples[-1], opts.workers), flush=True)
            received = await stack.receiver.paths()
        finally:
            await stack.redis.aclose()
    return Report(samples, stats, webhooks, received, load_seconds, drained)


# --- verdict -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Judgement:
    """One measure, start against end, and whether it stayed bounded.

    `middle` and `last` are the averages over the middle and the last third of the load (per
    accepted event for stored data); `bounded` is None for counters and runs too short to tell.
    """

    measure: str
    kind: MeasureKind
    start: float
    end: float
    middle: float | None
    last: float | None
    bounded: bool | None


def judge(measure: Measure, samples: list[Sample], threshold: float) -> Judgement:
    """Compare the last third of the load with the middle third: the first third is warm-up."""
    run = [s for s in samples if s.phase != "drained"]
    start, end = run[0].values[measure.name], run[-1].values[measure.name]
    if measure.kind == "counter":
        return Judgement(measure.name, measure.kind, start, end, None, None, None)

    def value(sample: Sample) -> float | None:
        raw = sample.values[measure.name]
        if measure.kind == "level":
            return raw
        events = sample.values["events accepted"]
        return (raw - start) / events if events else None

    span = run[-1].t

    def average(low: float, high: float) -> float | None:
        found = [v for s in run if low <= s.t <= high and (v := value(s)) is not None]
        return statistics.fmean(found) if found else None

    middle = average(span / 3, 2 * span / 3 - 1e-9)
    last = average(2 * span / 3, span)
    if middle is None or last is None:
        return Judgement(measure.name, measure.kind, start, end, middle, last, None)
    bounded = last <= middle + abs(middle) * threshold + measure.slack
    return Judgement(measure.name, measure.kind, start, end, middle, last, bounded)


def show(value: float, unit: str, per_event: bool = False) -> str:
    """A figure for the table: bytes in MiB (KiB or B per event), counts with separators."""
    if per_event:
        if unit == "bytes":
            return f"{value / 1024:.2f} KiB/evt" if abs(value) >= 1024 else f"{value:.0f} B/evt"
        return f"{value:.2f}/evt"
    if unit == "bytes":
        return f"{value / (1024 * 1024):.1f} MiB"
    return f"{value:,.0f}"


def table(report: Report, opts: Options, judgements: list[Judgement]) -> list[str]:
    """The start/end table, one line per measure."""
    by_name = {m.name: m for m in measures(opts.workers, opts.rate)}
    rows = [("measure", "start", "end", "change", "middle -> last third", "verdict")]
    for j in judgements:
        m = by_name[j.measure]
        delta = j.end - j.start
        change = ("+" if delta >= 0 else "-") + show(abs(delta), m.unit)
        if j.start and m.kind == "level":
            change += f" ({delta / j.start:+.0%})"
        if m.kind == "counter":
            trend = f"{delta / report.load_seconds:,.1f}/s" if report.load_seconds else ""
            verdict = ""
        else:
            per_event = m.kind == "stored"
            trend = (
                f"{show(j.middle, m.unit, per_event)} -> {show(j.last, m.unit, per_event)}"
                if j.middle is not None and j.last is not None
                else "-"
            )
            verdict = {True: "bounded", False: "GROWING", None: "too short"}[j.bounded]
        rows.append((j.measure, show(j.start, m.unit), show(j.end, m.unit), change, trend, verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    left = {0, len(widths) - 1}  # names and verdicts read better left-aligned
    return [
        "  ".join(
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def delivery_check(report: Report) -> tuple[dict[str, int], list[str]]:
    """Healthy deliveries expected against arrived, and what the failing endpoints took."""
    got = {w.id: report.received.get(w.path, PathTally(0, {})) for w in report.webhooks}
    healthy = [w for w in report.webhooks if w.kind == "healthy"]
    expected = sum(report.stats.expected[w.id] for w in healthy)
    arrived = sum(min(len(got[w.id].accepted), report.stats.expected[w.id]) for w in healthy)
    figures = {"healthy_expected": expected, "healthy_arrived": arrived}
    lines = [f"healthy endpoints: {arrived:,} of {expected:,} deliveries arrived"]
    for kind in ("error", "slow"):
        hooks = [w for w in report.webhooks if w.kind == kind]
        if hooks:
            made = sum(report.stats.expected[w.id] for w in hooks)
            attempts = sum(got[w.id].requests for w in hooks)
            figures[f"{kind}_deliveries"], figures[f"{kind}_attempts"] = made, attempts
            lines.append(
                f"{kind} endpoints: {made:,} deliveries, {attempts:,} attempts received"
                f" (up to {len(RETRY_SCHEDULE) + 1} each)"
            )
    return figures, lines


def finish(report: Report, opts: Options) -> int:
    """Print the table and verdict, write the JSON results; the exit status."""
    judgements = [
        judge(m, report.samples, opts.threshold) for m in measures(opts.workers, opts.rate)
    ]
    stats = report.stats
    print("\n" + "\n".join(table(report, opts, judgements)))

    accepted_rate = stats.accepted / report.load_seconds if report.load_seconds else 0.0
    latency = ""
    if len(stats.latencies) >= 2:
        cuts = statistics.quantiles(stats.latencies, n=100)
        latency = f"; POST /v1/events p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms"
    refused = ", ".join(f"{n} x {what}" for what, n in stats.refused.most_common()) or "none"
    print(
        f"\naccepted {stats.accepted:,} events in {report.load_seconds:.1f}s ="
        f" {accepted_rate:.1f} events/s (target {opts.rate:g}){latency}; refused: {refused}"
    )
    figures, lines = delivery_check(report)
    print("\n".join(lines))

    growing = [j.measure for j in judgements if j.bounded is False]
    unjudged = [j.measure for j in judgements if j.bounded is None and j.kind != "counter"]
    missing = figures["healthy_expected"] - figures["healthy_arrived"]
    problems = [f"growing: {', '.join(growing)}"] if growing else []
    if missing and report.drained:
        problems.append(f"{missing:,} healthy deliveries never arrived although none is pending")
    elif not report.drained:
        problems.append(f"deliveries still pending after {opts.drain:g}s of draining")
    judged = sum(j.bounded is not None for j in judgements)
    if problems:
        print(f"verdict: NOT BOUNDED ({opts.threshold:.0%} tolerance) - " + "; ".join(problems))
    else:
        print(
            f"verdict: bounded - all {judged} measures within {opts.threshold:.0%}"
            " (last third vs middle third of the load; stored data per accepted event)"
            + (f"; too short to judge: {', '.join(unjudged)}" if unjudged else "")
            + "; every healthy delivery arrived"
        )

    path = write_results(report, opts, judgements, figures, not problems)
    print(f"samples written to {os.path.relpath(path)}")
    return 1 if problems else 0


def write_results(
    report: Report,
    opts: Options,
    judgements: list[Judgement],
    deliveries: dict[str, int],
    bounded: bool,
) -> Path:
    """Write the run as JSON to bench/results/soak-<timestamp>.json."""
    document = {
        "options": asdict(opts),
        "settings": {
            "retry_schedule": list(RETRY_SCHEDULE),
            "delivery_timeout": DELIVERY_TIMEOUT,
            "endpoint_concurrency": ENDPOINT_CONCURRENCY,
            "retention_days": opts.retention_days,
        },
        "load": {
            "seconds": report.load_seconds,
            "accepted": report.stats.accepted,
            "refused": dict(report.stats.refused),
        },
        "deliveries": {**deliveries, "drained": report.drained},
        "measures": [asdict(m) for m in measures(opts.workers, opts.rate)],
        "judgements": [asdict(j) for j in judgements],
        "bounded": bounded,
        "samples": [asdict(s) for s in report.samples],
    }
    return save("soak", document)


# --- entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run one soak; the exit status."""
    opts = parse_args(argv)
    return scenario("soak", lambda procs: soak(procs, opts), lambda report: finish(report, opts))


if __name__ == "__main__":
    sys.exit(main())
