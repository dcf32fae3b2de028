"""The delivery worker: an arq Worker whose jobs and cron are named here."""

from __future__ import annotations

import logging
from typing import Any

from arq.connections import RedisSettings
from arq.cron import cron
from arq.worker import Worker

from relay.config import Settings
from relay.services import Services

log = logging.getLogger("relay.worker")

QUEUE = "relay:queue"


async def _startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    ctx["services"] = Services.open(settings)
    await ctx["services"].redis.ping()
    log.info("worker connected")


async def _shutdown(ctx: dict[str, Any]) -> None:
    services: Services | None = ctx.get("services")
    if services is not None:
        await services.aclose()
    log.info("worker stopped")


async def sweep(ctx: dict[str, Any]) -> None:
    """Re-enqueue deliveries that are due but have no live job."""


def build_worker(settings: Settings) -> Worker:
    """An arq worker for relay's queue (signals handled: SIGINT/SIGTERM stop it cleanly)."""
    if not settings.redis_url:
        raise RuntimeError("RELAY_REDIS_URL is required")
    return Worker(
        functions=[],
        cron_jobs=[cron(sweep, second=set(range(0, 60, 5)), run_at_startup=True)],
        queue_name=QUEUE,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=_startup,
        on_shutdown=_shutdown,
        ctx={"settings": settings},
        max_jobs=200,
        poll_delay=0.05,
        handle_signals=True,
    )
