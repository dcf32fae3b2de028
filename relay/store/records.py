"""Objects kept as one JSON string under one key, changed by read, decide and write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from relay.errors import Conflict, NotFound
from relay.store import codec
from relay.store.idempotency import Commit

T = TypeVar("T")
_LOST = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
P = TypeVar("P")


async def transact(
    client: Redis,
    watched: str | None,
    decide: Callable[[bytes | None], P],
    write: Callable[[Pipeline, P], None],
    what: str,
    commit: Commit[P] | None = None,
) -> P:
    """Read `watched`, `decide` what to write (or raise), and `write` it in one transaction.

    The key is watched while `decide` runs; if another request changed it meanwhile, it runs
    again on the new value, up to ten times, then Conflict. A connection lost on the way
    raises: whether the transaction committed is then unknown. With a commit, the request's claim
    is watched and checked too, and its answer is stored in the same transaction.
    """
    for _ in range(10):
        async with client.pipeline(transaction=True) as pipe:
            try:
                if commit is not None:
                    await commit.hold(pipe)
                if watched is not None:
                    await pipe.watch(watched)
                plan = decide(await pipe.get(watched) if watched is not None else None)
                pipe.multi()  # type: ignore[no-untyped-call]
                write(pipe, plan)
                if commit is not None:
                    commit.store(pipe, plan)
                await pipe.execute()
                return plan
            except redis.exceptions.WatchError as err:
                # redis-py reports a connection lost or timed out while watching as a WatchError
                # too: then the transaction may have committed, so it must not run again here.
                if isinstance(err.__context__, _LOST):
                    raise err.__context__ from None
                continue
    raise Conflict(f"The {what} is being changed by another request; try again.")


async def edit_record(
    client: Redis,
    key: str,
    edit: Callable[[Any], tuple[T, object]],
    what: str,
    also: Callable[[Pipeline, T], None] | None = None,
    commit: Commit[T] | None = None,
) -> T:
    """Apply `edit` (decoded record → result and new record) atomically, optimistically.

    `also` queues further writes that must happen in the same transaction as the new record;
    `commit` stores the request's answer to the result there too.
    """

    def decide(raw: bytes | None) -> tuple[T, object]:
        if raw is None:
            raise NotFound(f"No such {what}.")
        return edit(codec.loads(raw))

    def write(pipe: Pipeline, plan: tuple[T, object]) -> None:
        result, record = plan
        pipe.set(key, codec.dumps(record))
        if also is not None:
            also(pipe, result)

    answer: Commit[tuple[T, object]] | None = None
    if commit is not None:
        answer = Commit(commit.key, commit.run, lambda plan: commit.seal(plan[0]))
    result, _ = await transact(client, key, decide, write, what, answer)
    return result
