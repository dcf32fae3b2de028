"""Stored responses for Idempotency-Key: claim, complete, release or mark unknown, per key.

A record is `pending` while its first request runs (with a lease), `unknown` when that request
failed in a way that may or may not have written (Redis stopped answering mid-write, or the
process died with its lease), and `done` with the response to replay. Responses can carry
secrets shown once (webhook secrets, API tokens), so they are stored encrypted under the master
keyring, bound to the record's key.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from redis.asyncio import Redis

from relay.errors import Conflict, Invalid
from relay.secrets import Keyring, SecretDecryptionError
from relay.store import codec, keys

KEEP_SECONDS = 24 * 3600

# One atomic step decides what a request with a key may do. Times come from Redis, so API
# replicas with different clocks agree on when a lease has lapsed. A lapsed lease means the
# process holding it died: whether it wrote is unknown, so the key is not free again.
_CLAIM = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.call('GET', KEYS[1])
if raw then
  local record = cjson.decode(raw)
  if record.fingerprint ~= ARGV[1] then return {'mismatch'} end
  if record.state == 'done' then return {'done', record.response} end
  if record.state == 'pending' and tonumber(record.lease_until) > now_ms then
    return {'running'}
  end
  if ARGV[4] ~= '1' then return {'unknown'} end
end
local pending = cjson.encode({state = 'pending', fingerprint = ARGV[1],
  lease_until = now_ms + tonumber(ARGV[2])})
redis.call('SET', KEYS[1], pending, 'EX', ARGV[3])
return {'claimed'}
"""

# Re-encrypts one record only if nobody changed it meanwhile; its expiry stays as it was.
_REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response to replay for a repeated key."""

    status: int
    headers: dict[str, str]
    body: bytes


class Claim(enum.Enum):
    """What a request may do with its key when no response is stored to replay."""

    RUN = "claimed"  # the key is this request's: run it
    UNKNOWN = "unknown"  # an earlier request with the key may have written: do not run


class IdempotencyStore:
    """One record per (token, key), kept for 24 hours."""

    def __init__(self, redis: Redis, keyring: Keyring) -> None:
        self._redis = redis
        self._keyring = keyring
        self._claim = redis.register_script(_CLAIM)
        self._replace = redis.register_script(_REPLACE)

    @staticmethod
    def _key(token_id: str, idempotency_key: str) -> str:
        # Hash the client's key so any printable string makes a well-formed Redis key.
        return keys.idempotency(token_id, hashlib.sha256(idempotency_key.encode()).hexdigest())

    async def claim(
        self,
        token_id: str,
        idempotency_key: str,
        fingerprint: str,
        lease_seconds: int,
        *,
        rerun_unknown: bool = False,
    ) -> Claim | StoredResponse:
        """Claim the key for a new request, or return the response to replay.

        Raises Conflict while another request with the key runs and Invalid when the key was
        used with a different request. An earlier request whose outcome is unknown answers
        UNKNOWN, or is claimed again when `rerun_unknown` (the request cannot write twice).
        """
        key = self._key(token_id, idempotency_key)
        args: list[str | int] = [
            fingerprint,
            lease_seconds * 1000,
            KEEP_SECONDS,
            "1" if rerun_unknown else "0",
        ]
        verdict, *rest = await self._claim(keys=[key], args=args)
        match verdict.decode():
            case "mismatch":
                raise Invalid(
                    "This Idempotency-Key was already used with a different request.",
                    {"Idempotency-Key": ["reused with a different method, path or body"]},
                )
            case "running":
                raise Conflict("A request with this Idempotency-Key is still in progress.")
            case "done":
                return self._open(key, rest[0].decode())
            case verdict_name:
                return Claim(verdict_name)

    async def complete(
        self, token_id: str, idempotency_key: str, fingerprint: str, response: StoredResponse
    ) -> None:
        """Keep the response, encrypted, for 24 h so repeats replay it."""
        key = self._key(token_id, idempotency_key)
        plain = codec.dumps(
            {"status": response.status, "headers": response.headers, "body": response.body.decode()}
        )
        record = {
            "state": "done",
            "fingerprint": fingerprint,
            "response": self._keyring.encrypt(plain, key.encode()),
        }
        await self._redis.set(key, codec.dumps(record), ex=KEEP_SECONDS)

    async def mark_unknown(self, token_id: str, idempotency_key: str, fingerprint: str) -> None:
        """Keep the key taken: its request failed in a way that may have written."""
        record = {"state": "unknown", "fingerprint": fingerprint}
        await self._redis.set(
            self._key(token_id, idempotency_key), codec.dumps(record), ex=KEEP_SECONDS
        )

    async def release(self, token_id: str, idempotency_key: str) -> None:
        """Forget a claim whose request wrote nothing, so the client may try the key again."""
        await self._redis.delete(self._key(token_id, idempotency_key))

    async def reencrypt(self) -> tuple[int, int]:
        """Re-encrypt stored responses under the current master key; (changed, stored)."""
        changed = stored = 0
        async for key in self._redis.scan_iter(match=keys.idempotency("*", "*"), count=500):
            raw = await self._redis.get(key)
            if raw is None:
                continue
            record = codec.loads(raw)
            if record["state"] != "done":
                continue
            stored += 1
            if self._keyring.is_current(record["response"]):
                continue
            plain = self._keyring.decrypt(record["response"], key)
            record["response"] = self._keyring.encrypt(plain, key)
            changed += await self._replace(keys=[key], args=[raw, codec.dumps(record)])
        return changed, stored

    def _open(self, key: str, sealed: str) -> StoredResponse:
        try:
            plain = codec.loads(self._keyring.decrypt(sealed, key.encode()))
        except SecretDecryptionError:
            raise Conflict(
                "The response stored for this Idempotency-Key is under a master key that was "
                "removed; it cannot be replayed."
            ) from None
        return StoredResponse(plain["status"], plain["headers"], plain["body"].encode())
