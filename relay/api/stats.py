"""/v1/stats: the figures the console's overview draws, from the per-minute counters in history.

Admins see everyone's or narrow to a tenant; a tenant token sees its own tenant's only. Either
may narrow to one webhook it may see (another tenant's is a 404)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from relay.api import shapes
from relay.api.bodies import ok
from relay.api.pagination import id_schema
from relay.api.routing import OWNERS, Operation, Param
from relay.api.webhooks import visible_webhook
from relay.errors import Invalid
from relay.resources import resources
from relay.stats import WINDOWS, Scope, overview
from relay.timefmt import now
from relay.tokens import Principal


async def _scope(request: Request, principal: Principal) -> Scope:
    tenant_id = principal.tenant_scope(request.query_params.get("tenant_id") or None)
    webhook_id = request.query_params.get("webhook_id")
    if not webhook_id:
        return Scope(tenant_id)
    webhook = await visible_webhook(request, principal, webhook_id)
    return Scope(webhook.tenant_id, webhook.id)


async def get_stats(request: Request, principal: Principal) -> Response:
    """Totals and a chart series for the last hour or day, the backlog and troubled webhooks."""
    name = request.query_params.get("window") or "hour"
    window = WINDOWS.get(name)
    if window is None:
        raise Invalid("Unknown window.", {"window": [f"one of {', '.join(WINDOWS)}"]})
    scope = await _scope(request, principal)
    return ok(await overview(resources(request), window, now(), scope))


OPERATIONS = [
    Operation(
        "GET",
        "/v1/stats",
        get_stats,
        "Delivery figures over the last hour or day",
        OWNERS,
        "operations",
        answers=shapes.Stats,
        looks_up=True,
        params=(
            Param("window", schema={"type": "string", "enum": list(WINDOWS)}),
            Param("tenant_id", description="an admin's view of one tenant"),
            Param(
                "webhook_id",
                schema=id_schema("wh"),
                description="one webhook's attempts, deliveries and backlog (no events)",
            ),
        ),
    ),
]
