"""arq jobs as relay writes them itself, inside the same atomic step as the state they serve.

arq is only the transport: one job per attempt, with a deterministic id, so writing it twice is
harmless and a lost one is rewritten by the sweeper from the delivery's own due time.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

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
