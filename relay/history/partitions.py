"""Day partitions of the history tables: made ahead (and on demand), dropped for retention.

Retention by dropping a partition reads none of its rows and leaves no dead rows for VACUUM —
where DELETE would scan, bloat and fall behind. A day first leaves its table by DETACH PARTITION
… CONCURRENTLY, which takes no lock that a query or a write waits for (a plain DROP of a
partition locks its parent until it commits); the table it leaves behind is then dropped on its
own, and as nothing reads it any more, nothing waits while its files are unlinked, which is
most of what a drop costs (0.8–1.9 s for a day of a million deliveries on a small shared machine).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, date, datetime, timedelta

import asyncpg

TABLES = ("events", "deliveries", "attempts", "stats", "audit")
# Partitions made ahead of today, so the writer rarely has to make one while it writes.
DAYS_AHEAD = 3
# One writer or maintenance pass changes partitions at a time (CREATE … IF NOT EXISTS is not
# safe against a concurrent one).
_LOCK = 0x72656C6170  # "relap"


def _name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def day_of(moment: datetime) -> date:
    """The UTC day a row's partition covers."""
    return moment.astimezone(UTC).date()


async def ensure(conn: asyncpg.Connection, days: Iterable[date]) -> None:
    """Make every table's partition for each of `days` that does not exist yet."""
    wanted = sorted(set(days))
    if not wanted:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        existing = {r["relname"] for r in await conn.fetch(_PARTITIONS, list(TABLES))}
        for day in wanted:
            start, end = day.isoformat(), (day + timedelta(days=1)).isoformat()
            for table in TABLES:
                name = _name(table, day)
                if name not in existing:
                    await conn.execute(
                        f"CREATE TABLE {name} PARTITION OF {table} "
                        f"FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')"
                    )


_PARTITIONS = """
SELECT c.relname, p.relname AS parent, i.inhdetachpending AS detaching
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname = ANY($1::text[])
"""

# Day partitions a retention pass took out of their table and has not dropped yet.
_DETACHED = """
SELECT c.relname
FROM pg_class c
WHERE c.relkind = 'r' AND NOT c.relispartition
  AND c.relnamespace = current_schema()::regnamespace AND c.relname ~ $1
"""
_DAY_TABLE = f"^({'|'.join(TABLES)})_p[0-9]{{8}}$"


async def ahead(conn: asyncpg.Connection, today: date) -> None:
    """Make the partitions of today and the next DAYS_AHEAD days."""
    await ensure(conn, (today + timedelta(days=n) for n in range(DAYS_AHEAD + 1)))


async def drop_before(conn: asyncpg.Connection, oldest_kept: date) -> list[str]:
    """Drop every partition holding only days before `oldest_kept`; the names dropped."""
    await detach_before(conn, oldest_kept)
    return await drop_detached(conn)


async def detach_before(conn: asyncpg.Connection, oldest_kept: date) -> list[str]:
    """Take every partition holding only days before `oldest_kept` out of its table (no query
    sees its rows from then on); the names taken out. One a stopped pass left half taken out
    is finished. Nothing waits for this: it waits for what reads the tables meanwhile."""
    taken = []
    async with _exclusive(conn):
        rows = await conn.fetch(_PARTITIONS, list(TABLES))
        # CONCURRENTLY runs in two transactions of its own: one stopped between them leaves
        # the partition pending, for FINALIZE, and its table takes no other detach until then.
        for row in sorted(rows, key=lambda r: not r["detaching"]):
            name, parent = row["relname"], row["parent"]
            if row["detaching"] or _day(name) < oldest_kept:
                how = "FINALIZE" if row["detaching"] else "CONCURRENTLY"
                await conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {name} {how}")
                taken.append(name)
    return sorted(taken)


async def drop_detached(conn: asyncpg.Connection) -> list[str]:
    """Drop the day partitions taken out of their tables (by `detach_before`, this pass's or a
    stopped one's); the names dropped. Nothing reads them any more: nothing waits for this."""
    dropped = []
    async with _exclusive(conn):
        for row in await conn.fetch(_DETACHED, _DAY_TABLE):
            await conn.execute(f"DROP TABLE IF EXISTS {row['relname']}")
            dropped.append(row["relname"])
    return sorted(dropped)


def _day(name: str) -> date:
    return datetime.strptime(name.rpartition("_p")[2], "%Y%m%d").date()


@contextlib.asynccontextmanager
async def _exclusive(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """The partitions' lock for the session (DETACH … CONCURRENTLY runs in no transaction of
    ours, so the transaction-level one that `ensure` takes cannot hold across it)."""
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK)
    except BaseException:
        # Taken, perhaps, as the wait was interrupted: the session must not go back to the
        # pool with it, which leaves sessions as they are (see db.open_pool).
        conn.terminate()
        raise
    try:
        yield
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)
        except BaseException:
            conn.terminate()  # as above: the lock ends with the session
            raise
