"""/v1/audit-log: who changed what through the API, for operators and for each tenant."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from relay.api import shapes
from relay.api.bodies import listing
from relay.api.pagination import page_params, page_request
from relay.api.routing import OWNERS, Operation, Param
from relay.api.times import TIME, query_ms
from relay.resources import resources
from relay.store.audit import AuditQuery
from relay.tokens import Principal


async def audit_log(request: Request, principal: Principal) -> Response:
    """Entries newest first; a tenant token sees only its own tenant's."""
    page = page_request(request, "aud")
    query = AuditQuery(
        tenant_id=principal.tenant_scope(request.query_params.get("tenant_id") or None),
        action=request.query_params.get("action") or None,
        since_ms=query_ms(request, "since"),
        until_ms=query_ms(request, "until"),
    )
    found, cursor = await resources(request).audit.page(query, page.limit, page.cursor)
    return listing([e.public() for e in found], cursor)


OPERATIONS = [
    Operation(
        "GET",
        "/v1/audit-log",
        audit_log,
        "List the audit trail",
        OWNERS,
        "audit",
        answers=shapes.AuditEntry,
        looks_up=True,
        params=(*page_params("aud"), Param("tenant_id"), Param("action"), *TIME),
        list_of=True,
    ),
]
