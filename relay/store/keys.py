"""Every Redis key relay uses, named in one place.

Configuration (tokens, webhooks, registered event types) and audit entries are JSON strings
under `relay:<kind>:<id>`; what is in flight (events, deliveries, recoveries) are hashes; each
key below says which. The indexes the API pages through are sorted sets whose members all have
score 0, so they order lexicographically: by id, and ids order by creation time (event types by
name). Finished deliveries, events whose deliveries all left, and audit entries leave Redis
once PostgreSQL has them.
"""

from __future__ import annotations

PREFIX = "relay:"

TOKENS = PREFIX + "tokens"


def token(token_id: str) -> str:
    """A token's record."""
    return f"{PREFIX}tok:{token_id}"


def token_by_hash(digest: str) -> str:
    """A token's record again, under the hash of its plaintext: what authentication reads."""
    return f"{PREFIX}tokhash:{digest}"


def token_used(digest: str) -> str:
    """When a token (by hash) last authenticated, in unix ms; written at most once a minute."""
    return f"{PREFIX}tokused:{digest}"


def idempotency(token_id: str, key_digest: str) -> str:
    """One Idempotency-Key of one token: its request's claim while it runs, then the answer to
    replay (encrypted: it may show a secret once)."""
    return f"{PREFIX}idem:{token_id}:{key_digest}"


def idempotency_items(record_key: str, fingerprint: str) -> str:
    """What each step of a request written in several steps (a batch of events) made, under the
    record `record_key` of its Idempotency-Key, for that request body only."""
    return f"{record_key}:items:{fingerprint}"


def audited_request(token_id: str, key_digest: str) -> str:
    """Set once the change made under one Idempotency-Key of one token is in the audit trail."""
    return f"{PREFIX}audited:{token_id}:{key_digest}"


WEBHOOKS = PREFIX + "whs"


# A fresh random mark written by every change to any webhook: a process's copy of a tenant's
# webhooks is good while this is unchanged.
WEBHOOKS_VERSION = PREFIX + "whs:version"


def webhook(webhook_id: str) -> str:
    """A webhook's record (JSON, secrets and header values encrypted)."""
    return f"{PREFIX}wh:{webhook_id}"


def tenant_webhooks(tenant_id: str) -> str:
    """The index of one tenant's webhooks: a fan-out reads it when its process's copy of them
    is older than WEBHOOKS_VERSION."""
    return f"{PREFIX}whs:t:{tenant_id}"


# The audit trail until PostgreSQL has it: entries by id, and indexes of all entries and of
# each tenant's.
AUDIT = PREFIX + "auds"


def audit_entry(entry_id: str) -> str:
    """One audit entry (JSON)."""
    return f"{PREFIX}aud:{entry_id}"


def tenant_audit(tenant_id: str) -> str:
    """Index of one tenant's audit entries."""
    return f"{PREFIX}auds:t:{tenant_id}"


# The names of registered event types (built-in ones are relay's code, not data).
EVENT_TYPES = PREFIX + "evtypes"


def event_type(name: str) -> str:
    """A registered event type (JSON): description, JSON Schema, deprecated."""
    return f"{PREFIX}evtype:{name}"


# Tenants with deliveries queued, scored by when to look at them next (Redis ms): now or earlier
# if one of their endpoints has something due, else when the first thing they wait for comes.
# See claim.lua.
TENANTS = PREFIX + "tenants"
# Where deliveries waited before endpoint queues: one due set, and parked sets (+ webhook id)
# of the endpoints listed in a wakes set. Workers move what they find there (requeue.lua).
OLD_DUE = PREFIX + "due"
OLD_WAKES = PREFIX + "wakes"
OLD_PARKED_PREFIX = PREFIX + "parked:"
# Idle workers block on this list; whatever makes something due now (a script, a webhook
# change) pushes to it.
WAKE = PREFIX + "wake"
# Held by the worker running history's partition maintenance (one at a time).
MAINTENANCE_LOCK = PREFIX + "maintenance:lock"
# Events whose deliveries are still being written in chunks, scored by when each last made
# progress (Redis ms); an event leaves when its last chunk is written.
ACCEPTING = PREFIX + "accepting"
# Records for history (events as accepted with their fan-out, deliveries as they end or come
# back in flight, audit entries), for the history writer's consumer group; each entry leaves
# once PostgreSQL holds its record.
HISTORY = PREFIX + "history"
HISTORY_GROUP = "writers"
# Entries whose records PostgreSQL refused, held apart from HISTORY with why (the records stay in
# Redis): they go back to HISTORY now and then, to be tried again.
HISTORY_HELD = PREFIX + "history:held"
# Set (briefly) by a reader that must know the replicas hold what it read: a write after the
# reads, which WAIT can count (see store/replicas.py).
REPLICATED_MARK = PREFIX + "replicated"
# Counters every worker and API process adds to; /metrics reads them.
METRICS = PREFIX + "metrics"
# The arq queue of background jobs (a recovery's batches; retention is the workers'
# maintenance pass, not a job); job records use arq's key prefix.
QUEUE = PREFIX + "jobs"
# Workers alive, scored by when each last said so (unix ms); expires when none is left.
WORKERS = PREFIX + "workers"
# Ids of the webhooks that are disabled, for the gauge on /metrics.
DISABLED_WEBHOOKS = PREFIX + "whs:disabled"


