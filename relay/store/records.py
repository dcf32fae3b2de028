"""Objects kept as one JSON string under one key, changed by read, edit and write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from relay.errors import Conflict, NotFound
from relay.store import codec

T = TypeVar("T")


async def edit_record(
    client: Redis,
    key: str,
    edit: Callable[[Any], tuple[T, object]],
    what: str,
    also: Callable[[Pipeline, T], None] | None = None,
) -> T:
    """Apply `edit` (decoded record → result and new record) atomically, optimistically.

    The key is watched while the edit runs; if another request changed it meanwhile, the
    edit runs again on the new value, up to ten times, then Conflict. `also` queues further
    writes that must happen in the same transaction as the new record.
    """
    for _ in range(10):
        async with client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                raw = await pipe.get(key)
                if raw is None:
                    raise NotFound(f"No such {what}.")
                result, record = edit(codec.loads(raw))
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(key, codec.dumps(record))
                if also is not None:
                    also(pipe, result)
                await pipe.execute()
                return result
            except redis.exceptions.WatchError:
                continue
    raise Conflict(f"The {what} is being changed by another request; try again.")
