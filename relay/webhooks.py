"""Webhook endpoints: a customer's settings and signing secrets, and the rules that change them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from relay.errors import Conflict, Invalid
from relay.event_types import matches
from relay.ids import new_id
from relay.secrets import Keyring
from relay.signing import (
    Scheme,
    SigningKey,
    generate_signing_secret,
    signing_key,
    verification_key,
)
from relay.ssrf import AddressPolicy
from relay.timefmt import from_timestamp, now, rfc3339

# What the API and the attempt log show for a custom header's value: often a credential for the
# receiver, it is stored encrypted and never shown again.
REDACTED = "[redacted]"

# The current secret plus at most three previous ones in their grace periods: every one of them
# signs each delivery, so the cap bounds the signature header and the signing work.
MAX_LIVE_SECRETS = 4
MAX_GRACE_SECONDS = 7 * 86_400
DEFAULT_GRACE_SECONDS = 86_400


@dataclass(slots=True)
class SigningSecret:
    """A secret at rest: encrypted under the master keyring, bound to its webhook's id."""

    ciphertext: str
    expires_at_ms: int | None = None  # None for the current secret

    @property
    def expires_at(self) -> str | None:
        """When it stops signing (RFC 3339); None for the current secret."""
        return None if self.expires_at_ms is None else from_timestamp(self.expires_at_ms / 1000)


@dataclass(slots=True)
class Webhook:
    """A customer's endpoint: where to send which events, and the secrets that sign them."""

    id: str
    tenant_id: str
    url: str
    events: list[str]
    description: str
    # Custom header name -> its value encrypted under the master keyring, bound to this webhook
    # and that name (see `custom_headers`).
    sealed_headers: dict[str, str]
    enabled: bool
    rate_limit_per_second: int | None
    created_at: str
    updated_at: str
    secrets: list[SigningSecret]
    disabled_reason: str | None = None
    signature_scheme: Scheme = Scheme.HMAC_SHA256
    # Values a release before header encryption stored in the clear: still sent, and sealed by
    # the next change made with the keyring or by `relay keys reencrypt`.
    clear_headers: dict[str, str] = field(default_factory=dict)

    @property
    def header_names(self) -> list[str]:
        """The custom headers' names, as the customer wrote them."""
        return [*self.clear_headers, *self.sealed_headers]

    @property
    def headers(self) -> dict[str, str]:
        """The custom headers as anyone may read them back: names, every value REDACTED."""
        return dict.fromkeys(self.header_names, REDACTED)

    def record(self) -> dict[str, object]:
        """What the store keeps (secrets and header values encrypted)."""
        record = asdict(self)
        clear = record.pop("clear_headers")
        if clear:  # kept in the form it was found in until it can be sealed
            record["headers"] = clear
        return record

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Webhook:
        """Rebuild from `record()`, or from a record whose header values are in the clear."""
        secrets = [SigningSecret(**s) for s in data.pop("secrets")]
        scheme = Scheme(data.pop("signature_scheme", Scheme.HMAC_SHA256))
        clear = data.pop("headers", {})
        sealed = data.pop("sealed_headers", {})
        return cls(
            **data,
            sealed_headers=sealed,
            secrets=secrets,
            signature_scheme=scheme,
            clear_headers=clear,
        )

    def wants(self, event_type: str) -> bool:
        """Whether an event of this type fans out to this webhook now."""
        return self.enabled and matches(self.events, event_type)


class Undeliverable(StrEnum):
    """Why an accepted event goes to no webhook: said in the answer, counted in the metrics,
    so that a mistyped tenant or type is seen rather than silently delivered nowhere."""

    NO_WEBHOOKS = "no_webhooks"  # the tenant has none
    NO_SUBSCRIBERS = "no_subscribers"  # none subscribes to the event's type
    WEBHOOKS_DISABLED = "webhooks_disabled"  # those that subscribe are disabled


def fan_out(
    webhooks: Sequence[Webhook], event_type: str
) -> tuple[list[Webhook], Undeliverable | None]:
    """The tenant's webhooks an event of `event_type` goes to, or why it goes to none."""
    targets = [w for w in webhooks if w.wants(event_type)]
    if targets:
        return targets, None
    if not webhooks:
        return targets, Undeliverable.NO_WEBHOOKS
    if any(matches(w.events, event_type) for w in webhooks):
        return targets, Undeliverable.WEBHOOKS_DISABLED
    return targets, Undeliverable.NO_SUBSCRIBERS


