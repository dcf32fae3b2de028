"""Standard Webhooks signatures, checked against the reference `standardwebhooks` verifier."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.errors import Invalid
from relay.signing import decode_secret, generate_secret, sign, signature_headers

BODY = b'{"id":"evt_1","type":"post.published","data":{"post_id":"p_1"}}'
MSG_ID = "evt_01jd0000000000000000000000"

# Ids that the spec allows: anything non-empty without a `.`.
msg_ids = st.text(min_size=1).filter(lambda s: "." not in s)
# The reference verifier decodes the body as UTF-8, as every JSON body is.
bodies = st.text().map(str.encode)
raw_secrets = st.binary(min_size=24, max_size=64)

Tamper = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]


def _whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


# A well-formed secret (32 zero bytes) for building malformed ones from.
ZEROS = _whsec(bytes(32))


def _now() -> int:
    # The reference verifier refuses timestamps more than five minutes from its clock.
    return int(time.time())


def test_the_published_standard_webhooks_vector() -> None:
    # The test vector shared by the Standard Webhooks / Svix libraries.
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign([key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_one_secret_verifies_with_the_reference_library() -> None:
    secret = generate_secret()
    headers = signature_headers(MSG_ID, _now(), BODY, [decode_secret(secret)])
    assert Webhook(secret).verify(BODY, headers) == {
        "id": "evt_1",
        "type": "post.published",
        "data": {"post_id": "p_1"},
    }


def test_headers_are_exactly_the_standard_three() -> None:
    key = decode_secret(generate_secret())
    headers = signature_headers(MSG_ID, 1700000000, BODY, [key])
    assert headers == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": "1700000000",
        "webhook-signature": sign([key], MSG_ID, 1700000000, BODY),
    }


def test_two_secrets_each_verify_the_two_signature_header() -> None:
    old, new = generate_secret(), generate_secret()
    headers = signature_headers(MSG_ID, _now(), BODY, [decode_secret(new), decode_secret(old)])
    parts = headers["webhook-signature"].split(" ")
    assert len(parts) == 2
    assert all(part.startswith("v1,") for part in parts)
    for secret in (old, new):
        Webhook(secret).verify(BODY, headers, json_parse=False)


def test_signatures_come_in_the_order_of_the_keys() -> None:
    a, b = decode_secret(generate_secret()), decode_secret(generate_secret())
    ts = 1700000000
    assert (
        sign([a, b], MSG_ID, ts, BODY)
        == f"{sign([a], MSG_ID, ts, BODY)} {sign([b], MSG_ID, ts, BODY)}"
    )
    assert sign([b, a], MSG_ID, ts, BODY) != sign([a, b], MSG_ID, ts, BODY)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b: (h, b + b" "), id="body"),
        pytest.param(lambda h, b: ({**h, "webhook-id": MSG_ID + "x"}, b), id="id"),
        pytest.param(
            lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
            id="timestamp",
        ),
    ],
)
def test_tampering_is_rejected(tamper: Tamper) -> None:
    secret = generate_secret()
    headers = signature_headers(MSG_ID, _now(), BODY, [decode_secret(secret)])
    Webhook(secret).verify(BODY, headers, json_parse=False)  # untampered: accepted
    bad_headers, bad_body = tamper(headers, BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(secret).verify(bad_body, bad_headers, json_parse=False)


def test_another_secret_is_rejected() -> None:
    headers = signature_headers(MSG_ID, _now(), BODY, [decode_secret(generate_secret())])
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(generate_secret()).verify(BODY, headers, json_parse=False)


def test_signing_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        sign([], MSG_ID, 1700000000, BODY)


def test_an_id_with_a_dot_is_refused() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        sign([decode_secret(generate_secret())], "evt.1", 1700000000, BODY)


@given(key=raw_secrets, msg_id=msg_ids, body=bodies)
def test_any_message_verifies_with_the_reference_library(
    key: bytes, msg_id: str, body: bytes
) -> None:
    ts = _now()
    headers = signature_headers(msg_id, ts, body, [decode_secret(_whsec(key))])
    reference = Webhook(_whsec(key))
    assert headers["webhook-signature"] == reference.sign(
        msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode()
    )
    reference.verify(body, headers, json_parse=False)


def test_generated_secrets_are_32_random_bytes() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_")
    assert len(decode_secret(first)) == 32
    assert first != second


@given(key=raw_secrets)
def test_secrets_of_24_to_64_bytes_round_trip(key: bytes) -> None:
    assert decode_secret(_whsec(key)) == key


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        pytest.param(ZEROS.replace("whsec_", "whsk_"), "start with", id="prefix"),
        pytest.param(ZEROS.replace("whsec_", "WHSEC_"), "start with", id="case"),
        pytest.param(ZEROS.removeprefix("whsec_"), "start with", id="no-prefix"),
        pytest.param("whsec_not*base64!", "base64", id="alphabet"),
        pytest.param(ZEROS[:14] + "!" + ZEROS[14:], "base64", id="junk-inside"),
        pytest.param(ZEROS[:20] + "\n" + ZEROS[20:], "base64", id="newline-inside"),
        pytest.param(ZEROS[:-1], "base64", id="padding"),
        pytest.param(
            "whsec_" + base64.urlsafe_b64encode(b"\xff" * 32).decode(), "base64", id="url"
        ),
        pytest.param("whsec_" + "é" * 44, "base64", id="non-ascii"),
        pytest.param(_whsec(bytes(23)), "not 23", id="23-bytes"),
        pytest.param(_whsec(bytes(65)), "not 65", id="65-bytes"),
        pytest.param("whsec_", "not 0", id="empty"),
    ],
)
def test_invalid_secrets_are_rejected(secret: str, message: str) -> None:
    with pytest.raises(Invalid) as caught:
        decode_secret(secret)
    assert caught.value.status == 422
    assert message in caught.value.errors["secret"][0]
    assert secret not in _reported(caught.value)


@given(key=st.one_of(st.binary(min_size=1, max_size=23), st.binary(min_size=65, max_size=200)))
def test_secrets_of_the_wrong_size_are_rejected_without_echo(key: bytes) -> None:
    secret = _whsec(key)
    with pytest.raises(Invalid, match="webhook secret is invalid") as caught:
        decode_secret(secret)
    assert secret[len("whsec_") :] not in _reported(caught.value)


@given(secret=st.text().filter(lambda s: not s.startswith("whsec_")))
def test_secrets_without_the_prefix_are_rejected(secret: str) -> None:
    with pytest.raises(Invalid):
        decode_secret(secret)


def _reported(error: Invalid) -> str:
    return " ".join([str(error), error.detail, *error.errors["secret"]])
