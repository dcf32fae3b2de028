"""relay against a Celery baseline: deliveries/s at fan-out 1 and 10, same receiver, same cores.

    .venv/bin/python -m bench.baseline [--quick]

The baseline is what a Python team without relay would write (bench/baseline/tasks.py): a
Celery task that signs each webhook with Standard Webhooks and POSTs it with httpx, Redis as the
broker (AOF, fsync every second, as relay's), acks_late, autoretry with backoff. It runs in a
virtualenv of its own, pinned by bench/baseline/requirements.txt and made on first use under
~/.cache/relay-bench (Celery's Redis transport needs a newer redis-py than relay's arq allows).

First relay, as `make bench` runs it (relay api, 2 workers, Redis, PostgreSQL; events POSTed over
HTTP by 32 clients): a warm-up, then fan-out 1 and fan-out 10. Then Celery, with a Redis of its
own and the same receiver, once per pool (prefork, threads), concurrency (4, 8, 16) and prefetch
multiplier (1, 4): a warm-up, then the same deliveries, queued with `.delay()` by one process of
the bench (Celery has no HTTP ingest, so relay's figures carry work Celery's do not). One system
runs at a time. Deliveries/s is deliveries received over first event sent (POST or enqueue) to
last delivery received; the best Celery setting of each fan-out is compared with relay.

Prints the table and writes bench/results/celery-<timestamp>.json. Exit status: 0 when every
delivery arrived once with a valid signature, 1 when not, 2 when the run could not be done, 130
when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis

from bench.__main__ import parse_args as bench_options
from bench.baseline import BROKER_URL_ENV, SECRET_ENV
from bench.load import LoadError, ReceiverClient, event_body, new_session, post_burst
from bench.phases import (
    TENANT_NONE,
    TENANT_ONE,
    TENANT_TEN,
    E2EFigures,
    end_to_end,
    start,
    start_workers,
)
from bench.procs import (
    Child,
    Processes,
    SetupError,
    bench_env,
    free_port,
    receiver_argv,
    run_harness,
    start_redis,
    stop,
    tree_cpu_seconds,
    wait_exit,
    wait_until,
)
from bench.report import columns, machine, num, save
from relay.signing import generate_secret

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "relay-bench"
FAN_OUTS = (1, 10)
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


SETTINGS = tuple(
    Setting(pool, concurrency, prefetch)
    for pool in ("prefork", "threads")
    for concurrency in (4, 8, 16)
    for prefetch in (1, 4)
)
QUICK_SETTINGS = (Setting("prefork", 8, 4), Setting("threads", 8, 4))


@dataclass(frozen=True, slots=True)
class Sizes:
    """Events of each round: at fan-out 10 each goes to ten endpoints."""

    warm_up: int
    fan_out_1: int
    fan_out_10: int

    def events(self, fan_out: int) -> int:
        """Events of the measured round at `fan_out`."""
        return self.fan_out_1 if fan_out == 1 else self.fan_out_10


FULL = Sizes(warm_up=300, fan_out_1=3000, fan_out_10=500)
QUICK = Sizes(warm_up=100, fan_out_1=600, fan_out_10=60)


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


# --- relay's side -------------------------------------------------------------------------------


async def relay_side(
    procs: Processes, sizes: Sizes, say: Callable[[str], None]
) -> list[E2EFigures]:
    """relay as `make bench` runs it: a warm-up, then one end-to-end run per fan-out."""
    opts = replace(bench_options([]), events=sizes.fan_out_1)
    say(f"relay: starting redis-server, postgres, relay api and the receiver in {procs.workdir}")
    async with new_session(opts.concurrency) as session:
        bench = await start(procs, opts, session)
        try:
            async with asyncio.timeout(600):
                await post_burst(bench.api, TENANT_NONE, sizes.warm_up, opts.concurrency)
                await start_workers(bench, opts.workers)
                await end_to_end(bench, TENANT_ONE, sizes.warm_up)
                runs = []
                for tenant, fan_out in ((TENANT_ONE, 1), (TENANT_TEN, 10)):
                    runs.append(await end_to_end(bench, tenant, sizes.events(fan_out)))
                    say(f"relay fan-out {fan_out}: {runs[-1].per_second:,.0f} deliveries/s")
                return runs
        finally:
            await bench.redis.aclose()


# --- Celery's side ------------------------------------------------------------------------------


@dataclass(slots=True)
class CelerySide:
    """The broker, the receiver and the environment every Celery process gets."""

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


async def celery_side(
    procs: Processes,
    python: Path,
    settings: tuple[Setting, ...],
    sizes: Sizes,
    say: Callable[[str], None],
) -> list[CeleryFigures]:
    """Every setting in turn: its worker, a warm-up, one round per fan-out, the worker stopped."""
    say(f"celery: starting redis-server and the receiver in {procs.workdir}")
    redis_port, receiver_port = free_port(), free_port()
    redis_child = await start_redis(procs, redis_port)
    secret = generate_secret()
    receiver_child = procs.spawn("receiver", receiver_argv(receiver_port), bench_env(secret))
    env = {
        **bench_env(secret),
        BROKER_URL_ENV: f"redis://127.0.0.1:{redis_port}/0",
        SECRET_ENV: secret,
    }
    redis = aioredis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5)
    try:
        async with new_session(4) as session, asyncio.timeout(300 * len(settings)):
            receiver = ReceiverClient(session, receiver_port)
            await wait_until(receiver.ready, receiver_child, "receiver")
            side = CelerySide(procs, python, env, redis_child, redis, receiver_child, receiver)
            figures = []
            for number, setting in enumerate(settings, 1):
                worker = procs.spawn(f"celery{number}", setting.argv(python), env)
                try:
                    # The warm-up also waits out the worker's start.
                    await side.deliver(worker, setting, 1, sizes.warm_up)
                    for fan_out in FAN_OUTS:
                        figures.append(
                            await side.deliver(worker, setting, fan_out, sizes.events(fan_out))
                        )
                        say(
                            f"celery {setting.label}, fan-out {fan_out}:"
                            f" {figures[-1].per_second:,.0f} deliveries/s"
                        )
                finally:
                    stop([worker])
            return figures
    finally:
        await redis.aclose()


# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """Both sides of one run."""

    started_at: str
    seconds: float
    load_average: dict[str, list[float]]
    relay: list[E2EFigures]
    celery: list[CeleryFigures]

    def relay_at(self, fan_out: int) -> E2EFigures:
        """relay's run at `fan_out`."""
        return next(r for r in self.relay if r.fan_out == fan_out)

    def best_celery(self, fan_out: int) -> CeleryFigures:
        """The fastest Celery setting at `fan_out`."""
        return max((c for c in self.celery if c.fan_out == fan_out), key=lambda c: c.per_second)

    def ratio(self, fan_out: int) -> float:
        """relay's deliveries/s over the best Celery setting's."""
        best = self.best_celery(fan_out).per_second
        return self.relay_at(fan_out).per_second / best if best else float("nan")

    def complete(self) -> bool:
        """Whether every delivery of both arrived, once, with a valid signature."""
        return all(
            r.arrived == r.deliveries and not (r.rejected or r.refused or r.duplicates)
            for r in self.relay
        ) and all(
            c.arrived == c.deliveries and not (c.rejected or c.duplicates) for c in self.celery
        )


