"""relay against a Celery baseline: deliveries/s at fan-out 1 and 10, same receiver, same cores.

    .venv/bin/python -m bench.baseline [--quick]

The baseline is what a Python team without relay would write (bench/baseline/tasks.py): a
Celery task that signs each webhook with Standard Webhooks and POSTs it with httpx, Redis as the
broker (AOF, fsync every second, as relay's), acks_late, autoretry with backoff. It runs in a
virtualenv of its own, pinned by bench/baseline/requirements.txt and made on first use under
~/.cache/relay-bench (Celery's Redis transport needs a newer redis-py than relay's arq allows).

relay runs as `make bench` runs it (relay api, 2 workers, Redis, PostgreSQL; events POSTed over
HTTP by 32 clients), but with every setting at its default, endpoint concurrency included;
Celery with a Redis of its own; both deliver to the same receiver, one system at a time.
Celery's tasks are queued with `.delay()` by one process of the bench: Celery has no HTTP
ingest, so relay's figures carry work Celery's do not.

1. SWEEP: one Celery worker after another, for each pool (prefork, threads), concurrency (4, 8,
   16) and prefetch multiplier (1, 4): a warm-up, then 1,000 deliveries at fan-out 1 and 150
   events x 10 endpoints at fan-out 10. The fastest setting of each fan-out goes on.
2. ROUNDS: twice, relay and that best Celery setting back to back (which goes first
   alternates): 3,000 deliveries at fan-out 1, 500 events x 10 endpoints at fan-out 10.

Deliveries/s is deliveries received over first event sent (POST or enqueue) to last delivery
received; relay ÷ Celery is the ratio of their medians over the rounds, and, as Celery's best
case, relay's median over the fastest Celery round of any setting. Prints the table and
writes bench/results/celery-<timestamp>.json. Exit status: 0 when every delivery arrived once
with a valid signature, 1 when not, 2 when the run could not be done, 130 when interrupted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import redis.asyncio as aioredis

from bench.__main__ import parse_args as bench_options
from bench.baseline import BROKER_URL_ENV, SECRET_ENV
from bench.harness import Stack, command_line, scenario, speaker
from bench.load import ReceiverClient, event_body, new_session, post_burst
from bench.phases import (
    TENANT_NONE,
    TENANT_ONE,
    TENANT_TEN,
    E2EFigures,
    Options,
    end_to_end,
    start,
)
from bench.procs import (
    Child,
    Processes,
    SetupError,
    bench_env,
    free_port,
    start_redis,
    stop,
    tree_cpu_seconds,
    wait_exit,
)
from bench.report import columns, conclude, headline, joined, load_range, machine, num, utc
from relay.config import Settings

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "relay-bench"
FAN_OUTS = (1, 10)
TENANTS = {1: TENANT_ONE, 10: TENANT_TEN}  # relay's bench tenants of each fan-out
# relay's roles that make up its cost, and the Celery side's.
RELAY_ROLES = ("api", "workers", "redis", "postgres")
CELERY_ROLES = ("worker", "redis", "enqueue")
SETTLE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Setting:
    """How one Celery worker is started."""

    pool: str
    concurrency: int
    prefetch: int

    @property
    def label(self) -> str:
        """As the table shows it."""
        return f"{self.pool} -c {self.concurrency} prefetch {self.prefetch}"

    def argv(self, python: Path) -> list[str]:
        """The worker's command line; gossip, mingle and heartbeats serve clusters of workers."""
        return [
            *(str(python), "-m", "celery", "-A", "bench.baseline.tasks", "worker"),
            *("--pool", self.pool, "--concurrency", str(self.concurrency)),
            *("--prefetch-multiplier", str(self.prefetch), "--loglevel", "warning"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ]


@dataclass(frozen=True, slots=True)
class Sizes:
    """Events of each round: at fan-out 10 each goes to ten endpoints."""

    warm_up: int
    fan_out_1: int
    fan_out_10: int

    def events(self, fan_out: int) -> int:
        """Events of the measured round at `fan_out`."""
        return self.fan_out_1 if fan_out == 1 else self.fan_out_10


@dataclass(frozen=True, slots=True)
class Plan:
    """The Celery settings swept and with what, then how many alternating rounds of what."""

    settings: tuple[Setting, ...]
    sweep_sizes: Sizes
    rounds: int
    rounds_sizes: Sizes


FULL = Plan(
    settings=tuple(
        Setting(pool, concurrency, prefetch)
        for pool in ("prefork", "threads")
        for concurrency in (4, 8, 16)
        for prefetch in (1, 4)
    ),
    sweep_sizes=Sizes(warm_up=200, fan_out_1=1000, fan_out_10=150),
    rounds=2,
    rounds_sizes=Sizes(warm_up=300, fan_out_1=3000, fan_out_10=500),
)
QUICK = Plan(
    settings=(Setting("prefork", 8, 4), Setting("threads", 8, 4)),
    sweep_sizes=Sizes(warm_up=100, fan_out_1=300, fan_out_10=30),
    rounds=1,
    rounds_sizes=Sizes(warm_up=100, fan_out_1=600, fan_out_10=60),
)


@dataclass(frozen=True, slots=True)
class CeleryFigures:
    """One round of one Celery setting."""

    setting: Setting
    fan_out: int
    deliveries: int
    arrived: int
    rejected: int  # bad signatures
    duplicates: int
    seconds: float  # first enqueue to last receipt
    per_second: float  # deliveries
    enqueue_per_second: float  # tasks queued per second by the producer
    settled: bool  # queue and unacked set empty afterwards
    cpu_per_1k: dict[str, float]  # per 1,000 deliveries: worker (pool included), redis, ...


# --- the baseline's virtualenv ------------------------------------------------------------------


def celery_python(say: Callable[[str], None]) -> Path:
    """The baseline virtualenv's interpreter; the virtualenv is made first if missing, named
    after its requirements so that new pins make a new one."""
    pins = REQUIREMENTS.read_bytes()
    home = CACHE_DIR / f"celery-{hashlib.sha256(pins).hexdigest()[:12]}"
    python = home / "bin" / "python"
    installed = home / ".installed"
    if installed.exists():
        return python
    shutil.rmtree(home, ignore_errors=True)  # a make interrupted earlier
    say(f"making the Celery baseline's virtualenv in {home}")
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    installed.touch()
    return python


# --- the two systems ----------------------------------------------------------------------------


async def warm_relay(stack: Stack, opts: Options, sizes: Sizes) -> None:
    """relay's API warmed (schemas compiled, pools open), its workers started and warmed."""
    await post_burst(stack.api, TENANT_NONE, sizes.warm_up, opts.concurrency)
    await stack.start_workers(opts.workers)
    await end_to_end(stack, opts, TENANT_ONE, sizes.warm_up)


async def relay_round(
    stack: Stack, opts: Options, sizes: Sizes, say: Callable[[str], None]
) -> list[E2EFigures]:
    """One end-to-end run per fan-out."""
    runs = []
    for fan_out in FAN_OUTS:
        runs.append(await end_to_end(stack, opts, TENANTS[fan_out], sizes.events(fan_out)))
        say(f"relay, fan-out {fan_out}: {runs[-1].per_second:,.0f} deliveries/s")
    return runs


@dataclass(slots=True)
class Celery:
    """The baseline's broker, the environment every Celery process gets, and the receiver."""

    procs: Processes
    python: Path
    env: dict[str, str]
    redis_child: Child
    redis: aioredis.Redis
    receiver_child: Child
    receiver: ReceiverClient

    def cpu(self, worker: Child) -> dict[str, float]:
        """CPU seconds so far of the worker (with its pool's processes), Redis and receiver."""
        return {
            "worker": tree_cpu_seconds(worker.pid),
            "redis": self.redis_child.cpu_seconds(),
            "receiver": self.receiver_child.cpu_seconds(),
        }

    async def pending(self) -> bool:
        """Whether a task is queued or in kombu's set of unacknowledged tasks."""
        async with self.redis.pipeline() as pipe:
            pipe.llen("celery")
            pipe.hlen("unacked")
            return any(await pipe.execute())

    async def settle(self) -> bool:
        """Wait until no task is queued or unacknowledged."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while await self.pending():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def rounds(
        self,
        setting: Setting,
        fan_outs: tuple[int, ...],
        sizes: Sizes,
        say: Callable[[str], None],
    ) -> list[CeleryFigures]:
        """A worker of `setting` started and warmed, one round per fan-out, the worker stopped."""
        worker = self.procs.spawn(
            f"celery-{setting.pool}-{setting.concurrency}", setting.argv(self.python), self.env
        )
        try:
            # The warm-up also waits out the worker's start.
            await self.deliver(worker, setting, 1, sizes.warm_up)
            runs = []
            for fan_out in fan_outs:
                runs.append(await self.deliver(worker, setting, fan_out, sizes.events(fan_out)))
                say(
                    f"celery {setting.label}, fan-out {fan_out}:"
                    f" {runs[-1].per_second:,.0f} deliveries/s"
                )
            return runs
        finally:
            stop([worker])

    async def deliver(
        self, worker: Child, setting: Setting, fan_out: int, events: int
    ) -> CeleryFigures:
        """Queue `events` events to `fan_out` endpoints each; wait for every delivery."""
        await self.receiver.reset()
        urls = [self.receiver.hook_url(f"celery-{fan_out}-{n}") for n in range(fan_out)]
        out = self.procs.workdir / "enqueue.json"
        out.unlink(missing_ok=True)
        argv = [str(self.python), "-m", "bench.baseline.enqueue", "--events", str(events)]
        argv += ["--event", event_body("celery", 0).decode(), "--out", str(out)]
        argv += [arg for url in urls for arg in ("--url", url)]
        before = self.cpu(worker)
        enqueuer = self.procs.spawn("enqueue", argv, self.env)
        expected = events * fan_out
        arrived = await self.receiver.wait_for(expected, timeout=60 + expected / 20)
        if not await wait_exit(enqueuer, timeout=60) or enqueuer.process.returncode != 0:
            stop([enqueuer])
            raise SetupError(f"the Celery producer failed:\n{enqueuer.tail()}")
        settled = await self.settle()
        after = self.cpu(worker)
        worker.check_alive()
        queued = json.loads(out.read_text())
        seconds = (arrived.last or queued["started"]) - queued["started"]
        delivered = arrived.requests
        cpu = {role: after[role] - before[role] for role in after} | {
            "enqueue": queued["cpu_seconds"]
        }
        return CeleryFigures(
            setting=setting,
            fan_out=fan_out,
            deliveries=expected,
            arrived=delivered,
            rejected=arrived.rejected,
            duplicates=arrived.duplicates,
            seconds=seconds,
            per_second=delivered / seconds if seconds > 0 else 0.0,
            enqueue_per_second=expected / queued["seconds"] if queued["seconds"] > 0 else 0.0,
            settled=settled,
            cpu_per_1k={r: s * 1000 / delivered if delivered else 0.0 for r, s in cpu.items()},
        )

    async def best_rounds(
        self, best: dict[int, Setting], sizes: Sizes, say: Callable[[str], None]
    ) -> list[CeleryFigures]:
        """One round per fan-out, each with its best setting (one worker when they agree)."""
        runs = []
        for setting in dict.fromkeys(best.values()):
            fan_outs = tuple(f for f in FAN_OUTS if best[f] == setting)
            runs += await self.rounds(setting, fan_outs, sizes, say)
        return runs


def fastest(runs: list[CeleryFigures], fan_out: int) -> CeleryFigures:
    """The fastest of `runs` at `fan_out`."""
    return max((r for r in runs if r.fan_out == fan_out), key=lambda r: r.per_second)


@dataclass(frozen=True, slots=True)
class Comparison:
    """What one run measured: the sweep, then the alternating rounds."""

    started_at: str
    seconds: float
    load_average: dict[str, list[float]]
    sweep: list[CeleryFigures]
    relay: list[E2EFigures]  # per round, per fan-out
    celery: list[CeleryFigures]  # per round, per fan-out, the sweep's best setting

    def relay_at(self, fan_out: int) -> list[E2EFigures]:
        """relay's rounds at `fan_out`."""
        return [r for r in self.relay if r.fan_out == fan_out]

    def celery_at(self, fan_out: int) -> list[CeleryFigures]:
        """The best Celery setting's rounds at `fan_out`."""
        return [c for c in self.celery if c.fan_out == fan_out]

    def ratio(self, fan_out: int) -> float:
        """relay's median deliveries/s over the best Celery setting's."""
        relay = statistics.median(r.per_second for r in self.relay_at(fan_out))
        celery = statistics.median(c.per_second for c in self.celery_at(fan_out))
        return relay / celery if celery else math.nan

    def ratio_to_fastest(self, fan_out: int) -> float:
        """relay's median over the fastest any Celery setting went in any round, sweep's
        included: on a shared machine the sweep's pick can be luck, and this bound is Celery's
        best case."""
        relay = statistics.median(r.per_second for r in self.relay_at(fan_out))
        celery = fastest([*self.sweep, *self.celery], fan_out).per_second
        return relay / celery if celery else math.nan

    def complete(self) -> bool:
        """Whether every delivery of both arrived, once, with a valid signature."""
        return all(
            r.arrived == r.deliveries and not (r.rejected or r.refused or r.duplicates)
            for r in self.relay
        ) and all(
            c.arrived == c.deliveries and not (c.rejected or c.duplicates)
            for c in (*self.sweep, *self.celery)
        )


async def start_celery(procs: Processes, stack: Stack, python: Path) -> Celery:
    """The baseline's Redis (AOF, as relay's), its environment; the receiver is relay's."""
    redis_port = free_port()
    redis_child = await start_redis(procs, redis_port, name="redis-celery")
    env = {
        **bench_env(stack.secret),
        BROKER_URL_ENV: f"redis://127.0.0.1:{redis_port}/0",
        SECRET_ENV: stack.secret,
    }
    redis = aioredis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5)
    return Celery(procs, python, env, redis_child, redis, stack.receiver_child, stack.receiver)


