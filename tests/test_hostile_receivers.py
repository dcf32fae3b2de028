"""Hostile receivers: whatever an endpoint answers, an attempt ends within the delivery timeout,
holds at most the capture limit of the answer, and says plainly what went wrong.

The receivers here are raw asyncio servers on loopback, so they can answer what no HTTP server
library would: decompression bombs, endless or trickled bodies, a megabyte of headers, a
status line that is not one. Each is met twice: by a test send (the API's own sender) and by a
delivery made by a real `relay worker` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import re
import signal
import subprocess
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import pytest
import redis.asyncio

from relay.embedded import free_port
from relay.store import keys
from tests.fixtures import ADMIN_TOKEN
from tests.flows import Workers, post_event, wait_status, webhook
from tests.support import RedisServer, relay_env, spawn_relay, wait_http

TIMEOUT = 2  # RELAY_DELIVERY_TIMEOUT of every relay here, seconds
# Time an attempt may take beyond the timeout: the timeout bounds it, not a second per read.
SLACK_MS = 700
CAPTURE = 4096  # RELAY_CAPTURE_RESPONSE_BYTES, the default
BOMB_BYTES = 200 * 1024 * 1024  # what each bomb inflates to

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


class HostileReceiver:
    """A loopback server that reads each request, answers it with `answer`'s raw bytes, and
    closes the connection; use as `async with HostileReceiver(answer) as rx`."""

    def __init__(self, answer: Answer) -> None:
        self.requests = 0
        self._answer = answer
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, path: str = "/hook") -> str:
        """The URL of `path` on this receiver."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}{path}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=512)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            self.requests += 1
            await self._answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # relay hung up, as it should once it has what it keeps
        finally:
            self._tasks.discard(task)
            writer.close()


