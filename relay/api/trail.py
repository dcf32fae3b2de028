"""Recording API changes in the audit trail: what each operation records (Audit), and the
request id each entry carries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response

from relay import audit, logs
from relay.api.idempotency import audit_marker
from relay.errors import NotFound
from relay.ids import has_prefix
from relay.resources import resources
from relay.store import codec
from relay.tokens import Principal

# The log field naming an object an entry is about, by the prefix of its id.
_LOG_FIELDS = {"wh": "webhook_id", "evt": "event_id", "dlv": "delivery_id"}


# An action is a fixed name, or is read from the request's JSON body (a PATCH that only turns
# a webhook on or off is an enable or a disable, not just an update).
ActionRule = str | Callable[[object], str]


@dataclass(frozen=True, slots=True)
class Audit:
    """What a successful call of an operation records: its action, and which field of the
    answer's `data` names the object it touched (else the path's `id`)."""

    action: ActionRule
    object_field: str = "id"

    def action_for(self, body: object) -> str:
        """The action name for a call with this request body."""
        return self.action if isinstance(self.action, str) else self.action(body)


def request_id(_: Request) -> str | None:
    """The id of this request: the one relay's request middleware took or made, logged with
    every line of the request and returned in `X-Request-Id`."""
    return logs.request_id()


async def record(request: Request, principal: Principal, rule: Audit, response: Response) -> None:
    """Add the entry for a successful change: the object and its tenant come from the answer's
    `data`, else from the path's `id` (a webhook's tenant is looked up)."""
    data = codec.loads(bytes(response.body)).get("data")
    data = data if isinstance(data, dict) else {}
    object_id = data.get(rule.object_field) or request.path_params.get("id")
    tenant_id = data.get("tenant_id") or await _tenant_of(request, object_id) or principal.tenant_id
    # The request's log line names what it changed, as the entry does.
    logs.annotate(tenant_id=tenant_id, **_log_field(object_id))
    try:
        body = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        body = None
    await resources(request).audit.add(
        audit.entry(
            rule.action_for(body),
            audit.Actor(principal.token_id, principal.role.value),
            object_id,
            tenant_id,
            request_id(request),
        ),
        once=audit_marker(request, principal),
    )


def _log_field(object_id: str | None) -> dict[str, str]:
    for prefix, field in _LOG_FIELDS.items():
        if object_id is not None and has_prefix(object_id, prefix):
            return {field: object_id}
    return {}


async def _tenant_of(request: Request, object_id: str | None) -> str | None:
    if object_id is None or not has_prefix(object_id, "wh"):
        return None
    webhooks = resources(request).webhooks
    try:
        return (await webhooks.get(object_id)).tenant_id
    except NotFound:
        return None
