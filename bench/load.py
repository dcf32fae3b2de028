"""The load side: posting events to relay's API, and reading what the receiver got.

The harness posts with aiohttp rather than httpx: httpx's own pool is slow under concurrency
(see relay/sender.py), and a slow client would measure itself instead of relay.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import orjson

T = TypeVar("T")
REQUEST_TIMEOUT = 15.0
POLL_INTERVAL = 0.05


class LoadError(Exception):
    """relay or the receiver answered something the benchmark cannot go on with."""


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (share in 0..1) of `values`; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def event(
    kind: str, tenant: str, data: dict[str, Any], upstream_id: str | None = None
) -> dict[str, Any]:
    """An event as an upstream service posts it, with its upstream `id` when given."""
    found = {"type": kind, "tenant_id": tenant, "data": data}
    return found if upstream_id is None else {**found, "id": upstream_id}


def post_data(number: int, platform: str = "bench", **more: Any) -> dict[str, Any]:
    """The `data` of a `post.published` event (or, with an `error`, of a `post.failed` one)."""
    return {"post_id": f"p_{number}", "platform": platform, **more}


def media_data(number: int) -> dict[str, Any]:
    """The `data` of a small `media.uploaded` event."""
    return {"media_id": f"m_{number}", "url": "https://cdn.example/m.png", "mime": "image/png"}


def event_body(tenant: str, number: int) -> bytes:
    """A small `post.published` event."""
    data = post_data(number, url="https://example.com/p")
    return orjson.dumps(event("post.published", tenant, data))


def identified_body(tenant: str, number: int) -> bytes:
    """`event_body` with an upstream id of its own, as senders that retry safely post them."""
    data = post_data(number, url="https://example.com/p")
    return orjson.dumps(event("post.published", tenant, data, f"up_{uuid.uuid4().hex}"))


def media_body(tenant: str, number: int) -> bytes:
    """A small `media.uploaded` event (webhooks can subscribe to it apart from posts)."""
    return orjson.dumps(event("media.uploaded", tenant, media_data(number)))


def unix_seconds(rfc3339: str) -> float:
    """Unix seconds of relay's `created_at` (RFC 3339, milliseconds, `Z`)."""
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class Accepted:
    """One event relay took: its id, when relay created it, when the client sent it."""

    event_id: str
    created_at: float
    sent_at: float
    deliveries: int


class Api:
    """Calls to relay's API over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self._session = session
        self._base = base_url
        self._auth = {"authorization": f"Bearer {token}"}
        self._post_headers = {**self._auth, "content-type": "application/json"}

    def with_token(self, token: str) -> Api:
        """The same session and API, another bearer token."""
        return Api(self._session, self._base, token)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST an object; its `data`, or LoadError unless 201."""
        async with self._session.post(
            self._base + path, data=orjson.dumps(body), headers=self._post_headers
        ) as response:
            text = await response.read()
            if response.status != 201:
                raise LoadError(f"POST {path}: {response.status} {text[:300]!r}")
            data: dict[str, Any] = orjson.loads(text)["data"]
            return data

    async def post_event(
        self, body: bytes, idempotency_key: str | None = None, path: str = "/v1/events"
    ) -> tuple[int, bytes]:
        """POST /v1/events (or `path`, e.g. /v1/events/batch); the status and raw answer."""
        headers = self._post_headers
        if idempotency_key is not None:
            headers = {**headers, "idempotency-key": idempotency_key}
        async with self._session.post(self._base + path, data=body, headers=headers) as response:
            return response.status, await response.read()

    async def get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """GET a page or an object; the whole answer, or LoadError unless 200."""
        async with self._session.get(
            self._base + path, params=params, headers=self._auth
        ) as response:
            text = await response.read()
            if response.status != 200:
                raise LoadError(f"GET {path}: {response.status} {text[:300]!r}")
            answer: dict[str, Any] = orjson.loads(text)
            return answer

    async def ready(self) -> bool:
        """Whether /readyz answers 200 (the API runs and reaches Redis)."""
        try:
            async with self._session.get(self._base + "/readyz") as response:
                return response.status == 200
        except (aiohttp.ClientError, OSError):
            return False


def new_session(concurrency: int) -> aiohttp.ClientSession:
    """The harness's HTTP session: as many pooled connections as clients."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency + 4),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
    )


def latencies(accepted: Sequence[Accepted], first_seen: dict[str, float]) -> list[float]:
    """Seconds from relay's created_at to the receiver having the body, per arrived event."""
    return [
        first_seen[event.event_id] - event.created_at
        for event in accepted
        if event.event_id in first_seen
    ]


@dataclass(slots=True)
class Posted:
    """What one round of posting did."""

    started: float = 0.0  # unix seconds of the first POST
    seconds: float = 0.0  # first POST to last answer
    latencies: list[float] = field(default_factory=list)  # seconds, accepted ones only
    accepted: list[Accepted] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    max_lag: float = 0.0  # paced rounds: how late the latest POST started

    @property
    def per_second(self) -> float:
        """Accepted events per second."""
        return len(self.accepted) / self.seconds if self.seconds > 0 else 0.0

    @property
    def deliveries(self) -> int:
        """Deliveries relay created for the accepted events."""
        return sum(a.deliveries for a in self.accepted)


async def post_one(api: Api, body: bytes, into: Posted) -> None:
    """POST one event and note the outcome."""
    sent_at = time.time()
    began = time.perf_counter()
    try:
        status, answer = await api.post_event(body)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        into.refused[type(exc).__name__] += 1
        return
    elapsed = time.perf_counter() - began
    if status != 202:
        into.refused[str(status)] += 1
        return
    data = orjson.loads(answer)["data"]
    into.latencies.append(elapsed)
    into.accepted.append(
        Accepted(data["id"], unix_seconds(data["created_at"]), sent_at, len(data["deliveries"]))
    )