async def compare(
    procs: Processes, python: Path, plan: Plan, say: Callable[[str], None]
) -> Comparison:
    """Both systems up; every Celery setting swept; then relay and the best Celery settings in
    alternating rounds, back to back."""
    started = time.time()
    load_before = list(os.getloadavg())
    # relay as it ships: each endpoint's concurrency starts where RELAY_ENDPOINT_CONCURRENCY's
    # default puts it and adapts from there (`make bench` starts it at 64).
    shipped = Settings.model_fields["endpoint_concurrency"].default
    opts = replace(
        bench_options([]), events=plan.rounds_sizes.fan_out_1, endpoint_concurrency=shipped
    )
    say(f"starting redis-servers, postgres, relay api and the receiver in {procs.workdir}")
    async with new_session(opts.concurrency) as session:
        stack = await start(procs, opts, session)
        celery = await start_celery(procs, stack, python)
        try:
            async with asyncio.timeout(600 + 300 * len(plan.settings)):
                await warm_relay(stack, opts, plan.rounds_sizes)
                sweep = []
                for setting in plan.settings:
                    sweep += await celery.rounds(setting, FAN_OUTS, plan.sweep_sizes, say)
                best = {f: fastest(sweep, f).setting for f in FAN_OUTS}
                relay_runs, celery_runs = [], []
                for number in range(plan.rounds):
                    say(f"round {number + 1} of {plan.rounds}")
                    # Which goes first alternates, so a drift in the machine's load is shared.
                    if number % 2 == 0:
                        relay_runs += await relay_round(stack, opts, plan.rounds_sizes, say)
                    celery_runs += await celery.best_rounds(best, plan.rounds_sizes, say)
                    if number % 2 == 1:
                        relay_runs += await relay_round(stack, opts, plan.rounds_sizes, say)
        finally:
            await stack.redis.aclose()
            await celery.redis.aclose()
    return Comparison(
        started_at=utc(started),
        seconds=time.time() - started,
        load_average={"before": load_before, "after": list(os.getloadavg())},
        sweep=sweep,
        relay=relay_runs,
        celery=celery_runs,
    )


