"""Test sends: a signed sample event sent to a webhook now, and what its endpoint answered."""

from __future__ import annotations

from dataclasses import asdict

from relay import event_types, ids
from relay.delivery.attempt import receiver_request
from relay.delivery.model import TestSend
from relay.errors import RateLimited
from relay.resources import Resources
from relay.timefmt import from_timestamp
from relay.webhooks import Webhook


async def send_test(svc: Resources, webhook: Webhook, event_type: str) -> TestSend:
    """Send a signed sample event now, record what the endpoint answered, and return it.

    Limited per tenant: otherwise any tenant could make relay POST to any public host on demand.
    """
    wait = await svc.test_sends.wait(webhook.tenant_id)
    if wait:
        raise RateLimited(
            f"This tenant's test sends are limited to {svc.settings.test_sends_per_minute} "
            f"a minute; retry in {wait} s.",
            retry_after=wait,
        )
    now_ms = await svc.deliveries.redis_now_ms()
    event_id = ids.new_id("evt", now_ms)
    sent_at = from_timestamp(now_ms / 1000)
    sample = event_types.EVENT_TYPES[event_type].sample
    body = event_types.envelope(event_id, event_type, webhook.tenant_id, sample, sent_at)
    request = receiver_request(webhook, svc.keyring, event_id, body, now_ms, test=True)
    result = await svc.sender.send(request.url, request.body, request.headers)
    sent = TestSend(
        event_id=event_id,
        type=event_type,
        sent_at=sent_at,
        url=request.url,
        status_code=result.status_code,
        duration_ms=result.duration_ms,
        error=result.error,
        response_body=result.response_body,
        request_headers=request.logged_headers,
    )
    await svc.sample_log.record_test(webhook.id, asdict(sent))
    return sent
