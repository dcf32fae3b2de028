"""The LIMIT: how fast a bare asyncio loop gets signed webhooks into the benchmark's receiver.

    python -m bench.limit --url U --count N --concurrency C --client aiohttp --loop uvloop --out F

No queue and no store: C coroutines each build a body shaped like relay's, sign it with relay's
own `relay.signing` (the same HMAC relay computes per attempt), POST it and read the answer, until
N have been answered. The secret comes in BENCH_SECRET. The result (JSON) goes to F.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import aiohttp
import httpx
import orjson
import uvloop

from bench.procs import SECRET_ENV
from relay.sender import Sender
from relay.signing import decode_secret, signature_headers

ClientName = Literal["aiohttp", "httpx", "relay"]
LoopName = Literal["asyncio", "uvloop"]
CLIENTS: tuple[ClientName, ...] = get_args(ClientName)
LOOPS: tuple[LoopName, ...] = get_args(LoopName)
REQUEST_TIMEOUT = 15.0


class Poster(Protocol):
    """One HTTP client library, reduced to what the loop needs."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST and read the whole answer; its status."""
        ...

    async def aclose(self) -> None:
        """Close the pool."""
        ...


class AiohttpPoster:
    """Plain aiohttp."""

    def __init__(self, concurrency: int) -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        async with self._session.post(url, data=body, headers=headers) as response:
            await response.read()
            return response.status

    async def aclose(self) -> None:
        await self._session.close()


class HttpxPoster:
    """httpx with its own pool."""

    def __init__(self, concurrency: int) -> None:
        self._client = httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        response = await self._client.post(url, content=body, headers=headers)
        return response.status_code

    async def aclose(self) -> None:
        await self._client.aclose()


class RelayPoster:
    """relay's own sender (httpx's interface over aiohttp's pool), as each attempt uses it."""

    def __init__(self, concurrency: int) -> None:
        self._sender = Sender(REQUEST_TIMEOUT, concurrency, "relay-bench-limit")

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        result = await self._sender.send(url, body, headers)
        if result.status_code is None:
            raise OSError(result.error)
        return result.status_code

    async def aclose(self) -> None:
        await self._sender.aclose()


def make_poster(client: ClientName, concurrency: int) -> Poster:
    """The poster for a client name."""
    if client == "aiohttp":
        return AiohttpPoster(concurrency)
    if client == "relay":
        return RelayPoster(concurrency)
    return HttpxPoster(concurrency)


@dataclass(frozen=True, slots=True)
class Result:
    """One run of the loop."""

    client: str
    loop: str
    concurrency: int
    count: int
    ok: int
    failed: int
    seconds: float
    per_second: float
    cpu_seconds: float


def payload(msg_id: str) -> bytes:
    """A body the size and shape of what relay sends for a small `post.published` event."""
    return orjson.dumps(
        {
            "id": msg_id,
            "type": "post.published",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "tenant_id": "bench_limit",
            "data": {"post_id": msg_id, "platform": "bench", "url": "https://example.com/p"},
        }
    )


async def drive(poster: Poster, url: str, key: bytes, numbers: Iterator[int]) -> tuple[int, int]:
    """Sign and post messages until `numbers` runs out; (answered 2xx, failed)."""
    ok = failed = 0
    for number in numbers:
        msg_id = f"msg_{number:010d}"
        body = payload(msg_id)
        headers = {
            "content-type": "application/json",
            "user-agent": "relay-bench-limit",
            **signature_headers(msg_id, int(time.time()), body, [key]),
        }
        try:
            status = await poster.post(url, body, headers)
        except (aiohttp.ClientError, httpx.HTTPError, OSError, TimeoutError):
            failed += 1
            continue
        if 200 <= status < 300:
            ok += 1
        else:
            failed += 1
    return ok, failed


async def run(
    url: str, key: bytes, count: int, concurrency: int, client: ClientName, loop: LoopName
) -> Result:
    """Post `count` messages with `concurrency` coroutines; time it."""
    poster = make_poster(client, concurrency)
    # One shared iterator: the coroutines take the next number as they free up, so the total
    # is exactly `count` however fast each one is.
    numbers = iter(range(count))
    cpu_before = time.process_time()
    started = time.perf_counter()
    try:
        # A bound on the whole run: a stuck receiver must not hang the benchmark.
        async with asyncio.timeout(60 + count / 100):
            outcomes = await asyncio.gather(
                *(drive(poster, url, key, numbers) for _ in range(concurrency))
            )
    finally:
        await poster.aclose()
    seconds = time.perf_counter() - started
    ok = sum(o for o, _ in outcomes)
    failed = sum(f for _, f in outcomes)
    return Result(
        client=client,
        loop=loop,
        concurrency=concurrency,
        count=count,
        ok=ok,
        failed=failed,
        seconds=seconds,
        per_second=ok / seconds if seconds > 0 else 0.0,
        cpu_seconds=time.process_time() - cpu_before,
    )


def run_in_loop(loop: LoopName, main: Callable[[], Coroutine[Any, Any, Result]]) -> Result:
    """Run `main` on a fresh event loop of the kind named."""
    if loop == "uvloop":
        return uvloop.run(main())
    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    """Run once, write the result."""
    parser = argparse.ArgumentParser(prog="python -m bench.limit")
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--loop", choices=LOOPS, required=True)
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args(argv)
    if not ns.url.startswith("http://127.0.0.1:"):
        parser.error("--url must be a loopback http://127.0.0.1: URL")
    key = decode_secret(os.environ.get(SECRET_ENV, ""))
    result = run_in_loop(
        ns.loop, lambda: run(ns.url, key, ns.count, ns.concurrency, ns.client, ns.loop)
    )
    ns.out.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
