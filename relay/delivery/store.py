"""Deliveries in Redis: the transitions of their state machine, and the reads of them.

Each transition of `model.Transition` is one Lua script in `scripts/` taking one JSON argument
with named fields. Every script compares and sets the state it expects, and reads the time from
Redis (`TIME`), so workers, operators and the API can race — and run on clocks that disagree —
without a delivery being sent twice by one cycle, skipped, or left in between.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from relay.delivery.archive import Archive
from relay.delivery.model import (
    Claim,
    Delivery,
    EventField,
    Field,
    Settled,
    Settlement,
    Status,
    Transition,
    Trigger,
    attempt_view,
)
from relay.errors import NotFound, Unavailable
from relay.store import codec, keys, lua
from relay.store.events import StoredEvent
from relay.store.gathering import Gathering
from relay.store.idempotency import COMMIT
from relay.store.replicas import Replicas
from relay.timefmt import from_timestamp, read_rfc3339
from relay.tokens import TokenChanged, TokenCheck

# Whose `scripts/` folder holds the transitions' Lua.
_SCRIPTS = "relay.delivery"


class _RedisClock:
    """Redis's clock as this process reads it between TIME calls: the last reading plus the
    time since on this process's monotonic clock. A reading is trusted for `FRESH_SECONDS`
    (two clocks drift apart by microseconds in that time; the reply's own latency makes the
    estimate a little late, never early), then a script reads TIME again."""

    FRESH_SECONDS = 1.0

    def __init__(self) -> None:
        self._ms = 0
        self._at = -math.inf

    def read(self, ms: int, at: float) -> None:
        """Redis said `ms` at monotonic `at` (taken before the call: the late side)."""
        self._ms, self._at = ms, at

    def now_ms(self) -> int | None:
        """Redis's clock now, or None when the last reading is too old to go by."""
        elapsed = time.monotonic() - self._at
        return self._ms + round(elapsed * 1000) if elapsed < self.FRESH_SECONDS else None


# The names every script spells as generated from model.py: statuses, the delivery's and the
# event's hash fields, attempt triggers.
NAMES = (
    lua.names("S", Status)
    + lua.names("F", Field)
    + lua.names("EVENT", EventField)
    + lua.names("TRIGGER", Trigger)
)


def script_text(name: str) -> str:
    """The Lua of one script, after the shared preludes (the generated names, the JSON argument,
    idempotency commits, Redis's clock as NOW where the script reads it, unless the caller passes
    its reading of it as `now_ms`: see `_RedisClock`); its `#!lua flags=…` line stays first."""
    return lua.text(
        name, NAMES, lua.source("prelude", _SCRIPTS), COMMIT, package=_SCRIPTS, now="A.now_ms"
    )


def _text(value: bytes | None) -> str | None:
    return value.decode() if value else None


def _ms_of(time_reply: tuple[int, int]) -> int:
    """Redis's TIME reply in milliseconds."""
    seconds, micros = time_reply
    return int(seconds) * 1000 + int(micros) // 1000


def _ms_to_rfc3339(value: bytes | None) -> str | None:
    return from_timestamp(int(value) / 1000) if value else None


def _delivery(fields: dict[bytes, bytes], now_ms: int | None = None) -> Delivery:
    status = Status(fields[b"status"].decode())
    if status is Status.DELIVERING and now_ms is not None:
        lease = fields.get(b"lease_until")
        if lease and int(lease) <= now_ms:
            # Its worker died or stalled: nothing is on its way, it waits for its next attempt
            # (which cancel and retry see the same way).
            status = Status.PENDING
            fields = {**fields, b"next_attempt_at": lease}
    code = fields.get(b"last_status_code")
    return Delivery(
        id=fields[b"id"].decode(),
        event_id=fields[b"event_id"].decode(),
        webhook_id=fields[b"webhook_id"].decode(),
        tenant_id=fields[b"tenant_id"].decode(),
        event_type=fields[b"event_type"].decode(),
        status=status,
        attempt_count=int(fields[b"attempt_count"]),
        cycle_start=int(fields[b"cycle_start"]),
        next_attempt_at=_ms_to_rfc3339(fields.get(b"next_attempt_at"))
        if status is Status.PENDING
        else None,
        last_status_code=int(code) if code else None,
        last_error=_text(fields.get(b"last_error")),
        created_at=fields[b"created_at"].decode(),
        updated_at=_ms_to_rfc3339(fields.get(b"updated_ms")) or fields[b"created_at"].decode(),
        delivered_at=_ms_to_rfc3339(fields.get(b"delivered_ms")),
    )


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An accepted event as it will be stored."""

    id: str
    type: str
    tenant_id: str
    created_at: str
    created_ms: int
    upstream_id: str | None
    payload: bytes
    traceparent: str | None = None  # of the ingest span, so attempts join its trace
    request_id: str | None = None  # of the request that posted it, for the attempts' log lines
    # The version of the webhooks (WEBHOOKS_VERSION) its fan-out was planned from, which its
    # write checks; None writes it whatever they are now.
    fan_out_version: str | None = None

    @property
    def upstream_key(self) -> str | None:
        """The key that remembers this event's upstream id, if it has one."""
        return _upstream_key(self.tenant_id, self.upstream_id)


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """A delivery to create with its event."""

    id: str
    webhook_id: str


# One event of `DeliveryStore.accept_many`: the event, its deliveries, and its commit (see
# `accept`).
EventWrite = tuple[NewEvent, Sequence[PlannedDelivery], dict[str, str] | None]


