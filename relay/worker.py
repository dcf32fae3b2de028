"""The delivery worker: arq runs one `deliver` job per attempt, and a sweeper as cron.

A SIGKILLed worker's in-flight attempts run again once arq's in-progress marker expires
(`job_timeout` + 10 s, i.e. RELAY_DELIVERY_TIMEOUT + 15 s, 30 s by default): by then the
attempt's lease (RELAY_DELIVERY_TIMEOUT + 8 s) has lapsed, so the re-run takes the delivery
over. Should the job itself be lost, the sweeper finds the delivery in the due set and writes
its job again.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from arq.connections import RedisSettings
from arq.cron import cron
from arq.worker import Retry, Worker, func

from relay.config import Settings
from relay.deliveries import Attempt, Status, judge
from relay.metrics import attempt_counters
from relay.services import USER_AGENT, Services, require_redis_url
from relay.store import codec, keys
from relay.store.deliveries import BUSY, Claim, Settlement
from relay.store.jobs import DELIVER, JobStarts
from relay.timefmt import now, rfc3339
from relay.webhooks import Webhook, delivery_headers, disable, signing_keys

log = logging.getLogger("relay.worker")

# Jobs may run a little past the HTTP timeout (signing, two Redis round trips).
_JOB_SLACK_SECONDS = 5
# The lease ends before arq's in-progress marker (job timeout + 10 s) so a re-run can take over.
_LEASE_SLACK_SECONDS = 3


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _busy_backoff(tries: int) -> float:
    """Seconds to wait for a free slot: 200 ms doubling to 2 s, with jitter against herds."""
    return min(2.0, 0.2 * 2.0 ** min(tries - 1, 4)) * random.uniform(0.5, 1.0)


def _lease_ms(settings: Settings) -> int:
    return int((settings.delivery_timeout + _JOB_SLACK_SECONDS + _LEASE_SLACK_SECONDS) * 1000)


async def _end_without_attempt(
    svc: Services,
    delivery_id: str,
    attempt: int,
    webhook_id: str,
    event_id: str,
    status: Status,
    reason: str,
) -> None:
    stamp = rfc3339(now())
    settlement = Settlement(
        status=status,
        attempt=None,
        next_due_ms=None,
        last_status_code=None,
        last_error=reason,
        updated_at=stamp,
        delivered_at=None,
        counters=[f"deliveries:{status.value}"],
    )
    await svc.deliveries.settle(delivery_id, attempt, webhook_id, event_id, settlement, _now_ms())


async def deliver(
    ctx: dict[Any, Any], delivery_id: str, attempt: int, webhook_id: str, event_id: str
) -> None:
    """Make attempt `attempt` of a delivery, log it, and schedule what comes next."""
    svc: Services = ctx["services"]
    claim = await svc.deliveries.claim(
        delivery_id,
        attempt,
        webhook_id,
        event_id,
        _now_ms(),
        _lease_ms(svc.settings),
        svc.settings.endpoint_concurrency,
    )
    if claim == BUSY:
        # The endpoint is at its concurrency or rate limit: wait without using up an attempt,
        # backing off so that a hanging endpoint's backlog costs little polling.
        raise Retry(defer=_busy_backoff(ctx.get("job_try", 1)))
    if not isinstance(claim, Claim):
        return  # canceled, already done by another job, or taken over: nothing to do
    end = (delivery_id, attempt, webhook_id, event_id)
    if claim.webhook_record is None:
        await _end_without_attempt(svc, *end, Status.CANCELED, "the webhook was deleted")
        return
    webhook = Webhook.from_record(codec.loads(claim.webhook_record))
    if not webhook.enabled:
        reason = f"the webhook is disabled: {webhook.disabled_reason or 'by its owner'}"
        await _end_without_attempt(svc, *end, Status.FAILED, reason)
        return
    if claim.payload is None:
        await _end_without_attempt(svc, *end, Status.FAILED, "the event has expired")
        return

    started = now()
    started_ms = _now_ms()
    signing = signing_keys(webhook, svc.keyring, started_ms)
    headers = delivery_headers(webhook, signing, event_id, started_ms // 1000, claim.payload)
    result = await svc.sender.send(webhook.url, claim.payload, headers)
    finished = now()
    verdict = judge(
        svc.settings.retry_schedule,
        attempt - claim.cycle_start,
        result.status_code,
        result.error,
        result.retry_after,
        finished,
    )
    finished_ms = _now_ms()
    stamp = rfc3339(finished)
    settlement = Settlement(
        status=verdict.status,
        attempt=Attempt(
            number=attempt,
            started_at=rfc3339(started),
            duration_ms=result.duration_ms,
            status_code=result.status_code,
            error=result.error,
            response_body=result.response_body,
            request_headers={**headers, "user-agent": USER_AGENT},
        ),
        next_due_ms=finished_ms + int(verdict.delay * 1000) if verdict.delay is not None else None,
        last_status_code=result.status_code,
        last_error=verdict.error,
        updated_at=stamp,
        delivered_at=stamp if verdict.status is Status.DELIVERED else None,
        counters=attempt_counters(
            result.status_code,
            result.duration_ms / 1000,
            verdict.status if verdict.status is not Status.PENDING else None,
        ),
        duration_seconds=result.duration_ms / 1000,
        endpoint_ok=result.ok,
    )
    settled = await svc.deliveries.settle(*end, settlement, finished_ms)
    if not settled.written:
        log.warning("delivery %s attempt %s was taken over; result dropped", delivery_id, attempt)
        return
    why = _disable_reason(verdict.disable_webhook, settled.failing_since_ms, svc.settings)
    if why is not None:
        await svc.webhooks.change(webhook_id, lambda w: disable(w, why))


def _disable_reason(gone: bool, failing_since_ms: int | None, settings: Settings) -> str | None:
    """Why the webhook should be disabled now, if it should."""
    if gone:
        return "the endpoint answered 410 Gone"
    if (
        failing_since_ms is not None
        and _now_ms() - failing_since_ms >= settings.disable_after * 1000
    ):
        since = rfc3339(datetime.fromtimestamp(failing_since_ms / 1000, UTC))
        return f"every attempt since {since} failed (more than {settings.disable_after} s)"
    return None


async def sweep(ctx: dict[Any, Any]) -> int:
    """Re-enqueue deliveries that are due but have no live job; returns how many."""
    svc: Services = ctx["services"]
    now_ms = _now_ms()
    lost = await svc.deliveries.lost(now_ms)
    for item in lost:
        await svc.deliveries.enqueue(item, now_ms)
    if lost:
        log.info("sweeper re-enqueued %d deliveries", len(lost))
    return len(lost)


async def trim(ctx: dict[Any, Any]) -> int:
    """Drop index entries past retention (the objects themselves expire by TTL)."""
    svc: Services = ctx["services"]
    return await svc.deliveries.trim(_now_ms())


async def _startup(ctx: dict[Any, Any]) -> None:
    settings: Settings = ctx["settings"]
    ctx["services"] = Services.open(settings)
    await ctx["services"].redis.ping()
    log.info("worker connected")


async def _shutdown(ctx: dict[Any, Any]) -> None:
    services: Services | None = ctx.get("services")
    if services is not None:
        await services.aclose()
    log.info("worker stopped")


class _Worker(Worker):
    """arq's worker, starting the jobs of one poll with one Redis call.

    arq itself makes four round trips per job before running it (WATCH, EXISTS, ZSCORE, then
    MULTI/SET/EXEC); at thousands of jobs a second those calls were a large share of the
    worker's CPU. One script makes the same checks for the whole batch, atomically.
    """

    _starts: JobStarts | None = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free <= 0:
            return
        if self._starts is None:
            self._starts = JobStarts(self.pool)
        running_ms = int(self.in_progress_timeout_s * 1000)
        wanted = [job_id.decode() for job_id in job_ids[:free]]
        for job_id, score in await self._starts.take(wanted, _now_ms(), running_ms):
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task


def build_worker(settings: Settings) -> Worker:
    """An arq worker for relay's queue (SIGINT/SIGTERM stop it cleanly)."""
    job_timeout = settings.delivery_timeout + _JOB_SLACK_SECONDS
    return _Worker(
        # Our own state machine decides about retries; arq must never give up on a job that a
        # crashed worker left behind, so its own try limit is set far out of reach.
        functions=[func(deliver, name=DELIVER, max_tries=1000, timeout=job_timeout)],
        cron_jobs=[
            cron(sweep, second=set(range(0, 60, 5)), run_at_startup=True, unique=True),
            cron(trim, second=30, unique=True),
        ],
        queue_name=keys.QUEUE,
        redis_settings=RedisSettings.from_dsn(require_redis_url(settings)),
        on_startup=_startup,
        on_shutdown=_shutdown,
        ctx={"settings": settings},
        max_jobs=100,
        poll_delay=0.02,
        job_timeout=job_timeout,
        keep_result=0,
        job_serializer=orjson.dumps,
        job_deserializer=orjson.loads,
        handle_signals=True,
        log_results=False,
    )
