"""A delivery's states, transitions and Redis hash fields, declared once; the records an attempt
reads and writes."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Status(enum.StrEnum):
    """Where a delivery is: pending → delivering → delivered | failed, or canceled."""

    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELED = "canceled"


# No worker touches these again unless someone retries the delivery.
FINISHED = frozenset({Status.DELIVERED, Status.FAILED, Status.CANCELED})


class Transition(enum.StrEnum):
    """Every change of a delivery's state; each is one Lua script of the same name."""

    ACCEPT = "accept"  # (new) → pending, with its event
    CLAIM = "claim"  # pending → delivering, in turn between tenants and their endpoints
    EXTEND = "extend"  # delivering on the claim's short lease → on the attempt's lease
    SETTLE = "settle"  # delivering → pending | delivered | failed | canceled
    # finished → pending with a fresh schedule; pending → a manual attempt now, outside it
    RESTART = "restart"
    CANCEL = "cancel"  # pending → canceled
    RELEASE = "release"  # finished and written to history → gone from Redis


# What an operator's retry may start from: a finished delivery starts a fresh schedule, a
# pending one gets a manual attempt now; a delivering one must end its attempt first.
RETRYABLE = frozenset({Status.PENDING, *FINISHED})


class Trigger(enum.StrEnum):
    """What made an attempt: the retry schedule, or an operator's retry of a pending delivery.

    A manual attempt sits outside the schedule: it uses none of its attempts and, failing,
    leaves its next one where it was (a 2xx still ends the delivery as delivered).
    """

    SCHEDULED = "scheduled"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at a delivery, as the log keeps it."""

    number: int
    started_at: str
    duration_ms: int
    status_code: int | None
    error: str | None
    response_body: str
    request_headers: dict[str, str]
    url: str
    trigger: Trigger = Trigger.SCHEDULED

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Attempt:
        """An attempt as its log keeps it (JSON)."""
        return cls(**attempt_view(record))


def attempt_view(record: dict[str, Any]) -> dict[str, Any]:
    """An attempt's record with its trigger: those logged before attempts recorded theirs were
    all scheduled."""
    return {**record, "trigger": Trigger(record.get("trigger", Trigger.SCHEDULED))}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event on its way to one webhook."""

    id: str
    event_id: str
    webhook_id: str
    tenant_id: str
    event_type: str
    status: Status
    attempt_count: int
    # Attempts the current schedule does not count: those made before it began (a retry of a
    # finished delivery starts a fresh one), and the manual ones made during it. The schedule's
    # position is `attempt_count - cycle_start`.
    cycle_start: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: str
    updated_at: str
    delivered_at: str | None


@dataclass(frozen=True, slots=True)
class Recovery:
    """Failed deliveries of a time window being sent again, and how far that has got."""

    id: str
    webhook_id: str | None  # only this webhook's deliveries; None: any
    tenant_id: str | None
    event_type: str | None
    status: str  # running | done
    requeued: int
    since: str
    until: str


@dataclass(frozen=True, slots=True)
class TestSend:
    """A sample event sent to a webhook now, and what its endpoint answered."""

    event_id: str
    type: str
    sent_at: str
    url: str
    status_code: int | None
    duration_ms: int
    error: str | None
    response_body: str
    request_headers: dict[str, str]


