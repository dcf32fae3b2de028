"""Everything a request or a job needs, built once from Settings and passed around explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from starlette.requests import Request

from relay.config import Settings
from relay.store.idempotency import IdempotencyStore
from relay.store.tokens import TokenStore


def connect_redis(url: str) -> Redis:
    """A Redis client whose calls fail fast instead of hanging when Redis is down."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry_on_timeout=False,
        health_check_interval=15,
    )
    return client


@dataclass(slots=True)
class Services:
    """The process's shared resources."""

    settings: Settings
    redis: Redis
    tokens: TokenStore
    idempotency: IdempotencyStore

    @classmethod
    def open(cls, settings: Settings) -> Services:
        """Build the services for a process (connections open lazily)."""
        if not settings.redis_url:
            raise RuntimeError("RELAY_REDIS_URL is required")
        redis = connect_redis(settings.redis_url)
        return cls(settings, redis, TokenStore(redis), IdempotencyStore(redis))

    async def aclose(self) -> None:
        """Close connections."""
        await self.redis.aclose()


def services(request: Request) -> Services:
    """The services of the app serving `request`."""
    ctx: Services = request.app.state.services
    return ctx
