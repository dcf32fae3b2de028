"""The audit trail: every change made through the API (and every automatic disable), with who
made it, what it was, which object it touched, when, and the request it came in."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from relay.ids import new_id
from relay.timefmt import now, rfc3339


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: a token's id and role (never the token), or relay itself."""

    token_id: str
    role: str


SYSTEM = Actor("system", "system")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded change."""

    id: str
    at: str
    action: str
    actor: Actor
    object_id: str | None
    tenant_id: str | None
    request_id: str | None

    def record(self) -> dict[str, object]:
        """What the store keeps."""
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> AuditEntry:
        """Rebuild from `record()`."""
        return cls(
            id=data["id"],
            at=data["at"],
            action=data["action"],
            actor=Actor(**data["actor"]),
            object_id=data["object_id"],
            tenant_id=data["tenant_id"],
            request_id=data["request_id"],
        )


def entry(
    action: str,
    actor: Actor,
    object_id: str | None,
    tenant_id: str | None,
    request_id: str | None,
) -> AuditEntry:
    """A new entry for a change made now."""
    return AuditEntry(
        new_id("aud"), rfc3339(now()), action, actor, object_id, tenant_id, request_id
    )
