"""Chaos run: steady load while workers, Redis, PostgreSQL and clocks fail; was anything lost?

    .venv/bin/python -m bench.chaos [--seconds 300] [--rate 10] [--fault-every 2,4] [--seed N]

It starts Redis as Sentinel runs it (a primary and its replica, AOF fsynced every second, and
three sentinels that fail over between them; relay is given the Sentinel URL and
RELAY_REDIS_MIN_REPLICAS=1), PostgreSQL (fsync on), `relay api`, two `relay worker`s and the
bench receiver, registers three tenants' webhooks (each tenant a healthy endpoint and one that
misbehaves: flapping 500 half the time, rate-limited 429 with Retry-After, hanging past the
delivery timeout) and posts events at a steady rate, as an upstream service would: each with an
upstream `id` and an Idempotency-Key, retried until relay answers 200 or 202. Meanwhile, every
few seconds, it injects one fault, the kinds taken in shuffled rounds:

- kill_worker   SIGKILL a worker, start another
- term_worker   SIGTERM a worker (a deploy), wait for it to exit, start another
- kill_redis    SIGKILL the replica, start it again on the same port and data
- stop_redis    SIGSTOP the primary for 3 s (long enough for the sentinels to fail over: it
                comes back to find itself a replica)
- failover_redis SIGKILL the primary, wait for the sentinels to promote its replica, start the
                killed one again as the new primary's replica
- kill_postgres SIGKILL PostgreSQL and its backends, start it again on the same port and data
- stop_postgres SIGSTOP PostgreSQL and its backends for 5 s
- skew_worker   replace a worker by one whose clock runs 60 s ahead or behind (Debian's faketime)

A Redis fault waits until the group is whole again (every sentinel naming one primary, its
replica in sync) after the previous one, so that it meets a group that can fail over.

Then it waits for every delivery to end (delivered, failed or canceled) and for the history
writers to empty their stream, reads PostgreSQL's history, and prints what the operator would
want to know: events accepted, deliveries expected, delivered, failed (with their reasons), lost,
stuck, duplicates received, ended deliveries missing from PostgreSQL, delivered ones whose
attempts there are missing, repeated or miscounted, history entries left in Redis and the faults
injected. Exit status 0 when nothing was lost, stuck, missing or left, every post resolved and
no worker exited on its own; 1 when not; 2 when the run could not be done; 130 when interrupted.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import math
import random
import re
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis

from bench.harness import command_line, ingest_client, scenario, spawn_receiver, speaker, start_api
from bench.load import Api, ReceiverClient, event, media_data, new_session, on_schedule, post_data
from bench.procs import (
    Child,
    Postgres,
    Processes,
    RelaySettings,
    SetupError,
    free_port,
    spawn_worker,
    start_postgres,
    start_redis,
    start_sentinel,
    until_connected,
    wait_exit,
)
from relay.store import keys

# Short steps, so every delivery's whole schedule fits in the run and the wait after it.
RETRY_SCHEDULE = "1,2,4"
DELIVERY_TIMEOUT = 2.0
ENDPOINT_CONCURRENCY = 4
HANG_SECONDS = DELIVERY_TIMEOUT + 3
LIMIT_PER_SECOND = 5
STOP_REDIS_SECONDS = 3.0
STOP_POSTGRES_SECONDS = 5.0
SENTINEL_SERVICE = "relay"
# Sentinels quick to call a primary down (1 s without an answer) and to fail over, so that a
# failover and the group's recovery fit in a short run.
SENTINEL_TIMING = (
    f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000",
    f"sentinel failover-timeout {SENTINEL_SERVICE} 2000",
    f"sentinel parallel-syncs {SENTINEL_SERVICE} 1",
)
# A primary gives a replica that (re)joins its copy at once, not after 5 s of waiting for others.
NODE_OPTIONS: tuple[str, ...] = ("--repl-diskless-sync-delay", "0")
# How long a Redis fault may take to heal (a primary named by every sentinel, its replica in
# sync) before the run gives up.
HEAL_WAIT = 60.0
# How long the history writers get, once every delivery has ended, to empty their stream.
HISTORY_WAIT = 60.0
CLOCK_SKEW_SECONDS = 60
# A worker told to stop may take its delivery timeout to finish what it holds; past this it is
# killed and the run says so.
TERM_WAIT = DELIVERY_TIMEOUT + 10.0
POST_RETRY_MAX = 2.0
FAULT_KINDS = (
    "kill_worker",
    "term_worker",
    "kill_redis",
    "stop_redis",
    "kill_postgres",
    "stop_postgres",
    "skew_worker",
    "failover_redis",
)
TERMINAL = frozenset({"delivered", "failed", "canceled"})

Kind = Literal["hook", "flap", "limit", "hang"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A webhook and how its receiver behaves."""

    tenant: str
    kind: Kind
    events: tuple[str, ...] = ("*",)

    @property
    def path(self) -> str:
        """Its path on the receiver."""
        return f"/{self.kind}/{self.tenant}"


