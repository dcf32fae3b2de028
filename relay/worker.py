"""The delivery worker process: claims due deliveries, attempts them, and keeps going.

One claim script leases a batch of due deliveries at a time, for seconds, and one extend script
gives the attempts still running after a moment the attempt's lease (see relay/delivery/); each
attempt runs as a task, at most `MAX_IN_FLIGHT` at once. When nothing is due the worker blocks
on the wake list until a script says something became due, or until the next due time. Alongside
run maintenance — finishing accepts their API process abandoned half-written, and the retention
pass (one worker at a time, by lock) — and arq's worker for background jobs.

Redis going away — restarted, killed, failed over, paused — never ends the process: every loop
logs one line and tries again with backoff. SIGTERM stops claiming and lets the attempts in flight
finish (up to RELAY_DELIVERY_TIMEOUT) before the process exits; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from relay import liveness, logs, tasks
from relay.config import Settings, redacted_url
from relay.delivery import attempt, recovery
from relay.delivery.model import Claim
from relay.delivery.outage import REDIS_AWAY, Backoff
from relay.delivery.queue import job_worker
from relay.delivery.store import new_owner
from relay.history import partitions
from relay.history.db import POSTGRES_AWAY
from relay.history.writer import HistoryWriter
from relay.presence import flush, keep_announcing, worker_name
from relay.resources import Resources, require_redis_url
from relay.store import keys
from relay.store.connect import connect_redis

log = logging.getLogger("relay.worker")

MAX_IN_FLIGHT = 100
# A lease outlasts the attempt's HTTP timeout by this much (signing, two Redis round trips);
# a worker that dies mid-attempt gives its deliveries up to another after that.
_LEASE_SLACK_SECONDS = 8
# A claim leases its deliveries for this long only, so that a claim whose reply is lost —
# Redis stalled past the 1.5 s every call waits, then ran it — holds its batch this long, not a
# whole lease. An attempt still running after `_EXTEND_AFTER_SECONDS` gets the attempt's lease
# (one call for all such attempts of the worker, checked every `_EXTEND_EVERY_SECONDS`): most
# attempts settle well before, and cost no call for it. What is left of the claim's lease
# leaves room for a call that times out once and is asked again.
_CLAIM_LEASE_SECONDS = 5
_EXTEND_AFTER_SECONDS = 1.5
_EXTEND_EVERY_SECONDS = 0.5
# Longest block on the wake list: also how often an idle worker looks for due deliveries.
_IDLE_SECONDS = 1.0
_MAINTAIN_EVERY_SECONDS = 60.0
_MAINTENANCE_LOCK_SECONDS = 120
# An accept in progress writes one bounded chunk after another, each a call that answers within
# milliseconds or times out in 1.5 s; an accept that made no progress for this long was
# abandoned by its API process (killed, or cut off from Redis), so a worker finishes it. Taking
# over a live one too early would only repeat work: written deliveries are skipped.
_ABANDONED_AFTER_MS = 30_000


class DeliveryWorker:
    """Claims and attempts deliveries until stopped."""

    def __init__(self, svc: Resources) -> None:
        self._svc = svc
        self._owner = new_owner()
        self._lease_ms = int((svc.settings.delivery_timeout + _LEASE_SLACK_SECONDS) * 1000)
        # The loop waits at most an attempt's lease for a slot (an attempt ends by then), a
        # second when idle and 5 s between tries while Redis is away: twice the lease is stuck.
        self.heartbeat = liveness.Heartbeat(stuck_after=2 * self._lease_ms / 1000)
        self._tasks: set[asyncio.Task[None]] = set()
        self._claims: dict[asyncio.Task[None], Claim] = {}
        # Claims in flight still on the claim's short lease, by delivery id.
        self._short: dict[str, Claim] = {}
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Claim nothing more (attempts in flight carry on)."""
        self._stopping.set()
        self._room.set()

    async def run(self) -> None:
        """Claim due deliveries and start their attempts until `stop`."""
        backoff = Backoff()
        while not self._stopping.is_set():
            self.heartbeat.beat()
            free = MAX_IN_FLIGHT - len(self._tasks)
            if free <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                # First what is already in flight: after Redis was away, a claim could take
                # over an attempt of this worker's whose claim's lease ran out meanwhile.
                await self._extend_leases()
                poll = await self._svc.deliveries.claim(
                    self._owner,
                    free,
                    _CLAIM_LEASE_SECONDS * 1000,
                    self._svc.settings.endpoint_concurrency,
                    self._svc.settings.tenant_concurrency,
                    self._svc.settings.endpoint_concurrency_max,
                )
                self._svc.counts.add("sweeper_requeued", poll.taken_over)
                self._report_missing(poll.missing)
                for claim in poll.claims:
                    self._short[claim.delivery_id] = claim
                    task = asyncio.create_task(self._attempt(claim))
                    self._claims[task] = claim
                    self._tasks.add(task)
                    task.add_done_callback(self._finished)
                # Fewer than asked for, and nothing else due now: asking again at once would
                # only come back empty, so wait for a wake-up or the next due time.
                due_now = poll.next_due_in_ms is not None and poll.next_due_in_ms <= 0
                if len(poll.claims) < free and not due_now:
                    await self._idle(poll.next_due_in_ms)
                backoff.reset()
            except REDIS_AWAY as exc:
                if isinstance(exc, OutOfMemoryError):
                    log.warning("redis is out of memory (maxmemory reached); claiming waits")
                    self._svc.counts.add("redis_oom_errors")
                else:
                    log.warning("redis unavailable while claiming (%s); retrying", exc)
                self._svc.counts.add("redis_errors")
                await backoff.wait()

    def _report_missing(self, missing: tuple[str, ...]) -> None:
        # A delivery lost from Redis is lost for good (no record says where it went): the one
        # trace left of it is this line, so an operator can look for it in history.
        for delivery_id in missing:
            with logs.scope(delivery_id=delivery_id):
                log.error(
                    "delivery %s was due but its record is gone from Redis (evicted or lost); "
                    "it cannot be attempted",
                    delivery_id,
                )
        self._svc.counts.add("deliveries_missing", len(missing))

    async def keep_leases(self) -> None:
        """Extend the claim's lease to the attempt's for each attempt still running a while
        after its claim (until cancelled, once the attempts are drained)."""
        while True:
            await asyncio.sleep(_EXTEND_EVERY_SECONDS)
            try:
                await self._extend_leases()
            except REDIS_AWAY as exc:
                # Asked again at the next check, or before the next claim.
                self._svc.counts.add("redis_errors")
                log.warning("redis unavailable while extending leases (%s); retrying", exc)

    async def _extend_leases(self) -> None:
        due = time.monotonic() - _EXTEND_AFTER_SECONDS
        claims = [c for c in self._short.values() if c.taken_at <= due]
        if not claims:
            return
        held = await self._svc.deliveries.extend(claims, self._lease_ms)
        for claim in claims:
            self._short.pop(claim.delivery_id, None)
        if lost := len(claims) - len(held):
            # Taken over after their claim's lease ran out (this worker stalled, or Redis was
            # away that long): the attempts still end logged, and a 2xx still wins.
            log.warning("%d attempts in flight were taken over by another claim", lost)

    async def _idle(self, next_due_in_ms: int | None) -> None:
        wait = _IDLE_SECONDS if next_due_in_ms is None else next_due_in_ms / 1000
        await self._svc.deliveries.wait_for_work(max(min(wait, _IDLE_SECONDS), 0.01))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._short.pop(self._claims.pop(task).delivery_id, None)
        self._room.set()

    async def _attempt(self, claim: Claim) -> None:
        try:
            await attempt.deliver(self._svc, claim, self._lease_ms / 1000)
        except REDIS_AWAY as exc:
            log.warning("delivery %s: %s; its lease will run out", claim.delivery_id, exc)
        except POSTGRES_AWAY as exc:
            # Read only for an attempt that came back after its delivery left Redis.
            log.error(
                "delivery %s attempt %s: history is unreachable (%s); the attempt is not logged",
                claim.delivery_id,
                claim.attempt,
                exc,
            )

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the attempts in flight to finish and settle."""
        if self._tasks:
            log.info("waiting for %d attempts in flight", len(self._tasks))
            await asyncio.wait(set(self._tasks), timeout=timeout)


async def _maintain_forever(svc: Resources, stopping: asyncio.Event) -> None:
    """Requeue what an older relay queued; finish abandoned accepts; and history's partitions,
    by one worker at a time. Waits out outages; any other failure is logged and tried again at
    the next pass."""
    backoff = Backoff()
    while not stopping.is_set():
        try:
            await _maintain(svc)
            backoff.reset()
        except REDIS_AWAY as exc:
            log.warning("redis unavailable during maintenance (%s); retrying", exc)
            await backoff.wait()
            continue
        except POSTGRES_AWAY as exc:
            log.warning("postgresql unavailable during maintenance (%s); retrying", exc)
            await backoff.wait()
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), _MAINTAIN_EVERY_SECONDS)


async def _requeue_old_layout(svc: Resources) -> None:
    if moved := await svc.deliveries.requeue_old_layout():
        log.warning("moved %d deliveries an older relay queued into endpoint queues", moved)


async def _finish_abandoned(svc: Resources) -> None:
    if finished := await svc.deliveries.finish_abandoned(_ABANDONED_AFTER_MS):
        log.warning("finished %d accepts that their API process abandoned", finished)


async def _retention(svc: Resources) -> None:
    if await _take_maintenance_lock(svc.redis, _MAINTENANCE_LOCK_SECONDS):
        await _keep_partitions(svc, await svc.deliveries.redis_now_ms())


async def _take_maintenance_lock(redis: Redis, seconds: int) -> bool:
    """Whether this process may run the retention pass now (one at a time)."""
    return bool(await redis.set(keys.MAINTENANCE_LOCK, "1", nx=True, ex=seconds))


_STEPS = (
    ("requeue deliveries of the layout before endpoint queues", _requeue_old_layout),
    ("finish abandoned accepts", _finish_abandoned),
    ("make and drop history's partitions", _retention),
)


async def _maintain(svc: Resources) -> None:
    """One pass: each step, whatever became of the other; an outage ends the pass (to wait)."""
    for what, step in _STEPS:
        try:
            await step(svc)
        except REDIS_AWAY:
            raise
        except POSTGRES_AWAY:
            raise
        except Exception:
            # No wait cures this (a bug, a record this release cannot read, a table in the
            # way), and the task would end with no word: say it all, and leave the other step
            # and the next pass to run, as retention and accepts must not stop for one record.
            log.exception("maintenance could not %s; trying again at the next pass", what)


async def _keep_partitions(svc: Resources, now_ms: int) -> None:
    """History's partitions: the next days' made ahead, those past retention dropped."""
    today = datetime.fromtimestamp(now_ms / 1000, UTC).date()
    oldest_kept = today - timedelta(days=svc.settings.retention_days)
    async with (await svc.database.pool()).acquire() as conn:
        await partitions.ahead(conn, today)
        if dropped := await partitions.drop_before(conn, oldest_kept):
            log.info("retention dropped %d partitions: %s", len(dropped), ", ".join(dropped))


async def _recover_job(ctx: dict[str, Any], recovery_id: str) -> None:
    await recovery.continue_recovery(ctx["resources"], recovery_id)


async def _jobs_forever(svc: Resources, stopping: asyncio.Event) -> None:
    """arq's worker for background jobs, started again whenever Redis drops it."""
    backoff = Backoff()
    while not stopping.is_set():
        # A client of its own, closed with the runner it served: arq keeps it busy polling.
        redis = connect_redis(require_redis_url(svc.settings))
        worker = job_worker(
            redis, [(recovery.RECOVER_JOB, _recover_job)], {"resources": svc}, timeout_seconds=3600
        )
        main = asyncio.create_task(worker.main())
        stopped = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait({main, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await tasks.cancel([main, stopped])
            await redis.aclose()
        if not main.cancelled() and main.exception() is not None:
            log.warning("background job runner lost redis (%s); restarting", main.exception())
            await backoff.wait()


async def wait_for_redis(svc: Resources, stopping: asyncio.Event) -> bool:
    """Wait until Redis answers, saying so once per try; False if stopped meanwhile."""
    backoff = Backoff()
    while not stopping.is_set():
        try:
            await svc.redis.ping()
            return True
        except REDIS_AWAY as exc:
            log.warning("waiting for redis at %s: %s", redacted_url(svc.settings.redis_url), exc)
            await backoff.wait()
    return False


async def run(settings: Settings) -> None:
    """Run one worker until SIGTERM or SIGINT, then drain its attempts in flight."""
    svc = Resources.open(settings)
    stopping = asyncio.Event()
    worker = DeliveryWorker(svc)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stopping.is_set():
            raise SystemExit(1)  # a second signal: stop waiting
        log.info("stopping: no new attempts; finishing those in flight")
        stopping.set()
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    health = None
    if settings.worker_health_port:
        health = await liveness.serve(worker.heartbeat, settings.worker_health_port)
        log.info("liveness at :%d/healthz", settings.worker_health_port)
    try:
        if not await wait_for_redis(svc, stopping) or not await svc.database.wait(stopping):
            return
        log.info("worker connected")
        background = [
            asyncio.create_task(_maintain_forever(svc, stopping)),
            asyncio.create_task(worker.keep_leases()),
            asyncio.create_task(_jobs_forever(svc, stopping)),
            asyncio.create_task(keep_announcing(svc.redis, worker_name(), svc.counts)),
            asyncio.create_task(
                HistoryWriter(
                    svc.handover, await svc.database.pool(), worker_name(), svc.counts
                ).run(stopping)
            ),
        ]
        await worker.run()
        await worker.drain(settings.delivery_timeout + 1)
        await tasks.cancel(background)
        await flush(svc.redis, worker_name(), svc.counts)
    finally:
        if health is not None:
            health.close()
        await svc.aclose()
        log.info("worker stopped")
