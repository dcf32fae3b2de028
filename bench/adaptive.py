"""Adaptive endpoint concurrency: what it gives a fast endpoint, and what it spares a fragile one.

    .venv/bin/python -m bench.adaptive [--fast-events 6000] [--knee-events 600] [--rounds 2]

It starts redis-server, PostgreSQL, `relay api` and the bench receiver. Each round drains four
backlogs, one after another, each through fresh `relay worker`s (--workers) and a fresh webhook
of its own tenant, its events posted before the workers start:

1. FAST, FIXED: an endpoint that answers 200 in 20 ms (/paced/), with the concurrency fixed at
   RELAY_ENDPOINT_CONCURRENCY=4 (RELAY_ENDPOINT_CONCURRENCY_MAX=4), as before it adapted;
2. FAST, ADAPTIVE: the same, with RELAY_ENDPOINT_CONCURRENCY_MAX=64, relay's default;
3. KNEE, FIXED and 4. KNEE, ADAPTIVE: an endpoint that slows down with its load (20 ms plus
   10 ms per other request in flight) and answers 503 (Retry-After: 1) past 8 in flight
   (/knee/).

For each it reports deliveries per second while the backlog drained (from the first arrival at
the receiver to the last delivery's first one: one answered 503 is retried after its
Retry-After, and how much later the last retry came is reported apart) and in its best second,
the share of answers that were 503, the most requests the endpoint had in flight and their
mean on arrival, and the concurrency the webhook showed (GET /v1/webhooks/{id}, sampled while
it drained: median, range).
The --only option drains one endpoint's backlogs.
Targets: the fast endpoint, adaptive, at least 4x its fixed deliveries/s; the knee endpoint,
adaptive, under 5 % of its answers 503. Fixed and adaptive alternate back to back, round after
round: the machine is shared, so compare within a round. Exit status: 0 when the figures were
taken (met or not), 2 when the run could not be done, 130 when interrupted.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from bench import harness
from bench.harness import Stack, command_line, scenario, speaker
from bench.load import LoadError, new_session, post_burst
from bench.procs import Processes
from bench.report import columns, conclude, num

START = 4  # RELAY_ENDPOINT_CONCURRENCY, relay's default
CEILING = 64  # RELAY_ENDPOINT_CONCURRENCY_MAX, relay's default
KNEE = 8
# Short steps, so that a delivery answered 503 comes back within the drain (Retry-After: 1).
SCHEDULE = "1,1,1,1,1,1,1,1"
TARGET_SPEEDUP = 4.0
TARGET_503_SHARE = 0.05
SAMPLE_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, checked."""

    fast_events: int
    knee_events: int
    rounds: int
    workers: int
    endpoints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Drain:
    """One backlog drained: what the receiver and the webhook showed."""

    endpoint: str  # "fast" or "knee"
    ceiling: int  # RELAY_ENDPOINT_CONCURRENCY_MAX: START means fixed
    round: int
    deliveries: int
    seconds: float  # from the first arrival to the last delivery's first arrival
    tail_seconds: float  # then until the last retry of a 503 arrived
    requests: int
    refused: int  # answers that were not 2xx (503s)
    peak_in_flight: int  # at the knee endpoint
    mean_in_flight: float  # at the knee endpoint, on each request's arrival
    concurrency: list[int]  # the webhook's, sampled while it drained
    timeline: list[int]  # deliveries in each tenth of a second from the first arrival

    @property
    def per_second(self) -> float:
        """Deliveries per second while the backlog drained (first attempts)."""
        return self.deliveries / self.seconds if self.seconds > 0 else float("nan")

    @property
    def peak_per_second(self) -> int:
        """The most deliveries in one second of the drain (a sliding window)."""
        t = self.timeline
        return max(sum(t[i : i + 10]) for i in range(max(1, len(t) - 9)))

    @property
    def refused_share(self) -> float:
        """The share of answers that were 503."""
        return self.refused / self.requests if self.requests else float("nan")


def parse_args(argv: list[str] | None) -> Options:
    """Read and check the command line."""
    parser = command_line("bench.adaptive", __doc__)
    add = parser.add_argument
    add("--fast-events", type=int, default=6000, help="backlog for the fast endpoint (6000)")
    add("--knee-events", type=int, default=600, help="backlog for the knee endpoint (600)")
    add("--rounds", type=int, default=2, help="rounds of the four drains (2)")
    add("--workers", type=int, default=1, help="relay workers per drain (1)")
    add("--only", choices=("fast", "knee"), help="drain only this endpoint's backlogs")
    ns = parser.parse_args(argv)
    if min(ns.fast_events, ns.knee_events, ns.rounds, ns.workers) < 1:
        parser.error("every figure must be positive")
    endpoints = (ns.only,) if ns.only else ("fast", "knee")
    return Options(ns.fast_events, ns.knee_events, ns.rounds, ns.workers, endpoints)


say = speaker("adaptive")