# --- the report ---------------------------------------------------------------------------------


def each(values: list[float], digits: int = 0) -> str:
    """Every round's figure: '812 / 790'."""
    return " / ".join(num(v, digits) for v in values)


def mean_cpu(runs: list[E2EFigures] | list[CeleryFigures], role: str) -> float:
    """CPU seconds per 1,000 deliveries of `role`, averaged over `runs`."""
    return statistics.fmean(r.cpu_per_1k[role] for r in runs)


def ratio_lines(comparison: Comparison) -> list[str]:
    """relay and the best Celery setting, round by round, and the ratio of their medians."""
    rows: list[tuple[str, ...]] = [
        (
            "fan-out",
            "deliveries",
            "relay deliv/s",
            "Celery deliv/s",
            "relay ÷ Celery",
            "Celery setting",
            "÷ Celery's fastest",
        )
    ]
    for fan_out in FAN_OUTS:
        relay, celery = comparison.relay_at(fan_out), comparison.celery_at(fan_out)
        rows.append(
            (
                str(fan_out),
                f"{relay[0].deliveries:,}",
                each([r.per_second for r in relay]),
                each([c.per_second for c in celery]),
                f"{comparison.ratio(fan_out):.2f}",
                celery[0].setting.label,
                f"{comparison.ratio_to_fastest(fan_out):.2f}",
            )
        )
    return [
        "RELAY ÷ CELERY: deliveries/s (first event sent to last delivery received) in each round;"
        " the ratio of the medians; and relay's median over the fastest Celery round of any"
        " setting, sweep included (Celery's best case)",
        *columns(rows),
        "  relay: relay api, 2 workers, Redis (AOF), PostgreSQL; events POSTed over HTTP by 32"
        " clients",
        "  Celery: the sweep's fastest setting; tasks queued in-process with .delay() (Celery does"
        " no HTTP ingest: relay's figures include its API, Celery's none)",
    ]