@dataclass(frozen=True, slots=True)
class Begun:
    """What the first step of an accept did."""

    event_id: str  # the new event, or for a repeated upstream id the first one
    repeat: bool  # the upstream id was seen before: nothing new was written
    unfinished: bool  # the event has deliveries still to write (`finish_accept`)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What an event accepted in chunks has still to write, stored with it so that anyone can
    finish it: the fields its deliveries copy, and the deliveries."""

    id: str
    type: str
    tenant_id: str
    created_at: str
    created_ms: int
    traceparent: str | None
    deliveries: list[list[str]]  # [delivery id, webhook id] still to write
    upstream_key: str | None = None
    request_id: str | None = None

    @classmethod
    def of(cls, event: NewEvent, deliveries: list[list[str]]) -> _Plan:
        """The plan to store with `event`."""
        return cls(
            event.id,
            event.type,
            event.tenant_id,
            event.created_at,
            event.created_ms,
            event.traceparent,
            deliveries,
            event.upstream_key,
            event.request_id,
        )

    @classmethod
    def load(cls, raw: bytes) -> _Plan:
        """A plan as stored."""
        return cls(**codec.loads(raw))


@dataclass(frozen=True, slots=True)
class Poll:
    """What one claim call took, and how long until the next delivery is due (None: nothing)."""

    claims: list[Claim]
    next_due_in_ms: int | None
    taken_over: int = 0  # leases that had run out (their worker died or stalled)
    missing: tuple[str, ...] = ()  # due, but their record was gone: dropped from their queue


class KnownPayloads:
    """The large payloads this process's claims were sent lately, so that a claim of more
    deliveries of one of those events is not sent it again: a wide fan-out is claimed over many
    calls when endpoint and tenant limits bind, and each call would carry the payload anew.
    Bounded in bytes and in entries (a claim's argument lists them); least recently used go."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def snapshot(self) -> dict[str, bytes]:
        """The payloads kept now, by event id (a claim names them, and reads them after)."""
        return dict(self._kept)

    def keep(self, event_id: str, payload: bytes | None) -> None:
        if payload is None or len(payload) < _KNOWN_PAYLOAD_MIN_BYTES:
            return
        self._kept[event_id] = payload
        self._bytes += len(payload)
        while self._bytes > _KNOWN_PAYLOAD_BYTES or len(self._kept) > _KNOWN_PAYLOADS:
            self._bytes -= len(self._kept.popitem(last=False)[1])

    def used(self, event_id: str) -> None:
        if event_id in self._kept:
            self._kept.move_to_end(event_id)


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which deliveries a list shows: one webhook's, one tenant's, or all."""

    webhook_id: str | None = None
    tenant_id: str | None = None
    status: Status | None = None
    event_type: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


# Most deliveries one accept call writes; a wider fan-out is written in calls of this size. Each
# costs ~60 µs of Redis time inside the script (HSET, EXPIRE, four ZADDs, SADD) on a shared
# 2-core machine: ~12 ms a call there, and the longest `make fanout` saw was 20-70 ms on the busy
# machine, well under the 1.5 s after which every caller gives up.
FANOUT_CHUNK = 200
# Abandoned accepts one maintenance pass finishes at most (each may take many calls).
_ABANDONED_PER_PASS = 20
# Deliveries one claim call may look at: claimed, rescheduled or dropped, each of them.
_CLAIM_SCAN = 200
# Bytes of event payloads one call returns: a claim stops claiming deliveries of further events
# there, and the history writer reads payloads in calls of this much (one larger payload goes
# alone). Redis builds a reply while every other client waits, at about 2 ms a MiB on a shared
# 2-core machine.
PAYLOAD_BYTES_PER_CALL = 4 * 1_048_576
# An event's payload up to this size is copied into its history stream entry; a larger one is
# read from the event (which stays in Redis until history has it). The writer reads up to a
# thousand entries in one call, so entries must stay small. An event with one delivery also
# gives that delivery a copy of it: the claim reads it with the delivery, one read fewer.
INLINE_PAYLOAD_BYTES = 4096
# Payloads a process keeps of those its claims were sent (see KnownPayloads): only those of at
# least this size, at most this many, and this many bytes in all.
_KNOWN_PAYLOAD_MIN_BYTES = 16_384
_KNOWN_PAYLOADS = 64
_KNOWN_PAYLOAD_BYTES = 16 * 1_048_576
# Tenants, and endpoints of one tenant, one claim call reads at most: with the scan, they bound
# what one call costs whatever the number of tenants and endpoints.
_CLAIM_WAKES = 100
# How long an endpoint counts as quick after a quick answer set it (set only when that changes).
_QUICK_TTL_SECONDS = 86_400
# How long an endpoint keeps the concurrency its answers adapted it to while nothing changes it:
# then it starts again from RELAY_ENDPOINT_CONCURRENCY.
_CONCURRENCY_TTL_SECONDS = 86_400
# Entries one call moves out of the layout before endpoint queues.
_REQUEUE_BATCH = 500
# A tenant concurrency that never binds, for callers that set none.
_UNBOUNDED = 2**31
# What settle answers for a delivery no longer in Redis: history has to be read for it.
_GONE = -1
# Settles one call makes at most (those of a worker's attempts that ended together): each is
# some tens of µs of Redis time, so a call holds Redis for a millisecond or two at most.
_SETTLES_PER_CALL = 32
# How long Redis still remembers an event's upstream id once history has the event: covers an
# accept that looked in history just before the event was written there. After it, the API
# finds the id in history (`EventStore.first_with_upstream_id`); Redis does not grow with it.
UPSTREAM_GRACE_SECONDS = 60
# Records waiting for the history writer past which new events are refused (503): PostgreSQL
# away or too slow must not grow Redis until it runs out of memory. Each waiting record holds
# its delivery (~1-3 KB with attempts and payload share) in Redis: 200,000 is ~0.5 GB.
HISTORY_BACKLOG = 200_000
# How often an API process measures that backlog (XLEN) while it is under the bound: at most
# one second of ingest passes the bound before the refusals start, and an accept costs one
# command fewer. Past the bound every accept measures it, so ingest resumes as soon as it can.
BACKLOG_CHECK_SECONDS = 1.0


# The keys of the delivery schedule, as the scripts that change it take them: prefixes to which
# a script adds the webhook or tenant id, and the two tenant sets.
_SCHEDULE_KEYS = {
    "queue": keys.endpoint_queue(""),
    "tenant_slots": keys.tenant_slots(""),
    "tenant_slow_slots": keys.tenant_slow_slots(""),
    "endpoints": keys.endpoints(""),
    "endpoints_slow": keys.endpoints_slow(""),
    "slow_served": keys.slow_served(""),
    "tenants": keys.TENANTS,
    "wake": keys.WAKE,
}


# The keys every settle call takes (each settle names its delivery's own besides). History's
# stream first: the first two keys say which script a logged call is.
_SETTLE_KEYS = {"history": keys.HISTORY, **_SCHEDULE_KEYS}

# The keys every call of the accept script takes (each event names its own besides).
_ACCEPT_KEYS = {
    "queue": keys.endpoint_queue(""),
    "tenants": keys.TENANTS,
    "wake": keys.WAKE,
    "accepting": keys.ACCEPTING,
    "history": keys.HISTORY,
    "webhooks_version": keys.WEBHOOKS_VERSION,
}


class StaleFanOut(Exception):
    """The webhooks changed since an event's fan-out was planned (its `fan_out_version`): it
    was not written, and is to be planned again from them as they are now."""


# Why the first step of an event wrote nothing.
Refused = Unavailable | StaleFanOut | TokenChanged


class DeliveryStore:
    """Persistence and transitions of deliveries."""

    def __init__(
        self,
        redis: Redis,
        retention_seconds: int,
        disable_after_seconds: int,
        archive: Archive,
        fanout_chunk: int = FANOUT_CHUNK,
        history_backlog: int = HISTORY_BACKLOG,
        backlog_check_seconds: float = BACKLOG_CHECK_SECONDS,
        replicas: Replicas | None = None,
        payload_bytes_per_call: int = PAYLOAD_BYTES_PER_CALL,
    ) -> None:
        self._redis = redis
        self._replicas = replicas or Replicas(redis, 0)
        self._payload_bytes = payload_bytes_per_call
        self._known = KnownPayloads()
        self._archive = archive
        self._history_backlog = history_backlog
        self._backlog_check_seconds = backlog_check_seconds
        self._backlog_checked_at = -math.inf  # monotonic; -inf while over the bound
        self._chunk = fanout_chunk
        self._retention = retention_seconds
        # A failure streak is forgotten after twice the disable threshold without failures.
        self._failing_ttl_ms = disable_after_seconds * 2000
        self._clock = _RedisClock()
        # The release of what history holds is the hand-over's (relay.delivery.handover).
        self._scripts: dict[Transition, AsyncScript] = {
            t: redis.register_script(script_text(t.value))
            for t in Transition
            if t is not Transition.RELEASE
        }
        self._requeue = redis.register_script(script_text("requeue"))
        # Single-event accepts share a call with those made meanwhile under the same token
        # record (None: none): see `_gathered`.
        self._accepts: Gathering[
            tuple[str, str] | None, tuple[EventWrite, TokenCheck | None], Begun | Refused
        ] = Gathering(self._write_gathered)
        # Settles share a call with those made meanwhile: see `settle`.
        self._settles: Gathering[None, dict[str, Any], list[Any]] = Gathering(self._settle_many)

    async def _run(
        self,
        transition: Transition | AsyncScript,
        arg: dict[str, Any],
        *raw: bytes,
        client: Redis | None = None,
    ) -> Any:
        """Run a script on `arg` (its JSON argument) and any `raw` arguments after it (on
        `client`'s connection, if given)."""
        script = self._scripts[transition] if isinstance(transition, Transition) else transition
        return await script(keys=[], args=[codec.dumps(arg), *raw], client=client)

    async def accept(
        self,
        event: NewEvent,
        deliveries: Sequence[PlannedDelivery],
        commit: dict[str, str] | None = None,
        token: TokenCheck | None = None,
    ) -> str | None:
        """Write the event and its deliveries, due now, in calls of at most the store's chunk;
        `commit` (the request's answer, as `Commit.lua` gives it) goes with the first call.
        With `token`, the first call writes only while the token's record is as checked (else
        TokenChanged, nothing written), and confirms it.

        Returns None once everything is written, or the id of the event first accepted under
        the same upstream id (then nothing new is written, only what that event still lacked).
        Raises StaleFanOut, writing nothing, when the webhooks changed since the event's
        `fan_out_version`. With replicas to wait for, returns only once they hold it (the first
        event too, for a repeat), else raises NotReplicated.
        """
        if not self._replicas.required and len(deliveries) <= self._chunk:
            begun = await self._gathered((event, deliveries, commit), token)
            if begun.unfinished:  # the first event of its upstream id, cut off in its steps
                await self.finish_accept(begun.event_id)
            return begun.event_id if begun.repeat else None
        async with self._replicas.connection() as conn:
            begun = await self.begin_accept(event, deliveries, commit, conn, token)
            if begun.unfinished:
                await self.finish_accept(begun.event_id, conn)
            await self._replicas.confirm(conn)
        return begun.event_id if begun.repeat else None

    async def _gathered(self, write: EventWrite, token: TokenCheck | None) -> Begun:
        """The first (and only) step of a small event's accept, written by one script call
        with the others made meanwhile: under concurrent requests a call, its round trip and
        its client-side cost are shared. Each event is still its own, all or nothing."""
        key = None if token is None else (token.token_hash, token.fingerprint)
        begun = await self._accepts(key, (write, token))
        if not isinstance(begun, Begun):
            raise begun
        return begun

    async def _write_gathered(
        self,
        key: tuple[str, str] | None,
        gathered: list[tuple[EventWrite, TokenCheck | None]],
    ) -> AsyncIterator[Begun | Refused]:
        # One token record for all of them (their key): the first one's check stands for all.
        token = gathered[0][1]
        start = 0
        for group in self._grouped([write for write, _ in gathered]):
            arg, raw, read = self._first_steps(group, token)
            for n, result in enumerate(read(await self._run(Transition.ACCEPT, arg, *raw)), start):
                check = gathered[n][1]
                if check is not None and not isinstance(result, TokenChanged):
                    check.confirmed = True
                yield result
            start += len(group)

    async def accept_many(
        self, batch: Sequence[EventWrite], token: TokenCheck | None = None
    ) -> list[str | Unavailable | StaleFanOut | TokenChanged | None]:
        """Write several events, each with its deliveries and commit, as `accept` writes one.

        Their first steps go in groups of at most the store's chunk of deliveries and a call's
        worth of payload, one script call a group: a batch of small events is one call, and no
        call holds Redis longer than one chunk would. Per event: None,
        the id of the first event of its upstream id, Unavailable when the history backlog
        refused it, or StaleFanOut when its webhooks changed since it was planned, or
        TokenChanged when `token`'s record was no longer as checked (none of those three wrote
        anything).
        """
        outcomes: list[str | Unavailable | StaleFanOut | TokenChanged | None] = []
        unfinished: list[str] = []
        for group in self._grouped(batch):
            arg, raw, read = self._first_steps(group, token)
            for begun in read(await self._run(Transition.ACCEPT, arg, *raw)):
                if isinstance(begun, Begun):
                    if begun.unfinished:
                        unfinished.append(begun.event_id)
                    outcomes.append(begun.event_id if begun.repeat else None)
                else:
                    outcomes.append(begun)
        for event_id in unfinished:
            await self.finish_accept(event_id)
        async with self._replicas.connection() as conn:
            # The writes went on pooled connections: a write of this one after them is
            # replicated after them, and the wait for it covers them all.
            await self._replicas.confirm_read(conn)
        return outcomes

    def _grouped(self, batch: Sequence[EventWrite]) -> list[list[EventWrite]]:
        """`batch` in groups of at most a chunk of deliveries (an event without any counting
        as one) and a call's worth of payload bytes; an event past either goes alone."""
        groups: list[list[EventWrite]] = []
        deliveries = size = 0
        for item in batch:
            event, planned, _ = item
            width = max(1, min(len(planned), self._chunk))
            if (
                not groups
                or deliveries + width > self._chunk
                or size + len(event.payload) > self._payload_bytes
            ):
                groups.append([])
                deliveries = size = 0
            groups[-1].append(item)
            deliveries += width
            size += len(event.payload)
        return groups

    async def begin_accept(
        self,
        event: NewEvent,
        deliveries: Sequence[PlannedDelivery],
        commit: dict[str, str] | None = None,
        client: Redis | None = None,
        token: TokenCheck | None = None,
    ) -> Begun:
        """The first step of an accept: all of it when the fan-out fits one chunk; otherwise
        the event, its first chunk, and the rest as the event's stored plan. Raises what
        refused it (Unavailable, StaleFanOut, TokenChanged), having written nothing."""
        arg, raw, read = self._first_steps([(event, deliveries, commit)], token)
        (begun,) = read(await self._run(Transition.ACCEPT, arg, *raw, client=client))
        if not isinstance(begun, Begun):
            raise begun
        return begun

    def _first_steps(
        self, group: Sequence[EventWrite], token: TokenCheck | None
    ) -> tuple[dict[str, Any], list[bytes], Callable[[Any], list[Begun | Refused]]]:
        """The arguments of one call making the first step of each event of `group` (while
        `token`'s record is as checked, if given), and what reads its reply (or error) into
        what came of each."""
        checking = time.monotonic() - self._backlog_checked_at >= self._backlog_check_seconds
        taken_at = time.monotonic()
        estimate = self._clock.now_ms()
        events: list[dict[str, Any]] = []
        raw: list[bytes] = []
        for event, deliveries, commit in group:
            whole = len(deliveries) <= self._chunk
            step = self._event_arg(event, deliveries[: self._chunk])
            step["step"] = "whole" if whole else "begin"
            step["upstream_id"] = event.upstream_id or ""
            step["commit"] = commit
            step["live"] = len(deliveries)
            step["fan_out_version"] = event.fan_out_version
            events.append(step)
            rest = [[d.id, d.webhook_id] for d in deliveries[self._chunk :]]
            raw += (
                codec.dumps([d.id for d in deliveries]),
                b"" if whole else codec.dumps(_Plan.of(event, rest)),
                codec.dumps(
                    {
                        "tenant_id": event.tenant_id,
                        "type": event.type,
                        "created_at": event.created_at,
                        "upstream_id": event.upstream_id,
                        "deliveries": [[d.id, d.webhook_id] for d in deliveries],
                    }
                ),
                event.payload,
            )
        arg = {
            "keys": _ACCEPT_KEYS
            if token is None
            else {**_ACCEPT_KEYS, "token": keys.token_by_hash(token.token_hash)},
            "token_fingerprint": None if token is None else token.fingerprint,
            "events": events,
            "ttl": self._retention,
            "inline_payload_bytes": INLINE_PAYLOAD_BYTES,
            "history_max": self._history_backlog if checking else None,
            "now_ms": estimate,
        }

        def read(reply: Any) -> list[Begun | Refused]:
            if isinstance(reply, Exception):
                raise reply
            now_ms, *results = reply
            if estimate is None:
                self._clock.read(int(now_ms), taken_at)
            begun = [self._begun(item, result) for item, result in zip(group, results, strict=True)]
            if token is not None and not isinstance(begun[0], TokenChanged):
                token.confirmed = True
            if any(isinstance(b, Unavailable) for b in begun):
                self._backlog_checked_at = -math.inf
            elif checking:
                self._backlog_checked_at = time.monotonic()
            return begun

        return arg, raw, read

    def _begun(self, item: EventWrite, result: Any) -> Begun | Refused:
        """What the first step of `item` did, from its result in the call's reply."""
        event, deliveries, _ = item
        if isinstance(result, list):
            return Begun(result[0].decode(), repeat=True, unfinished=bool(result[1]))
        if result == b"stale":
            return StaleFanOut()
        if result == b"token":
            return TokenChanged()
        if result == b"backlog":
            return Unavailable(
                f"More than {self._history_backlog} records are waiting to be written to "
                "PostgreSQL; relay takes new events again once the history writer catches up."
            )
        return Begun(event.id, repeat=False, unfinished=len(deliveries) > self._chunk)

    async def finish_accept(self, event_id: str, client: Redis | None = None) -> None:
        """Write what an event being accepted still lacks, from its stored plan, chunk by chunk
        (on `client`'s connection, if given).

        Safe to repeat and to run alongside another writer: a delivery written before is skipped.
        """
        raw = await (client or self._redis).get(keys.event_plan(event_id))
        if raw is not None:
            plan = _Plan.load(raw)
            todo = [PlannedDelivery(d, w) for d, w in plan.deliveries]
            for start in range(0, len(todo), self._chunk):
                chunk = self._event_arg(plan, todo[start : start + self._chunk])
                await self._run(
                    Transition.ACCEPT,
                    {"step": "chunk", "keys": _ACCEPT_KEYS, "event": chunk},
                    client=client,
                )
        await self._run(
            Transition.ACCEPT,
            {
                "step": "finish",
                "keys": _ACCEPT_KEYS,
                "event": {"id": event_id, "keys": {"plan": keys.event_plan(event_id)}},
            },
            client=client,
        )

    async def requeue_old_layout(self) -> int:
        """Move deliveries left in the layout before endpoint queues (by an older relay, before
        an upgrade or during one) into their endpoints' queues; how many entries were moved.
        Safe to repeat, and to run in several workers at once."""
        arg = {
            "keys": {
                **_SCHEDULE_KEYS,
                "delivery": keys.delivery(""),
                "old_due": keys.OLD_DUE,
                "old_wakes": keys.OLD_WAKES,
                "old_parked": keys.OLD_PARKED_PREFIX,
            },
            "count": _REQUEUE_BATCH,
        }
        total = 0
        while True:
            moved, left = await self._run(self._requeue, arg)
            total += int(moved)
            if not int(left):
                return total

    async def finish_abandoned(self, idle_ms: int) -> int:
        """Finish the accepts that made no progress for `idle_ms` (their writer died); how many."""
        stale = await self._redis.zrangebyscore(
            keys.ACCEPTING,
            "-inf",
            await self.redis_now_ms() - idle_ms,
            start=0,
            num=_ABANDONED_PER_PASS,
        )
        for event_id in stale:
            await self.finish_accept(event_id.decode())
        return len(stale)

    @staticmethod
    def _event_arg(
        event: NewEvent | _Plan, deliveries: Sequence[PlannedDelivery]
    ) -> dict[str, Any]:
        """An event as a step of its accept that writes `deliveries` of it takes it."""
        return {
            "keys": {
                "event": keys.event(event.id),
                "plan": keys.event_plan(event.id),
                "endpoints": keys.endpoints(event.tenant_id),
            },
            "id": event.id,
            "type": event.type,
            "tenant_id": event.tenant_id,
            "created_at": event.created_at,
            "created_ms": event.created_ms,
            "traceparent": event.traceparent or "",
            "request_id": event.request_id or "",
            "upstream_key": event.upstream_key,
            "deliveries": [
                {"id": d.id, "webhook_id": d.webhook_id, "key": keys.delivery(d.id)}
                for d in deliveries
            ],
        }

    async def get(self, delivery_id: str) -> Delivery:
        """A delivery by id, in flight or in history, or NotFound."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.delivery(delivery_id))
            pipe.time()
            fields, now = await pipe.execute()
        if fields:
            return _delivery(fields, _ms_of(now))
        archived = await self._archive.delivery(delivery_id)
        if archived is None:
            raise NotFound("No such delivery.")
        return archived

    async def _live(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for delivery_id in delivery_ids:
                pipe.hgetall(keys.delivery(delivery_id))
            now, *rows = await pipe.execute()
        return [_delivery(r, _ms_of(now)) for r in rows if r]

    async def many(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        """Deliveries by id, in order, from Redis or history, skipping any that are gone."""
        found = {d.id: d for d in await self._live(delivery_ids)}
        missing = [i for i in delivery_ids if i not in found]
        if missing:
            found.update((d.id, d) for d in await self._archive.deliveries(missing))
        return [found[i] for i in delivery_ids if i in found]

    async def attempts(self, delivery: Delivery) -> list[dict[str, object]]:
        """The attempt log, oldest first: what history holds, then what Redis still holds (the
        list, and the last attempt of one that ended, kept on the delivery until history has
        it)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.attempts(delivery.id), 0, -1)
            pipe.hget(keys.delivery(delivery.id), "last_attempt")
            rows, last = await pipe.execute()
        live = [attempt_view(codec.loads(r)) for r in [*rows, *([last] if last else [])]]
        # A delivery that never left Redis has nothing in history; one that came back from
        # history for a retry has its earlier cycles there.
        if live and live[0]["number"] == 1:
            return live
        archived = await self._archive.attempts(delivery)
        numbers = {a["number"] for a in archived}
        return archived + [a for a in live if a["number"] not in numbers]

    async def claim(
        self,
        owner: str,
        limit: int,
        lease_ms: int,
        concurrency: int,
        tenant_concurrency: int | None = None,
        concurrency_max: int | None = None,
    ) -> Poll:
        """Lease up to `limit` due deliveries to `owner`, in turns between tenants and their
        endpoints, none over its endpoint's concurrency or rate nor its tenant's
        `tenant_concurrency` in flight (unbounded if None); endpoints not known to answer
        quickly share half of that (see `Settlement.quick`). An endpoint's concurrency is the
        one its answers adapted it to (see `Settlement.concurrency`), else `concurrency`, and
        at most `concurrency_max` (None: `concurrency`, fixed).

        Fewer when their events' payloads would pass the store's claim bound: the rest stays
        due now (`next_due_in_ms` 0).
        """
        taken_at = time.monotonic()
        estimate = self._clock.now_ms()
        tenant = tenant_concurrency or _UNBOUNDED
        known = self._known.snapshot()
        now, wait, rows, taken_over, flat_payloads, missing = await self._run(
            Transition.CLAIM,
            {
                # The schedule's keys last: the first two say which script a logged call is.
                "keys": {
                    "delivery": keys.delivery(""),
                    "webhook": keys.webhook(""),
                    "event": keys.event(""),
                    "rate": keys.ENDPOINT_RATE_PREFIX,
                    "failing": keys.endpoint_failing(""),
                    "quick": keys.endpoint_quick(""),
                    "concurrency": keys.endpoint_concurrency(""),
                    **_SCHEDULE_KEYS,
                },
                "owner": owner,
                "limit": limit,
                "scan": max(limit, _CLAIM_SCAN),
                "wakes": _CLAIM_WAKES,
                "lease_ms": lease_ms,
                "concurrency": concurrency,
                "concurrency_max": concurrency_max or concurrency,
                "tenant_concurrency": tenant,
                "slow_concurrency": tenant - tenant // 2,
                "payload_bytes": self._payload_bytes,
                "known": list(known),
                "in_flight": keys.IN_FLIGHT,
                "now_ms": estimate,
            },
        )
        if estimate is None:
            self._clock.read(int(now), taken_at)
        # One bytes object per event, shared by every claim of its deliveries.
        payloads: dict[str, bytes | None] = dict(known)
        for i in range(0, len(flat_payloads), 2):
            event_id, payload = flat_payloads[i].decode(), flat_payloads[i + 1] or None
            payloads[event_id] = payload
            self._known.keep(event_id, payload)
        for event_id in {r[5].decode() for r in rows}:
            self._known.used(event_id)
        claims = [
            Claim(
                delivery_id=r[0].decode(),
                attempt=int(r[1]),
                token=r[2].decode(),
                cycle_start=int(r[3]),
                trigger=Trigger.MANUAL if int(r[11]) else Trigger.SCHEDULED,
                webhook_id=r[4].decode(),
                event_id=r[5].decode(),
                webhook_record=r[6] or None,
                payload=payloads[r[5].decode()],
                now_ms=int(now),
                taken_at=taken_at,
                traceparent=r[7].decode() or None,
                endpoint_failing=bool(r[8]),
                endpoint_quick=bool(r[9]),
                request_id=r[10].decode() or None,
                holds_slot=bool(r[12]),
                endpoint_concurrency=int(r[13]),
                endpoint_full=bool(r[14]),
            )
            for r in rows
        ]
        return Poll(
            claims,
            int(wait) if int(wait) >= 0 else None,
            int(taken_over),
            tuple(m.decode() for m in missing),
        )

    async def extend(self, claims: Sequence[Claim], lease_ms: int) -> list[Claim]:
        """Extend the leases of `claims` from the claim's to the attempt's, `lease_ms` from now,
        in one call; the claims this worker still holds (one whose lease lapsed is not)."""
        if not claims:
            return []
        held = await self._run(
            Transition.EXTEND,
            {
                "keys": {"delivery": keys.delivery(""), **_SCHEDULE_KEYS},
                "claims": [[c.delivery_id, c.token, int(c.holds_slot)] for c in claims],
                "lease_ms": lease_ms,
                "in_flight": keys.IN_FLIGHT,
                "now_ms": self._clock.now_ms(),
            },
        )
        return [c for c, started in zip(claims, held, strict=True) if started]

    async def settle(self, claim: Claim, result: Settlement) -> Settled:
        """Record an attempt and, if `claim` still holds the lease, the next state.

        An attempt made after the lease went elsewhere is logged all the same, and a 2xx ends
        the delivery as delivered: the receiver has it. A delivery that has left Redis meanwhile
        gets the attempt in history, read back for it. The settles of attempts that end at
        about the same moment go to Redis in one call, each settled as if alone.
        """
        elapsed_ms = round((time.monotonic() - claim.taken_at) * 1000)
        arg: dict[str, Any] = {
            "keys": {
                "delivery": keys.delivery(claim.delivery_id),
                "attempts": keys.attempts(claim.delivery_id),
                "event": keys.event(claim.event_id),
                "failing": keys.endpoint_failing(claim.webhook_id),
                "quick": keys.endpoint_quick(claim.webhook_id),
                "concurrency": keys.endpoint_concurrency(claim.webhook_id),
            },
            "id": claim.delivery_id,
            "attempt": claim.attempt,
            "token": claim.token,
            "manual": claim.trigger is Trigger.MANUAL,
            # orjson encodes the dataclass itself, a tenth of the time `asdict` takes first.
            "record": codec.dumps(result.attempt).decode() if result.attempt else "",
            "status": result.status.value,
            "delay_ms": result.delay_ms,
            "last_status_code": result.last_status_code or "",
            "last_error": result.last_error or "",
            "endpoint": {True: "ok", False: "fail", None: ""}[result.endpoint_ok],
            "failing_ttl_ms": self._failing_ttl_ms,
            "failing": claim.endpoint_failing,
            "now_ms": claim.now_ms + elapsed_ms,
            "quick": result.quick,
            "was_quick": claim.endpoint_quick,
            "holds_slot": claim.holds_slot,
            "quick_ttl": _QUICK_TTL_SECONDS,
            "in_flight": keys.IN_FLIGHT,
        }
        if result.concurrency is not None and result.concurrency != claim.endpoint_concurrency:
            arg["concurrency"] = {
                "from": claim.endpoint_concurrency,
                "to": result.concurrency,
                "ttl": _CONCURRENCY_TTL_SECONDS,
            }
        reply = await self._settles(None, arg)
        if int(reply[0]) == _GONE and result.attempt is not None:
            archived = await self._archive.delivery(claim.delivery_id)
            if archived is not None:
                arg["archived"] = _hash_of(archived)
                [reply] = await self._run(Transition.SETTLE, {"keys": _SETTLE_KEYS, "each": [arg]})
        failing = reply[1]
        return Settled(int(reply[0]) == 1, int(failing) if failing else None, int(reply[2]))

    async def _settle_many(self, _: None, args: list[dict[str, Any]]) -> AsyncIterator[list[Any]]:
        for start in range(0, len(args), _SETTLES_PER_CALL):
            each = args[start : start + _SETTLES_PER_CALL]
            for reply in await self._run(Transition.SETTLE, {"keys": _SETTLE_KEYS, "each": each}):
                yield reply

    async def restart(
        self, delivery_ids: Sequence[str], allowed: frozenset[Status]
    ) -> tuple[int, list[str]]:
        """Start a new cycle now for each finished id whose status allows; a pending one gets
        a manual attempt now, outside its schedule (or, due already, is made due now).

        Returns Redis's now (ms) and per id "ok" (due now), "manual", "missing" or the status
        that refused it.
        """
        if not delivery_ids:
            return 0, []
        now, outcomes = await self._restart(delivery_ids, allowed)
        # One that left Redis for history between the look and the script: once more, now
        # that history has it.
        moved = [i for i, o in zip(delivery_ids, outcomes, strict=True) if o == "missing"]
        if moved:
            again = dict(zip(moved, (await self._restart(moved, allowed))[1], strict=True))
            outcomes = [again.get(i, o) for i, o in zip(delivery_ids, outcomes, strict=True)]
        return now, outcomes

    async def _restart(
        self, delivery_ids: Sequence[str], allowed: frozenset[Status]
    ) -> tuple[int, list[str]]:
        revive, events = await self._revivals(delivery_ids, allowed)
        now, outcomes = 0, []
        for chunk in self._restart_chunks(delivery_ids, revive, events):
            back = sorted({revive[i]["event_id"] for i in chunk if "event_id" in revive.get(i, {})})
            came = [event for e in back if (event := events[e]) is not None]
            # Each event that comes back from history comes once, with its payload as an
            # argument of its own (ARGV[2] on), however many of its deliveries come with it.
            reply_now, replies = await self._run(
                Transition.RESTART,
                {
                    "keys": {
                        **_SCHEDULE_KEYS,
                        "delivery": keys.delivery(""),
                        "attempts_suffix": keys.ATTEMPTS_SUFFIX,
                        "event": keys.event(""),
                        "history": keys.HISTORY,
                    },
                    "ids": chunk,
                    "revive": {i: revive[i] for i in chunk if i in revive},
                    "events": {
                        event.id: {"fields": _flat(_event_hash(event)), "payload": n + 2}
                        for n, event in enumerate(came)
                    },
                    "allowed": sorted(s.value for s in allowed),
                },
                *(event.payload for event in came),
            )
            now = now or int(reply_now)
            outcomes += [r.decode() for r in replies]
        return now, outcomes

    def _restart_chunks(
        self,
        delivery_ids: Sequence[str],
        revive: dict[str, dict[str, Any]],
        events: dict[str, StoredEvent | None],
    ) -> list[list[str]]:
        """`delivery_ids` in order, in calls whose events coming back from history carry at
        most the store's payload bytes (one larger alone): each such call holds Redis for
        everyone else while it copies them."""
        chunks: list[list[str]] = [[]]
        carried: set[str] = set()
        total = 0
        for delivery_id in delivery_ids:
            event_id = revive.get(delivery_id, {}).get("event_id")
            event = events.get(event_id) if event_id else None
            size = len(event.payload) if event and event_id not in carried else 0
            if chunks[-1] and size and total + size > self._payload_bytes:
                chunks.append([])
                carried, total = set(), 0
            if size:
                carried.add(str(event_id))
                total += size
            chunks[-1].append(delivery_id)
        return chunks if chunks[-1] else []

    async def _revivals(
        self, delivery_ids: Sequence[str], allowed: frozenset[Status]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, StoredEvent | None]]:
        """For the deliveries that left Redis for history: what restart writes back, and their
        events as history has them (None when history has not written one yet: it is then
        still in Redis)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.exists(keys.delivery(delivery_id))
            present = await pipe.execute()
        gone = [i for i, here in zip(delivery_ids, present, strict=True) if not here]
        revive: dict[str, dict[str, Any]] = {}
        events: dict[str, StoredEvent | None] = {}  # an event's deliveries share one look-up
        for delivery in await self._archive.deliveries(gone) if gone else []:
            revive[delivery.id] = {"status": delivery.status.value}
            if delivery.status not in allowed:
                continue
            if delivery.event_id not in events:
                events[delivery.event_id] = await self._archive.event(delivery.event_id)
            revive[delivery.id].update(
                delivery=_flat(_hash_of(delivery)), event_id=delivery.event_id
            )
        return revive, events

    async def cancel(self, delivery_id: str) -> str:
        """Cancel a pending delivery; "ok", or the status that prevented it ("missing" if gone)."""
        reply = await self._run(
            Transition.CANCEL,
            {
                "keys": {
                    **_SCHEDULE_KEYS,
                    "delivery": keys.delivery(delivery_id),
                    "attempts": keys.attempts(delivery_id),
                    "history": keys.HISTORY,
                },
                "id": delivery_id,
            },
        )
        return str(reply.decode())

    async def wait_for_work(self, timeout: float) -> None:
        """Block until a script says something became due now, or `timeout` seconds pass."""
        # Redis takes fractions of a second; redis-py's annotation says int.
        await self._redis.blpop([keys.WAKE], timeout=timeout)  # type: ignore[misc, arg-type]

    async def redis_now_ms(self) -> int:
        """Redis's clock, which every due time and lease is measured by."""
        return _ms_of(await self._redis.time())

    async def page(
        self, query: DeliveryFilter, limit: int, cursor: str | None
    ) -> tuple[list[Delivery], str | None]:
        """Matching deliveries newest first, as history lists them (from when the writer has
        their event, well under a second after it was accepted), each shown as Redis has it
        while it is there: in flight, or ended and not yet written."""
        listed, next_cursor = await self._archive.delivery_page(query, limit, cursor)
        now = {d.id: d for d in await self._live([d.id for d in listed])} if listed else {}
        shown = [now.get(d.id, d) for d in listed]
        # History keeps one in flight as pending; Redis says which state it is in now.
        if query.status is not None:
            shown = [d for d in shown if d.status is query.status]
        return shown, next_cursor

    async def failed_after(self, query: DeliveryFilter, after: str, count: int) -> list[str]:
        """Up to `count` ids of the deliveries `query` selects, oldest first, after `after`,
        that may have failed: the failed ones and those in flight."""
        return await self._archive.failed_after(query, after, count)