# The hanging endpoint takes only media uploads, a tenth of its tenant's events: every one of
# its deliveries uses the whole schedule at ENDPOINT_CONCURRENCY / DELIVERY_TIMEOUT attempts a
# second, so with all of them it would end long after the run.
ENDPOINTS = (
    Endpoint("chaos_a", "hook"),
    Endpoint("chaos_a", "flap"),
    Endpoint("chaos_b", "hook"),
    Endpoint("chaos_b", "limit"),
    Endpoint("chaos_c", "hook"),
    Endpoint("chaos_c", "hang", ("media.uploaded",)),
)
TENANTS = tuple(dict.fromkeys(e.tenant for e in ENDPOINTS))


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, checked."""

    seconds: float
    rate: float
    workers: int
    fault_every: tuple[float, float]
    settle_seconds: float
    seed: int


def parse_args(argv: list[str] | None) -> Options:
    """Read and check the command line."""
    parser = command_line("bench.chaos", __doc__)
    add = parser.add_argument
    add("--seconds", type=float, default=300.0, help="how long to load and fault (default 300)")
    add("--rate", type=float, default=10.0, help="events posted per second (default 10)")
    add("--workers", type=int, default=2, help="relay workers kept running (default 2)")
    add("--fault-every", default="2,4", help="seconds between faults, min,max (default 2,4)")
    add("--settle-seconds", type=float, default=180.0, help="wait for deliveries to end (180)")
    add("--seed", type=int, default=None, help="random seed, to repeat a run's choices")
    ns = parser.parse_args(argv)
    try:
        low, high = (float(part) for part in ns.fault_every.split(","))
    except ValueError:
        parser.error("--fault-every takes two numbers, min,max")
    if not 0 < low <= high or ns.seconds <= 0 or ns.rate <= 0 or ns.settle_seconds <= 0:
        parser.error("--seconds, --rate, --settle-seconds and --fault-every must be positive")
    if not 1 <= ns.workers <= 8:
        parser.error("--workers must be 1..8")
    seed = ns.seed if ns.seed is not None else secrets.randbelow(2**32)
    return Options(ns.seconds, ns.rate, ns.workers, (low, high), ns.settle_seconds, seed)


say = speaker("chaos")


# --- the system under test ---------------------------------------------------------------------


def skewed_clock(seconds: int) -> dict[str, str]:
    """Environment that shifts a process's wall clock by `seconds` with Debian's libfaketime.

    Preloaded directly rather than through the `faketime` command, which forks: the harness
    must signal the worker itself. Monotonic time is left alone, as a real clock offset would.
    """
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    found += glob.glob("/usr/lib/faketime/libfaketime.so.1")
    if not found:
        raise SetupError("libfaketime is not installed (`make faketime` installs it)")
    return {
        "LD_PRELOAD": found[0],
        "FAKETIME": f"{seconds:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


@dataclass(slots=True)
class RedisGroup:
    """The run's Redis: two data nodes, one the primary and the other its replica, and three
    sentinels that name the primary and fail over to the replica when the primary goes."""

    procs: Processes
    nodes: dict[int, Child]  # data nodes by port
    homes: dict[int, str]  # each node's directory (its data), by port
    sentinels: list[int]  # their ports
    # Numbers a restarted node's log after its first (redis-a-2, …).
    started: Iterator[int] = field(default_factory=lambda: itertools.count(2))

    @property
    def url(self) -> str:
        """The Sentinel URL relay is given."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"

    @classmethod
    async def start(cls, procs: Processes) -> RedisGroup:
        """Primary, replica and sentinels up; once the sentinels know them all, the group."""
        primary, replica = free_port(), free_port()
        group = cls(procs, {}, {primary: "redis-a", replica: "redis-b"}, [])
        await group._start_node(primary, "redis-a", None)
        await group._start_node(replica, "redis-b", primary)
        monitor = (f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary} 2", *SENTINEL_TIMING)
        for number in range(1, 4):
            port = free_port()
            await start_sentinel(procs, port, f"redis-sentinel-{number}", monitor)
            group.sentinels.append(port)
        await group._until(group._known, "the sentinels to find the replica and each other")
        await group.until_healthy()
        return group

    async def _start_node(self, port: int, name: str, replica_of: int | None) -> None:
        options = NODE_OPTIONS
        if replica_of is not None:
            options += ("--replicaof", "127.0.0.1", str(replica_of))
        home = self.procs.subdir(self.homes[port])
        self.nodes[port] = await start_redis(self.procs, port, name, home, options)

    async def restart(self, port: int, replica_of: int | None = None) -> None:
        """A node again, on its port and its data (as a replica of `replica_of`, if given)."""
        await self._start_node(port, f"{self.homes[port]}-{next(self.started)}", replica_of)

    async def _until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = time.monotonic() + HEAL_WAIT
        while not await check():
            if time.monotonic() > deadline:
                tails = "\n".join(child.tail(8) for child in self.nodes.values())
                raise SetupError(f"waited {HEAL_WAIT:g} s for {what}; the nodes said:\n{tails}")
            await asyncio.sleep(0.1)

    async def _known(self) -> bool:
        for port in self.sentinels:
            replicas = await _ask(port, "SENTINEL", "REPLICAS", SENTINEL_SERVICE)
            others = await _ask(port, "SENTINEL", "SENTINELS", SENTINEL_SERVICE)
            if not (isinstance(replicas, list) and isinstance(others, list)):
                return False
            if (len(replicas), len(others)) != (1, len(self.sentinels) - 1):
                return False
        return True

    async def named_primary(self) -> int | None:
        """The port of the primary every sentinel names, None while they do not agree."""
        named = set()
        for port in self.sentinels:
            answer = await _ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE)
            named.add(int(answer[1]) if isinstance(answer, list) and answer else None)
        found = named.pop() if len(named) == 1 else None
        return found if found in self.nodes else None

    async def _healthy(self) -> int | None:
        """The primary's port when the group is whole: every sentinel names it, it takes
        writes, and the other node copies it, its link up; else None."""
        primary = await self.named_primary()
        if primary is None or not self.nodes[primary].running:
            return None
        info = await _ask(primary, "INFO", "replication")
        if not isinstance(info, dict) or info.get("role") != "master":
            return None
        for port in self.nodes.keys() - {primary}:
            info = await _ask(port, "INFO", "replication")
            if not isinstance(info, dict) or info.get("master_port") != primary:
                return None
            if info.get("master_link_status") != "up" or info.get("master_sync_in_progress"):
                return None
        return primary

    async def until_healthy(self) -> int:
        """Wait until the group is whole again; its primary's port."""
        await self._until(lambda: _true(self._healthy()), "the group to be whole again")
        primary = await self._healthy()
        assert primary is not None
        return primary

    async def promoted(self, old: int) -> int:
        """Wait until every sentinel names a primary other than `old` and it takes writes."""

        async def moved() -> bool:
            primary = await self.named_primary()
            if primary in (None, old):
                return False
            info = await _ask(primary, "INFO", "replication")
            return isinstance(info, dict) and info.get("role") == "master"

        await self._until(moved, f"the sentinels to promote a replica of {old}")
        new = await self.named_primary()
        assert new is not None
        return new


