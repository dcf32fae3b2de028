"""Standard Webhooks signatures: the `webhook-*` headers every delivery carries.

See https://www.standardwebhooks.com/. The signed content is `{msg_id}.{timestamp}.{body}`;
`v1` is HMAC-SHA256 under a shared `whsec_` secret, `v1a` is Ed25519 under a `whsk_` private key
whose `whpk_` public key is all a receiver needs (so a leaked receiver config cannot forge).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from relay.errors import Invalid

SECRET_PREFIX = "whsec_"
PRIVATE_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"

# An HMAC key (`v1`) or an Ed25519 private key (`v1a`).
SigningKey = bytes | Ed25519PrivateKey


class Scheme(enum.StrEnum):
    """How a webhook's deliveries are signed."""

    HMAC_SHA256 = "hmac-sha256"
    ED25519 = "ed25519"


# The spec's bounds: at least 192 bits, at most 512. We generate 256.
_MIN_SECRET_BYTES = 24
_MAX_SECRET_BYTES = 64
_NEW_SECRET_BYTES = 32


def generate_secret() -> str:
    """Return a new signing secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(_NEW_SECRET_BYTES)).decode("ascii")


def generate_signing_secret(scheme: Scheme) -> str:
    """A new secret of `scheme` as relay keeps it: a `whsec_` secret or a `whsk_` private key."""
    if scheme is Scheme.HMAC_SHA256:
        return generate_secret()
    raw = Ed25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )
    return PRIVATE_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def scheme_of(secret: str) -> Scheme:
    """Which scheme a kept secret signs with, by its prefix."""
    return Scheme.ED25519 if secret.startswith(PRIVATE_KEY_PREFIX) else Scheme.HMAC_SHA256


def signing_key(secret: str) -> SigningKey:
    """The key a kept secret (`whsec_` or `whsk_`) signs with."""
    if secret.startswith(PRIVATE_KEY_PREFIX):
        raw = base64.b64decode(secret[len(PRIVATE_KEY_PREFIX) :], validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    return decode_secret(secret)


def verification_key(secret: str) -> str:
    """What a receiver verifies with: the `whsec_` secret itself, or a `whsk_` key's `whpk_`."""
    key = signing_key(secret)
    if isinstance(key, bytes):
        return secret
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(public).decode("ascii")


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


def sign(secrets: Sequence[SigningKey], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `webhook-signature` value, one signature per key in the order given:
    `v1,<base64 HMAC>` for an HMAC key, `v1a,<base64 Ed25519>` for a private key."""
    if not secrets:
        raise ValueError("signing needs at least one secret")
    # A `.` in the id would make the id/timestamp/body boundary ambiguous (the spec forbids it).
    if "." in msg_id:
        raise ValueError("a webhook id must not contain '.'")
    prefix = f"{msg_id}.{timestamp}.".encode()
    return " ".join(
        _sign_v1(key, prefix, body) if isinstance(key, bytes) else _sign_v1a(key, prefix, body)
        for key in secrets
    )


def signature_headers(
    msg_id: str, timestamp: int, body: bytes, secrets: Sequence[SigningKey]
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


def _sign_v1a(key: Ed25519PrivateKey, prefix: bytes, body: bytes) -> str:
    return "v1a," + base64.b64encode(key.sign(prefix + body)).decode("ascii")


def _invalid_secret(message: str) -> Invalid:
    return Invalid("The webhook secret is invalid.", {"secret": [message]})