def render(comparison: Comparison) -> str:
    """The tables: the ratio first, then every Celery setting, then CPU per delivery."""
    m = machine()
    load = comparison.load_average
    head = (
        f"relay {m['relay_version']} against Celery, {comparison.started_at}: {m['cpu_model']},"
        f" {m['cores']} cores, Python {m['python']}; {comparison.seconds:.0f} s in all;"
        f" load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after"
    )
    ratio: list[tuple[str, ...]] = [
        ("fan-out", "deliveries", "relay deliv/s", "best Celery deliv/s", "relay ÷ Celery", "best")
    ]
    for fan_out in FAN_OUTS:
        relay, best = comparison.relay_at(fan_out), comparison.best_celery(fan_out)
        ratio.append(
            (
                str(fan_out),
                f"{relay.deliveries:,}",
                num(relay.per_second),
                num(best.per_second),
                f"{comparison.ratio(fan_out):.2f}",
                best.setting.label,
            )
        )
    settings: list[tuple[str, ...]] = [
        (
            "Celery setting",
            "fan-out",
            "arrived",
            "seconds",
            "deliv/s",
            "enqueue/s",
            "bad sig",
            "dups",
        )
    ]
    for c in comparison.celery:
        settings.append(
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
    cpu: list[tuple[str, ...]] = [
        ("system, fan-out", "api", "workers", "redis", "postgres", "enqueue", "total", "receiver")
    ]
    for fan_out in FAN_OUTS:
        r = comparison.relay_at(fan_out).cpu_per_1k
        cpu.append(
            (
                f"relay, {fan_out}",
                *(num(r[role], 3) for role in RELAY_ROLES),
                "-",
                num(sum(r[role] for role in RELAY_ROLES), 3),
                num(r["receiver"], 3),
            )
        )
    for fan_out in FAN_OUTS:
        b = comparison.best_celery(fan_out).cpu_per_1k
        cpu.append(
            (
                f"Celery (best), {fan_out}",
                "-",
                num(b["worker"], 3),
                num(b["redis"], 3),
                "-",
                num(b["enqueue"], 3),
                num(sum(b[role] for role in CELERY_ROLES), 3),
                num(b["receiver"], 3),
            )
        )
    return "\n\n".join(
        [
            head,
            "\n".join(
                [
                    "RELAY ÷ CELERY: deliveries/s, first event sent to last delivery received,"
                    " same receiver, same cores",
                    *columns(ratio),
                    "  relay: relay api, 2 workers, Redis (AOF), PostgreSQL; events POSTed over"
                    " HTTP by 32 clients",
                    "  Celery: tasks queued in-process with .delay() (Celery does no HTTP ingest:"
                    " relay's figures include its API, Celery's none)",
                ]
            ),
            "\n".join(
                ["CELERY SETTINGS (pool, concurrency, prefetch multiplier)", *columns(settings)]
            ),
            "\n".join(
                [
                    "CPU seconds per 1,000 deliveries (psutil; Celery's worker with its pool's"
                    " processes; enqueue = the producer's queueing; total leaves out the receiver)",
                    *columns(cpu),
                ]
            ),
        ]
    )


def document(comparison: Comparison) -> dict[str, object]:
    """The results file."""
    return {
        **asdict(comparison),
        "machine": machine(),
        "summary": {
            f"fan_out_{fan_out}": {
                "relay_per_second": comparison.relay_at(fan_out).per_second,
                "best_celery_per_second": comparison.best_celery(fan_out).per_second,
                "best_celery_setting": asdict(comparison.best_celery(fan_out).setting),
                "relay_over_celery": comparison.ratio(fan_out),
            }
            for fan_out in FAN_OUTS
        },
    }


# --- the run ------------------------------------------------------------------------------------


def say(text: str) -> None:
    """A progress line: the run takes minutes, show it is moving."""
    print(f"bench.baseline: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """relay, then every Celery setting; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.baseline", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer deliveries and two Celery settings"
    )
    quick = parser.parse_args(argv).quick
    sizes, settings = (QUICK, QUICK_SETTINGS) if quick else (FULL, SETTINGS)
    try:
        python = celery_python(say)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"bench.baseline: the Celery virtualenv could not be made: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    load_before = list(os.getloadavg())
    relay = run_harness("bench.baseline", lambda procs: relay_side(procs, sizes, say), (LoadError,))
    if isinstance(relay, int):
        return relay
    celery = run_harness(
        "bench.baseline",
        lambda procs: celery_side(procs, python, settings, sizes, say),
        (LoadError,),
    )
    if isinstance(celery, int):
        return celery
    comparison = Comparison(
        started_at=datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        seconds=time.time() - started,
        load_average={"before": load_before, "after": list(os.getloadavg())},
        relay=relay,
        celery=celery,
    )
    path = save("celery", document(comparison))
    print("\n" + render(comparison) + "\n")
    print(f"results written to {os.path.relpath(path)}")
    if not comparison.complete():
        print(
            "bench.baseline: some deliveries are missing, duplicated or badly signed",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