def _compressed(data_bytes: int, wbits: int) -> bytes:
    """`data_bytes` zero bytes, compressed (wbits 31: gzip, 15: zlib, as `deflate` means)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = bytes(1024 * 1024)
    return b"".join(packer.compress(block) for _ in range(data_bytes // len(block))) + (
        packer.flush()
    )


@functools.cache
def bomb(encoding: str) -> bytes:
    """A body that inflates to 200 MB under `encoding`."""
    if encoding == "gzip":
        return _compressed(BOMB_BYTES, 31)
    if encoding == "deflate":
        return _compressed(BOMB_BYTES, 15)
    assert encoding == "gzip, gzip"
    return gzip.compress(bomb("gzip"), 9)  # 200 MB in a few hundred bytes


def bomb_answer(encoding: str) -> Answer:
    async def answer(writer: asyncio.StreamWriter) -> None:
        body = bomb(encoding)
        head = f"HTTP/1.1 200 OK\r\ncontent-encoding: {encoding}\r\ncontent-length: {len(body)}"
        writer.write(head.encode() + b"\r\n\r\n" + body)
        await writer.drain()

    return answer


async def endless_body(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (16384, b"z" * 16384)
    while True:  # until relay hangs up
        writer.write(chunk)
        await writer.drain()


async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(1)


async def trickled_body(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
    await _trickle(writer, b"y" * 100)


async def trickled_answer(writer: asyncio.StreamWriter) -> None:
    await _trickle(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def megabyte_of_headers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for i in range(1024):
        writer.write(b"x-filler-%d: %s\r\n" % (i, b"h" * 1000))
    writer.write(b"content-length: 0\r\n\r\n")
    await writer.drain()


async def megabyte_header(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nx-filler: " + b"h" * 1024 * 1024 + b"\r\n\r\n")
    await writer.drain()


async def malformed_status_line(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 two hundred OK\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()


async def nul_bytes(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nok\x00\x00bad!")
    await writer.drain()


async def encoded_then_identity(writer: asyncio.StreamWriter) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-encoding: identity\r\n"
    writer.write(head + b"content-length: 4\r\n\r\n\x1f\x8b\x08\x00")
    await writer.drain()


async def redirect_to_itself(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 302 Found\r\nlocation: /hook\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()


@dataclass(frozen=True, slots=True)
class Case:
    """A hostile answer and the attempt it must come to."""

    answer: Answer
    status_code: int | None
    error: str | None  # the attempt's error, a regex
    body: str | None = None  # the attempt's response_body, when it is known exactly
    last_error: str | None = None  # of the failed delivery, when not the attempt's error

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _not_decoded(encoding: str) -> str:
    kept = min(len(bomb(encoding)), CAPTURE)
    return f"[{kept} bytes with content-encoding {encoding!r}, not decoded]"


CASES = {
    "gzip bomb": Case(bomb_answer("gzip"), 200, None, _not_decoded("gzip")),
    "deflate bomb": Case(bomb_answer("deflate"), 200, None, _not_decoded("deflate")),
    "stacked gzip bomb": Case(bomb_answer("gzip, gzip"), 200, None, _not_decoded("gzip, gzip")),
    "endless chunked body": Case(endless_body, 200, None, "z" * CAPTURE),
    # The 200 came in time, so it is a delivery; the attempt says its body was cut short.
    "body trickled a byte a second": Case(
        trickled_body, 200, rf"timeout after {TIMEOUT}s reading the response body"
    ),
    "answer trickled a byte a second": Case(trickled_answer, None, rf"timeout after {TIMEOUT}s"),
    "1 MB of response headers": Case(
        megabyte_of_headers, None, "malformed response: too many headers received", ""
    ),
    "one 1 MB response header": Case(
        megabyte_header, None, "malformed response: got more than 8190 bytes when reading", ""
    ),
    "malformed status line": Case(
        malformed_status_line, None, "malformed response: bad status line", ""
    ),
    # PostgreSQL's text holds no NUL: kept as it came, the attempt could never reach history.
    "NUL bytes in the body": Case(nul_bytes, 200, None, "ok\ufffd\ufffdbad!"),
    # Two encodings named: the body is still encoded, whatever the last one says.
    "gzip, then identity": Case(
        encoded_then_identity,
        200,
        None,
        "[4 bytes with content-encoding 'gzip, identity', not decoded]",
    ),
    "redirect loop": Case(
        redirect_to_itself, 302, None, "", "HTTP 302: redirects are not followed"
    ),
}


def _check_attempt(case: Case, attempt: dict[str, Any]) -> None:
    """What the attempt log (or the test send's answer) shows, as a user reads it."""
    assert attempt["status_code"] == case.status_code, attempt
    if case.error is None:
        assert attempt["error"] is None, attempt
    else:
        assert re.fullmatch(case.error, attempt["error"] or ""), attempt
    if case.body is not None:
        assert attempt["response_body"] == case.body, attempt
    assert len(attempt["response_body"].encode()) <= CAPTURE
    assert attempt["duration_ms"] <= TIMEOUT * 1000 + SLACK_MS, attempt


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


async def test_a_test_send_to_a_hostile_receiver_ends_in_time_with_a_clear_result(
    admin: httpx.AsyncClient, case: Case
) -> None:
    async with HostileReceiver(case.answer) as rx:
        hook = await webhook(admin, rx.url())
        started = time.monotonic()
        response = await admin.post("/v1/webhooks/test", json={"webhook_id": hook["id"]})
        took = time.monotonic() - started

    assert response.status_code == 200, response.text
    _check_attempt(case, response.json()["data"])
    assert took <= TIMEOUT + SLACK_MS / 1000
    assert rx.requests == 1  # nothing followed, nothing repeated


async def test_a_delivery_to_a_hostile_receiver_ends_in_time_with_a_clear_result(
    admin: httpx.AsyncClient, workers: Workers, case: Case
) -> None:
    await workers(RELAY_RETRY_SCHEDULE="0.1", RELAY_DELIVERY_TIMEOUT=str(TIMEOUT))
    async with HostileReceiver(case.answer) as rx:
        hook = await webhook(admin, rx.url())
        response = await post_event(admin)
        assert response.status_code == 202, response.text
        [delivery] = response.json()["data"]["deliveries"]
        status = "delivered" if case.delivered else "failed"
        done = await wait_status(admin, hook["id"], delivery["id"], status)

    attempts = done["attempts"]
    assert len(attempts) == (1 if case.delivered else 2)
    for attempt in attempts:
        _check_attempt(case, attempt)
    assert done["last_status_code"] == case.status_code
    if case.delivered:
        assert done["last_error"] is None
    else:
        reason = case.last_error or attempts[-1]["error"]
        assert done["last_error"] == f"{reason} (retry schedule exhausted)"
    assert rx.requests == len(attempts)


async def test_an_attempt_whose_answer_holds_nul_bytes_reaches_history(
    admin: httpx.AsyncClient, workers: Workers, redis_client: redis.asyncio.Redis
) -> None:
    await workers()
    async with HostileReceiver(nul_bytes) as rx:
        hook = await webhook(admin, rx.url())
        response = await post_event(admin)
        [delivery] = response.json()["data"]["deliveries"]
        await wait_status(admin, hook["id"], delivery["id"], "delivered")

    # A record leaves Redis once PostgreSQL holds it; the history writer writes within a second.
    deadline = time.monotonic() + 10
    while await redis_client.exists(keys.delivery(delivery["id"])):
        assert time.monotonic() < deadline, "the delivery never reached history"
        await asyncio.sleep(0.1)
    done = await wait_status(admin, hook["id"], delivery["id"], "delivered")
    assert [a["response_body"] for a in done["attempts"]] == ["ok\ufffd\ufffdbad!"]


IN_FLIGHT = 100  # a worker's most attempts at once
MAX_GROWTH_MB = 20
BURST_TIMEOUT = 10  # RELAY_DELIVERY_TIMEOUT here: room for every attempt of a burst to arrive


class Burst:
    """Holds each request until `size` of them wait together, then answers each with the
    stacked gzip bomb: `size` bombs in flight at once."""

    def __init__(self) -> None:
        self.waiting = 0
        self.most_waiting = 0
        self._size = 1
        self._full = asyncio.Event()

    def expect(self, size: int) -> None:
        """Hold the next requests until `size` wait."""
        self._size, self.most_waiting, self._full = size, 0, asyncio.Event()

    async def answer(self, writer: asyncio.StreamWriter) -> None:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        if self.waiting >= self._size:
            self._full.set()
        with contextlib.suppress(TimeoutError):  # too few came: answer, and the test says so
            async with asyncio.timeout(BURST_TIMEOUT - 2):
                await self._full.wait()
        self.waiting -= 1
        await bomb_answer("gzip, gzip")(writer)


def _status_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` figure such as VmRSS, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def _reset_peak(pid: int) -> int:
    """Make the process's peak resident memory (VmHWM) its current one; return that, in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmRSS")


async def _peak_growth_mb(pid: int, burst: Awaitable[None]) -> float:
    """How far the process's resident memory rose above what it was before `burst`, at most."""
    before = _reset_peak(pid)
    await burst
    return (_status_kib(pid, "VmHWM") - before) / 1024


@pytest.fixture
def api_process(
    redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> Iterator[tuple[str, int]]:
    """A `relay api` process (its URL and pid) sharing the test's Redis, whose test sends are
    not limited, so that a hundred can be in flight at once."""
    port = free_port()
    env = relay_env(
        redis_server.url,
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_ALLOW_PRIVATE_TARGETS="true",
        RELAY_TEST_SENDS_PER_MINUTE="0",
        RELAY_DELIVERY_TIMEOUT=str(BURST_TIMEOUT),
    )
    api = spawn_relay(
        ["api", "--port", str(port)], env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz")
        yield base, api.pid
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(15)
        except subprocess.TimeoutExpired:
            api.kill()


@pytest.mark.system
async def test_the_api_holds_little_with_100_bomb_test_sends_in_flight(
    api_process: tuple[str, int],
) -> None:
    base, pid = api_process
    burst = Burst()
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    limits = httpx.Limits(max_connections=IN_FLIGHT)
    async with (
        HostileReceiver(burst.answer) as rx,
        httpx.AsyncClient(base_url=base, headers=auth, limits=limits, timeout=30) as api,
    ):
        hook = await webhook(api, rx.url())

        async def test_sends(count: int) -> list[httpx.Response]:
            burst.expect(count)
            send = {"webhook_id": hook["id"]}
            return await asyncio.gather(
                *(api.post("/v1/webhooks/test", json=send) for _ in range(count))
            )

        await test_sends(1)  # what every test send needs once is loaded from here on
        answers: list[httpx.Response] = []

        async def burst_of_sends() -> None:
            answers.extend(await test_sends(IN_FLIGHT))

        growth = await _peak_growth_mb(pid, burst_of_sends())

    print(f"relay api: resident memory rose {growth:.1f} MB with {IN_FLIGHT} bombs in flight")
    assert burst.most_waiting == IN_FLIGHT
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["data"]["response_body"] for a in answers} == {_not_decoded("gzip, gzip")}
    assert growth < MAX_GROWTH_MB


async def test_a_worker_holds_little_with_100_bomb_attempts_in_flight(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    # One tenant's: its own limit must let all of them go at once too.
    [worker] = await workers(
        RELAY_ENDPOINT_CONCURRENCY=str(IN_FLIGHT),
        RELAY_TENANT_CONCURRENCY=str(IN_FLIGHT),
        RELAY_DELIVERY_TIMEOUT=str(BURST_TIMEOUT),
    )
    burst = Burst()
    async with HostileReceiver(burst.answer) as rx:
        hook = await webhook(admin, rx.url())

        async def deliveries(count: int) -> None:
            burst.expect(count)
            posted = await asyncio.gather(*(post_event(admin) for _ in range(count)))
            for response in posted:
                assert response.status_code == 202, response.text
                [delivery] = response.json()["data"]["deliveries"]
                await wait_status(admin, hook["id"], delivery["id"], "delivered", timeout=60)

        await deliveries(1)  # what every attempt needs once is loaded from here on
        growth = await _peak_growth_mb(worker.pid, deliveries(IN_FLIGHT))

    print(f"relay worker: resident memory rose {growth:.1f} MB with {IN_FLIGHT} bombs in flight")
    assert burst.most_waiting == IN_FLIGHT
    assert growth < MAX_GROWTH_MB