class Field(enum.StrEnum):
    """The fields of a delivery's hash in Redis, which every transition's script reads and
    writes (by these names: see `relay.store.lua.names`). Times ending in `_ms` or `_until` are
    Redis's clock in ms; an empty value is a blank field (cheaper to write than a deletion)."""

    ID = "id"
    EVENT_ID = "event_id"
    WEBHOOK_ID = "webhook_id"
    TENANT_ID = "tenant_id"
    EVENT_TYPE = "event_type"
    STATUS = "status"
    ATTEMPT_COUNT = "attempt_count"
    CYCLE_START = "cycle_start"
    NEXT_ATTEMPT_AT = "next_attempt_at"  # when due (ms), while pending
    CREATED_AT = "created_at"  # RFC 3339, as accepted
    UPDATED_MS = "updated_ms"  # the state's version: history keeps the newest
    DELIVERED_MS = "delivered_ms"
    LAST_STATUS_CODE = "last_status_code"
    LAST_ERROR = "last_error"
    # The last attempt's record, kept on a finished delivery rather than pushed to its list.
    LAST_ATTEMPT = "last_attempt"
    # The lease of the attempt in flight: until when, and the token that proves it.
    LEASE_UNTIL = "lease_until"
    LEASE_TOKEN = "lease_token"
    MANUAL = "manual"  # "1" while an operator's retry asks for a manual attempt
    # Carried from the request that posted the event (for its attempts' spans and log lines).
    TRACEPARENT = "traceparent"
    REQUEST_ID = "request_id"
    # The key remembering the event's upstream id, which leaves Redis with its last delivery.
    UPSTREAM_KEY = "upstream_key"
    # A copy of the event's payload, on the only delivery of a small event: its claim reads it
    # with the delivery. Never part of what history gets.
    PAYLOAD = "payload"


class EventField(enum.StrEnum):
    """The fields of an event's hash in Redis, written with its deliveries."""

    TYPE = "type"
    TENANT_ID = "tenant_id"
    CREATED_AT = "created_at"
    UPSTREAM_ID = "upstream_id"
    UPSTREAM_KEY = "upstream_key"
    DELIVERY_IDS = "deliveries"
    PAYLOAD = "payload"
    # Holders of the event in Redis: its deliveries there, and its own entry for history.
    LIVE = "live"


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery leased to this worker for one attempt, with what the attempt needs.

    `token` proves the lease at start and settle: a worker that paused past its lease and was
    overtaken cannot start, nor write over, the attempt of the worker that took the delivery over.
    """

    delivery_id: str
    attempt: int
    token: str
    cycle_start: int
    trigger: Trigger
    webhook_id: str
    event_id: str
    webhook_record: bytes | None
    payload: bytes | None
    now_ms: int  # Redis's clock when the lease was taken
    taken_at: float  # this process's monotonic clock then
    traceparent: str | None = None  # the ingest span's, when tracing
    # Whether the endpoint had a failure streak when the lease was taken: only then has a
    # success one to end.
    endpoint_failing: bool = True
    # Whether the endpoint's last attempt answered quickly: this one then did not count in its
    # tenant's slow share.
    endpoint_quick: bool = False
    # How many attempts the endpoint could have in flight when this one was claimed, and
    # whether this one went with every slot in use (see relay.delivery.concurrency).
    endpoint_concurrency: int = 1
    endpoint_full: bool = False
    # Of the request that posted the event, so an upstream's request id finds its attempts.
    request_id: str | None = None
    # Whether the lease took one of the endpoint's and the tenant's slots (a disabled or deleted
    # webhook's delivery ends without a request, and takes none).
    holds_slot: bool = True

    def log_ids(self) -> dict[str, str | int]:
        """The ids an attempt's log line and span carry."""
        ids: dict[str, str | int] = {
            "delivery_id": self.delivery_id,
            "event_id": self.event_id,
            "webhook_id": self.webhook_id,
            "attempt": self.attempt,
            "trigger": self.trigger.value,
        }
        if self.request_id is not None:
            ids["request_id"] = self.request_id
        return ids


@dataclass(frozen=True, slots=True)
class Settlement:
    """What to write when settling an attempt (or the decision not to make one)."""

    status: Status
    attempt: Attempt | None
    delay_ms: int | None  # until the next attempt, when pending
    last_status_code: int | None
    last_error: str | None
    counters: tuple[str, ...] = ()
    duration_seconds: float = 0.0
    endpoint_ok: bool | None = None  # None when no request was made
    # Whether the endpoint answered quickly: then it may use all of its tenant's slots, not
    # only the share kept for the others (None when no request was made).
    quick: bool | None = None
    # The endpoint's concurrency from now on, when the answer changes it (None: unchanged).
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """What settling told: whether it was written, since when the endpoint fails, Redis's now."""

    written: bool
    failing_since_ms: int | None
    now_ms: int