async def _true(check: Awaitable[int | None]) -> bool:
    return await check is not None


async def _ask(port: int, *command: str) -> Any:
    """One command's answer from the Redis or sentinel on `port`; None if it does not answer."""
    client = aioredis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    try:
        return await client.execute_command(*command)
    except (aioredis.RedisError, OSError):
        return None
    finally:
        await client.aclose()


@dataclass(slots=True)
class System:
    """The stores, the API, the workers and the receiver of one run, and how to hurt them."""

    procs: Processes
    settings: RelaySettings
    redis: RedisGroup
    postgres: Postgres
    api: Child
    workers: list[Child] = field(default_factory=list)
    started: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    exited_alone: list[str] = field(default_factory=list)  # worker exits nobody asked for

    async def start_worker(self, skew: int = 0, *, wait: bool = True) -> Child:
        """A new `relay worker`, its clock `skew` seconds off; with `wait`, once it has
        reached Redis (mid-run it may die trying: `replace_dead_workers` notices)."""
        env = self.settings.env()
        if skew:
            env.update(skewed_clock(skew))
        name = f"worker{next(self.started)}" + (f"({skew:+d}s)" if skew else "")
        worker = spawn_worker(self.procs, name, env)
        self.workers.append(worker)
        if wait:
            await until_connected(worker, await self.redis.until_healthy())
        return worker

    async def replace_dead_workers(self) -> None:
        """Note and replace any worker that exited without being told to."""
        for worker in [w for w in self.workers if not w.running]:
            self.workers.remove(worker)
            self.exited_alone.append(f"{worker.name} exited {worker.process.returncode}")
            say(f"{worker.name} exited on its own ({worker.process.returncode}):\n{worker.tail()}")
            await self.start_worker(wait=False)

    def check_alive(self) -> None:
        """Stop the run if the API died (the chaos does not touch it) or PostgreSQL did (the
        chaos restarts it at once)."""
        self.api.check_alive()
        self.postgres.check_alive()


