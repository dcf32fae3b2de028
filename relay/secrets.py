"""The master keyring: webhook secrets are stored encrypted with AES-256-GCM, never in clear.

A token reads `v1.<kid>.<base64url(nonce + ciphertext + tag)>`. `kid` is a short fingerprint of the
master key (not the key), so the keyring can pick the right key after a rotation and a
`relay keys reencrypt` can find tokens still under an old one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_TOKEN = re.compile(r"v1\.([0-9a-f]{8})\.([A-Za-z0-9_-]+)")


class SecretDecryptionError(Exception):
    """A stored secret cannot be decrypted: unknown key, wrong record, tampered or malformed."""


def generate_master_key() -> str:
    """Return a new master key for `RELAY_SECRET_KEYS`: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(_KEY_BYTES)).decode("ascii")


class Keyring:
    """Master keys: the first encrypts, all decrypt, so keys rotate without downtime."""

    __slots__ = ("_current_kid", "_keys")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("the keyring needs at least one master key")
        self._keys: dict[str, AESGCM] = {}
        for index, key in enumerate(keys):
            if len(key) != _KEY_BYTES:
                raise ValueError(f"master key entry {index} must be {_KEY_BYTES} bytes")
            kid = _key_id(key)
            if kid in self._keys:
                raise ValueError(f"master key entry {index} repeats an earlier key")
            self._keys[kid] = AESGCM(key)
        self._current_kid = _key_id(keys[0])

    @classmethod
    def from_strings(cls, keys: Sequence[str]) -> Keyring:
        """Build a keyring from base64 master keys as `RELAY_SECRET_KEYS` lists them."""
        return cls([_decode_master_key(index, text) for index, text in enumerate(keys)])

    def encrypt(self, plaintext: bytes, aad: bytes) -> str:
        """Encrypt under the current key, bound to `aad` (the owning record's id)."""
        header = _header(self._current_kid)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self._current_kid].encrypt(nonce, plaintext, header.encode() + aad)
        return header + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def decrypt(self, token: str, aad: bytes) -> bytes:
        """Return the plaintext of `token`, or raise `SecretDecryptionError`."""
        kid, raw = _parse(token)
        aead = self._keys.get(kid)
        if aead is None:
            raise SecretDecryptionError(f"the secret is encrypted under unknown master key {kid}")
        try:
            return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _header(kid).encode() + aad)
        except InvalidTag:
            raise SecretDecryptionError(
                "the encrypted secret failed authentication: tampered, or bound to another record"
            ) from None

    def is_current(self, token: str) -> bool:
        """Tell whether `token` is under the current (first) key; a malformed one is not."""
        return token.startswith(_header(self._current_kid))


def _key_id(key: bytes) -> str:
    # A domain-separated hash prefix: identifies the key without revealing anything usable.
    return hashlib.sha256(b"relay master key id\x00" + key).hexdigest()[:8]


def _header(kid: str) -> str:
    # The header is authenticated along with the caller's AAD, so it cannot be swapped.
    return f"v1.{kid}."


def _parse(token: str) -> tuple[str, bytes]:
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise SecretDecryptionError("the encrypted secret is malformed")
    kid, body = match.groups()
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:
        raise SecretDecryptionError("the encrypted secret is malformed") from None
    if len(raw) < _NONCE_BYTES + _TAG_BYTES:
        raise SecretDecryptionError("the encrypted secret is truncated")
    return kid, raw


def _decode_master_key(index: int, text: str) -> bytes:
    # Errors name the entry by position only: the value itself is secret.
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ValueError(f"master key entry {index} is not valid base64") from None
    if len(key) != _KEY_BYTES:
        raise ValueError(
            f"master key entry {index} must be base64 of exactly {_KEY_BYTES} bytes, not {len(key)}"
        )
    return key
