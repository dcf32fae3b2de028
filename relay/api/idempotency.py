"""Idempotency-Key for every POST, PATCH and DELETE, applied once by the routing layer."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response

from relay.errors import Invalid
from relay.resources import resources
from relay.store.idempotency import Commit, Held, StoredResponse
from relay.tokens import Principal

HEADER = "idempotency-key"
METHODS = frozenset({"POST", "PATCH", "DELETE"})
# Set on a replayed response.
REPLAYED = "Idempotent-Replayed"
# Answers that say the request did nothing and the client should retry: not stored.
_TRANSIENT = frozenset({409, 429, 503})

T = TypeVar("T")


@dataclass(slots=True)
class _Run:
    """The claim of the request being handled, and whether its handler took the commit."""

    held: Held
    committing: bool = False
    commit: Commit[Any] | None = None  # the one handed to its write, if one write answers it


# Set while a keyed request of an operation that does not `repeats` runs.
_RUN: ContextVar[_Run | None] = ContextVar("idempotency_run", default=None)


def _valid_key(key: str) -> str:
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise Invalid(
            "Bad Idempotency-Key.", {"Idempotency-Key": ["1 to 255 printable ASCII characters"]}
        )
    return key


def _stored(response: Response) -> StoredResponse:
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return StoredResponse(response.status_code, headers, bytes(response.body))


def audit_marker(request: Request, principal: Principal) -> str | None:
    """The key that lets the change made under this request's Idempotency-Key be audited once,
    by its first run or, if that lost its reply, by the retry that replays it; None without."""
    key = request.headers.get(HEADER)
    if key is None or request.method not in METHODS:
        return None
    return resources(request).idempotency.audit_marker(principal.token_id, key)


def commit(render: Callable[[T], Response]) -> Commit[T] | None:
    """What the write answering this request passes to its store, so that it stores
    `render(result)` as the replay in the same atomic step; None without a key."""
    run = _RUN.get()
    if run is None:
        return None
    run.committing = True
    answer: Commit[T] = run.held.commit(lambda result: _stored(render(result)))
    run.commit = answer
    return answer


def in_steps() -> Held | None:
    """For a request whose write is made in several steps (a batch of events): the claim that
    each step's write checks and records what it made under (`Held.item`), so that a retry after
    a lost reply redoes only the steps not recorded; the answer is stored once all are done.
    None without a key."""
    run = _RUN.get()
    if run is None:
        return None
    run.committing = True
    return run.held


async def idempotent(
    request: Request,
    principal: Principal,
    call: Callable[[], Awaitable[Response]],
    repeats: bool,
    replicated: bool = False,
) -> Response:
    """Run `call` once per (token, key); replay its response for repeats of the same request
    (once replicas hold its write, when the operation is `replicated`).

    Unless the operation `repeats` harmlessly, its write stores its answer in the same atomic
    step (see `commit`). So when a run fails without knowing whether it wrote (Redis stopped
    answering after a write was sent), either the write committed and a retry replays its
    answer, or it did not and never will (its claim is checked as it lands), and the retry runs
    the request again.
    """
    raw_key = request.headers.get(HEADER)
    if raw_key is None or request.method not in METHODS:
        return await call()
    key = _valid_key(raw_key)
    body = await request.body()
    fingerprint = hashlib.sha256(
        b"\0".join((request.method.encode(), request.url.path.encode(), body))
    ).hexdigest()
    ctx = resources(request)
    store = ctx.idempotency
    lease = int(max(60.0, 4 * ctx.settings.delivery_timeout))
    claim = await store.claim(principal.token_id, key, fingerprint, lease, replicated)
    if isinstance(claim, StoredResponse):
        headers = {**claim.headers, REPLAYED: "true"}
        return Response(claim.body, claim.status, headers)
    run = None if repeats else _Run(claim)
    token = _RUN.set(run)
    try:
        response = await call()
    except Exception:
        # The record stays `done` if the write committed; otherwise the key is free to run
        # again. If even this fails, the claim's lease lapses to the same effect.
        with contextlib.suppress(redis.exceptions.RedisError):
            await store.mark_unknown(claim)
        raise
    finally:
        _RUN.reset(token)
    if run is not None and not run.committing and response.status_code < 300:
        # Only a write that stores its answer makes a lost reply safe to run again (the claim
        # would lapse and a retry write twice): an operation that forgot is a bug, made loud.
        raise RuntimeError(
            f"{request.method} {request.url.path} succeeded without storing its answer with its "
            "write: pass idempotency.commit(...) to the store, or declare the operation `repeats`"
        )
    if response.status_code >= 500 or response.status_code in _TRANSIENT:
        await store.release(claim)
    elif run is None or run.commit is None or not run.commit.landed:
        # A write that stored its answer already made the record `done` (and, when its store
        # knows so, says so: nothing to do). Otherwise this stores it.
        await store.complete(claim, _stored(response))
    return response