def event(event_id: str) -> str:
    """An event: its exact payload and a few fields (hash)."""
    return f"{PREFIX}evt:{event_id}"


def event_by_upstream_id(tenant_id: str, digest: str) -> str:
    """The event an upstream id (hashed) of a tenant was first accepted as."""
    return f"{PREFIX}evtup:{tenant_id}:{digest}"


def event_plan(event_id: str) -> str:
    """The deliveries an event being accepted in chunks has still to write (JSON)."""
    return f"{PREFIX}evtplan:{event_id}"


def delivery(delivery_id: str) -> str:
    """A delivery's state (hash)."""
    return f"{PREFIX}dlv:{delivery_id}"


def attempts(delivery_id: str) -> str:
    """A delivery's attempt log (list of JSON)."""
    return f"{PREFIX}dlv:{delivery_id}{ATTEMPTS_SUFFIX}"


ATTEMPTS_SUFFIX = ":att"


def endpoint_queue(webhook_id: str) -> str:
    """One webhook's deliveries in flight: pending ones scored by when they are due; delivering
    ones by when their lease runs out less IN_FLIGHT, so that they come first and count the
    webhook's slots in use (one claimed while it was disabled or deleted holds no slot: by its
    lease alone); and `~waiting` at +inf while a claim waits for a slot (see prelude.lua).
    Leaves Redis with its last delivery, or with a `~waiting` left alone in it, which the next
    claim that looks at the webhook takes out."""
    return f"{PREFIX}queue:{webhook_id}"


# What an endpoint's queue takes off the lease of a delivery in flight (see `endpoint_queue`):
# 2^50 ms (35,000 years) puts every lease below every due time, and keeps each score an exact
# integer in a sorted set's double.
IN_FLIGHT = 2**50


def endpoints(tenant_id: str) -> str:
    """A tenant's webhooks with deliveries queued, scored by when to look at them next."""
    return f"{PREFIX}endpoints:{tenant_id}"


def tenant_slots(tenant_id: str) -> str:
    """Attempts in flight for one tenant (sorted set of delivery ids, scored by lease expiry,
    and `~waiting` at +inf while a claim waits for one: see prelude.lua)."""
    return f"{PREFIX}tslots:{tenant_id}"


def tenant_slow_slots(tenant_id: str) -> str:
    """Those of a tenant's attempts in flight to endpoints not known to answer quickly."""
    return f"{PREFIX}tslow:{tenant_id}"


def endpoints_slow(tenant_id: str) -> str:
    """A tenant's endpoints waiting for a slot of its slow share, scored by when each last got
    one (0: never)."""
    return f"{PREFIX}slowwait:{tenant_id}"


def slow_served(tenant_id: str) -> str:
    """When each of a tenant's endpoints last got a slot of its slow share (hash, Redis ms)."""
    return f"{PREFIX}slowserved:{tenant_id}"


def endpoint_quick(webhook_id: str) -> str:
    """Set while a webhook's attempts answer quickly; written only when that changes, so it
    lapses a day after it was set, and the next quick answer sets it again."""
    return f"{PREFIX}quick:{webhook_id}"


def endpoint_concurrency(webhook_id: str) -> str:
    """How many attempts a webhook may have in flight now, as its answers adapted it (unset:
    RELAY_ENDPOINT_CONCURRENCY; expires if it does not change for a day)."""
    return f"{PREFIX}concurrency:{webhook_id}"


def recovery(recovery_id: str) -> str:
    """A recovery's progress (hash)."""
    return f"{PREFIX}rcv:{recovery_id}"


def webhook_tests(webhook_id: str) -> str:
    """The results of test sends to one webhook (list of JSON, newest first)."""
    return f"{PREFIX}tests:{webhook_id}"


def endpoint_slots(webhook_id: str) -> str:
    """Where a relay before IN_FLIGHT counted the attempts in flight to one webhook (sorted set
    of delivery ids by lease expiry); read no more, and deleted with its webhook."""
    return f"{PREFIX}slots:{webhook_id}"


# Attempts started to one webhook within one second of Redis's clock: + "<webhook id>:<second>".
ENDPOINT_RATE_PREFIX = PREFIX + "rate:"


def endpoint_failing(webhook_id: str) -> str:
    """Since when (unix ms) a webhook has seen nothing but failures."""
    return f"{PREFIX}failing:{webhook_id}"


def auth_failures(address: str, minute: int) -> str:
    """Failed authentications from one client address within one wall-clock minute."""
    return f"{PREFIX}authfail:{address}:{minute}"


def token_rate(token_id: str, second: int) -> str:
    """API requests one token made within one wall-clock second."""
    return f"{PREFIX}apirate:{token_id}:{second}"


def test_send_rate(tenant_id: str, minute: int) -> str:
    """Test sends one tenant made within one wall-clock minute."""
    return f"{PREFIX}testrate:{tenant_id}:{minute}"
