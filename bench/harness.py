"""What every scenario of the benchmark shares: its command line, its progress lines, the system
it runs against, and how a run begins and ends.

A scenario (bench/__main__.py, waiting, batch, …) keeps its own measurement and verdict. The
system is started here as production runs it: redis-server and PostgreSQL (`start_stores`), the
bench receiver (`spawn_receiver`), `relay api` (`start_api`) and the `relay worker`s, with the
admin and ingest clients that drive them; `start` puts them together for the usual run.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import redis.asyncio as aioredis
import uvloop

from bench.load import Api, LoadError, ReceiverClient
from bench.procs import (
    Child,
    Postgres,
    Processes,
    RelaySettings,
    SetupError,
    api_argv,
    bench_env,
    free_port,
    harness_cpu_seconds,
    machine_cpu_seconds,
    processes,
    receiver_argv,
    redis_calls,
    spawn_worker,
    start_postgres,
    start_redis,
    stop,
    until_connected,
    wait_until,
)
from relay.signing import generate_secret
from relay.store import keys

T = TypeVar("T")
SETTLE_TIMEOUT = 60.0


# --- the command line and progress -------------------------------------------------------------


def command_line(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m <name>`, described by its docstring's first paragraph."""
    return argparse.ArgumentParser(
        prog=f"python -m {name}", description=doc.split("\n\n")[0] if doc else None
    )


def speaker(name: str) -> Callable[[str], None]:
    """A scenario's progress lines, each marked with its name: runs take minutes."""

    def say(text: str) -> None:
        print(f"{name}: {text}", flush=True)

    return say


# --- the stores ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stores:
    """A run's redis-server and PostgreSQL."""

    redis_child: Child
    redis_port: int
    postgres: Postgres

    def settings(
        self, endpoint_concurrency: int, extra: dict[str, str] | None = None
    ) -> RelaySettings:
        """What relay's processes are started with against these stores."""
        return RelaySettings(
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            database_url=self.postgres.url,
            endpoint_concurrency=endpoint_concurrency,
            extra=extra or {},
        )

    def client(self, timeout: float = 5.0) -> aioredis.Redis:
        """A client of the run's Redis, to watch it."""
        return aioredis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=timeout)


async def start_stores(procs: Processes) -> Stores:
    """redis-server (AOF, fsync every second) and PostgreSQL (fsync on), migrated, up."""
    port = free_port()
    redis_child = await start_redis(procs, port)
    return Stores(redis_child, port, await start_postgres(procs))


# --- the receiver and the API -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Receiver:
    """The bench receiver: its process, its control client, and the secret every bench webhook
    imports, so that it checks every signature."""

    child: Child
    client: ReceiverClient
    secret: str


def spawn_receiver(
    procs: Processes, session: aiohttp.ClientSession, options: Sequence[str] = ()
) -> Receiver:
    """The receiver started with `options` (see bench/receiver.py); `start_api` waits for it."""
    secret = generate_secret()
    port = free_port()
    child = procs.spawn("receiver", receiver_argv(port, *options), bench_env(secret))
    return Receiver(child, ReceiverClient(session, port), secret)


async def start_api(
    procs: Processes,
    session: aiohttp.ClientSession,
    settings: RelaySettings,
    receiver: Receiver | None = None,
) -> tuple[Child, Api]:
    """`relay api` with `settings`; once it (and the receiver, if any) answers, the API child and
    an admin client."""
    port = free_port()
    child = procs.spawn("api", api_argv(port), settings.env())
    admin = Api(session, f"http://127.0.0.1:{port}", settings.admin_token)
    if receiver is not None:
        await wait_until(receiver.client.ready, receiver.child, "receiver")
    await wait_until(admin.ready, child, "relay api")
    return child, admin


async def ingest_client(admin: Api, name: str = "bench") -> Api:
    """The API with a new ingest token, as an upstream service posts."""
    token = await admin.create("/v1/tokens", {"role": "ingest", "name": name})
    return admin.with_token(token["token"])


# --- the usual system ---------------------------------------------------------------------------


