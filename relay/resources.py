"""Everything a request or a job needs, built once from Settings and passed around explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis
from starlette.requests import Request

from relay import __version__
from relay.config import Settings
from relay.delivery.handover import HistoryHandover
from relay.delivery.queue import JobQueue
from relay.delivery.store import DeliveryStore
from relay.history.db import Database
from relay.history.reader import PostgresArchive
from relay.metrics import Counts
from relay.secrets import Keyring
from relay.sender import Sender
from relay.ssrf import AddressPolicy
from relay.store import keys
from relay.store.audit import AuditLog
from relay.store.connect import connect_redis
from relay.store.event_types import EventTypeStore
from relay.store.events import EventStore
from relay.store.idempotency import IdempotencyStore
from relay.store.ratelimit import AuthFailureLimiter, WindowLimiter
from relay.store.recoveries import RecoveryStore
from relay.store.replicas import Replicas
from relay.store.samples import SampleLog
from relay.store.tokens import TokenStore
from relay.store.webhooks import WebhookStore

USER_AGENT = f"relay/{__version__}"


class MissingSetting(RuntimeError):
    """A variable the API and worker cannot run without."""


def require_redis_url(settings: Settings) -> str:
    """RELAY_REDIS_URL, which the API and workers cannot do without."""
    if not settings.redis_url:
        raise MissingSetting("RELAY_REDIS_URL is required (or use `relay dev`).")
    return settings.redis_url


def require_database_url(settings: Settings) -> str:
    """RELAY_DATABASE_URL, which the API and workers cannot do without."""
    if not settings.database_url:
        raise MissingSetting("RELAY_DATABASE_URL is required (or use `relay dev`).")
    return settings.database_url


def keyring(settings: Settings) -> Keyring:
    """The master keyring from RELAY_SECRET_KEYS, which must be set and valid."""
    if not settings.secret_keys:
        raise MissingSetting(
            "RELAY_SECRET_KEYS is required: a base64 32-byte key (`relay keys generate` makes one)."
        )
    try:
        return Keyring.from_strings([k.get_secret_value() for k in settings.secret_keys])
    except ValueError as exc:
        raise MissingSetting(f"RELAY_SECRET_KEYS: {exc}") from None


@dataclass(slots=True)
class Resources:
    """The process's shared resources."""

    settings: Settings
    redis: Redis
    keyring: Keyring
    policy: AddressPolicy
    sender: Sender
    tokens: TokenStore
    idempotency: IdempotencyStore
    webhooks: WebhookStore
    audit: AuditLog
    events: EventStore
    event_types: EventTypeStore
    rate_limiter: WindowLimiter  # API requests per token and second
    test_sends: WindowLimiter  # per tenant and minute: each makes relay POST somewhere at once
    auth_failures: AuthFailureLimiter
    deliveries: DeliveryStore
    handover: HistoryHandover  # records on their way to history, for its writer
    recoveries: RecoveryStore
    sample_log: SampleLog  # each webhook's recent test sends
    jobs: JobQueue
    database: Database
    counts: Counts = field(default_factory=Counts)

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        """Build the resources for a process (connections open lazily)."""
        redis = connect_redis(require_redis_url(settings))
        replicas = Replicas(redis, settings.redis_min_replicas)
        database = Database(require_database_url(settings))
        archive = PostgresArchive(database)
        policy = AddressPolicy(settings.allow_private_targets, settings.allowed_cidrs)
        ring = keyring(settings)
        return cls(
            settings=settings,
            redis=redis,
            keyring=ring,
            policy=policy,
            sender=Sender(
                timeout=settings.delivery_timeout,
                max_connections=256,
                user_agent=USER_AGENT,
                address_check=policy.allows,
                capture_bytes=settings.capture_response_bytes,
                propagate_trace_context=settings.propagate_trace_context,
            ),
            tokens=TokenStore(redis),
            idempotency=IdempotencyStore(redis, ring, replicas),
            webhooks=WebhookStore(redis, settings.max_webhooks_per_tenant),
            audit=AuditLog(redis, settings.retention_seconds, archive),
            events=EventStore(redis, archive),
            event_types=EventTypeStore(redis),
            rate_limiter=WindowLimiter(redis, settings.api_rate_limit, 1, keys.token_rate),
            test_sends=WindowLimiter(
                redis, settings.test_sends_per_minute, 60, keys.test_send_rate
            ),
            auth_failures=AuthFailureLimiter(redis, settings.auth_failures_per_minute),
            deliveries=DeliveryStore(
                redis,
                settings.retention_seconds,
                settings.disable_after,
                archive,
                replicas=replicas,
            ),
            handover=HistoryHandover(redis, replicas),
            recoveries=RecoveryStore(redis, settings.retention_seconds),
            sample_log=SampleLog(redis, settings.retention_seconds),
            jobs=JobQueue(redis),
            database=database,
        )

    async def aclose(self) -> None:
        """Close connections."""
        await self.sender.aclose()
        await self.redis.aclose()
        await self.database.aclose()


def resources(request: Request) -> Resources:
    """The resources of the app serving `request`."""
    ctx: Resources = request.app.state.resources
    return ctx