@dataclass(slots=True)
class Faults:
    """Injects faults and counts them; a worker's replacement starts in the background."""

    system: System
    rng: random.Random
    injected: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)  # how the faults went
    replacing: set[asyncio.Task[None]] = field(default_factory=set)

    def kinds(self) -> Iterator[str]:
        """Every kind once per round, each round in a new random order."""
        while True:
            yield from self.rng.sample(FAULT_KINDS, len(FAULT_KINDS))

    async def inject(self, kind: str) -> None:
        """One fault of `kind`."""
        system = self.system
        if kind in ("kill_worker", "term_worker", "skew_worker"):
            if not system.workers:  # every one is being replaced: let one come up first
                await asyncio.wait(self.replacing, return_when=asyncio.FIRST_COMPLETED)
            worker = self.rng.choice(system.workers)
            system.workers.remove(worker)
            how = signal.SIGKILL if kind == "kill_worker" else signal.SIGTERM
            skew = self.rng.choice((-CLOCK_SKEW_SECONDS, CLOCK_SKEW_SECONDS))
            task = asyncio.create_task(
                self._replace(worker, how, skew if kind == "skew_worker" else 0)
            )
            self.replacing.add(task)
            task.add_done_callback(self.replacing.discard)
        elif kind in ("kill_redis", "stop_redis", "failover_redis"):
            await self._hurt_redis(kind)
        elif kind == "kill_postgres":
            await system.postgres.kill()
            await system.postgres.restart()
        elif kind == "stop_postgres":
            system.postgres.pause()
            try:
                await asyncio.sleep(STOP_POSTGRES_SECONDS)
            finally:
                system.postgres.resume()
        self.injected[kind] += 1

    async def _hurt_redis(self, kind: str) -> None:
        """One fault of the group, once it is whole (a primary every sentinel names, its
        replica in sync): a fault that met a group still healing could take the only copy."""
        group = self.system.redis
        port = await group.until_healthy()
        primary = group.nodes[port]
        if kind == "stop_redis":
            primary.process.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(STOP_REDIS_SECONDS)
            finally:
                primary.process.send_signal(signal.SIGCONT)
        elif kind == "kill_redis":
            # The replica: a primary killed and started again in place, before the sentinels
            # fail over, comes back with what its AOF had, which may lack the last writes it
            # answered (with fsync every second Redis may put off writing the file while an
            # fsync is slow), and its replica then copies it. Sentinel's answer to a dead
            # primary is a failover, and failover_redis is that fault.
            [replica] = group.nodes.keys() - {port}
            group.nodes[replica].process.kill()
            await wait_exit(group.nodes[replica], 10)
            await group.restart(replica, replica_of=port)
        else:
            primary.process.kill()
            await wait_exit(primary, 10)
            await group.restart(port, replica_of=await group.promoted(port))

    async def _replace(self, worker: Child, how: signal.Signals, skew: int) -> None:
        """Signal `worker`, let it exit (a SIGTERM drains), start another in its place."""
        worker.process.send_signal(how)
        if not await wait_exit(worker, TERM_WAIT):
            self.notes[f"worker still running {TERM_WAIT:g} s after SIGTERM; killed"] += 1
            worker.process.kill()
            await wait_exit(worker, 10)
        await self.system.start_worker(skew, wait=False)

    async def run_until(self, deadline: float, every: tuple[float, float]) -> None:
        """Inject faults at random intervals until `deadline` (loop time); then let every
        replacement worker start."""
        loop = asyncio.get_running_loop()
        for kind in self.kinds():
            await asyncio.sleep(self.rng.uniform(*every))
            if loop.time() >= deadline:
                break
            await self.system.replace_dead_workers()
            self.system.check_alive()
            await self.inject(kind)
        await asyncio.gather(*self.replacing)


