"""/v1/tokens and /v1/portal-sessions: admins issue, list and revoke API tokens; every token
reads its own description."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import pydantic
from pydantic import Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from relay.api.bodies import listing, ok, read_model
from relay.api.idempotency import commit
from relay.api.pagination import id_param, page_params, page_request
from relay.api.routing import ADMIN, ANY_ROLE, Operation, reserve_segment
from relay.api.shapes import Deleted, Shape, Timestamp
from relay.api.trail import Audit
from relay.errors import NotFound, Unauthorized
from relay.ids import pattern as id_pattern
from relay.resources import resources
from relay.roles import Role
from relay.store.tokens import Issued, TokenRecord
from relay.timefmt import from_timestamp, now, rfc3339
from relay.tokens import BOOTSTRAP_ID, TOKEN_PREFIX, Principal, TokenSpec
from relay.validation import JSON_INT, TenantId

TokenId = Annotated[str, StringConstraints(pattern=id_pattern("tok"))]
CONSOLE_PATH = "/console"
PORTAL_SESSION_NAME = "portal session"
DEFAULT_PORTAL_SECONDS = 3600
MAX_PORTAL_SECONDS = 86_400


class PortalSessionSpec(pydantic.BaseModel):
    """`POST /v1/portal-sessions`: a console sign-in for one tenant, valid for a short while."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    tenant_id: TenantId
    ttl_seconds: Annotated[int, pydantic.Field(ge=60, le=MAX_PORTAL_SECONDS), JSON_INT] = (
        DEFAULT_PORTAL_SECONDS
    )

    def token_spec(self) -> TokenSpec:
        """The tenant token behind the session: bound to the tenant, expiring with it."""
        expires = rfc3339(now() + timedelta(seconds=self.ttl_seconds))
        return TokenSpec(
            role=Role.TENANT, tenant_id=self.tenant_id, name=PORTAL_SESSION_NAME, expires_at=expires
        )


class Token(Shape):
    """An API token, never its plaintext."""

    source = TokenRecord
    added = frozenset({"last_used_at"})

    id: TokenId
    role: Role
    tenant_id: TenantId | None
    name: str
    created_at: Timestamp
    expires_at: Timestamp | None
    last_used_at: Timestamp | None = Field(
        description="When the token last authenticated, to the minute"
    )


class CallingToken(Shape):
    """The token a request is made with, as the caller may know it: what it may do, until when."""

    source = Principal
    added = frozenset({"id", "name", "expires_at"})

    id: Annotated[
        str,
        StringConstraints(pattern=f"{id_pattern('tok')}|^{BOOTSTRAP_ID}$"),
        Field(description=f"The token's id; `{BOOTSTRAP_ID}` for RELAY_ADMIN_TOKEN"),
    ]
    role: Role
    tenant_id: TenantId | None
    name: str | None = Field(description="The name it was issued with (none for RELAY_ADMIN_TOKEN)")
    expires_at: Timestamp | None


class IssuedToken(Token):
    """A new token, with its plaintext: in this answer and nowhere else, ever."""

    added = frozenset({"last_used_at", "token"})

    token: Annotated[str, StringConstraints(pattern=f"^{TOKEN_PREFIX}[A-Za-z0-9_-]+$")]


# Deleted first in the bases: `deleted` comes last, as in every answer so far.
class RevokedToken(Deleted, Token):
    """A token that no longer authenticates."""

    added = frozenset({"last_used_at", "deleted"})


class PortalSession(Shape):
    """A console link signed in as a short-lived token of one tenant."""

    source = TokenRecord
    added = frozenset({"url", "token_id"})

    url: str = Field(description="The console, signed in by the token in the URL's fragment")
    token_id: TokenId
    tenant_id: TenantId
    expires_at: Timestamp


# /v1/tokens/self is an operation of its own (GET): routes name `{id:token}`.
reserve_segment("token", "self")


def _issued(issued: Issued) -> Response:
    record, plaintext = issued
    return ok(IssuedToken.read(record, last_used_at=None, token=plaintext), 201)


