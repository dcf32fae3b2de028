"""/v1/audit-log: who changed what through the API, for operators and for each tenant."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from relay import audit as domain
from relay.api.bodies import listing
from relay.api.pagination import page_params, page_request
from relay.api.routing import OWNERS, Operation, Param
from relay.api.shapes import Shape, Timestamp
from relay.api.times import TIME, query_ms
from relay.ids import pattern as id_pattern
from relay.resources import resources
from relay.store.audit import AuditQuery
from relay.tokens import Principal
from relay.validation import TenantId


class Actor(Shape):
    """Who made a change."""

    source = domain.Actor

    token_id: str = Field(description="The token's id, or `system`")
    role: str


class AuditEntry(Shape):
    """One change made through the API."""

    source = domain.AuditEntry

    id: Annotated[str, StringConstraints(pattern=id_pattern("aud"))]
    at: Timestamp
    action: str = Field(description="What was done, e.g. webhook.secret.rotate")
    actor: Actor
    object_id: str | None
    tenant_id: TenantId | None
    request_id: str | None = Field(
        description="The request's X-Request-Id (the caller's, or one relay made)"
    )


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
    return listing([AuditEntry.model_validate(e) for e in found], cursor)


OPERATIONS = [
    Operation(
        "GET",
        "/v1/audit-log",
        audit_log,
        "List the audit trail",
        OWNERS,
        "audit",
        answers=AuditEntry,
        looks_up=True,
        params=(*page_params("aud"), Param("tenant_id"), Param("action"), *TIME),
        list_of=True,
    ),
]
