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