# --- load ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Load:
    """What posting events gave."""

    posted: int = 0
    accepted: dict[str, str] = field(default_factory=dict)  # upstream id -> event id
    expected: dict[str, tuple[str, str]] = field(default_factory=dict)  # delivery -> (wh, evt)
    retried: Counter[str] = field(default_factory=Counter)  # why a post was sent again
    unresolved: int = 0


def event_body(number: int) -> dict[str, Any]:
    """Event `number`: tenants in turn; every tenth of chaos_c's is a media upload."""
    tenant = TENANTS[number % len(TENANTS)]
    upstream_id = f"chaos-{number}"
    if tenant == "chaos_c" and number // len(TENANTS) % 10 == 0:
        return event("media.uploaded", tenant, media_data(number), upstream_id)
    return event("post.published", tenant, post_data(number, "chaos"), upstream_id)


async def post_until_answered(api: Api, body: dict[str, Any], load: Load, deadline: float) -> None:
    """POST an event until relay says it has it (202, or 200 for a repeat of its upstream id)."""
    loop = asyncio.get_running_loop()
    raw = orjson.dumps(body)
    pause = 0.1
    load.posted += 1
    while True:
        try:
            status, answer = await api.post_event(raw, idempotency_key=body["id"])
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status, answer = 0, type(exc).__name__.encode()
        if status in (200, 202):
            data = orjson.loads(answer)["data"]
            load.accepted[body["id"]] = data["id"]
            for delivery in data["deliveries"]:
                load.expected[delivery["id"]] = (delivery["webhook_id"], data["id"])
            return
        if status not in (0, 409, 429, 503) or loop.time() > deadline:
            load.unresolved += 1
            say(f"gave up posting {body['id']}: {status} {answer[:200]!r}")
            return
        load.retried[str(status or answer.decode())] += 1
        await asyncio.sleep(pause)
        pause = min(POST_RETRY_MAX, pause * 2)


async def post_events(api: Api, opts: Options, load: Load, deadline: float) -> None:
    """Start one post every 1/rate seconds for `seconds`; wait until every post is resolved."""

    async def send(number: int) -> None:
        await post_until_answered(api, event_body(number), load, deadline)

    await on_schedule(opts.rate, math.ceil(opts.seconds * opts.rate), send)


# --- the outcome ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery as relay's API shows it at the end."""

    id: str
    webhook_id: str
    event_id: str
    status: str
    last_error: str | None
    attempts: int


async def all_deliveries(admin: Api) -> dict[str, Delivery]:
    """Every delivery relay has, page by page through GET /v1/deliveries."""
    found: dict[str, Delivery] = {}
    cursor: str | None = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        page = await admin.get("/v1/deliveries", params)
        for d in page["data"]:
            found[d["id"]] = Delivery(
                d["id"],
                d["webhook_id"],
                d["event_id"],
                d["status"],
                d.get("last_error"),
                d.get("attempt_count", 0),
            )
        cursor = page.get("next_cursor")
        if not cursor:
            return found


async def wait_terminal(
    admin: Api, system: System, expected: dict[str, tuple[str, str]], seconds: float
) -> dict[str, Delivery]:
    """Poll until every expected delivery has ended, or `seconds` pass; the last view.

    One relay does not list yet is not over either: lists read history, which has an event
    moments after it was accepted (an event accepted as the posts end may not be there yet).
    """
    deadline = time.monotonic() + seconds
    while True:
        await system.replace_dead_workers()
        found = await all_deliveries(admin)
        open_ = [d for d in expected if d not in found or found[d].status not in TERMINAL]
        if not open_ or time.monotonic() > deadline:
            return found
        await asyncio.sleep(2.0)


