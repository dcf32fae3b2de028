"""The PostgreSQL schema: numbered SQL files applied in order by `relay migrate`.

Each file runs in its own transaction, all under one advisory lock, so two processes migrating
at once apply each file once. `api` and `worker` only check the version and refuse a schema they
do not know, rather than change a database that other releases may be using.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import asyncpg

# Taken for the whole of a migration; any other number would do, as long as it stays the same.
_LOCK = 0x72656C6179  # "relay"


class SchemaMismatch(RuntimeError):
    """The database's schema is not the one this release knows; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration this release carries, in order."""
    folder = resources.files("relay.history") / "schema"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return tuple(sorted(found, key=lambda m: m.version))


def latest() -> int:
    """The schema version this release expects."""
    return migrations()[-1].version


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS relay_schema (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def current(conn: asyncpg.Connection) -> int:
    """The version the database is at; 0 for one never migrated."""
    exists = await conn.fetchval("SELECT to_regclass('relay_schema') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT max(version) FROM relay_schema")
    return int(version or 0)


async def apply(url: str) -> list[Migration]:
    """Apply every migration the database lacks; the ones applied now."""
    conn = await asyncpg.connect(url, timeout=10)
    applied = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK)
        await conn.execute(_BOOKKEEPING)
        for migration in migrations():
            if await current(conn) >= migration.version:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO relay_schema (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration)
    finally:
        # Closing the session releases the lock too.
        await conn.close()
    return applied


async def check(conn: asyncpg.Connection) -> None:
    """Raise SchemaMismatch unless the database is at exactly this release's version."""
    version = await current(conn)
    if version == latest():
        return
    if version < latest():
        raise SchemaMismatch(
            f"the database schema is at version {version}, this release needs {latest()}: "
            "run `relay migrate`"
        )
    raise SchemaMismatch(
        f"the database schema is at version {version}, newer than this release knows "
        f"({latest()}): run a release that knows it, or restore a database of version {latest()}"
    )
