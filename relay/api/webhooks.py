"""/v1/webhooks: customers register endpoints and manage their secrets."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response

from relay import event_types, webhooks
from relay.api.bodies import listing, ok, read_model
from relay.api.idempotency import commit
from relay.api.pagination import id_param, page_params, page_request
from relay.api.routing import OWNERS, Operation, Param, reserve_segment
from relay.api.shapes import (
    Count,
    Deleted,
    EventId,
    Headers,
    HttpStatus,
    OneOf,
    Shape,
    Timestamp,
    WebhookId,
)
from relay.api.trail import Audit
from relay.delivery import sample
from relay.delivery.model import TestSend
from relay.errors import Invalid
from relay.resources import Resources, resources
from relay.signing import PUBLIC_KEY_PREFIX, SECRET_PREFIX, Scheme
from relay.tokens import Principal
from relay.validation import JSON_INT, Patch, TenantId
from relay.webhook_rules import (
    INPUT,
    KNOWN_TYPES,
    CustomHeaders,
    Description,
    EventFilters,
    ImportedSecret,
    RateLimit,
    SchemeName,
    Url,
)
from relay.webhooks import (
    DEFAULT_GRACE_SECONDS,
    MAX_GRACE_SECONDS,
    apply_update,
    check_target,
    new_webhook,
    reveal,
    rotate,
)

ID = (id_param("wh"),)

VerificationKey = Annotated[
    str,
    StringConstraints(pattern=f"^({SECRET_PREFIX}|{PUBLIC_KEY_PREFIX})[A-Za-z0-9+/]+={{0,2}}$"),
    Field(
        description=(
            f"What a receiver verifies with: the {SECRET_PREFIX} secret (hmac-sha256), or the "
            f"{PUBLIC_KEY_PREFIX} public key (ed25519)"
        )
    ),
]


class WebhookCreate(BaseModel):
    """A new webhook's settings; `tenant_id` may be absent when the caller's token supplies it."""

    model_config = INPUT

    url: Url
    tenant_id: TenantId | None = None
    events: EventFilters = Field(default_factory=lambda: ["*"])
    description: Description = ""
    headers: CustomHeaders = Field(default_factory=dict)
    enabled: bool = True
    rate_limit_per_second: RateLimit | None = None
    secret: ImportedSecret | None = Field(default=None, repr=False)
    signature_scheme: SchemeName = Scheme.HMAC_SHA256

    @model_validator(mode="after")
    def _secret_fits_scheme(self) -> WebhookCreate:
        if self.secret is not None and self.signature_scheme is not Scheme.HMAC_SHA256:
            raise ValidationError.from_exception_data(
                "WebhookCreate",
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "secret", "Only hmac-sha256 webhooks take an imported secret."
                        ),
                        loc=("secret",),
                        input=None,
                    )
                ],
            )
        return self


class WebhookUpdate(Patch):
    """A change to a webhook's settings: only the fields present change."""

    model_config = INPUT
    NULLABLE = frozenset({"rate_limit_per_second"})

    url: Url | None = None
    events: EventFilters | None = None
    description: Description | None = None
    headers: CustomHeaders | None = None
    enabled: bool | None = None
    rate_limit_per_second: RateLimit | None = None
    signature_scheme: SchemeName | None = None


class RotateSecret(BaseModel):
    """`POST /v1/webhooks/{id}/rotate-secret`: how long the previous secret keeps signing."""

    model_config = INPUT

    grace_seconds: Annotated[int, Field(ge=0, le=MAX_GRACE_SECONDS), JSON_INT] = (
        DEFAULT_GRACE_SECONDS
    )


class SampleSend(BaseModel):
    """`POST /v1/webhooks/test`: which webhook gets a sample of which event type."""

    model_config = INPUT

    webhook_id: str = Field(min_length=1, max_length=64)
    type: str = Field("post.published", json_schema_extra={"enum": list(event_types.EVENT_TYPES)})

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in event_types.EVENT_TYPES:
            raise ValueError(f"Unknown event type; known: {', '.join(event_types.EVENT_TYPES)}.")
        return value


