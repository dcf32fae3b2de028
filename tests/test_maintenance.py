"""A worker's maintenance: abandoned accepts finished, history's partitions kept, pass after pass,
whatever one pass runs into."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio

from relay import worker
from relay.config import Settings
from relay.history import partitions
from relay.resources import Resources
from relay.store import codec, keys


async def _partition_exists(conn: asyncpg.Connection, name: str) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relname = $1",
        name,
    )
    return found is not None


async def test_a_failing_step_is_logged_with_its_traceback_and_maintenance_goes_on(
    settings_for: Callable[..., Settings],
    redis_client: redis.asyncio.Redis,
    history_db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "_MAINTAIN_EVERY_SECONDS", 0.2)
    svc = Resources.open(settings_for())
    # The farthest partition made ahead, not made yet: a pass that runs makes it.
    today = datetime.fromtimestamp(await svc.deliveries.redis_now_ms() / 1000, UTC).date()
    ahead = f"events_p{today + timedelta(days=partitions.DAYS_AHEAD):%Y%m%d}"
    await history_db.execute(f"DROP TABLE IF EXISTS {ahead}")
    # An accept abandoned long ago whose plan this release cannot read (as a newer one might
    # write it): finishing it fails, with no outage to wait out.
    plan = {"id": "evt_newer", "type": "post.published", "tenant_id": "t", "priority": 1}
    await redis_client.set(keys.event_plan("evt_newer"), codec.dumps(plan))
    await redis_client.zadd(keys.ACCEPTING, {"evt_newer": 0})

    stopping = asyncio.Event()
    maintaining = asyncio.create_task(worker._maintain_forever(svc, stopping))
    try:
        deadline = time.monotonic() + 10
        while not (
            [r for r in caplog.records if r.name == "relay.worker" and r.levelno == logging.ERROR]
            and await _partition_exists(history_db, ahead)
        ):
            assert time.monotonic() < deadline, ("maintenance went quiet", caplog.records)
            await asyncio.sleep(0.1)
        # An operator clears the plan; a later pass finishes that accept.
        await redis_client.delete(keys.event_plan("evt_newer"))
        while await redis_client.zscore(keys.ACCEPTING, "evt_newer") is not None:
            assert time.monotonic() < deadline, "no later pass finished the accept"
            await asyncio.sleep(0.1)
        assert not maintaining.done()
    finally:
        stopping.set()
        await maintaining
        await svc.aclose()
    [failed, *_] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "abandoned accepts" in failed.getMessage() and "next pass" in failed.getMessage()
    assert failed.exc_info is not None and isinstance(failed.exc_info[1], TypeError)