@dataclass(slots=True)
class Stack:
    """The running system of a usual run and the clients that drive and watch it."""

    procs: Processes
    settings: RelaySettings
    stores: Stores
    redis: aioredis.Redis  # to watch it
    api_child: Child
    admin: Api
    api: Api  # with an ingest token, as an upstream service posts
    receiver_child: Child
    receiver: ReceiverClient
    secret: str  # every webhook imports it, so the receiver can check every signature
    workers: list[Child] = field(default_factory=list)

    @property
    def postgres(self) -> Postgres:
        """The run's PostgreSQL."""
        return self.stores.postgres

    @property
    def relay(self) -> list[Child]:
        """relay's own processes."""
        return [self.api_child, *self.workers]

    async def add_webhook(self, path: str, tenant: str, **more: Any) -> dict[str, Any]:
        """A webhook of `tenant` at `path` on the receiver, through the API; as it answered."""
        body = {"url": self.receiver.base + path, "tenant_id": tenant, "secret": self.secret}
        return await self.admin.create("/v1/webhooks", {**body, **more})

    def spawn_workers(
        self, count: int, prefix: str = "worker", env: dict[str, str] | None = None
    ) -> list[Child]:
        """`count` more `relay worker`s (with `env` instead of the run's), not waited for."""
        first = len(self.workers) + 1
        started = [
            spawn_worker(self.procs, f"{prefix}{n}", env or self.settings.env())
            for n in range(first, first + count)
        ]
        self.workers += started
        return started

    async def start_workers(
        self, count: int, prefix: str = "worker", env: dict[str, str] | None = None
    ) -> list[Child]:
        """`count` more `relay worker`s, each once it has connected to Redis."""
        started = self.spawn_workers(count, prefix, env)
        for worker in started:
            await until_connected(worker, self.stores.redis_port)
        return started

    def stop_workers(self, workers: list[Child]) -> None:
        """Stop these workers (SIGTERM, as a deploy would)."""
        stop(workers)
        self.workers = [w for w in self.workers if w not in workers]

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process, and by the workers together."""
        used = {"api": self.api_child.cpu_seconds()}
        for worker in self.workers:
            used[worker.name] = worker.cpu_seconds()
        used["workers"] = sum(used[w.name] for w in self.workers)
        used["redis"] = self.stores.redis_child.cpu_seconds()
        used["postgres"] = self.postgres.cpu_seconds()
        used["receiver"] = self.receiver_child.cpu_seconds()
        used["harness"] = harness_cpu_seconds()
        # Not a process: the whole machine (all cores, everyone), and time stolen from it.
        used["machine"], used["stolen"] = machine_cpu_seconds()
        return used

    def check_alive(self) -> None:
        """Raise SetupError if a relay process, a store or the receiver has exited."""
        for child in (self.stores.redis_child, self.receiver_child, *self.relay):
            child.check_alive()
        self.postgres.check_alive()

    async def redis_calls(self) -> int:
        """Commands Redis has run so far, those inside Lua scripts included."""
        return await redis_calls(self.redis)

    async def used_memory(self) -> int:
        """Redis INFO used_memory, in bytes."""
        info = await self.redis.info("memory")
        return int(info["used_memory"])

    async def settle(self, timeout: float = SETTLE_TIMEOUT) -> bool:
        """Wait until no delivery is pending or in flight; False if some still are at the end."""
        deadline = time.monotonic() + timeout
        # A tenant with anything queued stays in the tenants' set until its last delivery ends.
        while await self.redis.exists(keys.TENANTS):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True


async def start(
    procs: Processes,
    session: aiohttp.ClientSession,
    endpoint_concurrency: int,
    extra: dict[str, str] | None = None,
    receiver_options: Sequence[str] = (),
    redis_timeout: float = 5.0,
) -> Stack:
    """The stores, the receiver (with `receiver_options`) and the API up, an ingest token made;
    the workers are the run's to start (`Stack.start_workers`)."""
    stores = await start_stores(procs)
    settings = stores.settings(endpoint_concurrency, extra)
    receiver = spawn_receiver(procs, session, receiver_options)
    api_child, admin = await start_api(procs, session, settings, receiver)
    return Stack(
        procs=procs,
        settings=settings,
        stores=stores,
        redis=stores.client(redis_timeout),
        api_child=api_child,
        admin=admin,
        api=await ingest_client(admin),
        receiver_child=receiver.child,
        receiver=receiver.client,
        secret=receiver.secret,
    )


# --- the run ------------------------------------------------------------------------------------


def run_harness(name: str, main: Callable[[Processes], Coroutine[Any, Any, T]]) -> T | int:
    """Run `main` on uvloop with a work dir for its children, stopped however it ends.

    Returns its result, or an exit status: 130 when interrupted (Ctrl-C, or SIGTERM from
    `timeout`, CI or a supervisor), 2 when the run could not be done (SetupError, LoadError, a
    timeout).
    """

    async def cancellable(procs: Processes) -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main(procs)

    try:
        with processes() as procs, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(cancellable(procs))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\n{name}: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except (SetupError, LoadError, TimeoutError) as exc:
        print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def scenario(
    name: str,
    measure: Callable[[Processes], Coroutine[Any, Any, T]],
    finish: Callable[[T], int],
) -> int:
    """One run of a scenario: `measure` with everything it starts stopped however it ends, then
    `finish` with its figures (report, results, exit status); the exit status."""
    outcome = run_harness(name, measure)
    return outcome if isinstance(outcome, int) else finish(outcome)
