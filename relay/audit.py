"""The audit trail: every change made through the API (and every automatic disable), with who
made it, what it was, which object it touched, when, and the request it came in."""

from __future__ import annotations

from collections.abc import Callable
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


# An action is a fixed name, or is read from the request's JSON body (a PATCH that only turns
# a webhook on or off is an enable or a disable, not just an update).
ActionRule = str | Callable[[object], str]


@dataclass(frozen=True, slots=True)
class Audit:
    """What a successful call of an operation records: its action, and which field of the
    answer's `data` names the object it touched (else the path's `id`)."""

    action: ActionRule
    object_field: str = "id"

    def action_for(self, body: object) -> str:
        """The action name for a call with this request body."""
        return self.action if isinstance(self.action, str) else self.action(body)


def webhook_change(body: object) -> str:
    """`webhook.enable` / `webhook.disable` when a PATCH sets `enabled`, else `webhook.update`."""
    if isinstance(body, dict) and isinstance(body.get("enabled"), bool):
        return "webhook.enable" if body["enabled"] else "webhook.disable"
    return "webhook.update"
