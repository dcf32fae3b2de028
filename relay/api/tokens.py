"""/v1/tokens: admins issue, list and revoke API tokens."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from relay.api.bodies import listing, ok, read_model
from relay.api.pagination import id_param, page_params, page_request
from relay.api.routing import ADMIN, Operation
from relay.services import services
from relay.tokens import Principal, TokenSpec


async def create_token(request: Request, _: Principal) -> Response:
    """Issue a token; its plaintext is in this response and nowhere else, ever."""
    spec = await read_model(request, TokenSpec)
    record, plaintext = await services(request).tokens.issue(spec)
    return ok({**record.public(), "token": plaintext}, 201)


async def list_tokens(request: Request, _: Principal) -> Response:
    """Tokens, newest first."""
    page = page_request(request, "tok")
    records, cursor = await services(request).tokens.page(page.limit, page.cursor)
    return listing([r.public() for r in records], cursor)


async def delete_token(request: Request, _: Principal) -> Response:
    """Revoke a token."""
    record = await services(request).tokens.delete(request.path_params["id"])
    return ok({**record.public(), "deleted": True})


OPERATIONS = [
    Operation(
        "POST",
        "/v1/tokens",
        create_token,
        "Issue an API token",
        ADMIN,
        "tokens",
        body=TokenSpec,
        status=201,
    ),
    Operation(
        "GET",
        "/v1/tokens",
        list_tokens,
        "List API tokens",
        ADMIN,
        "tokens",
        params=page_params("tok"),
        list_of=True,
    ),
    Operation(
        "DELETE",
        "/v1/tokens/{id}",
        delete_token,
        "Revoke an API token",
        ADMIN,
        "tokens",
        params=(id_param("tok"),),
    ),
]