def _seal(keyring: Keyring, webhook_id: str, secret: str) -> SigningSecret:
    return SigningSecret(keyring.encrypt(secret.encode(), webhook_id.encode()))


def _header_aad(webhook_id: str, name: str) -> bytes:
    # Bound to the webhook and the header's name, and never a secret's AAD (the bare id): a
    # value cannot be moved to another header, another webhook or a signing secret.
    return f"{webhook_id}\0header\0{name.lower()}".encode()


def _seal_headers(keyring: Keyring, webhook_id: str, headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name: keyring.encrypt(value.encode(), _header_aad(webhook_id, name))
        for name, value in headers.items()
    }


def custom_headers(webhook: Webhook, keyring: Keyring) -> dict[str, str]:
    """The custom headers in the clear, to send; raises SecretDecryptionError like a secret."""
    opened = {
        name: keyring.decrypt(token, _header_aad(webhook.id, name)).decode()
        for name, token in webhook.sealed_headers.items()
    }
    return {**webhook.clear_headers, **opened}


def _seal_clear_headers(webhook: Webhook, keyring: Keyring) -> bool:
    """Seal values an older release stored in the clear; True if there were any."""
    if not webhook.clear_headers:
        return False
    webhook.sealed_headers.update(_seal_headers(keyring, webhook.id, webhook.clear_headers))
    webhook.clear_headers = {}
    return True


def _changed_headers(webhook: Webhook, given: dict[str, str], keyring: Keyring) -> dict[str, str]:
    """The sealed headers after a change that lists them all; a value given as REDACTED keeps
    the stored one, so a webhook read, edited and written back keeps its credentials."""
    stored = {name.lower(): token for name, token in webhook.sealed_headers.items()}
    unknown = [n for n, v in given.items() if v == REDACTED and n.lower() not in stored]
    if unknown:
        raise Invalid(
            f"'{REDACTED}' keeps a header's stored value, and the webhook has no such header.",
            {
                f"headers.{name}": [f"give the value of this header, not '{REDACTED}'"]
                for name in unknown
            },
        )
    fresh = _seal_headers(keyring, webhook.id, {n: v for n, v in given.items() if v != REDACTED})
    return {n: fresh[n] if n in fresh else stored[n.lower()] for n in given}


class WebhookSettings(Protocol):
    """What a new webhook is made from (a create request, once its rules are checked)."""

    url: str
    events: list[str]
    description: str
    headers: dict[str, str]
    enabled: bool
    rate_limit_per_second: int | None
    secret: str | None
    signature_scheme: Scheme


def new_webhook(spec: WebhookSettings, tenant_id: str, keyring: Keyring) -> tuple[Webhook, str]:
    """A webhook from a create request, and what its receiver verifies with: the plaintext
    `whsec_` secret (given or generated), or an Ed25519 key pair's `whpk_` public key."""
    webhook_id = new_id("wh")
    secret = spec.secret or generate_signing_secret(spec.signature_scheme)
    stamp = rfc3339(now())
    webhook = Webhook(
        id=webhook_id,
        tenant_id=tenant_id,
        url=spec.url,
        events=spec.events,
        description=spec.description,
        sealed_headers={},
        enabled=spec.enabled,
        rate_limit_per_second=spec.rate_limit_per_second,
        created_at=stamp,
        updated_at=stamp,
        secrets=[_seal(keyring, webhook_id, secret)],
        signature_scheme=spec.signature_scheme,
    )
    webhook.sealed_headers = _changed_headers(webhook, spec.headers, keyring)
    return webhook, verification_key(secret)


def check_target(url: str, policy: AddressPolicy) -> None:
    """Refuse a URL whose host is plainly not a public address (a literal IP or localhost).

    Names that resolve somewhere private are caught later, when the sender connects.
    """
    reason = policy.refuse_literal_host(url)
    if reason is not None:
        raise Invalid("The webhook URL is not allowed.", {"url": [reason]})


def apply_update(webhook: Webhook, changes: dict[str, Any], keyring: Keyring) -> Webhook:
    """The webhook with a PATCH applied; enabling it again clears why it was disabled.

    Another `signature_scheme` is a rotation to a new key of that scheme, with the default
    grace: the old keys keep signing alongside until receivers have the new one.
    """
    switching = changes.get("signature_scheme", webhook.signature_scheme)
    switching = switching != webhook.signature_scheme
    _seal_clear_headers(webhook, keyring)
    for name, value in changes.items():
        if name == "headers":
            webhook.sealed_headers = _changed_headers(webhook, value, keyring)
        else:
            setattr(webhook, name, value)
    if changes.get("enabled") is True:
        webhook.disabled_reason = None
    if switching:
        webhook, _ = rotate(webhook, keyring, DEFAULT_GRACE_SECONDS)
    webhook.updated_at = rfc3339(now())
    return webhook


