"""The master keyring: webhook secrets encrypted at rest, bound to their record, rotatable."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.secrets import Keyring, SecretDecryptionError, generate_master_key
from relay.signing import generate_secret

K1 = generate_master_key()
K2 = generate_master_key()
AAD = b"wh_01jd0000000000000000000000"
SECRET = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _raw(token: str) -> bytes:
    body = token.split(".")[2]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _with_raw(token: str, raw: bytes) -> str:
    version, kid, _ = token.split(".")
    return f"{version}.{kid}." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@given(plaintext=st.binary(), aad=st.binary())
def test_round_trip(plaintext: bytes, aad: bytes) -> None:
    ring = Keyring.from_strings([K1])
    assert ring.decrypt(ring.encrypt(plaintext, aad), aad) == plaintext


def test_tokens_are_compact_ascii_with_a_key_id() -> None:
    token = Keyring.from_strings([K1]).encrypt(SECRET, AAD)
    assert re.fullmatch(r"v1\.[0-9a-f]{8}\.[A-Za-z0-9_-]+", token)
    # 12-byte nonce + ciphertext + 16-byte tag, nothing more.
    assert len(_raw(token)) == 12 + len(SECRET) + 16


def test_the_key_id_is_not_the_key() -> None:
    kid = Keyring.from_strings([K1]).encrypt(SECRET, AAD).split(".")[1]
    key = base64.b64decode(K1)
    for encoding in (K1, key.hex(), base64.urlsafe_b64encode(key).decode()):
        assert kid not in encoding
    assert kid != Keyring.from_strings([K2]).encrypt(SECRET, AAD).split(".")[1]


def test_each_encryption_uses_a_fresh_nonce() -> None:
    ring = Keyring.from_strings([K1])
    tokens = {ring.encrypt(SECRET, AAD) for _ in range(100)}
    assert len(tokens) == 100
    assert len({_raw(token)[:12] for token in tokens}) == 100


def test_another_records_aad_fails() -> None:
    ring = Keyring.from_strings([K1])
    token = ring.encrypt(SECRET, AAD)
    with pytest.raises(SecretDecryptionError, match="authentication"):
        ring.decrypt(token, b"wh_another")


def test_every_flipped_byte_fails() -> None:
    ring = Keyring.from_strings([K1])
    token = ring.encrypt(SECRET, AAD)
    raw = _raw(token)
    for index in range(len(raw)):  # nonce, ciphertext and tag alike
        tampered = bytearray(raw)
        tampered[index] ^= 0x01
        with pytest.raises(SecretDecryptionError):
            ring.decrypt(_with_raw(token, bytes(tampered)), AAD)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda t: t[:-4], id="truncated"),
        pytest.param(lambda t: _with_raw(t, _raw(t)[:27]), id="shorter-than-nonce-and-tag"),
        pytest.param(lambda t: _with_raw(t, _raw(t)[:5]), id="shorter-than-nonce"),
        pytest.param(lambda t: _with_raw(t, _raw(t) + b"\x00"), id="extended"),
        pytest.param(lambda t: "v2" + t[2:], id="version"),
        pytest.param(lambda t: t + "=", id="padding"),
        pytest.param(lambda t: t.replace(".", ":", 1), id="separator"),
        pytest.param(lambda t: t[:-1] + "*", id="alphabet"),
        pytest.param(lambda t: t + "A", id="impossible-length"),
        pytest.param(lambda t: "", id="empty"),
    ],
)
def test_malformed_tokens_fail(tamper: Callable[[str], str]) -> None:
    ring = Keyring.from_strings([K1])
    token = ring.encrypt(SECRET, AAD)
    with pytest.raises(SecretDecryptionError):
        ring.decrypt(tamper(token), AAD)


@given(token=st.text())
def test_arbitrary_text_fails_only_with_the_domain_error(token: str) -> None:
    with pytest.raises(SecretDecryptionError):
        Keyring.from_strings([K1]).decrypt(token, AAD)


def test_a_keyring_without_the_key_fails() -> None:
    token = Keyring.from_strings([K1]).encrypt(SECRET, AAD)
    with pytest.raises(SecretDecryptionError, match="unknown master key"):
        Keyring.from_strings([K2]).decrypt(token, AAD)


def test_a_forged_key_id_fails() -> None:
    token = Keyring.from_strings([K1]).encrypt(SECRET, AAD)
    k2_kid = Keyring.from_strings([K2]).encrypt(SECRET, AAD).split(".")[1]
    forged = token.replace(token.split(".")[1], k2_kid, 1)
    with pytest.raises(SecretDecryptionError, match="authentication"):
        Keyring.from_strings([K2, K1]).decrypt(forged, AAD)


def test_master_key_rotation() -> None:
    old_ring = Keyring.from_strings([K1])
    old_token = old_ring.encrypt(SECRET, AAD)
    assert old_ring.is_current(old_token)

    rotated = Keyring.from_strings([K2, K1])
    assert rotated.decrypt(old_token, AAD) == SECRET
    assert not rotated.is_current(old_token)

    new_token = rotated.encrypt(rotated.decrypt(old_token, AAD), AAD)
    assert rotated.is_current(new_token)
    # Truly under K2 now: K1 can be retired.
    assert Keyring.from_strings([K2]).decrypt(new_token, AAD) == SECRET
    with pytest.raises(SecretDecryptionError):
        old_ring.decrypt(new_token, AAD)


@pytest.mark.parametrize("token", ["", "garbage", "v1.", "v1.zzzzzzzz.AAAA"])
def test_malformed_tokens_are_not_current(token: str) -> None:
    assert not Keyring.from_strings([K1]).is_current(token)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        pytest.param([], "at least one", id="empty-list"),
        pytest.param([K1, "not base64!"], "entry 1 is not valid base64", id="alphabet"),
        pytest.param([K1, K2[:8] + "!" + K2[8:]], "entry 1 is not valid base64", id="junk-inside"),
        pytest.param(
            [K1, K2, base64.b64encode(bytes(31)).decode()], "entry 2 must be", id="31-bytes"
        ),
        pytest.param([base64.b64encode(bytes(33)).decode()], "entry 0 must be", id="33-bytes"),
        pytest.param([K1, ""], "entry 1 must be", id="empty-entry"),
        pytest.param([K1, K2, K1], "entry 2 repeats", id="repeated"),
    ],
)
def test_bad_key_configs_name_the_entry(keys: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        Keyring.from_strings(keys)
    for key in keys:
        if key:
            assert key not in str(caught.value)


def test_surrounding_whitespace_in_a_key_is_tolerated() -> None:
    token = Keyring.from_strings([f" {K1}\n"]).encrypt(SECRET, AAD)
    assert Keyring.from_strings([K1]).decrypt(token, AAD) == SECRET


def test_generated_master_keys_are_32_random_bytes() -> None:
    assert len(base64.b64decode(K1, validate=True)) == 32
    assert K1 != K2


def test_ciphertext_never_contains_the_plaintext() -> None:
    ring = Keyring.from_strings([K1])
    for _ in range(50):
        secret = generate_secret().encode()
        key = base64.b64decode(secret.removeprefix(b"whsec_"))
        token = ring.encrypt(secret, AAD)
        raw = _raw(token)
        for needle in (secret, key, base64.b64encode(secret), base64.urlsafe_b64encode(secret)):
            assert needle not in token.encode()
            assert needle not in raw
        assert key.hex() not in token


def test_errors_and_repr_reveal_no_secret_material() -> None:
    ring = Keyring.from_strings([K2, K1])
    token = ring.encrypt(SECRET, AAD)
    with pytest.raises(SecretDecryptionError) as caught:
        ring.decrypt(token, b"wh_another")
    for shown in (str(caught.value), repr(ring)):
        for needle in (SECRET.decode(), K1, K2, base64.b64decode(K1).hex(), token):
            assert needle not in shown
