"""Accepting an event: validate it, fan it out to the tenant's webhooks, store it durably."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from relay import logs, tracing
from relay.delivery.model import Status
from relay.delivery.store import NewEvent, PlannedDelivery, StaleFanOut
from relay.errors import Invalid, RelayError, Unauthorized, Unavailable
from relay.event_types import EVENT_TYPES, RegisteredType, envelope, validate_event
from relay.ids import new_id
from relay.resources import Resources
from relay.store.events import StoredEvent
from relay.store.idempotency import Commit, Held
from relay.store.webhooks import TenantWebhooks
from relay.timefmt import now, rfc3339
from relay.tokens import TokenChanged, TokenCheck
from relay.webhooks import Undeliverable, Webhook, fan_out


class EventSpec(Protocol):
    """What an event is accepted from (a posted event, once its fields are checked)."""

    type: str
    tenant_id: str
    data: Any
    id: str | None  # the upstream id, which makes repeats harmless


# The API sends these as they are (see relay.api.events): plain dataclasses, which orjson
# writes as fast as dicts (slotted ones take it five times as long, frozen ones longer to make).
@dataclass
class Posted:
    """An event as it was posted and accepted."""

    id: str
    type: str
    tenant_id: str
    created_at: str
    upstream_id: str | None
    data: object


@dataclass
class DeliveryState:
    """Where one of an event's deliveries is."""

    id: str
    webhook_id: str
    status: Status


@dataclass
class Tracked(Posted):
    """An event with where each of its deliveries is now."""

    deliveries: list[DeliveryState]


@dataclass
class Accepted(Tracked):
    """An event just accepted: its deliveries are all pending, or why it has none."""

    undeliverable: Undeliverable | None


# What became of one event of a batch: the event and whether it was created now, or why not.
Outcome = tuple[Tracked, bool] | RelayError


# Plans of one event whose write checks the webhooks' version: the first from this process's
# copy of them, the next from a fresh read. Should they change yet again before its write, the
# last plan, from another fresh read, is written unchecked, as a plan read just before.
_CHECKED_PLANS = 2


@dataclass(slots=True)
class _Catalog:
    """What planning events reads besides the event: registered types and tenants' webhooks,
    each read once per request (a batch names the same ones again and again)."""

    ctx: Resources
    _types: dict[str, RegisteredType | None] = field(default_factory=dict)
    _webhooks: dict[str, TenantWebhooks] = field(default_factory=dict)
    _stale: Counter[str] = field(default_factory=Counter)
    # Of a batch, what history has of its events' upstream ids, asked all at once.
    _earlier: dict[tuple[str, str], StoredEvent] | None = None

    async def registered(self, name: str) -> RegisteredType | None:
        """The registered type of this name, if any."""
        if name not in self._types:
            self._types[name] = await self.ctx.event_types.get(name)
        return self._types[name]

    async def webhooks(self, tenant_id: str) -> tuple[list[Webhook], str | None]:
        """The tenant's webhooks, and the version of them that the write of a fan-out planned
        from them is to check (None: no check)."""
        checked = self._stale[tenant_id] < _CHECKED_PLANS
        if tenant_id not in self._webhooks:
            # A copy will do while the write checks it, until one was found stale.
            copy_will_do = checked and not self._stale[tenant_id]
            self._webhooks[tenant_id] = await self.ctx.webhooks.of_tenant(tenant_id, copy_will_do)
        found = self._webhooks[tenant_id]
        return found.webhooks, found.version if checked else None

    async def look_up(self, specs: Iterable[EventSpec]) -> None:
        """Ask history in one query for the upstream ids of `specs` (a batch's events), which
        `earlier` then answers from."""
        pairs = {(spec.tenant_id, spec.id) for spec in specs if spec.id is not None}
        self._earlier = await self.ctx.events.first_with_upstream_ids(list(pairs))

    async def earlier(self, spec: EventSpec) -> StoredEvent | None:
        """The event history has under the spec's upstream id, if any."""
        if spec.id is None:
            return None
        if self._earlier is not None:
            return self._earlier.get((spec.tenant_id, spec.id))
        return await self.ctx.events.first_with_upstream_id(spec.tenant_id, spec.id)

    def stale(self, tenant_id: str) -> None:
        """A write found the tenant's webhooks changed since they were read."""
        self._webhooks.pop(tenant_id, None)
        self._stale[tenant_id] += 1


