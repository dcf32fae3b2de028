"""The suite's fixtures, loaded as a plugin by conftest.py: one real redis-server and one
PostgreSQL per test process, the app over an ASGI transport, relay workers and Redis servers of
a test's own.

Each test process (one per xdist worker, or the only one) is a session of its own: whatever a
session fixture starts belongs to that process alone, so tests that empty a store never empty
another process's."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio
from _pytest.nodeid import NodeId

from relay.app import create_app
from relay.config import Settings, load_settings
from relay.delivery.handover import HistoryHandover
from relay.delivery.outage import REDIS_AWAY
from relay.history import migrations
from relay.history.db import POSTGRES_AWAY, Database
from relay.history.reader import PostgresArchive
from relay.history.writer import BATCH, HistoryWriter
from relay.metrics import Counts
from relay.store.connect import connect_redis
from tests.flows import SCHEDULE, Workers
from tests.support import (
    TEST_MASTER_KEY,
    PostgresServer,
    RedisServer,
    SentinelGroup,
    empty_history,
    postgres_dir,
    relay_env,
    spawn_relay,
    use_database,
)

ADMIN_TOKEN = "test-admin-token"

ClientFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that starts relay workers is a system test, whichever file it is in; in a test
    process of xdist's, system tests come first; under `--dist loadgroup`, a test's xdist_group
    is named in its id."""
    for item in items:
        if "workers" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.system)
    if hasattr(config, "workerinput"):
        # Spread over processes, the long system tests go first and the short ones fill in
        # after them, so that no process starts a long one when the others are nearly done.
        items.sort(key=lambda item: item.get_closest_marker("system") is None)
    if getattr(config.option, "loadgroup", False):
        for item in items:
            _name_group(item)


def _name_group(item: pytest.Item) -> None:
    """Suffix the id with the test's xdist_group, as loadgroup schedules by the id.

    pytest-xdist 3.8 writes the suffix to `_nodeid`, which pytest 9.2 no longer reads: without
    this its groups would be spread over processes, each starting the group's fixtures again.
    """
    groups = sorted({str(mark.args[0]) for mark in item.iter_markers("xdist_group")})
    suffix = "@" + "_".join(groups)
    if groups and not item.nodeid.endswith(suffix):
        item._id = NodeId.parse(item.nodeid + suffix)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def postgres_server() -> Iterator[PostgresServer]:
    """One migrated PostgreSQL for the session; every relay subprocess is given its URL.

    Autouse, so that no relay subprocess runs without a database, whichever fixtures its test
    asked for.
    """
    with postgres_dir() as directory:
        server = PostgresServer(directory).start()
        try:
            # In a thread: asyncio.run would replace the event loop pytest-asyncio keeps.
            with ThreadPoolExecutor(1) as thread:
                thread.submit(asyncio.run, migrations.apply(server.url)).result()
            use_database(server.url)
            yield server
        finally:
            use_database(None)
            server.stop()


@pytest.fixture
async def history_db(postgres_server: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the session's database, every history table emptied first."""
    conn = await asyncpg.connect(postgres_server.url)
    try:
        await empty_history(conn)
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def master_key() -> str:
    return TEST_MASTER_KEY


@pytest.fixture
async def redis_client(
    redis_server: RedisServer, postgres_server: PostgresServer
) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the session's Redis, emptied first; history is emptied too, so that each
    test starts with both stores blank."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    await client.flushdb()
    conn = await asyncpg.connect(postgres_server.url)
    try:
        await empty_history(conn)
    finally:
        await conn.close()
    yield client
    await client.aclose()


@pytest.fixture
async def archive(postgres_server: PostgresServer) -> AsyncIterator[PostgresArchive]:
    """History as the delivery and event stores read it, for tests that build a store."""
    database = Database(postgres_server.url)
    yield PostgresArchive(database)
    await database.aclose()


class _HistoryFirst(httpx.ASGITransport):
    """The app, with every record handed to history written before a list is read: as if a
    worker's history writer had just caught up (lists read PostgreSQL, and most tests run no
    worker). A store that is away is left to the request to meet."""

    def __init__(self, app: Any, settings: Settings) -> None:
        super().__init__(app=app, raise_app_exceptions=False)
        assert settings.redis_url and settings.database_url
        self._redis = connect_redis(settings.redis_url)
        self._database = Database(settings.database_url)
        self._handover = HistoryHandover(self._redis)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and (path.endswith("/deliveries") or path == "/v1/events"):
            with contextlib.suppress(*REDIS_AWAY, *POSTGRES_AWAY):
                writer = HistoryWriter(
                    self._handover, await self._database.pool(), "tests", Counts()
                )
                while handed := await self._handover.handed_over("tests", BATCH, None):
                    await writer.flush(handed)
        return await super().handle_async_request(request)

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._database.aclose()


@pytest.fixture
def settings_for(
    redis_server: RedisServer, postgres_server: PostgresServer, master_key: str, tmp_path: Path
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_server.url,
            "database_url": postgres_server.url,
            "admin_token": ADMIN_TOKEN,
            "secret_keys": master_key,
            "allow_private_targets": "true",
            "data_dir": str(tmp_path / "data"),
            "retry_schedule": "1,2,4",
            "delivery_timeout": 2.0,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
async def make_client(
    settings_for: Callable[..., Settings], redis_client: redis.asyncio.Redis
) -> AsyncIterator[ClientFactory]:
    """Build an app with some settings and a client speaking to it; `token=` sets the bearer."""
    async with AsyncExitStack() as stack:

        async def make(token: str | None = ADMIN_TOKEN, **overrides: Any) -> httpx.AsyncClient:
            settings = settings_for(**overrides)
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            headers = {"authorization": f"Bearer {token}"} if token else {}
            client = httpx.AsyncClient(
                transport=_HistoryFirst(app, settings),
                base_url="http://relay.test",
                headers=headers,
            )
            await stack.enter_async_context(client)
            return client

        yield make


@pytest.fixture
async def admin(make_client: ClientFactory) -> httpx.AsyncClient:
    return await make_client()


@pytest.fixture
def token_for(admin: httpx.AsyncClient) -> Callable[..., Awaitable[str]]:
    async def issue(role: str, tenant_id: str | None = None) -> str:
        body: dict[str, Any] = {"role": role}
        if tenant_id:
            body["tenant_id"] = tenant_id
        response = await admin.post("/v1/tokens", json=body)
        assert response.status_code == 201, response.text
        token: str = response.json()["data"]["token"]
        return token

    return issue


@pytest.fixture
async def workers(
    redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> AsyncIterator[Workers]:
    """Start `relay worker` processes on the session's Redis (emptied first); each is stopped
    with SIGTERM afterwards, and killed if it will not go."""
    started: list[subprocess.Popen[bytes]] = []

    async def start(count: int = 1, **env: str) -> list[subprocess.Popen[bytes]]:
        settings = {
            "RELAY_ALLOW_PRIVATE_TARGETS": "true",
            "RELAY_RETRY_SCHEDULE": SCHEDULE,
            "RELAY_DELIVERY_TIMEOUT": "2",
            **env,
        }
        procs = [
            spawn_relay(
                ["worker"],
                relay_env(redis_server.url, **settings),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(count)
        ]
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may pause, stop and restart."""
    server = RedisServer(tmp_path / "own-redis").start()
    yield server
    server.stop()


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A primary, its replica and three sentinels of the test's own, which it may fail over."""
    group = SentinelGroup(tmp_path / "sentinel-group").start()
    yield group
    group.stop()
