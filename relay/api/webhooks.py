"""/v1/webhooks: customers register endpoints and manage their secrets."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from relay import events
from relay.api import shapes
from relay.api.bodies import listing, ok, read_model
from relay.api.idempotency import commit
from relay.api.pagination import id_param, page_params, page_request
from relay.api.routing import OWNERS, Operation, Param, reserve_segment
from relay.audit import Audit, webhook_change
from relay.delivery import sample
from relay.errors import Invalid
from relay.resources import Resources, resources
from relay.timefmt import from_timestamp
from relay.tokens import Principal
from relay.webhooks import (
    KNOWN_TYPES,
    RotateSecret,
    SampleSend,
    Webhook,
    WebhookCreate,
    WebhookUpdate,
    apply_update,
    check_target,
    new_webhook,
    reveal,
    rotate,
)

ID = (id_param("wh"),)


# /v1/webhooks/test is an operation of its own (POST): routes name `{id:webhook}`.
reserve_segment("webhook", "test")


async def _filter_context(request: Request) -> dict[str, Any]:
    """What `events` filters may name: the built-in types and those registered."""
    registered = await resources(request).event_types.names()
    return {KNOWN_TYPES: [*events.EVENT_TYPES, *registered]}


async def visible_webhook(request: Request, principal: Principal, webhook_id: str) -> Webhook:
    """The webhook, if the caller may see it; another tenant's is a 404."""
    webhook = await resources(request).webhooks.get(webhook_id)
    principal.check_visible(webhook.tenant_id, "webhook")
    return webhook


async def create_webhook(request: Request, principal: Principal) -> Response:
    """Register an endpoint; its secret is in the response (and later via /secret)."""
    spec = await read_model(request, WebhookCreate, await _filter_context(request))
    tenant_id = principal.tenant_scope(spec.tenant_id)
    if tenant_id is None:
        raise Invalid("Say which tenant the webhook is for.", {"tenant_id": ["required"]})
    ctx = resources(request)
    check_target(spec.url, ctx.policy)
    webhook, secret = new_webhook(spec, tenant_id, ctx.keyring)
    response = ok({**_delivered(ctx, webhook, None), "secret": secret}, 201)
    await ctx.webhooks.add(webhook, commit(lambda _: response))
    return response


def _delivered(ctx: Resources, webhook: Webhook, stored: int | None) -> dict[str, object]:
    """A webhook as the API shows it, with the concurrency it is delivered at now (`stored`:
    as its answers adapted it, if they did)."""
    rule = ctx.settings.endpoint_concurrency_rule
    return {
        **webhook.public(),
        "concurrency": {"current": rule.current(stored), "max": rule.ceiling},
    }


async def _with_concurrency(request: Request, webhooks: list[Webhook]) -> list[dict[str, object]]:
    """The webhooks as the API shows them, each with the concurrency it is delivered at now."""
    ctx = resources(request)
    stored = await ctx.webhooks.concurrency([w.id for w in webhooks])
    return [_delivered(ctx, w, s) for w, s in zip(webhooks, stored, strict=True)]


async def list_webhooks(request: Request, principal: Principal) -> Response:
    """Webhooks newest first, optionally one tenant's (a tenant token sees only its own)."""
    page = page_request(request, "wh")
    tenant_id = principal.tenant_scope(request.query_params.get("tenant_id") or None)
    found, cursor = await resources(request).webhooks.page(tenant_id, page.limit, page.cursor)
    return listing(await _with_concurrency(request, found), cursor)


async def get_webhook(request: Request, principal: Principal) -> Response:
    """One webhook."""
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    [shown] = await _with_concurrency(request, [webhook])
    return ok(shown)


async def update_webhook(request: Request, principal: Principal) -> Response:
    """Change only the fields given; enabling a disabled webhook clears its disabled_reason."""
    changes = (await read_model(request, WebhookUpdate, await _filter_context(request))).changes()
    if "url" in changes:
        check_target(changes["url"], resources(request).policy)

    ctx = resources(request)
    # Read first: the answer is made inside the change, to be stored with it.
    [stored] = await ctx.webhooks.concurrency([request.path_params["id"]])

    def edit(webhook: Webhook) -> Webhook:
        principal.check_visible(webhook.tenant_id, "webhook")
        return apply_update(webhook, changes, ctx.keyring)

    def shown(webhook: Webhook) -> Response:
        return ok(_delivered(ctx, webhook, stored))

    # Days of failures before it was disabled must not count against it now.
    webhook = await ctx.webhooks.change(
        request.path_params["id"],
        edit,
        commit(shown),
        forget_failures=changes.get("enabled") is True,
    )
    return shown(webhook)


