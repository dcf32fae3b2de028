"""API tokens, roles and the one authorization rule every route goes through."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

import pydantic

from relay.errors import Forbidden, NotFound, Unauthorized
from relay.roles import Role
from relay.timefmt import now, read_rfc3339, rfc3339
from relay.validation import TenantId

TOKEN_PREFIX = "rly_"
BOOTSTRAP_ID = "tok_bootstrap"


@dataclass(slots=True)
class TokenCheck:
    """The stored record a request authenticated by, for a write to check: a write that finds
    it gone or changed (revoked meanwhile) writes nothing, so the request may go by a record
    this process read a little earlier. `confirmed` once a write or a fresh read found it."""

    token_hash: str
    # SHA-1 (hex) of the record as stored: all a write compares, whatever the record holds.
    fingerprint: str
    # Whether the record came from this process's memory rather than a read for this request.
    remembered: bool
    confirmed: bool = False


class TokenChanged(Exception):
    """The record a request authenticated by is gone or changed (a revoke): nothing was written
    under it, and the request is to authenticate again from a fresh read."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id (idempotency keys are scoped by it), role and tenant."""

    token_id: str
    role: Role
    tenant_id: str | None = None
    # None for the bootstrap admin token, which has no stored record.
    check: TokenCheck | None = field(default=None, compare=False)

    def require(self, roles: Collection[Role]) -> None:
        """Raise Forbidden unless this caller's role is one of `roles`."""
        if self.role not in roles:
            raise Forbidden(f"A {self.role.value} token may not do this.")

    def sees(self, tenant_id: str) -> bool:
        """Whether objects of `tenant_id` are visible: a tenant token sees only its own."""
        return self.role is not Role.TENANT or self.tenant_id == tenant_id

    def check_visible(self, tenant_id: str, what: str) -> None:
        """Raise NotFound for another tenant's object: never Forbidden, so nothing leaks."""
        if not self.sees(tenant_id):
            raise NotFound(f"No such {what}.")

    def tenant_scope(self, requested: str | None) -> str | None:
        """The tenant a list or create acts on: a tenant token is pinned to its own."""
        if self.role is Role.TENANT:
            if requested is not None and requested != self.tenant_id:
                # Asking for another tenant's list yields nothing rather than an error.
                raise NotFound("No such tenant.")
            return self.tenant_id
        return requested


class TokenSpec(pydantic.BaseModel):
    """What `POST /v1/tokens` and `relay token create` take."""

    model_config = pydantic.ConfigDict(extra="forbid")

    role: Role
    tenant_id: TenantId | None = None
    name: str = pydantic.Field("", max_length=200)
    expires_at: str | None = pydantic.Field(
        None,
        json_schema_extra={"format": "date-time"},
        description="RFC 3339; the token stops authenticating then",
    )

    @pydantic.field_validator("expires_at")
    @classmethod
    def _future(cls, value: str | None) -> str | None:
        if value is None:
            return None
        moment = read_rfc3339(value)
        if moment is None:
            raise ValueError("must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z")
        if moment <= now():
            raise ValueError("must be in the future")
        return rfc3339(moment)

    @pydantic.model_validator(mode="after")
    def _tenant_matches_role(self) -> TokenSpec:
        if self.role is Role.TENANT and self.tenant_id is None:
            raise ValueError("a tenant token needs a tenant_id")
        if self.role is not Role.TENANT and self.tenant_id is not None:
            raise ValueError("only tenant tokens are bound to a tenant_id")
        return self


def check_unexpired(expires_at: str | None, moment: datetime) -> None:
    """Raise Unauthorized, saying when, once a token is past its `expires_at`."""
    if expires_at is None:
        return
    ends = read_rfc3339(expires_at)
    if ends is None or ends <= moment:
        raise Unauthorized(f"This token expired at {expires_at}; ask for a new one.")


def new_secret_token() -> str:
    """A fresh bearer token: 256 random bits, url-safe, recognisable by its prefix."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    """The stored form of a token. Tokens carry 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(presented: str, expected: str) -> bool:
    """Constant-time comparison of two token strings."""
    return hmac.compare_digest(presented.encode(), expected.encode())