async def drain(
    b: Stack, opts: Options, endpoint: str, ceiling: int, round_: int, events: int
) -> Drain:
    """Post `events` to a fresh webhook of `endpoint`, then drain them through fresh workers."""
    tenant = f"adaptive_{endpoint}_{ceiling}_{round_}"
    path = f"/{'paced' if endpoint == 'fast' else 'knee'}/{tenant}"
    hook = await b.add_webhook(path, tenant)
    await b.receiver.reset()
    posted = await post_burst(b.api, tenant, events, 16)
    if posted.deliveries != events:
        raise LoadError(f"{events} events for {tenant}: {dict(posted.refused)}")
    env = {**b.settings.env(), "RELAY_ENDPOINT_CONCURRENCY_MAX": str(ceiling)}
    samples: list[int] = []
    workers = []
    try:
        workers = await b.start_workers(opts.workers, f"worker-{tenant}-", env)
        deadline = time.monotonic() + 60 + events / 20
        while True:
            shown = await b.admin.get(f"/v1/webhooks/{hook['id']}", {})
            samples.append(shown["data"]["concurrency"]["current"])
            tally = (await b.receiver.paths()).get(path)
            if tally is not None and len(tally.accepted) >= events:
                break
            if time.monotonic() > deadline:
                raise LoadError(f"{tenant}: not drained in time ({tally})")
            await asyncio.sleep(SAMPLE_SECONDS)
    finally:
        await asyncio.to_thread(b.stop_workers, workers)
    stats = await b.receiver.stats()
    assert tally is not None and stats.first is not None and stats.last is not None
    firsts = [arrived for _, _, arrived in await b.receiver.arrivals_under(path)]
    drained = max(firsts)
    timeline = [0] * (int((drained - stats.first) * 10) + 1)
    for arrived in firsts:
        timeline[int((arrived - stats.first) * 10)] += 1
    return Drain(
        endpoint=endpoint,
        ceiling=ceiling,
        round=round_,
        deliveries=len(tally.accepted),
        seconds=drained - stats.first,
        tail_seconds=stats.last - drained,
        requests=tally.requests,
        refused=tally.requests - sum(tally.accepted.values()),
        peak_in_flight=stats.knee_peak,
        mean_in_flight=stats.knee_in_flight / stats.requests if endpoint == "knee" else 0.0,
        concurrency=samples,
        timeline=timeline,
    )


async def run(procs: Processes, opts: Options) -> list[Drain]:
    """Start everything, then the rounds of drains."""
    drains = []
    async with new_session(32) as session:
        b = await harness.start(
            procs,
            session,
            endpoint_concurrency=START,
            extra={"RELAY_RETRY_SCHEDULE": SCHEDULE},
            receiver_options=("--knee", str(KNEE)),
        )
        for round_ in range(1, opts.rounds + 1):
            for endpoint in opts.endpoints:
                events = opts.fast_events if endpoint == "fast" else opts.knee_events
                for ceiling in (START, CEILING):
                    d = await drain(b, opts, endpoint, ceiling, round_, events)
                    say(
                        f"round {round_}, {endpoint}, max {ceiling}: "
                        f"{num(d.per_second)} deliveries/s, {d.refused} of {d.requests} refused"
                    )
                    drains.append(d)
    return drains


def _spread(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):g} ({min(values)}-{max(values)})"


def render(drains: list[Drain], opts: Options) -> str:
    """A row per drain, then the targets per round."""
    rows: list[tuple[str, ...]] = [
        (
            "drain",
            "deliveries/s",
            "best 1 s",
            "503s",
            "retries' tail",
            "peak / mean in flight",
            "concurrency",
        )
    ]
    for d in drains:
        mode = "fixed 4" if d.ceiling == START else f"adaptive to {d.ceiling}"
        in_flight = f"{d.peak_in_flight} / {d.mean_in_flight:.1f}" if d.endpoint == "knee" else "-"
        rows.append(
            (
                f"round {d.round}, {d.endpoint}, {mode}",
                num(d.per_second),
                num(d.peak_per_second),
                f"{d.refused} ({d.refused_share:.1%})",
                f"{d.tail_seconds:.1f} s" if d.refused else "-",
                in_flight,
                _spread(d.concurrency),
            )
        )
    lines = [
        f"Backlogs of {opts.fast_events:,} (fast: 200 in 20 ms) and {opts.knee_events:,} (knee: "
        f"20 ms + 10 ms per other request in flight, 503 past {KNEE}) events, "
        f"{opts.workers} worker(s)",
        *columns(rows),
    ]
    for round_ in range(1, opts.rounds + 1):
        of = {(d.endpoint, d.ceiling): d for d in drains if d.round == round_}
        if "fast" in opts.endpoints:
            fixed, adaptive = of[("fast", START)], of[("fast", CEILING)]
            speedup = adaptive.per_second / fixed.per_second
            best = adaptive.peak_per_second / fixed.peak_per_second
            met = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
            lines.append(
                f"round {round_}: fast endpoint {speedup:.2f}x its fixed deliveries/s over the "
                f"whole drain, ramp included (target >= {TARGET_SPEEDUP:g}x: {met}); "
                f"{best:.2f}x in its best second"
            )
        if "knee" in opts.endpoints:
            share = of[("knee", CEILING)].refused_share
            met = "met" if share < TARGET_503_SHARE else "NOT met"
            lines.append(
                f"round {round_}: knee endpoint {share:.1%} of its answers 503 "
                f"(target < {TARGET_503_SHARE:.0%}: {met})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """One run; the exit status."""
    opts = parse_args(argv)

    def finish(drains: list[Drain]) -> int:
        document = {"options": asdict(opts), "drains": [asdict(d) for d in drains]}
        return conclude("adaptive", document, lambda: render(drains, opts))

    return scenario("adaptive", lambda procs: run(procs, opts), finish)


if __name__ == "__main__":
    sys.exit(main())
