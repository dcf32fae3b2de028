"""Real processes for tests: redis-server on a free port, PostgreSQL, `relay` subprocesses."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import redis
import redis.asyncio

from relay.embedded import EmbeddedPostgres
from relay.embedded import free_port as free_port  # the one free_port, re-exported
from relay.secrets import generate_master_key


async def script_calls(redis_client: redis.asyncio.Redis) -> int:
    """Script calls Redis has run so far (not one it refused, not knowing the script yet)."""
    stats = (await redis_client.info("commandstats"))["cmdstat_evalsha"]
    return (
        int(stats["calls"])
        - int(stats.get("rejected_calls", 0))
        - int(stats.get("failed_calls", 0))
    )


def wait_until(check, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll `check` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


LOOPBACK = "127.0.0.1"
# The name a test group's sentinels know their primary by.
SENTINEL_SERVICE = "relay"


@dataclass
class RedisServer:
    """A throwaway redis-server in a temp dir, as production runs it (AOF on); with
    `replica_of`, a replica of the server on that port."""

    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    replica_of: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make test installs it)"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        replica = [] if self.replica_of is None else ["--replicaof", LOOPBACK, str(self.replica_of)]
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
                # A replica that (re)joins gets its copy at once, not after 5 s of waiting for
                # others to share it.
                "--repl-diskless-sync-delay",
                "0",
                *replica,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.answers)
        return self

    def replication(self) -> dict[str, object]:
        """What INFO replication says (empty when it does not answer)."""
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return dict(client.info("replication"))
        except redis.RedisError:
            return {}
        finally:
            client.close()

    def in_sync(self) -> bool:
        """Whether it is a replica whose link to its primary is up and not loading a copy."""
        info = self.replication()
        return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

    def answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing answers."""
        assert self.process
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            # Redis turns down a SIGTERM that comes while it writes its first AOF (as a replica
            # does right after a sync) and does not come back to it: ask until it goes.
            deadline = time.monotonic() + 10
            while True:
                self.process.terminate()
                try:
                    self.process.wait(0.5)
                    return
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        raise

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye; what the AOF had is what a restart finds."""
        assert self.process
        self.process.kill()
        self.process.wait(10)


@dataclass
class SentinelServer:
    """A throwaway redis-sentinel watching the primary on `primary_port` (quorum 2), quick to
    call it down (1 s) and to fail over."""

    directory: Path
    primary_port: int
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelServer:
        binary = shutil.which("redis-sentinel")
        assert binary, "redis-sentinel is not installed (make test installs it)"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        # Sentinel rewrites its config file as it learns the group: one file of its own.
        config = self.directory / "sentinel.conf"
        service = SENTINEL_SERVICE
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {LOOPBACK}",
                    f"dir {self.directory}",
                    "daemonize no",
                    f"sentinel monitor {service} {LOOPBACK} {self.primary_port} 2",
                    f"sentinel down-after-milliseconds {service} 1000",
                    f"sentinel failover-timeout {service} 2000",
                    f"sentinel parallel-syncs {service} 1",
                ]
            )
            + "\n"
        )
        self.process = subprocess.Popen(
            [binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: self.ask("PING"))
        return self

    def ask(self, *command: str) -> object:
        """A sentinel command's answer, None when the sentinel does not answer."""
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return client.execute_command(*command)
        except redis.RedisError:
            return None
        finally:
            client.close()

    def primary(self) -> int | None:
        """The port of the primary this sentinel names now."""
        answer = self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE)
        return int(answer[1]) if isinstance(answer, list) and answer else None

    def knows_group(self, replicas: int, sentinels: int) -> bool:
        """Whether it has found that many replicas and other sentinels (they find each other
        through the primary, every second or two)."""
        found = [self.ask("SENTINEL", what, SENTINEL_SERVICE) for what in ("REPLICAS", "SENTINELS")]
        return [len(f) if isinstance(f, list) else -1 for f in found] == [replicas, sentinels]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class SentinelGroup:
    """A primary, a replica and three sentinels on loopback: the smallest group that fails over
    when its primary dies, as relay's Sentinel URL reaches it."""

    directory: Path
    servers: dict[int, RedisServer] = field(default_factory=dict)  # by port
    sentinels: list[SentinelServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"

    def start(self) -> SentinelGroup:
        primary = RedisServer(self.directory / "redis-a").start()
        replica = RedisServer(self.directory / "redis-b", replica_of=primary.port).start()
        self.servers = {primary.port: primary, replica.port: replica}
        wait_until(replica.in_sync)
        self.sentinels = [
            SentinelServer(self.directory / f"sentinel-{n}", primary.port).start() for n in range(3)
        ]
        wait_until(lambda: all(s.knows_group(1, 2) for s in self.sentinels), timeout=30)
        return self

    def primary(self) -> RedisServer:
        """The server the sentinels name as primary now (the majority's answer)."""
        named = [s.primary() for s in self.sentinels]
        port = max(set(named), key=named.count)
        assert port in self.servers, f"the sentinels name no server of the group: {named}"
        return self.servers[port]

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary: what it had not yet sent to its replica is gone."""
        doomed = self.primary()
        doomed.kill()
        return doomed

    def wait_failed_over(self, old: RedisServer, timeout: float = 30) -> RedisServer:
        """Wait until every sentinel names another primary, and it takes writes; that one."""

        def promoted() -> bool:
            named = {s.primary() for s in self.sentinels}
            if len(named) != 1 or old.port in named:
                return False
            return self.servers[named.pop()].replication().get("role") == "master"

        wait_until(promoted, timeout)
        return self.primary()

    def rejoin(self, old: RedisServer) -> None:
        """Start a killed server again, on its port and data, as a replica of the new primary;
        wait until it holds a copy."""
        old.replica_of = self.primary().port
        old.start()
        wait_until(old.in_sync, timeout=30)

    def fail_over(self) -> RedisServer:
        """Kill the primary, wait for the sentinels to promote the replica, and bring the
        killed one back as its replica; the new primary."""
        old = self.kill_primary()
        new = self.wait_failed_over(old)
        self.rejoin(old)
        return new

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers.values():
            server.stop()


class PausingProxy:
    """A TCP proxy to a RedisServer that freezes the server (SIGSTOP) for `seconds` the first
    time a request holding `marker` comes through, just before passing it on.

    The request waits in the frozen server's socket; its caller gives up (every relay call does
    after 1.5 s) and hangs up; the server, thawed, runs it and answers nobody: a reply lost.
    Use as `async with PausingProxy(server, marker, seconds) as proxy`, relay pointed at
    `proxy.url`.
    """

    def __init__(self, server: RedisServer, marker: bytes, seconds: float) -> None:
        self.server = server
        self.marker = marker
        self.seconds = seconds
        self.resumed = asyncio.Event()
        self.resumed_at = 0.0  # wall clock, as the receiver's arrival times
        self._armed = True
        self._proxy: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._proxy is not None
        return f"redis://127.0.0.1:{self._proxy.sockets[0].getsockname()[1]}/0"

    async def __aenter__(self) -> PausingProxy:
        self._proxy = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._proxy is not None
        self._proxy.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self.resumed.is_set():
            self.server.resume()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.server.port)
            await asyncio.gather(
                self._pump(reader, up_writer, watch=True),
                self._pump(up_reader, writer, watch=False),
            )
        except (ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, watch: bool
    ) -> None:
        tail = b""
        try:
            while data := await source.read(65536):
                if watch and self._armed and self.marker in tail + data:
                    self._armed = False
                    self.server.pause()
                    asyncio.get_running_loop().call_later(self.seconds, self._resume)
                tail = data[-len(self.marker) :]
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()  # after what was written: a request sent before hanging up still runs

    def _resume(self) -> None:
        self.server.resume()
        self.resumed_at = time.time()
        self.resumed.set()


# What a test database does not need: surviving a crash. Without them a commit costs no fsync.
FAST_POSTGRES = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@contextmanager
def postgres_dir() -> Iterator[Path]:
    """A fresh temp dir for a PostgreSQL cluster, removed afterwards.

    Not one of pytest's: under root, PostgreSQL runs as the `postgres` user, and pytest's temp
    dirs sit under a directory only root may enter.
    """
    path = Path(tempfile.mkdtemp(prefix="relay-test-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL: relay's embedded one, with durability traded for speed."""

    directory: Path
    embedded: EmbeddedPostgres = field(init=False)

    def __post_init__(self) -> None:
        self.embedded = EmbeddedPostgres(self.directory, FAST_POSTGRES)

    @property
    def url(self) -> str:
        return self.embedded.url

    def start(self) -> PostgresServer:
        self.embedded.start()
        return self

    def stop(self) -> None:
        self.embedded.stop()