def _deleted(webhook: Webhook) -> Response:
    return ok({**webhook.public(), "deleted": True})


async def delete_webhook(request: Request, principal: Principal) -> Response:
    """Remove a webhook; it receives nothing more."""
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    return _deleted(await resources(request).webhooks.delete(webhook.id, commit(_deleted)))


async def get_secret(request: Request, principal: Principal) -> Response:
    """What verifies the current signature, and until when previous secrets still sign."""
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    return ok(reveal(webhook, resources(request).keyring))


async def rotate_secret(request: Request, principal: Principal) -> Response:
    """A new secret signs from now on; the previous one also signs until previous_expires_at."""
    grace = (await read_model(request, RotateSecret)).grace_seconds
    ctx = resources(request)
    answers: list[Response] = []  # the last edit's is the one written

    def edit(webhook: Webhook) -> Webhook:
        principal.check_visible(webhook.tenant_id, "webhook")
        webhook, secret, expires_ms = rotate(webhook, ctx.keyring, grace)
        expires_at = from_timestamp(expires_ms / 1000)
        answers.append(ok({"secret": secret, "previous_expires_at": expires_at}))
        return webhook

    await ctx.webhooks.change(request.path_params["id"], edit, commit(lambda _: answers[-1]))
    return answers[-1]


async def send_test_event(request: Request, principal: Principal) -> Response:
    """Send a signed sample event to the webhook now and report what its endpoint answered."""
    spec = await read_model(request, SampleSend)
    webhook = await visible_webhook(request, principal, spec.webhook_id)
    return ok(await sample.send_test(resources(request), webhook, spec.type))


async def list_tests(request: Request, principal: Principal) -> Response:
    """The webhook's recent test sends and what its endpoint answered, newest first."""
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    return listing(await resources(request).sample_log.tests(webhook.id), None)


OPERATIONS = [
    Operation(
        "POST",
        "/v1/webhooks",
        create_webhook,
        "Register a webhook",
        OWNERS,
        "webhooks",
        answers=shapes.CreatedWebhook,
        looks_up=True,
        body=WebhookCreate,
        status=201,
        audit=Audit("webhook.create"),
    ),
    Operation(
        "GET",
        "/v1/webhooks",
        list_webhooks,
        "List webhooks",
        OWNERS,
        "webhooks",
        answers=shapes.DeliveredWebhook,
        looks_up=True,
        params=(*page_params("wh"), Param("tenant_id")),
        list_of=True,
    ),
    Operation(
        "POST",
        "/v1/webhooks/test",
        send_test_event,
        "Send a sample event now",
        OWNERS,
        "webhooks",
        answers=shapes.TestResult,
        looks_up=True,
        body=SampleSend,
        # A sample changes nothing but the list of test sends; again, it sends another.
        repeats=True,
    ),
    Operation(
        "GET",
        "/v1/webhooks/{id}/tests",
        list_tests,
        "List a webhook's test sends",
        OWNERS,
        "webhooks",
        answers=shapes.TestResult,
        params=ID,
        list_of=True,
    ),
    Operation(
        "GET",
        "/v1/webhooks/{id:webhook}",
        get_webhook,
        "Get a webhook",
        OWNERS,
        "webhooks",
        answers=shapes.DeliveredWebhook,
        params=ID,
    ),
    Operation(
        "PATCH",
        "/v1/webhooks/{id:webhook}",
        update_webhook,
        "Change a webhook",
        OWNERS,
        "webhooks",
        answers=shapes.DeliveredWebhook,
        body=WebhookUpdate,
        params=ID,
        audit=Audit(webhook_change),
    ),
    Operation(
        "DELETE",
        "/v1/webhooks/{id:webhook}",
        delete_webhook,
        "Delete a webhook",
        OWNERS,
        "webhooks",
        answers=shapes.DeletedWebhook,
        params=ID,
        audit=Audit("webhook.delete"),
    ),
    Operation(
        "GET",
        "/v1/webhooks/{id}/secret",
        get_secret,
        "Reveal the signing secret",
        OWNERS,
        "webhooks",
        answers=shapes.Secret,
        params=ID,
        audit=Audit("webhook.secret.reveal"),
    ),
    Operation(
        "POST",
        "/v1/webhooks/{id}/rotate-secret",
        rotate_secret,
        "Rotate the secret",
        OWNERS,
        "webhooks",
        answers=shapes.RotatedSecret,
        body=RotateSecret,
        params=ID,
        audit=Audit("webhook.secret.rotate"),
    ),
]
