"""/v1/stats: the figures the console's overview draws, from the counters behind /metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from relay.api import shapes
from relay.api.bodies import ok
from relay.api.routing import ADMIN, Operation, Param
from relay.errors import Invalid
from relay.services import services
from relay.stats import WINDOWS, overview
from relay.timefmt import now
from relay.tokens import Principal


async def get_stats(request: Request, _: Principal) -> Response:
    """Totals and a chart series for the last hour or day, the backlog and troubled webhooks."""
    name = request.query_params.get("window") or "hour"
    window = WINDOWS.get(name)
    if window is None:
        raise Invalid("Unknown window.", {"window": [f"one of {', '.join(WINDOWS)}"]})
    return ok(await overview(services(request), window, now()))


OPERATIONS = [
    Operation(
        "GET",
        "/v1/stats",
        get_stats,
        "Delivery figures over the last hour or day",
        ADMIN,
        "operations",
        answers=shapes.Stats,
        params=(Param("window", schema={"type": "string", "enum": list(WINDOWS)}),),
    ),
]
