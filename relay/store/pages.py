"""Cursor pagination over id indexes: newest first, stable while new ids arrive."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Page:
    """One page of ids and the cursor for the next one (None at the end)."""

    ids: list[str]
    next_cursor: str | None


async def newest_first(redis: Redis, index: str, limit: int, cursor: str | None) -> Page:
    """Read up to `limit` ids older than `cursor` (exclusive) from a score-0 sorted set.

    New ids sort after every existing one, so they never shift a page a client is walking.
    """
    start = f"({cursor}" if cursor else "+"
    # redis-py types zrange's bounds as ints; with bylex they are strings.
    raw = await redis.zrange(
        index,
        start,  # type: ignore[arg-type]
        "-",  # type: ignore[arg-type]
        desc=True,
        bylex=True,
        offset=0,
        num=limit + 1,
    )
    ids = [m.decode() if isinstance(m, bytes) else m for m in raw]
    more = len(ids) > limit
    ids = ids[:limit]
    return Page(ids, ids[-1] if more and ids else None)