def sweep_lines(comparison: Comparison) -> list[str]:
    """Every Celery setting tried."""
    rows: list[tuple[str, ...]] = [
        ("setting", "fan-out", "arrived", "seconds", "deliv/s", "enqueue/s", "bad sig", "dups")
    ]
    for c in comparison.sweep:
        rows.append(
            (
                c.setting.label,
                str(c.fan_out),
                f"{c.arrived:,}/{c.deliveries:,}",
                num(c.seconds, 2),
                num(c.per_second),
                num(c.enqueue_per_second),
                str(c.rejected),
                str(c.duplicates),
            )
        )
    return ["CELERY SWEEP (pool, concurrency, prefetch multiplier)", *columns(rows)]


def cpu_lines(comparison: Comparison) -> list[str]:
    """CPU seconds per 1,000 deliveries of each process, averaged over the rounds."""
    rows: list[tuple[str, ...]] = [
        ("system, fan-out", "api", "workers", "redis", "postgres", "enqueue", "total", "receiver")
    ]
    for fan_out in FAN_OUTS:
        relay = comparison.relay_at(fan_out)
        rows.append(
            (
                f"relay, {fan_out}",
                *(num(mean_cpu(relay, role), 3) for role in RELAY_ROLES),
                "-",
                num(sum(mean_cpu(relay, role) for role in RELAY_ROLES), 3),
                num(mean_cpu(relay, "receiver"), 3),
            )
        )
    for fan_out in FAN_OUTS:
        celery = comparison.celery_at(fan_out)
        rows.append(
            (
                f"Celery, {fan_out}",
                "-",
                num(mean_cpu(celery, "worker"), 3),
                num(mean_cpu(celery, "redis"), 3),
                "-",
                num(mean_cpu(celery, "enqueue"), 3),
                num(sum(mean_cpu(celery, role) for role in CELERY_ROLES), 3),
                num(mean_cpu(celery, "receiver"), 3),
            )
        )
    relay_total = [sum(mean_cpu(comparison.relay_at(f), r) for r in RELAY_ROLES) for f in FAN_OUTS]
    celery_total = [
        sum(mean_cpu(comparison.celery_at(f), r) for r in CELERY_ROLES) for f in FAN_OUTS
    ]
    # On a shared machine CPU per delivery moves less with others' load than deliveries/s do.
    ratios = ", ".join(
        f"fan-out {f} {c / r:.2f}" if r else f"fan-out {f} -"
        for f, r, c in zip(FAN_OUTS, relay_total, celery_total, strict=True)
    )
    return [
        "CPU seconds per 1,000 deliveries, mean of the rounds (psutil; Celery's worker with its"
        " pool's processes; enqueue = the producer queueing; total leaves out the receiver)",
        *columns(rows),
        f"  Celery's total ÷ relay's: {ratios}",
    ]