class TestResult(Shape):
    """A sample event sent to a webhook now, and what its endpoint answered."""

    source = TestSend

    event_id: EventId
    # Test sends are samples of the built-in types only.
    type: Annotated[str, OneOf(tuple(event_types.EVENT_TYPES))]
    sent_at: Timestamp
    url: str
    status_code: HttpStatus | None
    duration_ms: Count
    error: str | None
    response_body: str
    request_headers: Headers


class Webhook(Shape):
    """An endpoint that receives a tenant's events."""

    source = webhooks.Webhook

    id: WebhookId
    tenant_id: TenantId
    url: str
    # Names of built-in and registered types, '*' and 'prefix.*' wildcards.
    events: list[str]
    description: str
    headers: Annotated[
        Headers,
        Field(description="The custom headers' names; every value reads '[redacted]'."),
    ]
    enabled: bool
    disabled_reason: str | None
    rate_limit_per_second: Annotated[int, Field(ge=1)] | None
    signature_scheme: Scheme
    created_at: Timestamp
    updated_at: Timestamp


class EndpointConcurrency(Shape):
    """How many attempts relay makes to the webhook at once: adapted to how it answers."""

    current: Annotated[
        int,
        Field(
            ge=1,
            description=(
                "Attempts it may have in flight now: one more per round of quick 2xx answers "
                "while all are in use, half after a 429, a 503 or a timeout"
            ),
        ),
    ]
    max: Annotated[
        int, Field(ge=1, description="How far it may grow (RELAY_ENDPOINT_CONCURRENCY_MAX)")
    ]


class DeliveredWebhook(Webhook):
    """A webhook, with how relay delivers to it now (read-only)."""

    added = frozenset({"concurrency"})

    concurrency: EndpointConcurrency


class CreatedWebhook(DeliveredWebhook):
    """A webhook just registered, with what its receiver verifies signatures with."""

    added = frozenset({"concurrency", "secret"})

    secret: VerificationKey


# Deleted first in the bases: `deleted` comes last, as in every answer so far.
class DeletedWebhook(Deleted, Webhook):
    """A webhook that receives nothing more."""

    added = frozenset({"deleted"})


class PreviousSecret(Shape):
    """A secret replaced by a rotation that still signs for a while."""

    source = webhooks.SigningSecret

    expires_at: Timestamp


class Secret(Shape):
    """What verifies a webhook's signatures now, and until when previous secrets still sign."""

    source = webhooks.Verification

    secret: VerificationKey
    previous: list[PreviousSecret] = Field(
        description="Previous secrets that still sign, and until when"
    )


class RotatedSecret(Shape):
    """The new secret; the previous one also signs until previous_expires_at."""

    source = webhooks.Rotation

    secret: VerificationKey
    previous_expires_at: Timestamp


# /v1/webhooks/test is an operation of its own (POST): routes name `{id:webhook}`.
reserve_segment("webhook", "test")


async def _filter_context(request: Request) -> dict[str, Any]:
    """What `events` filters may name: the built-in types and those registered."""
    registered = await resources(request).event_types.names()
    return {KNOWN_TYPES: [*event_types.EVENT_TYPES, *registered]}


async def visible_webhook(
    request: Request, principal: Principal, webhook_id: str
) -> webhooks.Webhook:
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
    response = ok(
        CreatedWebhook.read(webhook, concurrency=_concurrency(ctx, None), secret=secret), 201
    )
    await ctx.webhooks.add(webhook, commit(lambda _: response))
    return response


def _concurrency(ctx: Resources, stored: int | None) -> EndpointConcurrency:
    """The concurrency a webhook is delivered at now (`stored`: as its answers adapted it, if
    they did)."""
    rule = ctx.settings.endpoint_concurrency_rule
    return EndpointConcurrency(current=rule.current(stored), max=rule.ceiling)


def _delivered(ctx: Resources, webhook: webhooks.Webhook, stored: int | None) -> DeliveredWebhook:
    return DeliveredWebhook.read(webhook, concurrency=_concurrency(ctx, stored))


