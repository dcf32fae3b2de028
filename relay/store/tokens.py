"""Tokens in Redis: the record by id, a lookup by hash, and the list index."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from relay import ids, timefmt
from relay.errors import NotFound
from relay.roles import Role
from relay.store import codec, keys, lua
from relay.store.idempotency import Commit
from relay.store.pages import newest_first
from relay.store.records import transact
from relay.tokens import Principal, TokenCheck, TokenSpec, new_secret_token, token_hash

# An expired token's record stays this long, so that it answers "expired" rather than "unknown".
_EXPIRED_KEPT_MS = 86_400_000
# last_used_at is precise to a minute: a request writes it only if it is older than this.
_USE_RECORDED_EVERY_MS = 60_000
# Records remembered by one process (tokens found, not every token presented) at most.
_REMEMBERED = 10_000


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token: never its plaintext, only the hash."""

    id: str
    role: Role
    tenant_id: str | None
    name: str
    created_at: str
    hash: str
    expires_at: str | None = None

    def principal(self, check: TokenCheck | None = None) -> Principal:
        """Who a request bearing this token is."""
        return Principal(self.id, self.role, self.tenant_id, check)


# A new token: its record and its plaintext.
Issued = tuple[TokenRecord, str]


@dataclass(frozen=True, slots=True)
class FoundToken:
    """A token's record as read, with its fingerprint (`TokenCheck`)."""

    record: TokenRecord
    fingerprint: str
    # Remembered by this process until then (unix ms): when its use is next to be noted.
    remembered_until_ms: int


def _record(raw: bytes) -> TokenRecord:
    data = codec.loads(raw)
    data["role"] = Role(data["role"])
    return TokenRecord(**data)


def _found(raw: bytes | None) -> TokenRecord:
    if not raw:
        raise NotFound("No such token.")
    return _record(raw)


class TokenStore:
    """Persistence of API tokens."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._note_use = lua.register(redis, "token_note_use")
        # By token hash, never by token: records this process read lately.
        self._remembered: dict[str, FoundToken] = {}

    async def issue(
        self, spec: TokenSpec, commit: Commit[Issued] | None = None
    ) -> tuple[TokenRecord, str]:
        """Create a token; returns its record and the plaintext, which is never stored
        (but for the request's answer, encrypted, when `commit` stores it)."""
        plaintext = new_secret_token()
        record = TokenRecord(
            id=ids.new_id("tok"),
            role=spec.role,
            tenant_id=spec.tenant_id,
            name=spec.name,
            created_at=timefmt.rfc3339(timefmt.now()),
            hash=token_hash(plaintext),
            expires_at=spec.expires_at,
        )
        return await transact(
            self._redis, None, lambda _: (record, plaintext), self._add, "token", commit
        )

    @staticmethod
    def _add(pipe: Pipeline, issued: Issued) -> None:
        record, _ = issued
        raw = codec.dumps(asdict(record))
        for key in (keys.token(record.id), keys.token_by_hash(record.hash)):
            pipe.set(key, raw)
            if record.expires_at is not None:
                pipe.pexpireat(key, _ms(record.expires_at) + _EXPIRED_KEPT_MS)
        pipe.zadd(keys.TOKENS, {record.id: 0})

    def remembered(self, digest: str, now_ms: int) -> FoundToken | None:
        """The record of this token hash as this process last read it, until its use is next
        to be noted (a minute at most); None if it has to be read.

        Only for a caller whose write checks the record (`TokenCheck`), so that a token revoked
        since writes nothing all the same.
        """
        found = self._remembered.get(digest)
        return found if found is not None and now_ms < found.remembered_until_ms else None

    async def by_hash(self, digest: str, now_ms: int) -> FoundToken | None:
        """The token whose hash is `digest`, if any, noting that it is being used now."""
        record_key, used_key = keys.token_by_hash(digest), keys.token_used(digest)
        raw, used = await self._redis.mget([record_key, used_key])
        if not raw:
            self.forget(digest)
            return None
        noted_ms = int(used or 0)
        if now_ms - noted_ms >= _USE_RECORDED_EVERY_MS:
            await self._note_use(keys=[record_key, used_key], args=[now_ms])
            noted_ms = now_ms
        found = FoundToken(_record(raw), fingerprint(raw), noted_ms + _USE_RECORDED_EVERY_MS)
        if digest not in self._remembered and len(self._remembered) >= _REMEMBERED:
            del self._remembered[next(iter(self._remembered))]  # the longest remembered
        self._remembered[digest] = found
        return found

    def forget(self, digest: str) -> None:
        """Read the record of this token hash afresh next time."""
        self._remembered.pop(digest, None)

    async def get(self, token_id: str) -> TokenRecord:
        """A token by id, or NotFound."""
        return _found(await self._redis.get(keys.token(token_id)))

    async def page(
        self, limit: int, cursor: str | None
    ) -> tuple[list[tuple[TokenRecord, int | None]], str | None]:
        """Tokens newest first, each with when it was last used (unix ms) if ever."""
        page = await newest_first(self._redis, keys.TOKENS, limit, cursor)
        raws = await self._redis.mget([keys.token(i) for i in page.ids]) if page.ids else []
        gone = [i for i, r in zip(page.ids, raws, strict=True) if not r]
        if gone:  # expired tokens' records lapse by TTL; their index entries go here
            await self._redis.zrem(keys.TOKENS, *gone)
        records = [_record(r) for r in raws if r]
        used = await self._redis.mget([keys.token_used(r.hash) for r in records]) if records else []
        return [
            (record, int(u) if u else None) for record, u in zip(records, used, strict=True)
        ], page.next_cursor

    async def delete(self, token_id: str, commit: Commit[TokenRecord] | None = None) -> TokenRecord:
        """Revoke a token: it stops authenticating at once, on every replica (a process goes by a
        record it remembers only where a write checks it: nothing is written under it after)."""

        def write(pipe: Pipeline, record: TokenRecord) -> None:
            self.forget(record.hash)  # only hygiene: a write checks the record, not a memory
            pipe.delete(
                keys.token(record.id), keys.token_by_hash(record.hash), keys.token_used(record.hash)
            )
            pipe.zrem(keys.TOKENS, record.id)

        return await transact(self._redis, keys.token(token_id), _found, write, "token", commit)


def fingerprint(raw: bytes) -> str:
    """What a write compares of a stored token record (SHA-1 hex, as Redis's `sha1hex`)."""
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()


def _ms(stamp: str) -> int:
    moment = timefmt.read_rfc3339(stamp)
    assert moment is not None, "stored timestamps are RFC 3339"
    return int(moment.timestamp() * 1000)
