"""The processes a benchmark run starts: redis-server, PostgreSQL, relay api and workers, the
receiver.

Every child runs in its own session with its output in a log file under a temp dir, and is
stopped (SIGTERM, then SIGKILL) when the run ends, however it ends. PostgreSQL is relay's
embedded one, with its cluster in a temp dir of its own, stopped last and removed with the rest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # psutil ships no type information
import redis.asyncio as aioredis

from relay.embedded import EmbeddedPostgres, EmbeddedPostgresError
from relay.embedded import free_port as free_port  # the one free_port, re-exported
from relay.history import migrations
from relay.processes import die_with_parent

STOP_TIMEOUT = 10.0
READY_TIMEOUT = 30.0
REPO_ROOT = Path(__file__).resolve().parent.parent
# Where the receiver and the limit loop find the webhook secret every bench webhook imports.
SECRET_ENV = "BENCH_SECRET"


class SetupError(Exception):
    """Something the benchmark needs did not start."""


def log_tail(log: Path, name: str, lines: int = 15) -> str:
    """The end of a log file, each line marked with whose it is."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(f"  {name}| {line}" for line in text.splitlines()[-lines:])


@dataclass(slots=True)
class Child:
    """A process the benchmark started, with its output captured in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether it has not exited."""
        return self.process.poll() is None

    def log_bytes(self) -> int:
        """How much it has written to its output so far."""
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def tail(self, lines: int = 15) -> str:
        """The end of its output, to show why it failed."""
        return log_tail(self.log, self.name, lines)

    def check_alive(self) -> None:
        """Raise SetupError, with its last output, if it has exited."""
        if not self.running:
            raise SetupError(
                f"{self.name} exited with {self.process.returncode}; its last output:\n"
                + self.tail()
            )

    def cpu_seconds(self) -> float:
        """User + system CPU time it and its finished children have used so far.

        The children count because Redis forks to rewrite its AOF, and that work is Redis's.
        """
        t = psutil.Process(self.pid).cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, its ended children and every live descendant
    (a postmaster's backends, a prefork pool's children)."""
    root = psutil.Process(pid)
    t = root.cpu_times()
    used = float(t.user + t.system + t.children_user + t.children_system)
    for descendant in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            d = descendant.cpu_times()
            used += float(d.user + d.system)
    return used


@dataclass(slots=True)
class Postgres:
    """A run's PostgreSQL: its URL, and the signals a chaos run sends to all of its processes."""

    embedded: EmbeddedPostgres
    paused: list[psutil.Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Where relay reaches it; the same after a restart."""
        return self.embedded.url

    @property
    def running(self) -> bool:
        """Whether its postmaster has not exited."""
        process = self.embedded.process
        return process is not None and process.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The end of its log, to show why it failed."""
        return log_tail(self.embedded.log_path, "postgres", lines)

    def check_alive(self) -> None:
        """Raise SetupError, with its last output, if it has exited."""
        if not self.running:
            raise SetupError(f"postgres exited; its last output:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the postmaster and its backends, ended ones included."""
        if not self.running:
            return 0.0
        assert self.embedded.process is not None
        return tree_cpu_seconds(self.embedded.process.pid)

    def _frozen(self) -> list[psutil.Process]:
        """The postmaster, stopped so that it forks no more, and every process it has forked.

        Each backend leads a session of its own, so signalling the postmaster's process group
        would miss them; and a postmaster killed alone leaves them holding its shared memory,
        which a new postmaster on the same data refuses to share.
        """
        if not self.running:
            return []
        assert self.embedded.process is not None
        postmaster = psutil.Process(self.embedded.process.pid)
        postmaster.send_signal(signal.SIGSTOP)
        try:
            return [postmaster, *postmaster.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [postmaster]

    def pause(self) -> None:
        """SIGSTOP the whole server: connections stay open and nothing answers."""
        self.paused = self._frozen()
        _signal(self.paused, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT whatever `pause` stopped."""
        _signal(self.paused, signal.SIGCONT)
        self.paused = []

    async def kill(self) -> None:
        """SIGKILL the postmaster and every backend, as a crash would; wait until all are gone."""
        victims = self._frozen() + self.paused
        self.paused = []
        _signal(victims, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(_alive(p) for p in victims):
            if time.monotonic() > deadline:
                raise SetupError("postgres processes still alive after SIGKILL")
            await asyncio.sleep(0.05)
        if self.embedded.process is not None:
            self.embedded.process.wait()

    async def restart(self) -> None:
        """Start it again on the same port and data; it recovers from its WAL first."""
        await _start(self.embedded)

    def stop(self) -> None:
        """A fast shutdown; backends it left behind (a kill's, a pause's) are killed."""
        victims = self.paused + self._frozen()
        _signal(victims, signal.SIGCONT)
        self.paused = []
        self.embedded.stop()
        _signal([p for p in victims if _alive(p)], signal.SIGKILL)


def _signal(processes: list[psutil.Process], signum: signal.Signals) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signum)


def _alive(process: psutil.Process) -> bool:
    """Whether it still runs; a zombie waits for its reaper but holds nothing any more."""
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def _start(embedded: EmbeddedPostgres) -> None:
    try:
        await asyncio.to_thread(embedded.start)
    except EmbeddedPostgresError as exc:
        raise SetupError(f"{exc}:\n{log_tail(embedded.log_path, 'postgres')}") from None


@dataclass(slots=True)
class Processes:
    """Every child of one run, stopped together at the end."""

    workdir: Path
    children: list[Child] = field(default_factory=list)
    databases: list[Postgres] = field(default_factory=list)
    # Temp dirs besides the work dir, removed with it.
    dirs: list[Path] = field(default_factory=list)

    def make_dir(self, prefix: str) -> Path:
        """A fresh temp dir directly in the system's temp dir, removed when the run ends."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self.dirs.append(path)
        return path

    def subdir(self, name: str) -> Path:
        """A directory of the work dir's own, made if missing (a process restarted with it
        finds its files again)."""
        path = self.workdir / name
        path.mkdir(exist_ok=True)
        return path

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        """Start `argv` in the work dir, output to `<workdir>/<name>.log`."""
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                cwd=self.workdir,  # so no `.env` of the operator's working directory is read
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C reaches only the harness, which then stops the
                # children in order. die_with_parent: if the harness is SIGKILLed, the kernel
                # stops them too.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        """Everything but the stores first (workers finish their writes), then the stores."""
        stop([c for c in self.children if not c.name.startswith("redis")])
        stop([c for c in self.children if c.name.startswith("redis")])
        for database in self.databases:
            database.stop()


def stop(children: list[Child], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM each child, then SIGKILL whichever is still running after `timeout` seconds."""
    for child in children:
        if child.running:
            child.process.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    """A temp work dir for the children; on the way out they are stopped and it is removed."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    procs = Processes(workdir)
    try:
        yield procs
    finally:
        # A second, impatient Ctrl-C must not leave processes behind: cleanup is bounded anyway.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            procs.stop_all()
        finally:
            signal.signal(signal.SIGINT, previous)
            for path in (workdir, *procs.dirs):
                shutil.rmtree(path, ignore_errors=True)


async def wait_until(
    check: Callable[[], Awaitable[bool]], child: Child, what: str, timeout: float = READY_TIMEOUT
) -> None:
    """Poll `check` until true; fail early if `child` dies, with its output on a timeout."""
    deadline = time.monotonic() + timeout
    while not await check():
        child.check_alive()
        if time.monotonic() > deadline:
            raise SetupError(f"{what} not ready within {timeout:.0f}s; output:\n{child.tail()}")
        await asyncio.sleep(0.1)


async def wait_exit(child: Child, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `child` to exit; whether it did."""
    deadline = time.monotonic() + timeout
    while child.running:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def redis_argv(port: int, workdir: Path, *options: str) -> list[str]:
    """redis-server as production runs it: AOF fsynced every second, no eviction; then any
    other `options` (`--name value` pairs)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SetupError("redis-server is not installed (`make redis` installs it)")
    return [
        binary,
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)),
        *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
        *("--maxmemory-policy", "noeviction", "--daemonize", "no"),
        *options,
    ]


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """What the relay processes are started with (the secrets are fresh each run)."""

    redis_url: str
    database_url: str
    endpoint_concurrency: int
    # Other RELAY_* variables a run sets, e.g. a short retry schedule.
    extra: dict[str, str] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    master_key: str = field(
        default_factory=lambda: base64.b64encode(secrets.token_bytes(32)).decode()
    )

    def env(self) -> dict[str, str]:
        """The environment: nothing of the operator's RELAY_*, production defaults otherwise."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("RELAY_")}
        env.update(
            RELAY_REDIS_URL=self.redis_url,
            RELAY_DATABASE_URL=self.database_url,
            RELAY_ADMIN_TOKEN=self.admin_token,
            RELAY_SECRET_KEYS=self.master_key,
            RELAY_ALLOW_PRIVATE_TARGETS="true",  # the receiver is on loopback
            RELAY_API_RATE_LIMIT="0",  # the limiter would cap the load we mean to measure
            RELAY_ENDPOINT_CONCURRENCY=str(self.endpoint_concurrency),
        )
        env.update(self.extra)
        return env

    def shown(self) -> dict[str, str]:
        """The settings that shape the figures, without secrets, for the results file."""
        return {
            "RELAY_ALLOW_PRIVATE_TARGETS": "true",
            "RELAY_API_RATE_LIMIT": "0",
            "RELAY_ENDPOINT_CONCURRENCY": str(self.endpoint_concurrency),
            **self.extra,
        }


def relay_argv(*args: str) -> list[str]:
    """`relay <args>` with this interpreter, exactly as production starts it."""
    return [sys.executable, "-m", "relay", *args]


def connected_to(pid: int, port: int) -> bool:
    """Whether process `pid` holds an open TCP connection to loopback `port`."""
    return any(
        conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
        for conn in psutil.Process(pid).net_connections(kind="tcp")
    )


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far, summed over its cores.

    Busy is everything but idle and iowait: every process, ours or not, and the kernel.
    Stolen is time the hypervisor gave to other guests: on a shared machine it is noise.
    """
    t = psutil.cpu_times()
    steal = float(getattr(t, "steal", 0.0))
    busy = float(sum(t)) - float(t.idle) - float(getattr(t, "iowait", 0.0)) - steal
    return busy, steal


def harness_cpu_seconds() -> float:
    """User + system CPU time of this process (the load generator)."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def bench_env(secret: str) -> dict[str, str]:
    """The environment of the receiver and the limit loop: the webhook secret, and `bench`
    importable although they run in the temp dir."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, SECRET_ENV: secret, "PYTHONPATH": path}


async def _until_answers(child: Child, port: int) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    async def answers() -> bool:
        try:
            return bool(await client.ping())
        except aioredis.RedisError:
            return False

    try:
        await wait_until(answers, child, child.name)
    finally:
        await client.aclose()


async def start_redis(
    procs: Processes,
    port: int,
    name: str = "redis",
    directory: Path | None = None,
    options: Sequence[str] = (),
) -> Child:
    """redis-server on `port` with its data in `directory` (the work dir unless given; see
    `Processes.subdir`): a restart finds it there; and any other `options`."""
    child = procs.spawn(name, redis_argv(port, directory or procs.workdir, *options), {})
    await _until_answers(child, port)
    return child


def _sentinel_config(directory: Path, port: int, monitor: Sequence[str]) -> Path:
    config = directory / "sentinel.conf"
    lines = [f"port {port}", "bind 127.0.0.1", f"dir {directory}", "daemonize no", *monitor]
    config.write_text("\n".join(lines) + "\n")
    return config


async def start_sentinel(procs: Processes, port: int, name: str, monitor: Sequence[str]) -> Child:
    """redis-sentinel on `port`, its config (which it rewrites as it learns its group) in a
    directory of its own: `sentinel monitor` and the other `sentinel` lines in `monitor`."""
    binary = shutil.which("redis-sentinel")
    if binary is None:
        raise SetupError("redis-sentinel is not installed (`make redis` installs it)")
    config = _sentinel_config(procs.subdir(name), port, monitor)
    child = procs.spawn(name, [binary, str(config)], {})
    await _until_answers(child, port)
    return child


async def start_postgres(procs: Processes) -> Postgres:
    """relay's embedded PostgreSQL for this run, migrated, on a port it keeps across restarts."""
    # Not under the work dir: when the run is root's, PostgreSQL runs as the `postgres` user,
    # which must pass through every directory above its cluster, and the work dir is closed.
    directory = procs.make_dir("relay-bench-pg-")
    # Production's durability, fsync and synchronous commit on (the server's defaults): the
    # history writer's commits cost here what they cost in production, and a killed server
    # keeps every commit.
    database = Postgres(EmbeddedPostgres(directory, port=free_port()))
    procs.databases.append(database)
    await _start(database.embedded)
    await migrations.apply(database.url)
    return database


def receiver_argv(port: int, *options: str) -> list[str]:
    """The benchmark receiver (bench/receiver.py) on `port`."""
    return [sys.executable, "-m", "bench.receiver", "--port", str(port), *options]


def api_argv(port: int) -> list[str]:
    """`relay api` on loopback `port`."""
    return relay_argv("api", "--host", "127.0.0.1", "--port", str(port))


def spawn_worker(procs: Processes, name: str, env: dict[str, str]) -> Child:
    """`relay worker` as production starts it."""
    return procs.spawn(name, relay_argv("worker"), env)


async def until_connected(worker: Child, redis_port: int) -> None:
    """Wait until `worker` has connected to Redis (its imports take a while)."""

    async def connected() -> bool:
        return connected_to(worker.pid, redis_port)

    await wait_until(connected, worker, worker.name)


async def redis_calls(client: aioredis.Redis) -> int:
    """Commands Redis has run so far, those inside Lua scripts included."""
    stats = await client.info("commandstats")
    return sum(int(command["calls"]) for command in stats.values())