async def _with_concurrency(
    request: Request, found: list[webhooks.Webhook]
) -> list[DeliveredWebhook]:
    """The webhooks as the API shows them, each with the concurrency it is delivered at now."""
    ctx = resources(request)
    stored = await ctx.webhooks.concurrency([w.id for w in found])
    return [_delivered(ctx, w, s) for w, s in zip(found, stored, strict=True)]


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

    def edit(webhook: webhooks.Webhook) -> webhooks.Webhook:
        principal.check_visible(webhook.tenant_id, "webhook")
        return apply_update(webhook, changes, ctx.keyring)

    def shown(webhook: webhooks.Webhook) -> Response:
        return ok(_delivered(ctx, webhook, stored))

    # Days of failures before it was disabled must not count against it now.
    webhook = await ctx.webhooks.change(
        request.path_params["id"],
        edit,
        commit(shown),
        forget_failures=changes.get("enabled") is True,
    )
    return shown(webhook)


def _update_action(body: object) -> str:
    """`webhook.enable` / `webhook.disable` when a PATCH sets `enabled`, else `webhook.update`."""
    if isinstance(body, dict) and isinstance(body.get("enabled"), bool):
        return "webhook.enable" if body["enabled"] else "webhook.disable"
    return "webhook.update"


def _deleted(webhook: webhooks.Webhook) -> Response:
    return ok(DeletedWebhook.read(webhook, deleted=True))


async def delete_webhook(request: Request, principal: Principal) -> Response:
    """Remove a webhook; it receives nothing more."""
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    return _deleted(await resources(request).webhooks.delete(webhook.id, commit(_deleted)))


async def get_secret(request: Request, principal: Principal) -> Response:
    """What verifies the current signature, and until when previous secrets still sign."""
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    return ok(Secret.read(reveal(webhook, resources(request).keyring)))


async def rotate_secret(request: Request, principal: Principal) -> Response:
    """A new secret signs from now on; the previous one also signs until previous_expires_at."""
    grace = (await read_model(request, RotateSecret)).grace_seconds
    ctx = resources(request)
    answers: list[Response] = []  # the last edit's is the one written

    def edit(webhook: webhooks.Webhook) -> webhooks.Webhook:
        principal.check_visible(webhook.tenant_id, "webhook")
        webhook, rotation = rotate(webhook, ctx.keyring, grace)
        answers.append(ok(RotatedSecret.read(rotation)))
        return webhook

    await ctx.webhooks.change(request.path_params["id"], edit, commit(lambda _: answers[-1]))
    return answers[-1]


async def send_test_event(request: Request, principal: Principal) -> Response:
    """Send a signed sample event to the webhook now and report what its endpoint answered."""
    spec = await read_model(request, SampleSend)
    webhook = await visible_webhook(request, principal, spec.webhook_id)
    return ok(TestResult.read(await sample.send_test(resources(request), webhook, spec.type)))


async def list_tests(request: Request, principal: Principal) -> Response:
    """The webhook's recent test sends and what its endpoint answered, newest first."""
    webhook = await visible_webhook(request, principal, request.path_params["id"])
    sent = await resources(request).sample_log.tests(webhook.id)
    return listing([TestResult.model_validate(record) for record in sent], None)


OPERATIONS = [
    Operation(
        "POST",
        "/v1/webhooks",
        create_webhook,
        "Register a webhook",
        OWNERS,
        "webhooks",
        answers=CreatedWebhook,
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
        answers=DeliveredWebhook,
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
        answers=TestResult,
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
        answers=TestResult,
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
        answers=DeliveredWebhook,
        params=ID,
    ),
    Operation(
        "PATCH",
        "/v1/webhooks/{id:webhook}",
        update_webhook,
        "Change a webhook",
        OWNERS,
        "webhooks",
        answers=DeliveredWebhook,
        body=WebhookUpdate,
        params=ID,
        audit=Audit(_update_action),
    ),
    Operation(
        "DELETE",
        "/v1/webhooks/{id:webhook}",
        delete_webhook,
        "Delete a webhook",
        OWNERS,
        "webhooks",
        answers=DeletedWebhook,
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
        answers=Secret,
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
        answers=RotatedSecret,
        body=RotateSecret,
        params=ID,
        audit=Audit("webhook.secret.rotate"),
    ),
]