@dataclass(slots=True)
class History:
    """What PostgreSQL holds of the deliveries that ended, and what Redis has yet to hand it."""

    ended: int = 0  # deliveries of this run's posts that ended, as relay's API shows them
    stored: int = 0  # of those, the ones with a row in `deliveries`
    missing: list[str] = field(default_factory=list)
    delivered: int = 0
    attempts: int = 0  # rows in `attempts` of the delivered ones
    amiss: list[str] = field(default_factory=list)  # delivered, attempts absent or miscounted
    left: int = 0  # entries still in the history stream after the wait
    waited: float = 0.0


async def wait_history_written(redis_port: int, seconds: float) -> tuple[int, float]:
    """Wait up to `seconds` for the writers to empty the history stream (they delete what they
    have written); the entries left and the seconds waited."""
    client = aioredis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5)
    began = time.monotonic()
    try:
        while True:
            left = int(await client.xlen(keys.HISTORY))
            waited = time.monotonic() - began
            if not left or waited > seconds:
                return left, waited
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()


_STORED = "SELECT id, attempt_count FROM deliveries WHERE id = ANY($1::text[])"
_ATTEMPTS = """
SELECT delivery_id, count(*) AS n, count(DISTINCT number) AS numbers
FROM attempts WHERE delivery_id = ANY($1::text[]) GROUP BY delivery_id
"""


async def read_history(
    url: str, found: dict[str, Delivery], expected: dict[str, tuple[str, str]]
) -> History:
    """Check PostgreSQL against the deliveries that ended: each has its row, and each delivered
    one its attempts, numbered once each and as many as its attempt_count says."""
    ended = {d: found[d] for d in expected if d in found and found[d].status in TERMINAL}
    delivered = [d for d, seen in ended.items() if seen.status == "delivered"]
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = {r["id"]: r["attempt_count"] for r in await conn.fetch(_STORED, list(ended))}
        attempts = {r["delivery_id"]: r for r in await conn.fetch(_ATTEMPTS, delivered)}
    finally:
        await conn.close()
    history = History(ended=len(ended), stored=len(rows), delivered=len(delivered))
    history.missing = [f"{d}: {seen.status}" for d, seen in ended.items() if d not in rows]
    for d in delivered:
        n, numbers = (attempts[d]["n"], attempts[d]["numbers"]) if d in attempts else (0, 0)
        history.attempts += n
        # A delivery missing from `deliveries` is counted there; its attempts are still checked.
        counted = rows.get(d, ended[d].attempts)
        if n == 0 or n != numbers or n != counted:
            history.amiss.append(
                f"{d}: {n} attempt rows, {numbers} distinct numbers, attempt_count {counted}"
            )
    return history


def reason(error: str | None) -> str:
    """A failure's last_error with its numbers blurred, so like failures group together."""
    return re.sub(r"\d+(\.\d+)?", "N", error or "(no last_error)")[:90]


@dataclass(slots=True)
class Outcome:
    """What the run found."""

    events_accepted: int
    posts: int
    unresolved: int
    retried: Counter[str]
    expected: int
    delivered: int
    failed: Counter[tuple[str, str]]  # (endpoint kind, reason) -> deliveries
    canceled: int
    lost: list[str]
    stuck: Counter[str]
    duplicates: int
    max_per_delivery: int
    unexpected: int
    faults: Counter[str]
    fault_notes: Counter[str]
    exited_alone: list[str]
    history: History

    @property
    def ok(self) -> bool:
        """Nothing lost, stuck or missing from history, every post answered, the history
        stream emptied, no worker died by itself."""
        h = self.history
        return not (
            self.lost
            or self.stuck
            or self.unresolved
            or self.exited_alone
            or h.missing
            or h.amiss
            or h.left
        )


