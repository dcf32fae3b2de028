"""Idempotency-Key for every POST, PATCH and DELETE, applied once by the routing layer."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from relay.errors import Invalid
from relay.services import services
from relay.store.idempotency import StoredResponse
from relay.tokens import Principal

HEADER = "idempotency-key"
METHODS = frozenset({"POST", "PATCH", "DELETE"})
# Outcomes a client should be able to retry with the same key: not stored.
_TRANSIENT = frozenset({409, 429, 503})


def _valid_key(key: str) -> str:
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise Invalid(
            "Bad Idempotency-Key.", {"Idempotency-Key": ["1 to 255 printable ASCII characters"]}
        )
    return key


async def idempotent(
    request: Request, principal: Principal, call: Callable[[], Awaitable[Response]]
) -> Response:
    """Run `call` once per (token, key); replay its response for repeats of the same request."""
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
    stored = await store.claim(principal.token_id, key, fingerprint, lease)
    if stored is not None:
        headers = {**stored.headers, "Idempotent-Replayed": "true"}
        return Response(stored.body, stored.status, headers)
    try:
        response = await call()
    except BaseException:
        await store.release(principal.token_id, key)
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
