"""A real HTTP receiver on 127.0.0.1 for tests: records what arrives, answers as programmed.

It is a plain asyncio server speaking just enough HTTP/1.1 (keep-alive, Content-Length and
chunked request bodies) so tests can also see the socket level: how many connections were
accepted, how many were open at once.

    async with Receiver() as rx:
        rx.answer(Reply(status=503, headers={"retry-after": "7"}))
        rx.fail(2)                      # the next two requests get a 500, then the answer above
        ... send to rx.url("/hook") ...
        [request] = await rx.wait_for(1)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Self

from relay.embedded import free_port


@dataclass(slots=True, frozen=True)
class Request:
    """One request as the receiver saw it; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.time)  # wall clock, as relay's limits use


@dataclass(slots=True, frozen=True)
class Reply:
    """How to answer: `delay` before the status line, `drip` seconds between body bytes,
    `drop` closes the connection without answering."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    drip: float = 0.0
    drop: bool = False


class Receiver:
    """An HTTP server on a free loopback port; use as `async with Receiver() as rx`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.connections = 0
        self.open_connections = 0
        self.max_open_connections = 0
        self.in_flight = 0  # requests read and not answered yet
        self.most_in_flight = 0
        self._default = Reply()
        self._by_path: dict[str, Reply] = {}
        self._queued: list[Reply] = []
        self._server: asyncio.Server | None = None
        self._arrived = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port the receiver listens on."""
        assert self._server is not None, "receiver not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        """The URL of `path` on this receiver."""
        return f"http://{host}:{self.port}{path}"

    def answer(self, reply: Reply, path: str | None = None) -> None:
        """Answer every request (or every request to `path`) with `reply` from now on."""
        if path is None:
            self._default = reply
        else:
            self._by_path[path] = reply

    def fail(self, times: int, reply: Reply | None = None) -> None:
        """Answer the next `times` requests with `reply` (default: a 500), then as before."""
        self._queued.extend([reply or Reply(status=500)] * times)

    def requests_to(self, path: str) -> list[Request]:
        """The requests received for `path`."""
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Request]:
        """Wait until at least `count` requests have arrived; return all of them."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)

    async def start(self) -> Self:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _reply_for(self, request: Request) -> Reply:
        if self._queued:
            return self._queued.pop(0)
        return self._by_path.get(request.path, self._default)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open_connections += 1
        self.max_open_connections = max(self.max_open_connections, self.open_connections)
        try:
            while (request := await _read_request(reader)) is not None:
                async with self._arrived:
                    self.requests.append(request)
                    self._arrived.notify_all()
                reply = self._reply_for(request)
                if reply.drop:
                    break
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                try:
                    if reply.delay and await _client_left_within(reader, reply.delay):
                        break  # the client gave up (timed out): the connection is gone, as it is
                    await _write_reply(writer, reply)
                finally:
                    self.in_flight -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _client_left_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait `seconds` before answering, noticing if the client hangs up meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await reader.read(1)  # a client waiting for our answer sends nothing more
    except TimeoutError:
        return False
    return True


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None  # the client closed a kept-alive connection between requests
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method=method, path=path, headers=headers, body=body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")  # no trailers are ever sent to us
    return bytes(body)


async def _write_reply(writer: asyncio.StreamWriter, reply: Reply) -> None:
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {reply.status} {reason}", f"content-length: {len(reply.body)}"]
    lines += [f"{name}: {value}" for name, value in reply.headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if reply.drip:
        for i in range(len(reply.body)):
            writer.write(reply.body[i : i + 1])
            await writer.drain()
            await asyncio.sleep(reply.drip)
    else:
        writer.write(reply.body)
    await writer.drain()


def closed_port() -> int:
    """A loopback port nothing listens on: a free one, bound and released."""
    return free_port()