def disable(webhook: Webhook, reason: str) -> Webhook:
    """Stop deliveries to the webhook, saying why (shown as `disabled_reason`)."""
    webhook.enabled = False
    webhook.disabled_reason = reason
    webhook.updated_at = rfc3339(now())
    return webhook


def _live(webhook: Webhook, now_ms: int) -> list[SigningSecret]:
    return [s for s in webhook.secrets if s.expires_at_ms is None or s.expires_at_ms > now_ms]


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation gave: what verifies the new secret, and when the previous one stops."""

    secret: str
    previous_expires_at: str


def rotate(webhook: Webhook, keyring: Keyring, grace_seconds: int) -> tuple[Webhook, Rotation]:
    """A new current secret (of the webhook's scheme); the old one signs alongside for
    `grace_seconds`, and older ones still in their grace keep signing until they were promised.

    Returns the webhook, and what the receiver verifies the new secret with and when the
    previous one stops. A grace of 0 ends every previous secret now. A rotation that would need
    more than MAX_LIVE_SECRETS live secrets is a Conflict naming when a slot frees up: no
    secret ever stops signing before its promised time.
    """
    _seal_clear_headers(webhook, keyring)
    now_ms = int(now().timestamp() * 1000)
    live = _live(webhook, now_ms)
    previous = [s for s in live if s.expires_at_ms is not None]
    if grace_seconds == 0:
        kept: list[SigningSecret] = []
        previous_expires = now_ms
    else:
        if len(previous) + 2 > MAX_LIVE_SECRETS:
            frees = min(s.expires_at_ms for s in previous if s.expires_at_ms is not None)
            raise Conflict(
                f"At most {MAX_LIVE_SECRETS} secrets sign at once, and a rotation with grace "
                f"would need one more. The oldest previous secret stops signing at "
                f"{from_timestamp(frees / 1000)}; rotate after that, or with grace_seconds 0 to "
                "end every previous secret now."
            )
        previous_expires = now_ms + grace_seconds * 1000
        kept = [
            SigningSecret(s.ciphertext, previous_expires) if s.expires_at_ms is None else s
            for s in live
        ]
    secret = generate_signing_secret(webhook.signature_scheme)
    webhook.secrets = [_seal(keyring, webhook.id, secret), *kept]
    webhook.updated_at = rfc3339(now())
    return webhook, Rotation(verification_key(secret), from_timestamp(previous_expires / 1000))


def _plaintext(webhook: Webhook, keyring: Keyring, secret: SigningSecret) -> str:
    return keyring.decrypt(secret.ciphertext, webhook.id.encode()).decode()


@dataclass(frozen=True, slots=True)
class Verification:
    """What verifies a webhook's current secret, and the previous secrets that still sign."""

    secret: str
    previous: list[SigningSecret]


def reveal(webhook: Webhook, keyring: Keyring) -> Verification:
    """For its owner: what verifies the current secret (`whsec_` secret or `whpk_` public key),
    and the previous secrets that still sign (whose values are never shown)."""
    now_ms = int(now().timestamp() * 1000)
    return Verification(
        verification_key(_plaintext(webhook, keyring, webhook.secrets[0])),
        [s for s in _live(webhook, now_ms) if s.expires_at_ms is not None],
    )


def signing_keys(webhook: Webhook, keyring: Keyring, now_ms: int) -> list[SigningKey]:
    """The keys of every live secret, current first: all of them sign during a grace."""
    return [signing_key(_plaintext(webhook, keyring, s)) for s in _live(webhook, now_ms)]


def reencrypt(webhook: Webhook, keyring: Keyring) -> bool:
    """Re-encrypt secrets and header values not under the current master key, and seal header
    values stored in the clear; True if anything changed."""
    changed = _seal_clear_headers(webhook, keyring)
    for s in webhook.secrets:
        if not keyring.is_current(s.ciphertext):
            plaintext = keyring.decrypt(s.ciphertext, webhook.id.encode())
            s.ciphertext = keyring.encrypt(plaintext, webhook.id.encode())
            changed = True
    for name, token in webhook.sealed_headers.items():
        if not keyring.is_current(token):
            aad = _header_aad(webhook.id, name)
            webhook.sealed_headers[name] = keyring.encrypt(keyring.decrypt(token, aad), aad)
            changed = True
    return changed
