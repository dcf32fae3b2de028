"""Idempotency-Key for every POST, PATCH and DELETE, applied once by the routing layer."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable

import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response

from relay.errors import Conflict, Invalid
from relay.services import services
from relay.store.idempotency import Claim, StoredResponse
from relay.tokens import Principal

HEADER = "idempotency-key"
METHODS = frozenset({"POST", "PATCH", "DELETE"})
# Answers that say the request did nothing and the client should retry: not stored.
_TRANSIENT = frozenset({409, 429, 503})
# Tells whether a request body may run again after an earlier run's outcome was lost,
# because the domain itself makes a second run write nothing.
RerunCheck = Callable[[bytes], bool]


def _valid_key(key: str) -> str:
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise Invalid(
            "Bad Idempotency-Key.", {"Idempotency-Key": ["1 to 255 printable ASCII characters"]}
        )
    return key


async def idempotent(
    request: Request,
    principal: Principal,
    call: Callable[[], Awaitable[Response]],
    rerun_unknown: RerunCheck | None = None,
) -> Response:
    """Run `call` once per (token, key); replay its response for repeats of the same request.

    When the first run fails without knowing whether it wrote (Redis stopped answering after
    a write was sent), the key stays taken: a repeat never writes a second time. It runs again
    only if `rerun_unknown` says the domain deduplicates it (an event with an upstream id);
    otherwise it is a 409 saying the outcome is unknown.
    """
    raw_key = request.headers.get(HEADER)
    if raw_key is None or request.method not in METHODS:
        return await call()
    key = _valid_key(raw_key)
    body = await request.body()
    fingerprint = hashlib.sha256(
        b"\0".join((request.method.encode(), request.url.path.encode(), body))
    ).hexdigest()
    ctx = services(request)
    store = ctx.idempotency
    lease = int(max(60.0, 4 * ctx.settings.delivery_timeout))
    rerun = rerun_unknown is not None and rerun_unknown(body)
    claim = await store.claim(principal.token_id, key, fingerprint, lease, rerun_unknown=rerun)
    if isinstance(claim, StoredResponse):
        headers = {**claim.headers, "Idempotent-Replayed": "true"}
        return Response(claim.body, claim.status, headers)
    if claim is Claim.UNKNOWN:
        raise Conflict(
            "An earlier request with this Idempotency-Key failed after it may have taken effect; "
            "it is not run again. Check the resource it changes before using a new key."
        )
    try:
        response = await call()
    except Exception:
        # Redis may have applied a write whose reply never came: keep the key taken. If even
        # this fails, the claim's lease lapses and the key reads as unknown just the same.
        with contextlib.suppress(redis.exceptions.RedisError):
            await store.mark_unknown(principal.token_id, key, fingerprint)
        raise
    if response.status_code >= 500 or response.status_code in _TRANSIENT:
        await store.release(principal.token_id, key)
    else:
        headers = {k: v for k, v in response.headers.items() if k.lower() not in {"content-length"}}
        await store.complete(
            principal.token_id,
            key,
            fingerprint,
            StoredResponse(response.status_code, headers, bytes(response.body)),
        )
    return response
