"""Calls to Redis made at about the same moment, sent as one.

Under load many coroutines of a process make the same kind of call at once: requests accepting
an event or counted against their token's rate, attempts settling. Each call's round trip and
client-side cost (encoding, a socket write, a wake-up for the reply) is most of what it costs
relay, so those made while one is being prepared go together. Each item is still its own: its
result (or the exception that stopped its part) goes to its caller alone, as if it had called
alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")
Result = TypeVar("Result")

# Sends the items gathered under a key and yields each one's result, in order.
Send = Callable[[Key, list[Item]], AsyncIterator[Result]]


class Gathering(Generic[Key, Item, Result]):
    """Items gathered by key until the task sending them runs: the callers that are ready now
    have had their turn by then, and whoever comes later gathers anew."""

    def __init__(self, send: Send[Key, Item, Result]) -> None:
        self._send = send
        self._open: dict[Key, tuple[list[Item], list[asyncio.Future[Result]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def __call__(self, key: Key, item: Item) -> Result:
        """`item`'s result, once it has been sent with those gathered with it."""
        gathered = self._open.get(key)
        if gathered is None:
            gathered = self._open[key] = ([], [])
            task = asyncio.create_task(self._flush(key))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        result: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        gathered[0].append(item)
        gathered[1].append(result)
        return await result

    async def _flush(self, key: Key) -> None:
        items, results = self._open.pop(key)
        done = 0
        try:
            async for outcome in self._send(key, items):
                if not results[done].done():  # its caller may have gone
                    results[done].set_result(outcome)
                done += 1
        except Exception as exc:  # each caller whose item it stopped gets it, as alone
            for result in results[done:]:
                if not result.done():
                    result.set_exception(exc)
        finally:
            for result in results[done:]:
                result.cancel()  # (a no-op when done) not sent: the process is stopping
