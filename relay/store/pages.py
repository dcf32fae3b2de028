"""Cursor pagination over id indexes: newest first, stable while new ids arrive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import Redis

from relay import ids


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


# A filtered list reads at most this many ids per request; a sparse match returns a short page
# with a cursor rather than scanning an index of millions.
SCAN_BUDGET = 1000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Window:
    """A time window over an index of time-sortable ids of one kind (ms bounds, inclusive)."""

    prefix: str
    since_ms: int | None = None
    until_ms: int | None = None


async def filtered_newest_first(
    redis: Redis,
    index: str,
    window: Window,
    limit: int,
    cursor: str | None,
    load: Callable[[list[str]], Awaitable[list[T]]],
    keep: Callable[[T], bool],
    id_of: Callable[[T], str],
) -> tuple[list[T], str | None]:
    """Up to `limit` objects of `index` in `window` that `keep` accepts, newest first.

    Reads at most SCAN_BUDGET ids per call: when they run out before the page fills, the page
    comes back short with a cursor to carry on from.
    """
    high = f"({cursor}" if cursor else "+"
    if window.until_ms is not None:
        until = f"({ids.time_floor(window.prefix, window.until_ms + 1)}"
        high = min(high, until) if cursor else until
    low = "-" if window.since_ms is None else f"[{ids.time_floor(window.prefix, window.since_ms)}"
    found: list[T] = []
    scanned = 0
    # One match more than the page holds tells whether a next page exists.
    while len(found) <= limit and scanned < SCAN_BUDGET:
        batch = await redis.zrange(
            index,
            high,  # type: ignore[arg-type]
            low,  # type: ignore[arg-type]
            desc=True,
            bylex=True,
            offset=0,
            num=min(limit * 2, 200),
        )
        if not batch:
            return found, None
        batch_ids = [m.decode() for m in batch]
        scanned += len(batch_ids)
        for item in await load(batch_ids):
            if not keep(item):
                continue
            found.append(item)
            if len(found) > limit:
                return found[:limit], id_of(found[limit - 1])
        high = f"({batch_ids[-1]}"
    return found, high[1:]  # the scan budget ran out: carry on from here next time


def merge_newest_first(
    sources: list[tuple[list[T], str | None]], limit: int, id_of: Callable[[T], str]
) -> tuple[list[T], str | None]:
    """One page out of pages read from several places, each newest first with its own cursor.

    An object found in more than one place is shown once, as the first place has it. Past the
    cursor of a place that has more, that place has not been read: the page stops there, so
    nothing is skipped and the next page carries on from it.
    """
    seen: dict[str, T] = {}
    for items, _ in sources:
        for item in items:
            seen.setdefault(id_of(item), item)
    frontier = max((cursor for _, cursor in sources if cursor is not None), default=None)
    ordered = sorted(seen.values(), key=id_of, reverse=True)
    complete = [i for i in ordered if frontier is None or id_of(i) >= frontier]
    if len(complete) > limit:
        return complete[:limit], id_of(complete[limit - 1])
    return complete, frontier
