"""A loopback TCP link between relay and Redis that can lose replies, as a flaky network does."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self


class Link:
    """Forwards connections to a real server; replies to a request containing `swallow_after`
    are never delivered (the server still runs the command): a reply lost on the way back.
    A request containing `drop_at` never reaches the server, and nothing more comes back on
    its connection: the server went away before the command."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._server: asyncio.Server | None = None
        self.swallow_after: bytes | None = None
        self.swallowed = 0
        self.drop_at: bytes | None = None
        self.dropped = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self, _: type[BaseException] | None, __: BaseException | None, ___: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target)
        lost, gone = asyncio.Event(), asyncio.Event()

        async def upstream() -> None:
            while chunk := await client_r.read(65536):
                if self.drop_at is not None and self.drop_at in chunk:
                    self.dropped += 1
                    lost.set()
                    gone.set()
                if gone.is_set():
                    continue
                if self.swallow_after is not None and self.swallow_after in chunk:
                    lost.set()
                    self.swallowed += 1
                server_w.write(chunk)
                await server_w.drain()

        async def downstream() -> None:
            while chunk := await server_r.read(65536):
                if not lost.is_set():
                    client_w.write(chunk)
                    await client_w.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_w, server_w):
            writer.close()
