"""The one place errors become RFC 9457 problem+json responses."""

from __future__ import annotations

import logging

import redis.exceptions
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from relay.errors import (
    MethodNotAllowed,
    NotFound,
    RateLimited,
    RelayError,
    Unauthorized,
    Unavailable,
)
from relay.history.db import POSTGRES_AWAY
from relay.resources import resources
from relay.store import codec
from relay.store.idempotency import CLAIM_MOVED, ClaimMoved

log = logging.getLogger("relay.api")

# Relative URIs (RFC 9457 §3.1.1): each names one error code; GET /problems/{code} is not served.
PROBLEM_TYPE_BASE = "/problems/"


def problem_fields(err: RelayError) -> dict[str, object]:
    """A domain error as the fields of its problem+json body."""
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + err.code,
        "title": err.title,
        "status": err.status,
        "detail": err.detail,
        "code": err.code,
    }
    if err.errors:
        body["errors"] = err.errors
    return body


def problem(err: RelayError) -> Response:
    """Render a domain error as problem+json."""
    body = problem_fields(err)
    headers = {}
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(err.retry_after)
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(err, Unavailable):
        headers["Retry-After"] = "1"
    return Response(
        codec.dumps(body),
        status_code=err.status,
        media_type="application/problem+json",
        headers=headers,
    )


async def on_relay_error(_: Request, exc: Exception) -> Response:
    """Domain errors raised by handlers."""
    assert isinstance(exc, RelayError)
    return problem(exc)


def _allowed_methods(request: Request) -> list[str]:
    # Each operation is a route of its own, so Starlette's 405 names only the first route that
    # matched the path; RFC 9110 wants every method the path takes.
    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route_methods
    return sorted(methods)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors: unknown paths and methods."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        response = problem(MethodNotAllowed("This method is not allowed on this path."))
        allowed = _allowed_methods(request)
        response.headers.update({"Allow": ", ".join(allowed)} if allowed else exc.headers or {})
        return response
    if exc.status_code == 404:
        return problem(NotFound("No such path."))
    err = RelayError(str(exc.detail))
    err.status, err.code, err.title = exc.status_code, "http_error", str(exc.detail)
    return problem(err)


async def on_redis_error(request: Request, exc: Exception) -> Response:
    """Redis unreachable or too slow: a clear 503 the client may retry, never a 500."""
    log.warning("redis unavailable: %s", exc)
    resources(request).counts.add("redis_errors")
    return problem(Unavailable("The store is unreachable; retry shortly."))


async def on_redis_full(request: Request, exc: Exception) -> Response:
    """Redis reached its maxmemory and refuses writes: a 503 to retry, never a 500. Unlike a
    failover it lasts until an operator gives Redis memory, so each refusal says why."""
    log.warning("redis is out of memory (maxmemory reached) and refused a write: %s", exc)
    resources(request).counts.add_all(("redis_errors", "redis_oom_errors"))
    return problem(Unavailable("The store is out of memory and refuses writes; retry later."))


async def on_history_away(_: Request, exc: Exception) -> Response:
    """PostgreSQL (or a connection under it) unreachable or too slow: a 503 to retry."""
    log.warning("store unavailable: %s: %s", type(exc).__name__, exc)
    return problem(Unavailable("A store is unreachable or too slow; retry shortly."))


# Redis replies that mean "not now", not "never": a demoted primary refusing writes during a
# failover, a replica cut off from its primary, a script holding the server, too few replicas.
# (redis-py strips READONLY into ReadOnlyError; the others keep their code in the message.)
_NOT_NOW = ("BUSY ", "MASTERDOWN ", "NOREPLICAS ", "TRYAGAIN ")


async def on_redis_reply(request: Request, exc: Exception) -> Response:
    """Redis refused a command for now (failover, a busy script): 503 the client may retry.
    A script that found its request's Idempotency-Key taken over wrote nothing: 409."""
    if str(exc).startswith(CLAIM_MOVED):
        return problem(ClaimMoved())
    if isinstance(exc, redis.exceptions.ReadOnlyError) or str(exc).startswith(_NOT_NOW):
        log.warning("redis refused a command for now: %s", exc)
        return problem(Unavailable("The store cannot take this request right now; retry shortly."))
    return await on_unexpected(request, exc)


async def on_unexpected(_: Request, exc: Exception) -> Response:
    """A bug: log it with its traceback, answer without one."""
    log.exception("unhandled error", exc_info=exc)
    return problem(RelayError("An unexpected error occurred; it has been logged."))


EXCEPTION_HANDLERS = {
    RelayError: on_relay_error,
    HTTPException: on_http_exception,
    redis.exceptions.ConnectionError: on_redis_error,
    redis.exceptions.TimeoutError: on_redis_error,
    redis.exceptions.OutOfMemoryError: on_redis_full,
    redis.exceptions.ResponseError: on_redis_reply,
    **dict.fromkeys(POSTGRES_AWAY, on_history_away),
    Exception: on_unexpected,
}
