"""`?since=` and `?until=`: the time window every list takes, read and described the same way."""

from __future__ import annotations

from starlette.requests import Request

from relay.api.routing import Param
from relay.timefmt import parse_rfc3339

_TIMESTAMP: dict[str, object] = {"type": "string", "format": "date-time"}
TIME: tuple[Param, ...] = (
    Param("since", schema=_TIMESTAMP, description="RFC 3339; created at or after"),
    Param("until", schema=_TIMESTAMP, description="RFC 3339; created at or before"),
)


def query_ms(request: Request, name: str) -> int | None:
    """A time parameter as unix milliseconds, None when absent."""
    value = request.query_params.get(name)
    return int(parse_rfc3339(value, name).timestamp() * 1000) if value else None
