"""Every Redis key relay uses, named in one place.

Objects are JSON strings under `relay:<kind>:<id>`; lists are sorted sets whose members all
have score 0, so they order lexicographically by id, and ids order by creation time.
"""

from __future__ import annotations

PREFIX = "relay:"

TOKENS = PREFIX + "tokens"


def token(token_id: str) -> str:
    """A token's record."""
    return f"{PREFIX}tok:{token_id}"


def token_by_hash(digest: str) -> str:
    """Lookup from a presented token's hash to its record."""
    return f"{PREFIX}tokhash:{digest}"


def idempotency(token_id: str, key_digest: str) -> str:
    """A stored response for one Idempotency-Key of one token."""
    return f"{PREFIX}idem:{token_id}:{key_digest}"


WEBHOOKS = PREFIX + "whs"


def webhook(webhook_id: str) -> str:
    """A webhook's record (JSON, secrets encrypted)."""
    return f"{PREFIX}wh:{webhook_id}"


def tenant_webhooks(tenant_id: str) -> str:
    """The index of one tenant's webhooks: read on every fan-out."""
    return f"{PREFIX}whs:t:{tenant_id}"