def render(comparison: Comparison) -> str:
    """The whole report: the ratio first."""
    head = (
        headline("against Celery", comparison.started_at, machine())
        + f"; {comparison.seconds:.0f} s in all; {load_range(comparison.load_average)}"
    )
    sections = [[head], ratio_lines(comparison), sweep_lines(comparison), cpu_lines(comparison)]
    return joined(sections)


def document(comparison: Comparison) -> dict[str, object]:
    """The results file."""
    return {
        **asdict(comparison),
        "machine": machine(),
        "summary": {
            f"fan_out_{fan_out}": {
                "relay_per_second": [r.per_second for r in comparison.relay_at(fan_out)],
                "celery_per_second": [c.per_second for c in comparison.celery_at(fan_out)],
                "celery_setting": asdict(comparison.celery_at(fan_out)[0].setting),
                "relay_over_celery": comparison.ratio(fan_out),
                "relay_over_fastest_celery": comparison.ratio_to_fastest(fan_out),
            }
            for fan_out in FAN_OUTS
        },
    }


# --- the run ------------------------------------------------------------------------------------


say = speaker("bench.baseline")


def main(argv: list[str] | None = None) -> int:
    """The sweep and the rounds; the exit status."""
    parser = command_line("bench.baseline", __doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer deliveries, two Celery settings, one round"
    )
    plan = QUICK if parser.parse_args(argv).quick else FULL
    try:
        python = celery_python(say)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"bench.baseline: the Celery virtualenv could not be made: {exc}", file=sys.stderr)
        return 2

    def finish(comparison: Comparison) -> int:
        return conclude(
            "celery",
            document(comparison),
            lambda: render(comparison),
            comparison.complete(),
            "some deliveries are missing, duplicated or badly signed",
        )

    return scenario("bench.baseline", lambda procs: compare(procs, python, plan, say), finish)


if __name__ == "__main__":
    sys.exit(main())
