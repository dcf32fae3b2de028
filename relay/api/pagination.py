"""`?limit=` and `?cursor=` read the same way for every list, and ids described the same way."""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import Request

from relay.api.routing import Param
from relay.errors import Invalid
from relay.ids import has_prefix, pattern

DEFAULT_LIMIT = 50
_LIMIT = re.compile(r"([0-9]+)(?:\.0*)?")
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What page a client asked for."""

    limit: int
    cursor: str | None


def page_request(request: Request, id_prefix: str) -> PageRequest:
    """Parse limit (1–100, default 50) and a cursor that must be an id of the listed kind.

    An empty value is the same as leaving the parameter out, as for every query parameter.
    """
    raw_limit = request.query_params.get("limit") or str(DEFAULT_LIMIT)
    # Decimal digits only (not other scripts' digits, "+5" or "1e2"); "50.0" is the integer 50.
    digits = _LIMIT.fullmatch(raw_limit)
    if digits is None or not 1 <= int(digits[1]) <= MAX_LIMIT:
        raise Invalid("Bad limit.", {"limit": [f"must be an integer from 1 to {MAX_LIMIT}"]})
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and not has_prefix(cursor, id_prefix):
        raise Invalid(
            "Bad cursor.", {"cursor": ["must be a next_cursor value from a previous page"]}
        )
    return PageRequest(int(digits[1]), cursor)


def id_schema(prefix: str) -> dict[str, object]:
    """The JSON Schema of an id of one kind (see relay.ids)."""
    return {"type": "string", "pattern": pattern(prefix)}


def id_param(prefix: str, name: str = "id") -> Param:
    """A path parameter holding an id of one kind."""
    return Param(name, "path", schema=id_schema(prefix))


def page_params(prefix: str) -> tuple[Param, Param]:
    """`limit` and `cursor` of a list of ids of one kind, for the OpenAPI document."""
    return (
        Param(
            "limit",
            schema={
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "default": DEFAULT_LIMIT,
            },
            description="Items per page",
        ),
        Param("cursor", schema=id_schema(prefix), description="next_cursor of the previous page"),
    )
