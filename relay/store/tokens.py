"""Tokens in Redis: the record by id, a lookup by hash, and the list index."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from relay import ids, timefmt
from relay.errors import NotFound
from relay.store import codec, keys
from relay.store.pages import newest_first
from relay.tokens import Principal, Role, TokenSpec, new_secret_token, token_hash


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token: never its plaintext, only the hash."""

    id: str
    role: Role
    tenant_id: str | None
    name: str
    created_at: str
    hash: str

    def public(self) -> dict[str, object]:
        """The token as the API shows it (no hash)."""
        out = asdict(self)
        del out["hash"]
        return out

    def principal(self) -> Principal:
        """Who a request bearing this token is."""
        return Principal(self.id, self.role, self.tenant_id)


def _record(raw: bytes) -> TokenRecord:
    data = codec.loads(raw)
    data["role"] = Role(data["role"])
    return TokenRecord(**data)


class TokenStore:
    """Persistence of API tokens."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def issue(self, spec: TokenSpec) -> tuple[TokenRecord, str]:
        """Create a token; returns its record and the plaintext, which is never stored."""
        plaintext = new_secret_token()
        record = TokenRecord(
            id=ids.new_id("tok"),
            role=spec.role,
            tenant_id=spec.tenant_id,
            name=spec.name,
            created_at=timefmt.rfc3339(timefmt.now()),
            hash=token_hash(plaintext),
        )
        await self._add(record)
        return record, plaintext

    async def _add(self, record: TokenRecord) -> None:
        raw = codec.dumps(asdict(record))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.token(record.id), raw)
            pipe.set(keys.token_by_hash(record.hash), raw)
            pipe.zadd(keys.TOKENS, {record.id: 0})
            await pipe.execute()

    async def by_hash(self, digest: str) -> TokenRecord | None:
        """The token whose hash is `digest`, if any."""
        raw = await self._redis.get(keys.token_by_hash(digest))
        return _record(raw) if raw else None

    async def get(self, token_id: str) -> TokenRecord:
        """A token by id, or NotFound."""
        raw = await self._redis.get(keys.token(token_id))
        if not raw:
            raise NotFound("No such token.")
        return _record(raw)

    async def page(self, limit: int, cursor: str | None) -> tuple[list[TokenRecord], str | None]:
        """Tokens newest first."""
        page = await newest_first(self._redis, keys.TOKENS, limit, cursor)
        raws = await self._redis.mget([keys.token(i) for i in page.ids]) if page.ids else []
        return [_record(r) for r in raws if r], page.next_cursor

    async def delete(self, token_id: str) -> TokenRecord:
        """Revoke a token: it stops authenticating at once."""
        record = await self.get(token_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.token(record.id), keys.token_by_hash(record.hash))
            pipe.zrem(keys.TOKENS, record.id)
            await pipe.execute()
        return record
