"""/v1/tokens and /v1/portal-sessions: admins issue, list and revoke API tokens; every token
reads its own description."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from relay.api import shapes
from relay.api.bodies import listing, ok, read_model
from relay.api.idempotency import commit
from relay.api.pagination import id_param, page_params, page_request
from relay.api.routing import ADMIN, ANY_ROLE, Operation, reserve_segment
from relay.audit import Audit
from relay.resources import resources
from relay.store.tokens import Issued, TokenRecord
from relay.tokens import BOOTSTRAP_ID, PortalSessionSpec, Principal, TokenSpec

CONSOLE_PATH = "/console"

# /v1/tokens/self is an operation of its own (GET): routes name `{id:token}`.
reserve_segment("token", "self")


def _issued(issued: Issued) -> Response:
    record, plaintext = issued
    return ok({**record.public(), "token": plaintext}, 201)


async def create_token(request: Request, _: Principal) -> Response:
    """Issue a token; its plaintext is in this response (and its encrypted replay) only."""
    spec = await read_model(request, TokenSpec)
    return _issued(await resources(request).tokens.issue(spec, commit(_issued)))


async def list_tokens(request: Request, _: Principal) -> Response:
    """Tokens, newest first, with when each was last used (to the minute)."""
    page = page_request(request, "tok")
    found, cursor = await resources(request).tokens.page(page.limit, page.cursor)
    return listing([record.public(used) for record, used in found], cursor)


async def describe_own_token(request: Request, principal: Principal) -> Response:
    """The calling token, whatever its role: what it may do and until when, so that a client
    (the console) need not find out by trying."""
    name = expires_at = None
    if principal.token_id != BOOTSTRAP_ID:  # RELAY_ADMIN_TOKEN is configured, not issued
        record = await resources(request).tokens.get(principal.token_id)
        name, expires_at = record.name, record.expires_at
    return ok(
        {
            "id": principal.token_id,
            "role": principal.role,
            "tenant_id": principal.tenant_id,
            "name": name,
            "expires_at": expires_at,
        }
    )


async def delete_token(request: Request, _: Principal) -> Response:
    """Revoke a token."""
    tokens = resources(request).tokens
    return _revoked(await tokens.delete(request.path_params["id"], commit(_revoked)))


def _revoked(record: TokenRecord) -> Response:
    return ok({**record.public(), "deleted": True})


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
        return ok(
            {
                "url": f"{base}{CONSOLE_PATH}#token={plaintext}",
                "token_id": record.id,
                "tenant_id": record.tenant_id,
                "expires_at": record.expires_at,
            },
            201,
        )

    return opened(await resources(request).tokens.issue(spec.token_spec(), commit(opened)))


OPERATIONS = [
    Operation(
        "POST",
        "/v1/tokens",
        create_token,
        "Issue an API token",
        ADMIN,
        "tokens",
        answers=shapes.IssuedToken,
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
        answers=shapes.Token,
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
        answers=shapes.CallingToken,
    ),
    Operation(
        "DELETE",
        "/v1/tokens/{id:token}",
        delete_token,
        "Revoke an API token",
        ADMIN,
        "tokens",
        answers=shapes.RevokedToken,
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
        answers=shapes.PortalSession,
        body=PortalSessionSpec,
        status=201,
        audit=Audit("portal_session.create", object_field="token_id"),
    ),
]
