"""Operations: one declaration per route, from which both the router and the OpenAPI document
are built, and through which every call is authenticated, authorized and made idempotent."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.api import trail
from relay.api.auth import authenticate, confirm
from relay.api.errors import problem
from relay.api.idempotency import HEADER, REPLAYED, idempotent
from relay.api.shapes import check, envelope
from relay.api.trail import Audit
from relay.errors import Invalid, NotFound, RateLimited, RelayError, Unauthorized
from relay.resources import resources
from relay.roles import Role
from relay.timefmt import read_rfc3339
from relay.tokens import Principal, TokenChanged

Handler = Callable[[Request, Principal], Awaitable[Response]]
PublicHandler = Callable[[Request], Awaitable[Response]]

# Who may call an operation (`Operation.roles`): the sets that several operations share.
ANY_ROLE = frozenset(Role)
ADMIN = frozenset({Role.ADMIN})
# Admins, and tenant tokens on their own tenant's objects (another tenant's are a 404).
OWNERS = frozenset({Role.ADMIN, Role.TENANT})


# Decimal digits only (not other scripts' digits, "+5" or "1e2"); "50.0" is the integer 50.
_INTEGER = re.compile(r"([0-9]+)(?:\.0*)?")


_NO_NUL = "^[^\\x00]*$"


@dataclass(frozen=True, slots=True)
class Param:
    """A query or path parameter: the OpenAPI document describes it, every call is held to it."""

    name: str
    where: str = "query"
    # Nothing relay stores can hold a NUL character (PostgreSQL text cannot), so no filter has one.
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string", "pattern": _NO_NUL})
    description: str = ""

    def problem(self, value: str) -> str | None:
        """Why `value` does not fit this parameter's schema, or None if it does."""
        schema = self.schema
        if "\x00" in value:
            return "must not contain a NUL character"
        if schema.get("type") == "integer":
            digits = _INTEGER.fullmatch(value)
            low, high = schema.get("minimum", 0), schema.get("maximum", 2**63)
            if digits is None or not low <= int(digits[1]) <= high:
                return f"must be an integer from {low} to {high}"
        if "enum" in schema and value not in schema["enum"]:
            return "one of " + ", ".join(schema["enum"])
        if "pattern" in schema and not _search(schema["pattern"], value):
            return f"must match {schema['pattern']}"
        if schema.get("format") == "date-time" and read_rfc3339(value) is None:
            return "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z"
        return None


def _search(pattern: str, value: str) -> bool:
    # JSON Schema's patterns are ECMA-262's, whose final `$` is the very end of the value;
    # Python's also matches before a final newline, which would let `evt_…%0a` pass for an id.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.search(pattern, value) is not None


def check_path(params: Sequence[Param], request: Request) -> None:
    """Raise NotFound when a path parameter is not of its declared shape (an id of its kind).

    Nothing can exist under such a name, so it is answered here, for every operation, before
    any store sees a value it was never meant to take (`dlv_…:att` names another Redis key).
    """
    for param in params:
        if param.where == "path" and param.problem(request.path_params[param.name]) is not None:
            raise NotFound(f"No object has this {param.name}.")