@dataclass(frozen=True, slots=True)
class _Planned:
    """An event validated and fanned out, ready to be written."""

    event: NewEvent
    deliveries: list[PlannedDelivery]
    accepted: Accepted


async def _plan(ctx: Resources, catalog: _Catalog, spec: EventSpec) -> _Planned | StoredEvent:
    """The event validated (or Invalid) and fanned out; or, for an upstream id history already
    has, the event first accepted under it."""
    # Built-in types cost no Redis call; a registered one is one GET, so a PATCH applies at once.
    registered = None if spec.type in EVENT_TYPES else await catalog.registered(spec.type)
    data = validate_event(spec.type, spec.data, registered)
    webhooks, version = await catalog.webhooks(spec.tenant_id)
    targets, undeliverable = fan_out(webhooks, spec.type)
    moment = now()
    now_ms = int(moment.timestamp() * 1000)
    if earlier := await catalog.earlier(spec):
        return earlier
    event_id = new_id("evt", now_ms)
    created_at = rfc3339(moment)
    event = NewEvent(
        id=event_id,
        type=spec.type,
        tenant_id=spec.tenant_id,
        created_at=created_at,
        created_ms=now_ms,
        upstream_id=spec.id,
        payload=envelope(event_id, spec.type, spec.tenant_id, data, created_at),
        traceparent=tracing.traceparent(),
        request_id=logs.request_id(),
        fan_out_version=version,
    )
    planned = [PlannedDelivery(new_id("dlv", now_ms), w.id) for w in targets]
    states = [DeliveryState(d.id, d.webhook_id, Status.PENDING) for d in planned]
    accepted = Accepted(
        event_id, spec.type, spec.tenant_id, created_at, spec.id, data, states, undeliverable
    )
    return _Planned(event, planned, accepted)


async def _written(ctx: Resources, planned: _Planned, first: str | None) -> tuple[Tracked, bool]:
    """(event, created) of a planned event once written; `first` is the event its upstream id
    was accepted as meanwhile, if it was (then nothing was written)."""
    if first is not None:
        return await event_view(ctx, await ctx.events.get(first)), False
    ctx.counts.add(f"events_accepted:{planned.event.type}")
    undeliverable = planned.accepted.undeliverable
    if undeliverable is not None:
        ctx.counts.add(f"events_undelivered:{undeliverable.value}")
    return planned.accepted, True


async def accept(
    ctx: Resources,
    spec: EventSpec,
    commit: Commit[Accepted] | None = None,
    token: TokenCheck | None = None,
) -> tuple[Tracked, bool]:
    """Store the event with a delivery per matching webhook; (event, created).

    A repeated upstream id creates nothing and returns the first event (created False).
    `commit` stores the request's answer to the created event with it. With `token`,
    the write raises TokenChanged, writing nothing, once its record is not as checked.
    """
    catalog = _Catalog(ctx)
    while True:  # see _CHECKED_PLANS
        planned = await _plan(ctx, catalog, spec)
        if isinstance(planned, StoredEvent):
            return await event_view(ctx, planned), False
        logs.annotate(tenant_id=spec.tenant_id, event_id=planned.event.id)
        answer = None if commit is None else commit.lua(planned.accepted)
        try:
            first = await ctx.deliveries.accept(
                planned.event, planned.deliveries, answer, token=token
            )
        except StaleFanOut:
            catalog.stale(spec.tenant_id)
        else:
            if commit is not None and first is None:
                commit.landed = True  # written: the answer went with it
            return await _written(ctx, planned, first)


