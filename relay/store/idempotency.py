"""Stored responses for Idempotency-Key: claim, complete or release, atomically per key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from redis.asyncio import Redis

from relay.errors import Conflict, Invalid
from relay.store import codec, keys

KEEP_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response to replay for a repeated key."""

    status: int
    headers: dict[str, str]
    body: bytes


class IdempotencyStore:
    """One record per (token, key): in flight while the first request runs, then its response."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    @staticmethod
    def _key(token_id: str, idempotency_key: str) -> str:
        # Hash the client's key so any printable string makes a well-formed Redis key.
        return keys.idempotency(token_id, hashlib.sha256(idempotency_key.encode()).hexdigest())

    async def claim(
        self, token_id: str, idempotency_key: str, fingerprint: str, lease_seconds: int
    ) -> StoredResponse | None:
        """Claim the key for a new request (None), or return the response to replay.

        Raises Conflict while another request with the key runs and Invalid when the key was
        used with a different request. The lease lets a crashed request's key be reused.
        """
        key = self._key(token_id, idempotency_key)
        pending = codec.dumps({"state": "pending", "fingerprint": fingerprint})
        for _ in range(3):
            if await self._redis.set(key, pending, nx=True, ex=lease_seconds):
                return None
            raw = await self._redis.get(key)
            if raw is None:
                continue  # the holder released it between our two calls; try to claim again
            record = codec.loads(raw)
            if record["fingerprint"] != fingerprint:
                raise Invalid(
                    "This Idempotency-Key was already used with a different request.",
                    {"Idempotency-Key": ["reused with a different method, path or body"]},
                )
            if record["state"] == "pending":
                raise Conflict("A request with this Idempotency-Key is still in progress.")
            return StoredResponse(record["status"], record["headers"], record["body"].encode())
        raise Conflict("A request with this Idempotency-Key is still in progress.")

    async def complete(
        self, token_id: str, idempotency_key: str, fingerprint: str, response: StoredResponse
    ) -> None:
        """Keep the response for 24 h so repeats replay it."""
        record = {
            "state": "done",
            "fingerprint": fingerprint,
            "status": response.status,
            "headers": response.headers,
            "body": response.body.decode(),
        }
        await self._redis.set(
            self._key(token_id, idempotency_key), codec.dumps(record), ex=KEEP_SECONDS
        )

    async def release(self, token_id: str, idempotency_key: str) -> None:
        """Forget an unfinished claim so the client may try again with the same key."""
        await self._redis.delete(self._key(token_id, idempotency_key))