def judge(
    load: Load,
    found: dict[str, Delivery],
    received: dict[str, dict[str, int]],
    kinds: dict[str, Endpoint],
    faults: Faults,
    system: System,
    history: History,
) -> Outcome:
    """Compare what was accepted with what relay says and what the receiver got."""
    failed: Counter[tuple[str, str]] = Counter()
    stuck: Counter[str] = Counter()
    lost: list[str] = []
    delivered = canceled = 0
    for delivery_id, (webhook_id, event_id) in load.expected.items():
        endpoint = kinds[webhook_id]
        taken = received.get(endpoint.path, {}).get(event_id, 0)
        seen = found.get(delivery_id)
        if seen is None:
            lost.append(f"{delivery_id}: relay no longer has it")
        elif seen.status == "delivered":
            delivered += 1
            if not taken:
                lost.append(f"{delivery_id}: delivered, but {endpoint.path} never took it")
        elif seen.status == "failed":
            failed[(endpoint.kind, reason(seen.last_error))] += 1
        elif seen.status == "canceled":
            canceled += 1
        else:
            stuck[f"{seen.status} ({endpoint.kind})"] += 1
    counts = [n for by_id in received.values() for n in by_id.values()]
    return Outcome(
        events_accepted=len(load.accepted),
        posts=load.posted,
        unresolved=load.unresolved,
        retried=load.retried,
        expected=len(load.expected),
        delivered=delivered,
        failed=failed,
        canceled=canceled,
        lost=lost,
        stuck=stuck,
        duplicates=sum(n - 1 for n in counts if n > 1),
        max_per_delivery=max(counts, default=0),
        unexpected=len(set(found) - set(load.expected)),
        faults=faults.injected,
        fault_notes=faults.notes,
        exited_alone=system.exited_alone,
        history=history,
    )


def render(outcome: Outcome, opts: Options, seconds: float) -> str:
    """The report printed at the end."""
    o = outcome
    h = o.history
    every = f"{opts.fault_every[0]:g}–{opts.fault_every[1]:g}"
    lines = [
        f"chaos run: {opts.seconds:g} s of load at {opts.rate:g} events/s, {opts.workers} workers, "
        f"a fault every {every} s, seed {opts.seed}; {seconds:.0f} s in all",
        f"events accepted            {o.events_accepted:>7,} of {o.posts:,} posted"
        f" ({sum(o.retried.values()):,} posts sent again: "
        + (", ".join(f"{k} {v}" for k, v in sorted(o.retried.items())) or "none")
        + f"; unresolved {o.unresolved})",
        f"deliveries expected        {o.expected:>7,}",
        f"delivered                  {o.delivered:>7,}",
        f"failed                     {sum(o.failed.values()):>7,}",
        *(f"  {n:>6,}  {kind:<5} {why}" for (kind, why), n in sorted(o.failed.items())),
        f"canceled                   {o.canceled:>7,}",
        f"lost (must be 0)           {len(o.lost):>7,}",
        *(f"  {line}" for line in o.lost[:20]),
        f"stuck non-terminal (must be 0) {sum(o.stuck.values()):>3,}"
        + (
            " (" + ", ".join(f"{k} {v}" for k, v in sorted(o.stuck.items())) + ")"
            if o.stuck
            else ""
        ),
        f"duplicates received        {o.duplicates:>7,} (max {o.max_per_delivery} per delivery)",
        f"deliveries not from this run's posts {o.unexpected:,}",
        f"ended, in PostgreSQL       {h.stored:>7,} of {h.ended:,}",
        f"ended, not in PostgreSQL (must be 0) {len(h.missing):>5,}",
        *(f"  {line}" for line in h.missing[:20]),
        f"attempts in PostgreSQL     {h.attempts:>7,} for {h.delivered:,} delivered",
        f"delivered, attempts amiss (must be 0) {len(h.amiss):>4,}"
        " (none, a number twice, or not as many as attempt_count)",
        *(f"  {line}" for line in h.amiss[:20]),
        f"history entries left (must be 0) {h.left:>9,} (after {h.waited:.1f} s of waiting)",
        f"faults injected            {sum(o.faults.values()):>7,}: "
        + ", ".join(f"{kind} {o.faults[kind]}" for kind in FAULT_KINDS),
        *(f"  {n} × {note}" for note, n in sorted(o.fault_notes.items())),
        f"workers that exited on their own (must be 0) {len(o.exited_alone)}",
        *(f"  {line}" for line in o.exited_alone),
        "verdict: " + ("PASS" if o.ok else "FAIL"),
    ]
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------


