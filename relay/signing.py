"""Standard Webhooks signatures: the `webhook-*` headers every delivery carries.

See https://www.standardwebhooks.com/. The signed content is `{msg_id}.{timestamp}.{body}`;
`v1` is HMAC-SHA256 under a shared `whsec_` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence

from relay.errors import Invalid

SECRET_PREFIX = "whsec_"

# The spec's bounds: at least 192 bits, at most 512. We generate 256.
_MIN_SECRET_BYTES = 24
_MAX_SECRET_BYTES = 64
_NEW_SECRET_BYTES = 32


def generate_secret() -> str:
    """Return a new signing secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(_NEW_SECRET_BYTES)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """Return the key bytes of a `whsec_` secret, or raise `Invalid` saying what is wrong."""
    # Messages are fixed strings: a secret must never be echoed into responses or logs.
    if not secret.startswith(SECRET_PREFIX):
        raise _invalid_secret(f"Must start with {SECRET_PREFIX!r}.")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError:
        raise _invalid_secret(f"Must be {SECRET_PREFIX!r} followed by standard base64.") from None
    if not _MIN_SECRET_BYTES <= len(key) <= _MAX_SECRET_BYTES:
        raise _invalid_secret(
            f"Must encode {_MIN_SECRET_BYTES} to {_MAX_SECRET_BYTES} bytes, not {len(key)}."
        )
    return key


def sign(secrets: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `webhook-signature` value: a `v1,<base64 HMAC>` per key, in the order given."""
    if not secrets:
        raise ValueError("signing needs at least one secret")
    # A `.` in the id would make the id/timestamp/body boundary ambiguous (the spec forbids it).
    if "." in msg_id:
        raise ValueError("a webhook id must not contain '.'")
    prefix = f"{msg_id}.{timestamp}.".encode()
    return " ".join(_sign_v1(key, prefix, body) for key in secrets)


def signature_headers(
    msg_id: str, timestamp: int, body: bytes, secrets: Sequence[bytes]
) -> dict[str, str]:
    """Return the three Standard Webhooks headers (id, timestamp, signature) of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
    }


def _sign_v1(key: bytes, prefix: bytes, body: bytes) -> str:
    # Feeding prefix and body separately avoids copying a body of up to a megabyte per key.
    mac = hmac.new(key, prefix, hashlib.sha256)
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def _invalid_secret(message: str) -> Invalid:
    return Invalid("The webhook secret is invalid.", {"secret": [message]})