async def in_turn(
    concurrency: int, items: Iterable[T], send: Callable[[T], Awaitable[None]]
) -> None:
    """`send` every item with `concurrency` clients, each waiting for its answer: one shared
    iterator, so exactly these items go, whichever client frees up first taking the next."""
    shared = iter(items)

    async def client() -> None:
        for item in shared:
            await send(item)

    await asyncio.gather(*(client() for _ in range(concurrency)))


async def on_schedule(
    rate: float, count: int, send: Callable[[int], Coroutine[Any, Any, None]]
) -> float:
    """Start `send(n)` for each of `count` numbers at n / rate seconds from now (an open loop);
    wait until every one is done; how late the latest start was, in seconds.

    Each starts on time whatever the previous ones are doing, so a slow answer does not lower
    the rate.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    most_late = 0.0
    tasks: list[asyncio.Task[None]] = []
    for number in range(count):
        due = began + number / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        most_late = max(most_late, loop.time() - due)
        tasks.append(asyncio.create_task(send(number)))
    await asyncio.gather(*tasks)
    return most_late


async def post_burst(
    api: Api,
    tenant: str,
    count: int,
    concurrency: int,
    body: Callable[[str, int], bytes] = event_body,
) -> Posted:
    """POST `count` events (made by `body`) as fast as `concurrency` clients, each waiting for
    its answer, can."""
    posted = Posted(started=time.time())
    began = time.perf_counter()

    async def send(number: int) -> None:
        await post_one(api, body(tenant, number), posted)

    async with asyncio.timeout(60 + count / 50):
        await in_turn(concurrency, range(count), send)
    posted.seconds = time.perf_counter() - began
    return posted


async def post_paced(
    api: Api,
    tenant: str,
    rate: float,
    count: int,
    into: Posted | None = None,
    body: Callable[[str, int], bytes] = event_body,
) -> Posted:
    """POST `count` events (made by `body`) at `rate` per second on a fixed schedule (an open
    loop).

    Each POST starts on time whatever the previous ones are doing, so a slow answer does not
    lower the rate; how late the scheduler itself ran is kept in `max_lag`. Outcomes go to
    `into` when given, so a watcher can read the progress of a long round while it runs.
    """
    posted = into if into is not None else Posted()
    posted.started = time.time()
    began = time.perf_counter()

    async def send(number: int) -> None:
        await post_one(api, body(tenant, number), posted)

    async with asyncio.timeout(60 + count / rate * 2):
        posted.max_lag = await on_schedule(rate, count, send)
    posted.seconds = time.perf_counter() - began
    return posted


@dataclass(frozen=True, slots=True)
class Arrivals:
    """The receiver's counts (GET /stats)."""

    requests: int
    verified: int
    rejected: int
    library_checked: int
    library_rejected: int
    duplicates: int
    distinct_ids: int
    first: float | None
    last: float | None
    hanging: int = 0  # requests to /hang/ endpoints begun (they answer only much later)
    knee_peak: int = 0  # the most requests /knee/ endpoints had in flight at once
    knee_in_flight: int = 0  # over requests to /knee/, the sum of those in flight on arrival


@dataclass(frozen=True, slots=True)
class PathTally:
    """What one webhook path of the receiver got."""

    requests: int
    accepted: dict[str, int]  # webhook-id -> 2xx answers given


class ReceiverClient:
    """Calls to the benchmark receiver's control endpoints."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self._session = session
        self.base = f"http://127.0.0.1:{port}"

    def hook_url(self, name: str) -> str:
        """A webhook URL on the receiver; the name keeps endpoints apart in duplicate counts."""
        return f"{self.base}/hook/{name}"

    async def stats(self) -> Arrivals:
        """What has arrived since the last reset."""
        async with self._session.get(self.base + "/stats") as response:
            return Arrivals(**orjson.loads(await response.read()))

    async def arrivals(self) -> dict[str, float]:
        """The first arrival (unix seconds) of each webhook-id."""
        async with self._session.get(self.base + "/arrivals") as response:
            found: dict[str, float] = orjson.loads(await response.read())
            return found

    async def arrivals_under(self, prefix: str) -> list[tuple[str, str, float]]:
        """(path, webhook-id, first arrival) of each delivery to a path under `prefix`."""
        params = {"prefix": prefix}
        async with self._session.get(self.base + "/deliveries", params=params) as response:
            return [(p, i, t) for p, i, t in orjson.loads(await response.read())]

    async def paths(self) -> dict[str, PathTally]:
        """Per webhook path: the requests it got and the 2xx answers per webhook-id."""
        async with self._session.get(self.base + "/paths") as response:
            found = orjson.loads(await response.read())
        return {path: PathTally(t["requests"], t["accepted"]) for path, t in found.items()}

    async def reset(self) -> None:
        """Forget what has arrived."""
        async with self._session.post(self.base + "/reset") as response:
            response.raise_for_status()

    async def ready(self) -> bool:
        """Whether it answers."""
        try:
            await self.stats()
        except (aiohttp.ClientError, OSError):
            return False
        return True

    async def wait_for(self, expected: int, timeout: float) -> Arrivals:
        """Poll until `expected` requests arrived, or `timeout` seconds pass; the last counts."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats()
            if stats.requests >= expected or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(POLL_INTERVAL)
