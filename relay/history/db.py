"""Connections to PostgreSQL: one pool per process, and what counts as "PostgreSQL is away"."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from relay.config import redacted_url
from relay.delivery.outage import Backoff
from relay.history.migrations import check
from relay.store import codec

log = logging.getLogger("relay.history")

# Failures that mean "not now" rather than "wrong": the server is down, restarting, unreachable,
# too slow or too busy. Anything else is a bug and is raised. Operator intervention (SQLSTATE
# class 57) is a query canceled (a statement timeout, an operator, a server pausing or on its
# way down), a shutdown, or a server not yet taking connections. asyncpg raises an internal
# client error on a connection its server ended in the middle of an operation (a backend
# terminated, a server killed): the pool drops that connection, the next query gets a new one.
POSTGRES_AWAY: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
)


async def open_pool(url: str, size: int = 8) -> asyncpg.Pool:
    """A pool of up to `size` connections; each query gives up after 10 s."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=size,
        command_timeout=10,
        timeout=5,
        init=_codecs,
        reset=_as_left,
    )
    return pool


async def _as_left(conn: asyncpg.Connection) -> None:
    """A connection goes back to the pool as it is left: by default asyncpg runs a query on
    every release to undo session state (advisory locks, LISTENs, settings, cursors), a round
    trip costing as much as most of relay's queries. relay leaves none: it sets nothing for
    the session, listens to nothing, and the one session lock it takes ends its connection
    when it cannot be let go (`partitions._exclusive`). The pool still rolls back a
    transaction left open, before this."""


async def _codecs(conn: asyncpg.Connection) -> None:
    # Attempts keep their request headers as jsonb: read and written as Python objects.
    await conn.set_type_codec("jsonb", encoder=_json_text, decoder=codec.loads, schema="pg_catalog")


def _json_text(value: object) -> str:
    """JSON text for a jsonb parameter."""
    return codec.dumps(value).decode()


class Database:
    """The process's PostgreSQL pool, opened once PostgreSQL answers with a known schema."""

    def __init__(self, url: str, size: int = 8) -> None:
        self.url = url
        self._size = size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        """The pool; the first call opens it (PostgresAway-type errors if it cannot)."""
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    pool = await open_pool(self.url, self._size)
                    try:
                        async with pool.acquire() as conn:
                            await check(conn)
                    except BaseException:
                        await pool.close()
                        raise
                    self._pool = pool
        return self._pool

    async def wait(self, stopping: asyncio.Event | None = None) -> bool:
        """Wait until PostgreSQL answers, saying so once per try; False if stopped meanwhile.

        A schema of another version raises SchemaMismatch: waiting would not help.
        """
        backoff = Backoff()
        while stopping is None or not stopping.is_set():
            try:
                await self.pool()
                return True
            except POSTGRES_AWAY as exc:
                log.warning("waiting for postgresql at %s: %s", redacted_url(self.url), exc)
                await backoff.wait()
        return False

    async def aclose(self) -> None:
        """Close the pool, if it was opened."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
