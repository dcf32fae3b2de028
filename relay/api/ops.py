"""Unauthenticated operational endpoints: liveness, readiness, metrics, the API's description."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import asyncpg
import redis.exceptions
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from relay.api.errors import problem
from relay.api.shapes import Shape
from relay.errors import Unauthorized, Unavailable
from relay.history.db import POSTGRES_AWAY
from relay.metrics import render
from relay.presence import flush
from relay.resources import Resources, resources
from relay.store import memory
from relay.store.metrics import snapshot
from relay.tokens import same_token


class Alive(Shape):
    """The process is alive."""

    status: Literal["ok"]


class Ready(Shape):
    """Redis is reachable."""

    status: Literal["ready"]


async def healthz(_: Request) -> Response:
    """The process is alive."""
    return JSONResponse(Alive(status="ok").model_dump())


async def readyz(request: Request) -> Response:
    """Ready when Redis and PostgreSQL answer within a second each, and Redis takes writes."""
    svc = resources(request)
    try:
        async with asyncio.timeout(1.0):
            await svc.redis.ping()
            full = await _redis_full(svc)
    except (TimeoutError, redis.exceptions.RedisError, OSError):
        svc.counts.add("redis_errors")
        return problem(Unavailable("Redis is unreachable."))
    if full:
        return problem(Unavailable("Redis is out of memory (at its maxmemory): it refuses writes."))
    if not await _postgres_up(svc):
        return problem(Unavailable("PostgreSQL is unreachable."))
    return JSONResponse(Ready(status="ready").model_dump())


async def _postgres_up(svc: Resources) -> bool:
    """Whether this process can query PostgreSQL, within a second."""
    try:
        async with asyncio.timeout(1.0):
            await (await svc.database.pool()).fetchval("SELECT 1")
    except (*POSTGRES_AWAY, asyncpg.PostgresError):
        return False
    return True


async def _redis_full(svc: Resources) -> bool:
    """Whether Redis refuses writes for lack of memory (a full Redis still answers PING)."""
    try:
        return (await memory.read(svc.redis)).full
    except redis.exceptions.ResponseError:  # INFO not granted to relay's user: cannot tell
        return False


def _check_metrics_token(request: Request) -> None:
    """With RELAY_METRICS_TOKEN set, /metrics wants it as a bearer token."""
    expected = resources(request).settings.metrics_token
    if expected is None:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not same_token(presented.strip(), expected.get_secret_value()):
        raise Unauthorized("Send RELAY_METRICS_TOKEN as 'Authorization: Bearer <token>'.")


async def metrics(request: Request) -> Response:
    """Prometheus text: counters shared by every API and worker process.

    With Redis unreachable it still answers, with `relay_redis_up 0`, so the alert can say so.
    """
    _check_metrics_token(request)
    svc = resources(request)
    # What this replica counted goes in first, so a scrape sees its own requests' effects.
    await flush(svc.redis, None, svc.counts)
    try:
        snap = await snapshot(svc.redis, time.time_ns() // 1_000_000)
    except (redis.exceptions.RedisError, OSError):
        svc.counts.add("redis_errors")
        snap = None
    body, content_type = render(snap, await _postgres_up(svc))
    return Response(body, media_type=content_type)


async def openapi_json(request: Request) -> Response:
    """The OpenAPI 3.1 document of every route."""
    return JSONResponse(request.app.state.openapi)


def ops_routes() -> list[BaseRoute]:
    """Routes outside /v1."""
    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi_json),
    ]
