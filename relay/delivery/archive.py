"""What the stores ask of history: records that have left Redis.

A delivery lives in Redis while it is in flight and in history (PostgreSQL) once it has ended;
an event, in both until its last delivery has left Redis. The stores look in Redis first and
ask the archive for the rest, so readers see one log. The engine knows only this protocol;
`relay.history` implements it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from relay.delivery.model import Delivery

if TYPE_CHECKING:
    from relay.audit import AuditEntry
    from relay.delivery.store import DeliveryFilter
    from relay.store.audit import AuditQuery
    from relay.store.events import EventFilter, StoredEvent


class Archive(Protocol):
    """Finished deliveries, their attempts, events and the audit trail, as history keeps them."""

    async def delivery(self, delivery_id: str) -> Delivery | None:
        """A delivery by id, or None."""

    async def deliveries(self, delivery_ids: Sequence[str]) -> list[Delivery]:
        """The deliveries of these ids that history holds, in any order."""

    async def attempts(self, delivery: Delivery) -> list[dict[str, object]]:
        """A delivery's attempts, oldest first."""

    async def delivery_page(
        self, query: DeliveryFilter, limit: int, before: str | None
    ) -> tuple[list[Delivery], str | None]:
        """Matching deliveries with ids below `before`, newest first; the cursor if more."""

    async def failed_after(self, query: DeliveryFilter, after: str, count: int) -> list[str]:
        """Ids of the deliveries `query` selects after `after` (ignoring its `since`) that may
        have failed — failed, or in flight — oldest first."""

    async def event(self, event_id: str) -> StoredEvent | None:
        """An event by id, or None."""

    async def events_with_upstream_ids(
        self, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], StoredEvent]:
        """The event each (tenant, upstream id) pair was first accepted as, of those history
        has."""

    async def event_page(
        self, query: EventFilter, limit: int, before: str | None
    ) -> tuple[list[StoredEvent], str | None]:
        """Matching events with ids below `before`, newest first; the cursor if more."""

    async def audit_page(
        self, query: AuditQuery, limit: int, before: str | None
    ) -> tuple[list[AuditEntry], str | None]:
        """Matching audit entries with ids below `before`, newest first; the cursor if more."""
