"""Operations: one declaration per route, from which both the router and the OpenAPI document
are built, and through which every call is authenticated, authorized and made idempotent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.api import trail
from relay.api.auth import authenticate
from relay.api.errors import problem
from relay.api.idempotency import RerunCheck, idempotent
from relay.audit import Audit
from relay.errors import RateLimited, RelayError
from relay.services import services
from relay.tokens import Principal, Role

Handler = Callable[[Request, Principal], Awaitable[Response]]
PublicHandler = Callable[[Request], Awaitable[Response]]

ANY_ROLE = frozenset(Role)
ADMIN = frozenset({Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Param:
    """A query or path parameter, for the OpenAPI document."""

    name: str
    where: str = "query"
    schema: dict[str, object] = field(default_factory=lambda: {"type": "string"})
    description: str = ""


PAGE = (
    Param("limit", schema={"type": "integer", "minimum": 1, "maximum": 100}),
    Param("cursor", description="next_cursor of the previous page"),
)
ID = (Param("id", "path"),)


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path: who may call it, what it takes, what it answers."""

    method: str
    path: str
    handler: Handler
    summary: str
    roles: frozenset[Role]
    tag: str
    body: type[pydantic.BaseModel] | None = None
    params: tuple[Param, ...] = ()
    status: int = 200
    list_of: bool = False
    # Set when the domain makes a second run of a request harmless (see `idempotent`).
    rerun_unknown: RerunCheck | None = None
    # Set on every operation that changes something: what the audit trail records of it.
    audit: Audit | None = None


def _endpoint(op: Operation) -> PublicHandler:
    async def call(request: Request, principal: Principal) -> Response:
        try:
            response = await op.handler(request, principal)
        except RelayError as err:
            # Rendered here, not by the app's handler, so idempotency can store the outcome.
            return problem(err)
        if op.audit is not None and response.status_code < 300:
            # Inside the idempotent call: a replayed response records nothing again.
            await trail.record(request, principal, op.audit, response)
        return response

    async def endpoint(request: Request) -> Response:
        principal = await authenticate(request)
        if not await services(request).rate_limiter.allow(principal.token_id):
            raise RateLimited("This token is over its request rate; retry in a second.")
        principal.require(op.roles)
        return await idempotent(
            request, principal, lambda: call(request, principal), op.rerun_unknown
        )

    endpoint.__name__ = op.handler.__name__
    return endpoint


def routes(operations: Sequence[Operation]) -> list[Route]:
    """Starlette routes for the operations."""
    return [Route(op.path, _endpoint(op), methods=[op.method]) for op in operations]