async def create_token(request: Request, _: Principal) -> Response:
    """Issue a token; its plaintext is in this response (and its encrypted replay) only."""
    spec = await read_model(request, TokenSpec)
    return _issued(await resources(request).tokens.issue(spec, commit(_issued)))


async def list_tokens(request: Request, _: Principal) -> Response:
    """Tokens, newest first, with when each was last used (to the minute)."""
    page = page_request(request, "tok")
    found, cursor = await resources(request).tokens.page(page.limit, page.cursor)
    return listing(
        [Token.read(record, last_used_at=_minute(used)) for record, used in found], cursor
    )


def _minute(used_ms: int | None) -> str | None:
    return from_timestamp(used_ms / 1000) if used_ms else None


async def describe_own_token(request: Request, principal: Principal) -> Response:
    """The calling token, whatever its role: what it may do and until when, so that a client
    (the console) need not find out by trying."""
    name = expires_at = None
    if principal.token_id != BOOTSTRAP_ID:  # RELAY_ADMIN_TOKEN is configured, not issued
        try:
            record = await resources(request).tokens.get(principal.token_id)
        except NotFound:
            # Revoked (or lapsed) since it authenticated this request: the caller's token is
            # what is gone, not a resource it asked for.
            raise Unauthorized("This token is unknown or has been revoked.") from None
        name, expires_at = record.name, record.expires_at
    return ok(CallingToken.read(principal, id=principal.token_id, name=name, expires_at=expires_at))


async def delete_token(request: Request, _: Principal) -> Response:
    """Revoke a token."""
    tokens = resources(request).tokens
    return _revoked(await tokens.delete(request.path_params["id"], commit(_revoked)))


def _revoked(record: TokenRecord) -> Response:
    return ok(RevokedToken.read(record, last_used_at=None, deleted=True))


def _public_base(request: Request) -> str:
    """Where relay's links point: RELAY_PUBLIC_URL, else the scheme and host the request came
    to (as uvicorn read them, trusting forwarded headers only from FORWARDED_ALLOW_IPS)."""
    return resources(request).settings.public_url or str(request.base_url).rstrip("/")


async def create_portal_session(request: Request, _: Principal) -> Response:
    """A console link signed in as a short-lived token of one tenant.

    The token rides in the URL's fragment, which browsers never send to a server, so it stays
    out of access logs and Referer headers.
    """
    spec = await read_model(request, PortalSessionSpec)
    base = _public_base(request)

    def opened(issued: Issued) -> Response:
        record, plaintext = issued
        url = f"{base}{CONSOLE_PATH}#token={plaintext}"
        return ok(PortalSession.read(record, url=url, token_id=record.id), 201)

    return opened(await resources(request).tokens.issue(spec.token_spec(), commit(opened)))


OPERATIONS = [
    Operation(
        "POST",
        "/v1/tokens",
        create_token,
        "Issue an API token",
        ADMIN,
        "tokens",
        answers=IssuedToken,
        body=TokenSpec,
        status=201,
        audit=Audit("token.create"),
    ),
    Operation(
        "GET",
        "/v1/tokens",
        list_tokens,
        "List API tokens",
        ADMIN,
        "tokens",
        answers=Token,
        params=page_params("tok"),
        list_of=True,
    ),
    Operation(
        "GET",
        "/v1/tokens/self",
        describe_own_token,
        "Describe the calling token",
        ANY_ROLE,
        "tokens",
        answers=CallingToken,
    ),
    Operation(
        "DELETE",
        "/v1/tokens/{id:token}",
        delete_token,
        "Revoke an API token",
        ADMIN,
        "tokens",
        answers=RevokedToken,
        params=(id_param("tok"),),
        audit=Audit("token.revoke"),
    ),
    Operation(
        "POST",
        "/v1/portal-sessions",
        create_portal_session,
        "Open a console session for one tenant",
        ADMIN,
        "tokens",
        answers=PortalSession,
        body=PortalSessionSpec,
        status=201,
        audit=Audit("portal_session.create", object_field="token_id"),
    ),
]