# Every table but the migrations' own bookkeeping; partitions go with their parent.
_HISTORY_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> 'relay_schema'
  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
"""


async def empty_history(conn: asyncpg.Connection) -> None:
    """TRUNCATE every history table, found in the catalog so that new ones are included."""
    tables = [row[0] for row in await conn.fetch(_HISTORY_TABLES)]
    if tables:
        await conn.execute(f"TRUNCATE {', '.join(tables)}")


# The session's database (set by the `postgres_server` fixture), given to every relay subprocess.
_database_url: str | None = None


def use_database(url: str | None) -> None:
    """Make `relay_env` and `dev_env` point relay subprocesses at this database."""
    global _database_url
    _database_url = url


def _database_env() -> dict[str, str]:
    return {"RELAY_DATABASE_URL": _database_url} if _database_url else {}


TEST_MASTER_KEY = generate_master_key()


def relay_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a relay subprocess pointed at a test Redis and the test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        {
            "RELAY_REDIS_URL": redis_url,
            **_database_env(),
            "RELAY_SECRET_KEYS": TEST_MASTER_KEY,
            **extra,
        }
    )
    return env


def spawn_relay(args: list[str], env: Mapping[str, str], **kwargs) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    """Start `relay <args>` as its own process."""
    return subprocess.Popen([sys.executable, "-m", "relay", *args], env=dict(env), **kwargs)


async def run_relay(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run `relay <args>` to completion, as an operator would, capturing its output."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relay", *args],
        env=dict(env),
        capture_output=True,
        timeout=30,
    )


def wait_http(url: str, timeout: float = 15.0) -> None:
    """Wait until an HTTP server answers at `url`."""

    def up() -> bool:
        try:
            return httpx.get(url, timeout=0.5).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(up, timeout)


def dev_env(data_dir: Path, own_database: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a `relay dev` on its own data dir, with nothing else of relay's set.

    It uses the session's database, unless `own_database` asks for it to start its embedded one
    (a cluster per test costs an initdb, and the data dir must be one `postgres_dir` made).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    database = {} if own_database else _database_env()
    return {**env, "RELAY_DATA_DIR": str(data_dir), **database, **extra}


@dataclass
class Dev:
    """A running `relay dev` and the banner lines it printed."""

    process: subprocess.Popen[bytes]
    port: int
    banner: list[str]
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return next(line.split()[-1] for line in self.banner if line.startswith("admin token"))


def start_dev(
    data_dir: Path, own_database: bool = False, log: Path | None = None, **env: str
) -> Dev:
    """Start `relay dev` on a free port and read its banner (printed once the API answers);
    its log lines go to `log` if given."""
    port = free_port()
    with open(log, "ab") if log else open(os.devnull, "wb") as stderr:
        process = spawn_relay(
            ["dev", "--port", str(port)],
            dev_env(data_dir, own_database, **env),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    banner: list[str] = []

    def read_banner() -> bool:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line, f"relay dev ended before its banner: {banner}"
        banner.append(line.strip())
        return line.startswith("Ctrl-C")

    wait_until(read_banner, timeout=60, interval=0)
    return Dev(process, port, banner, data_dir)


def stop_dev(dev: Dev) -> None:
    """Stop `relay dev` as Ctrl-C does and wait for it."""
    if dev.process.poll() is None:
        dev.process.send_signal(signal.SIGINT)
    dev.process.communicate(timeout=30)
