"""arq jobs as relay writes them itself, inside the same atomic step as the state they serve.

arq is only the transport: one job per attempt, with a deterministic id, so writing it twice is
harmless and a lost one is rewritten by the sweeper from the delivery's own due time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from relay.store import keys

DELIVER = "deliver"
# arq drops a job record this long after it was due; the sweeper would write it again.
JOB_TTL_MS = 86_400_000


def job_id(delivery_id: str, attempt: int) -> str:
    """The job of one attempt: `{delivery_id}:{attempt}`."""
    return f"{delivery_id}:{attempt}"


@dataclass(frozen=True, slots=True)
class Job:
    """One deliver job: the keys and values a script needs to enqueue it."""

    id: str
    key: str
    payload: bytes


def deliver_job(delivery_id: str, attempt: int, webhook_id: str, event_id: str, now_ms: int) -> Job:
    """The job for attempt `attempt` of a delivery, in arq's JSON job format."""
    jid = job_id(delivery_id, attempt)
    payload = orjson.dumps(
        {
            "t": 1,
            "f": DELIVER,
            "a": [delivery_id, attempt, webhook_id, event_id],
            "k": {},
            "et": now_ms,
        }
    )
    return Job(jid, keys.job(jid), payload)


# What arq checks before it runs a job, for a whole poll's worth of jobs at once: the job is
# still queued, due, and running nowhere; then it is marked running for `running ms`.
# KEYS: queue. ARGV: now ms, running ms, in-progress key prefix, then the job ids.
_TAKE = """
local taken = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= tonumber(ARGV[1])
      and redis.call('EXISTS', ARGV[3] .. id) == 0 then
    redis.call('SET', ARGV[3] .. id, '1', 'PX', ARGV[2])
    table.insert(taken, {id, score})
  end
end
return taken
"""


class JobStarts:
    """Marks queued jobs as running, so that each is started by one worker only."""

    def __init__(self, redis: Redis) -> None:
        self._take = redis.register_script(_TAKE)

    async def take(
        self, job_ids: Sequence[str], now_ms: int, running_ms: int
    ) -> list[tuple[str, int]]:
        """The jobs of `job_ids` this worker may start now, with their queue scores."""
        if not job_ids:
            return []
        rows = await self._take(
            keys=[keys.QUEUE], args=[now_ms, running_ms, keys.IN_PROGRESS_PREFIX, *job_ids]
        )
        return [(job_id.decode(), int(float(score))) for job_id, score in rows]