def check_query(params: Sequence[Param], request: Request) -> None:
    """Raise Invalid naming every query parameter that is unknown, repeated or malformed.

    Done here, for every operation from its declared parameters, so that no list can quietly
    ignore a filter it does not know. An empty value is the same as leaving the parameter out.
    """
    if not request.scope["query_string"]:
        return  # most calls have none: nothing to parse
    declared = {p.name: p for p in params if p.where == "query"}
    errors: dict[str, list[str]] = {}
    for name in dict.fromkeys(request.query_params.keys()):
        values = request.query_params.getlist(name)
        param = declared.get(name)
        if param is None:
            takes = ", ".join(declared) or "none"
            errors[name] = [f"unknown parameter; this operation takes: {takes}"]
        elif len(values) > 1:
            errors[name] = ["given more than once"]
        elif values[0] and (reason := param.problem(values[0])) is not None:
            errors[name] = [reason]
    if errors:
        raise Invalid("The query has unknown or invalid parameters.", errors)


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path: who may call it, what it takes, what it answers."""

    method: str
    path: str
    handler: Handler
    summary: str
    roles: frozenset[Role]
    tag: str
    # What its success holds (an answer model, relay.api.shapes.Shape), or a page of them
    # when `list_of`.
    answers: type[pydantic.BaseModel]
    body: type[pydantic.BaseModel] | None = None
    params: tuple[Param, ...] = ()
    status: int = 200
    list_of: bool = False
    # Set when its success holds one `answers` per item of the request, in order (no pages).
    per_item: bool = False
    # Successes besides `status`, with what each means.
    also_succeeds: tuple[tuple[int, str], ...] = ()
    # Set when it looks an object up by an id in its body or query, or a tenant token can name
    # another tenant there: it can answer 404 although no path parameter names an object.
    looks_up: bool = False
    # When a run with an Idempotency-Key fails not knowing whether it wrote (its reply was
    # lost), a retry must never write twice. Unless `repeats`, the handler passes
    # `idempotency.commit(...)` to the store, whose write stores the answer in the same atomic
    # step: a retry replays it, or runs again if it never committed. `repeats` says instead that
    # the effect is several steps, each of which leaves the same state when made again (the
    # operation says why), so a retry simply runs again.
    repeats: bool = False
    # Set when its success is answered only once RELAY_REDIS_MIN_REPLICAS replicas hold the
    # write (the store waits for them): a replay under its Idempotency-Key waits for them too.
    replicated: bool = False
    # Set on every operation that changes something: what the audit trail records of it.
    audit: Audit | None = None
    # Set when its writes check the record of the token that authenticated the request (the
    # handler passes `principal.check` to them): a record this process read lately will do,
    # sparing a read per request. A token revoked since writes nothing, and an answer that no
    # such write confirmed is confirmed by a read, so a revoke holds at once all the same.
    # Not with an Idempotency-Key: a stored answer is replayed without any write.
    token_checked: bool = False


def _endpoint(op: Operation) -> PublicHandler:
    answer = envelope(op.answers, op.list_of, op.per_item)

    async def call(request: Request, principal: Principal) -> Response:
        try:
            check_path(op.params, request)
            check_query(op.params, request)
            response = await op.handler(request, principal)
        except RelayError as err:
            # Rendered here, not by the app's handler, so idempotency can store the outcome.
            return problem(err)
        if op.audit is not None and response.status_code < 300:
            await trail.record(request, principal, op.audit, response)
        if response.status_code < 300:
            # The document promises this shape: an answer outside it is a bug, raised (a
            # logged 500) rather than sent. After the audit record: the change was made.
            check(answer, bytes(response.body))
        return response

    async def authorized(request: Request, principal: Principal) -> Response:
        try:
            if await resources(request).rate_limiter.wait(principal.token_id):
                raise RateLimited("This token is over its request rate; retry in a second.")
            principal.require(op.roles)
        except RelayError:
            # Refused for what the token was: only if that is what it still is (not revoked).
            await confirm(request, principal)
            raise
        response = await idempotent(
            request, principal, lambda: call(request, principal), op.repeats, op.replicated
        )
        if op.audit is not None and response.status_code < 300 and REPLAYED in response.headers:
            # A change whose first run lost its reply (Redis went away after the write) was
            # never recorded; its replay records it. Once per key: a replay after that is a no-op.
            await trail.record(request, principal, op.audit, response)
        await confirm(request, principal)
        return response

    async def endpoint(request: Request) -> Response:
        remembered_will_do = op.token_checked and HEADER not in request.headers
        principal = await authenticate(request, remembered_will_do)
        try:
            return await authorized(request, principal)
        except TokenChanged:
            pass
        # The token's record changed since it was read (a revoke): read it again, and answer
        # as that says (a 401 once revoked). Nothing was written under the old one.
        if principal.check is not None:
            resources(request).tokens.forget(principal.check.token_hash)
        principal = await authenticate(request)
        try:
            return await authorized(request, principal)
        except TokenChanged:
            raise Unauthorized("This token was revoked while the request ran.") from None

    endpoint.__name__ = op.handler.__name__
    return endpoint


def reserve_segment(convertor: str, name: str) -> None:
    """Let routes name `{id:convertor}` for any path segment but `name`.

    For a collection with an operation of its own at `name` (POST /v1/events/batch) beside its
    objects' `{id}`: another method there is a 405 naming that operation's methods, not a
    lookup of an object called `name`. Starlette's convertors are process-wide by design.
    """

    class Segment(StringConvertor):
        regex = f"(?!{re.escape(name)}$)[^/]+"

    register_url_convertor(convertor, Segment())


# `{name}` or `{name:convertor}` in a route's path.
_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def _declares_its_path(op: Operation) -> Operation:
    # Every path parameter is checked against its declaration (check_path): one left
    # undeclared would reach the store unchecked, so it is a mistake caught at start-up.
    declared = {p.name for p in op.params if p.where == "path"}
    named = set(_PATH_PARAM.findall(op.path))
    if named != declared:
        raise ValueError(f"{op.method} {op.path} declares path parameters {sorted(declared)}")
    return op


def routes(operations: Sequence[Operation]) -> list[Route]:
    """Starlette routes for the operations."""
    return [
        Route(op.path, _endpoint(_declares_its_path(op)), methods=[op.method]) for op in operations
    ]
