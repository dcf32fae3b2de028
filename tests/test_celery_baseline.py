"""The Celery baseline's signing (bench/baseline/signing.py): what relay's bench compares relay
with must sign as relay does, or the receiver would count its deliveries as rejected."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench.baseline.signing import secret_key, webhook_headers
from relay.signing import decode_secret, generate_secret, sign

BODY = b'{"id":"evt_1","type":"post.published","tenant_id":"t1","data":{"post_id":"p_1"}}'


def test_the_celery_tasks_signature_is_relays_and_verifies_with_standardwebhooks() -> None:
    secret = generate_secret()
    now = int(time.time())

    headers = webhook_headers(secret_key(secret), "evt_1", now, BODY)

    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == str(now)
    assert headers["webhook-signature"] == sign([decode_secret(secret)], "evt_1", now, BODY)
    Webhook(secret).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"p_1", b"p_2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)