async def accept_batch(
    ctx: Resources,
    items: Sequence[EventSpec | RelayError],
    claim: Held | None = None,
    token: TokenCheck | None = None,
) -> list[Outcome]:
    """Accept each event of a batch as `accept` would, in order; one refused (or already a
    RelayError) never holds the others back. Their writes are pipelined.

    With `claim` (the batch's Idempotency-Key), each write records its event under it, and an
    event that an earlier run of the same request wrote is answered as written, not again.
    With `token`, events are written only while its record is as checked: TokenChanged when
    none was written, else the events after the change are refused as unauthorized.
    """
    made = {} if claim is None else await ctx.idempotency.made(claim)
    catalog = _Catalog(ctx)
    outcomes: dict[int, Outcome | TokenChanged] = {}
    todo: list[tuple[int, EventSpec]] = []
    for index, item in enumerate(items):
        if isinstance(item, RelayError):
            outcomes[index] = item
        elif index in made:
            outcomes[index] = (await event_view(ctx, await ctx.events.get(made[index])), True)
        else:
            todo.append((index, item))
    await catalog.look_up(spec for _, spec in todo)
    while todo:  # see _CHECKED_PLANS
        todo = await _write_batch(ctx, catalog, todo, claim, outcomes, token)
    found = [outcomes[index] for index in range(len(items))]
    if any(isinstance(o, TokenChanged) for o in found) and not any(
        isinstance(o, tuple) and o[1] for o in found
    ):
        raise TokenChanged
    # Revoked while the batch was being written: what was written stands, the rest does not.
    revoked = Unauthorized("This token was revoked while the batch was being written.")
    return [revoked if isinstance(o, TokenChanged) else o for o in found]


async def _write_batch(
    ctx: Resources,
    catalog: _Catalog,
    todo: list[tuple[int, EventSpec]],
    claim: Held | None,
    outcomes: dict[int, Outcome | TokenChanged],
    token: TokenCheck | None,
) -> list[tuple[int, EventSpec]]:
    """Plan and write the events of a batch numbered in `todo`, setting what came of each in
    `outcomes`; the ones to plan again, their webhooks having changed since they were read."""
    writes: list[tuple[int, EventSpec, _Planned]] = []
    for index, spec in todo:
        try:
            planned = await _plan(ctx, catalog, spec)
        except Invalid as refused:
            outcomes[index] = refused
            continue
        if isinstance(planned, StoredEvent):
            outcomes[index] = (await event_view(ctx, planned), False)
        else:
            writes.append((index, spec, planned))
    written = await ctx.deliveries.accept_many(
        [
            (p.event, p.deliveries, None if claim is None else claim.item(i, p.event.id))
            for i, _, p in writes
        ],
        token,
    )
    again: list[tuple[int, EventSpec]] = []
    for (index, spec, planned), first in zip(writes, written, strict=True):
        if isinstance(first, StaleFanOut):
            again.append((index, spec))
        elif isinstance(first, Unavailable | TokenChanged):
            outcomes[index] = first
        else:
            outcomes[index] = await _written(ctx, planned, first)
    for tenant_id in dict.fromkeys(spec.tenant_id for _, spec in again):
        catalog.stale(tenant_id)
    return again


def _fields(event: StoredEvent) -> tuple[str, str, str, str, str | None, object]:
    data = orjson.loads(event.payload)["data"]
    return event.id, event.type, event.tenant_id, event.created_at, event.upstream_id, data


def event_summary(event: StoredEvent) -> Posted:
    """An event as a list shows it: without its deliveries."""
    return Posted(*_fields(event))


async def event_view(ctx: Resources, event: StoredEvent) -> Tracked:
    """An event with its deliveries' current status."""
    found = await ctx.deliveries.many(event.delivery_ids)
    return Tracked(*_fields(event), [DeliveryState(d.id, d.webhook_id, d.status) for d in found])