def _upstream_key(tenant_id: str, upstream_id: str | None) -> str | None:
    """The key that remembers an event's upstream id, if it has one."""
    if upstream_id is None:
        return None
    return keys.event_by_upstream_id(tenant_id, hashlib.sha256(upstream_id.encode()).hexdigest())


def _ms(stamp: str | None) -> str:
    moment = read_rfc3339(stamp) if stamp else None
    return str(round(moment.timestamp() * 1000)) if moment else ""


def _hash_of(delivery: Delivery) -> dict[str, str | int]:
    """A delivery's hash as the scripts write it, rebuilt from history."""
    fields: dict[Field, str | int] = {
        Field.ID: delivery.id,
        Field.EVENT_ID: delivery.event_id,
        Field.WEBHOOK_ID: delivery.webhook_id,
        Field.TENANT_ID: delivery.tenant_id,
        Field.EVENT_TYPE: delivery.event_type,
        Field.STATUS: delivery.status.value,
        Field.ATTEMPT_COUNT: delivery.attempt_count,
        Field.CYCLE_START: delivery.cycle_start,
        Field.NEXT_ATTEMPT_AT: "",
        Field.CREATED_AT: delivery.created_at,
        Field.UPDATED_MS: _ms(delivery.updated_at),
        Field.DELIVERED_MS: _ms(delivery.delivered_at),
        Field.LAST_STATUS_CODE: delivery.last_status_code or "",
        Field.LAST_ERROR: delivery.last_error or "",
    }
    return {name.value: value for name, value in fields.items()}  # JSON keys: plain strings


def _event_hash(event: StoredEvent) -> dict[str, str | bytes]:
    """An event's hash as accept writes it, rebuilt from history, but for its payload."""
    fields: dict[EventField, str | bytes] = {
        EventField.TYPE: event.type,
        EventField.TENANT_ID: event.tenant_id,
        EventField.CREATED_AT: event.created_at,
        EventField.UPSTREAM_ID: event.upstream_id or "",
        EventField.DELIVERY_IDS: codec.dumps(event.delivery_ids),
    }
    return {name.value: value for name, value in fields.items()}


def _flat(fields: dict[str, Any]) -> list[Any]:
    """A mapping as HSET's field, value, field, value… arguments (JSON-safe)."""
    return [v.decode() if isinstance(v, bytes) else v for pair in fields.items() for v in pair]


def new_owner() -> str:
    """A worker's lease-owner id, unique per process."""
    return secrets.token_hex(6)
