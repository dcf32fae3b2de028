"""`?limit=` and `?cursor=` read the same way for every list."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from relay.errors import Invalid
from relay.ids import has_prefix


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What page a client asked for."""

    limit: int
    cursor: str | None


def page_request(request: Request, id_prefix: str) -> PageRequest:
    """Parse limit (1–100, default 50) and a cursor that must be an id of the listed kind."""
    raw_limit = request.query_params.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise Invalid("Bad limit.", {"limit": ["must be an integer from 1 to 100"]})
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and not has_prefix(cursor, id_prefix):
        raise Invalid(
            "Bad cursor.", {"cursor": ["must be a next_cursor value from a previous page"]}
        )
    return PageRequest(int(raw_limit), cursor)