async def start(
    procs: Processes, opts: Options, session: aiohttp.ClientSession
) -> tuple[System, Api, Api, ReceiverClient, dict[str, Endpoint]]:
    """Everything up and the webhooks registered; the admin and ingest clients."""
    redis = await RedisGroup.start(procs)
    postgres = await start_postgres(procs)
    receiver = spawn_receiver(
        procs,
        session,
        ("--hang-seconds", str(HANG_SECONDS), "--limit-per-second", str(LIMIT_PER_SECOND)),
    )
    settings = RelaySettings(
        redis_url=redis.url,
        database_url=postgres.url,
        endpoint_concurrency=ENDPOINT_CONCURRENCY,
        extra={
            "RELAY_RETRY_SCHEDULE": RETRY_SCHEDULE,
            "RELAY_DELIVERY_TIMEOUT": str(DELIVERY_TIMEOUT),
            # An event is answered 202 once the replica holds it: a failover keeps it.
            "RELAY_REDIS_MIN_REPLICAS": "1",
        },
    )
    api_child, admin = await start_api(procs, session, settings, receiver)
    kinds: dict[str, Endpoint] = {}
    for endpoint in ENDPOINTS:
        made = await admin.create(
            "/v1/webhooks",
            {
                "url": receiver.client.base + endpoint.path,
                "tenant_id": endpoint.tenant,
                "events": list(endpoint.events),
                "description": f"chaos {endpoint.kind}",
                "secret": receiver.secret,  # the receiver checks every signature with it
            },
        )
        kinds[made["id"]] = endpoint
    ingest = await ingest_client(admin, "chaos")
    system = System(procs, settings, redis, postgres, api_child)
    for _ in range(opts.workers):
        await system.start_worker()
    return system, admin, ingest, receiver.client, kinds


async def run(procs: Processes, opts: Options) -> Outcome:
    """Load and faults for `seconds`, then the wait, then the verdict."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    rng = random.Random(opts.seed)
    say(
        f"starting redis-server, postgres, relay api, {opts.workers} workers, a receiver: "
        f"{procs.workdir}"
    )
    async with new_session(64) as session:
        system, admin, ingest, receiver, kinds = await start(procs, opts, session)
        faults = Faults(system, rng)
        load = Load()
        end_of_load = loop.time() + opts.seconds
        # Posts still being retried when the faults stop get a while longer to be answered.
        post_deadline = end_of_load + 120.0
        say(f"posting {opts.rate:g} events/s for {opts.seconds:g} s while injecting faults")
        posting = asyncio.create_task(post_events(ingest, opts, load, post_deadline))
        await faults.run_until(end_of_load, opts.fault_every)
        await system.replace_dead_workers()
        say(f"faults stopped ({sum(faults.injected.values())} injected); waiting for posts")
        await posting
        say(f"{len(load.expected):,} deliveries expected; waiting for every one to end")
        found = await wait_terminal(admin, system, load.expected, opts.settle_seconds)
        say("waiting for the history writers to empty their stream")
        primary = await system.redis.until_healthy()
        left, waited = await wait_history_written(primary, HISTORY_WAIT)
        history = await read_history(system.postgres.url, found, load.expected)
        history.left, history.waited = left, waited
        received = {path: t.accepted for path, t in (await receiver.paths()).items()}
        outcome = judge(load, found, received, kinds, faults, system, history)
    print("\n" + render(outcome, opts, loop.time() - began), flush=True)
    if not outcome.ok:
        # The work dir goes with the run: what relay logged as errors is the trace left.
        print(logged_errors(procs), flush=True)
    return outcome


def logged_errors(procs: Processes, most: int = 5) -> str:
    """The last few error lines relay's processes logged (with their tracebacks), by process."""
    found = []
    for child in procs.children:
        try:
            lines = child.log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        found += [f"{child.name}| {_ends(line)}" for line in lines if '"level":"error"' in line]
    return "errors logged (last {}):\n{}".format(most, "\n".join(found[-most:]) or "  none")


def _ends(line: str, keep: int = 1500) -> str:
    """A long log line's start and end: a traceback's last lines name the exception."""
    return line if len(line) <= 2 * keep else f"{line[:keep]} … {line[-keep:]}"


def main(argv: list[str] | None = None) -> int:
    """One chaos run; the exit status."""
    opts = parse_args(argv)
    return scenario("chaos", lambda procs: run(procs, opts), lambda outcome: 0 if outcome.ok else 1)


if __name__ == "__main__":
    sys.exit(main())
