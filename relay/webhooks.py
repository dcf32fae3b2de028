"""Webhook endpoint rules: what a customer may register and change, checked without any I/O."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

import idna
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from relay.errors import Conflict, Invalid
from relay.events import EVENT_TYPES, WILDCARD_PATTERN, is_wildcard, matches
from relay.ids import new_id
from relay.secrets import Keyring
from relay.signing import (
    SECRET_PREFIX,
    Scheme,
    SigningKey,
    decode_secret,
    generate_signing_secret,
    signature_headers,
    signing_key,
    verification_key,
)
from relay.ssrf import AddressPolicy
from relay.timefmt import from_timestamp, now, rfc3339
from relay.validation import JSON_INT, Patch, TenantId

# What the API and the attempt log show for a custom header's value: often a credential for the
# receiver, it is stored encrypted and never shown again.
REDACTED = "[redacted]"

_MAX_URL_CHARS = 2048
_MAX_HEADER_BYTES = 4096
_MAX_RATE_PER_SECOND = 10_000

# RFC 7230 §3.2.6 token characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII with inner spaces or tabs: HTTP clients refuse anything else at send time, and
# CR, LF or NUL would let a value smuggle in headers of its own.
_HEADER_VALUE = re.compile(r"([!-~]([\t -~]*[!-~])?)?")
# Set by relay itself (signature, body framing, identity, what it accepts back, trace context)
# or meaningful only to one hop.
_RESERVED_HEADERS = frozenset(
    {
        "accept-encoding",
        "baggage",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "expect",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "upgrade",
        "user-agent",
    }
)
_WEBHOOK_HEADER_PREFIX = "webhook-"
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _ascii_label(label: str) -> str | None:
    if label.isascii() and not label.startswith("xn--"):
        return label
    # An international name (or its xn-- form) must be valid IDNA 2008, as the sender's HTTP
    # client reads it: Python's own codec is IDNA 2003, which takes names (emoji, symbols) that
    # the client then refuses on every attempt.
    try:
        return idna.encode(label).decode("ascii")
    except idna.IDNAError:
        return None


def _valid_host(host: str) -> bool:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    labels = [_ascii_label(label) for label in host.removesuffix(".").split(".")]
    return all(label is not None and _HOST_LABEL.fullmatch(label) for label in labels) and (
        len(".".join(label or "" for label in labels)) <= 253
    )


def _check_url(url: str) -> str:
    # The one place a target URL's form is judged; whether its host may be reached is
    # check_target's question (it needs the address policy from settings).
    url = url.strip()
    # urlsplit silently drops tabs and newlines, and some clients read "\" as "/": refuse both so
    # that what is checked here is exactly what the sender will connect to.
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in url):
        raise ValueError("Must not contain whitespace, control characters or backslashes.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("Must be a well-formed URL.") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("Must be an absolute http:// or https:// URL.")
    if not parts.hostname or not _valid_host(parts.hostname):
        raise ValueError("Must have a valid host name (IDNA 2008) or IP address.")
    if "@" in parts.netloc:
        # The sender's client would turn them into an Authorization header of its own, which
        # then clashes with any other: every attempt would fail. Headers carry credentials.
        raise ValueError(
            "Must not contain credentials (user:password@); "
            "send them as a custom Authorization header instead."
        )
    if port == 0:
        raise ValueError("Must not use port 0.")
    # Scheme and host are case-insensitive, so they are lowered; the rest is the customer's and
    # is kept byte for byte (receivers may sign or route on the exact path and query).
    rest = url[len(parts.scheme) + 3 + len(parts.netloc) :]
    return f"{parts.scheme}://{parts.netloc.lower()}{rest}"


def _check_event_filter(name: str, info: ValidationInfo) -> str:
    # The API passes the registered types' names as context; without it, the built-in ones.
    known = (info.context or {}).get(KNOWN_TYPES, EVENT_TYPES)
    if name != "*" and name not in known and not is_wildcard(name):
        raise ValueError(
            "Unknown event type; expected '*', a wildcard such as 'post.*', or one of: "
            f"{', '.join(known)}."
        )
    return name


def _dedupe(names: list[str]) -> list[str]:
    # First occurrence wins, so the webhook reads back in the order the customer wrote it.
    return list(dict.fromkeys(names))


def _header_problem(name: str, value: str, repeated: bool) -> str | None:
    lowered = name.lower()
    if not _HEADER_NAME.fullmatch(name):
        return "Header name must be an RFC 7230 token (no spaces, colons or other separators)."
    if lowered in _RESERVED_HEADERS or lowered.startswith(_WEBHOOK_HEADER_PREFIX):
        return "Header is set by relay and cannot be overridden."
    if repeated:
        return "Header names are case-insensitive and this one is given more than once."
    if not _HEADER_VALUE.fullmatch(value):
        return (
            "Header value must be printable ASCII without leading or trailing whitespace "
            "(no CR, LF, NUL or other control characters)."
        )
    return None


def _header_error(loc: tuple[str, ...], message: str) -> InitErrorDetails:
    # Never the value: custom headers often carry credentials.
    return InitErrorDetails(type=PydanticCustomError("header", message), loc=loc, input=None)


def _check_headers(headers: dict[str, str]) -> dict[str, str]:
    counts = Counter(name.lower() for name in headers)
    errors: list[InitErrorDetails] = []
    for name, value in headers.items():
        problem = _header_problem(name, value, counts[name.lower()] > 1)
        if problem:
            errors.append(_header_error((name,), problem))
    size = sum(len(name.encode()) + len(value.encode()) for name, value in headers.items())
    if size > _MAX_HEADER_BYTES:
        errors.append(
            _header_error(
                (), f"Header names and values may total {_MAX_HEADER_BYTES} bytes, not {size}."
            )
        )
    if errors:
        # Raised from a validator, these errors keep their locations, so each one is reported
        # at `headers.<name>`; a key validator would put a name's error at `headers.<name>.[key]`.
        raise ValidationError.from_exception_data("headers", errors)
    return headers


def _check_secret(secret: str) -> str:
    try:
        decode_secret(secret)
    except Invalid as exc:  # its message never quotes the secret
        raise ValueError(exc.errors["secret"][0]) from None
    return secret


def _any_case(text: str) -> str:
    # JSON Schema regexes have no case-insensitive flag: spell each letter as a class.
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in text)


# The JSON Schemas below say in the OpenAPI document what the validators above enforce. What no
# schema can say (a host's length, header names repeated in another case, the headers' total
# size) is still checked here and named in the 422.
_URL_SCHEMA = {
    "type": "string",
    "format": "uri",
    "pattern": "^" + _any_case("http") + "[Ss]?://",
    "maxLength": _MAX_URL_CHARS,
    "description": "Absolute http:// or https:// URL of the endpoint.",
}
_RESERVED_NAMES = "|".join(_any_case(name) for name in sorted(_RESERVED_HEADERS))
_HEADERS_SCHEMA = {
    "type": "object",
    "propertyNames": {
        "pattern": (
            f"^(?!(?:{_RESERVED_NAMES})$)(?!{_any_case(_WEBHOOK_HEADER_PREFIX)})"
            f"{_HEADER_NAME.pattern}$"
        )
    },
    "additionalProperties": {"type": "string", "pattern": f"^{_HEADER_VALUE.pattern}$"},
    "description": (
        "Sent with every delivery. Names are HTTP tokens, unique without regard to case, and not "
        "ones relay sets itself; names and values total at most "
        f"{_MAX_HEADER_BYTES} bytes. Values are stored encrypted and read back as "
        f"'{REDACTED}'; in a change, '{REDACTED}' keeps a header's stored value."
    ),
}
_B64 = "[A-Za-z0-9+/]"
# Standard base64 of 24 to 64 bytes: 8 to 21 full quads (24 to 63 bytes), then 1 byte in `xx==`
# (to 64) or 2 bytes in `xxx=` (to 62).
_SECRET_SCHEMA = {
    "type": "string",
    "pattern": (
        f"^{SECRET_PREFIX}(?:(?:{_B64}{{4}}){{8,21}}(?:{_B64}{{2}}==)?"
        f"|(?:{_B64}{{4}}){{8,20}}{_B64}{{3}}=)$"
    ),
    "description": (
        f"An existing secret to import: {SECRET_PREFIX} and the standard base64 of 24 to 64 "
        "random bytes. Only hmac-sha256 webhooks take one."
    ),
}
# Validation context key: the names of every event type a filter may name.
KNOWN_TYPES = "event_types"
_EVENT_FILTER_SCHEMA = {
    "anyOf": [
        {"type": "string", "enum": ["*", *EVENT_TYPES]},
        {"type": "string", "pattern": WILDCARD_PATTERN},
    ],
    "description": "'*', an event type's name (built in or registered), or 'prefix.*'.",
}

_Url = Annotated[
    str,
    Field(max_length=_MAX_URL_CHARS),
    AfterValidator(_check_url),
    WithJsonSchema(_URL_SCHEMA),
]
_EventFilters = Annotated[
    list[Annotated[str, AfterValidator(_check_event_filter), WithJsonSchema(_EVENT_FILTER_SCHEMA)]],
    Field(min_length=1),
    AfterValidator(_dedupe),
]
_Description = Annotated[str, Field(max_length=1024)]
_Headers = Annotated[
    dict[str, str], AfterValidator(_check_headers), WithJsonSchema(_HEADERS_SCHEMA)
]
_RateLimit = Annotated[int, Field(gt=0, le=_MAX_RATE_PER_SECOND), JSON_INT]
_Secret = Annotated[str, AfterValidator(_check_secret), WithJsonSchema(_SECRET_SCHEMA)]
# An enum read from its JSON string (strict mode would take only Scheme instances).
_Scheme = Annotated[Scheme, Field(strict=False)]

# Strict: JSON already has real booleans and numbers, so "false" or "5" is a client bug to report.
# Inputs are kept out of error texts, which may be logged, because secrets pass through here.
_INPUT = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)


class WebhookCreate(BaseModel):
    """A new webhook's settings; `tenant_id` may be absent when the caller's token supplies it."""

    model_config = _INPUT

    url: _Url
    tenant_id: TenantId | None = None
    events: _EventFilters = Field(default_factory=lambda: ["*"])
    description: _Description = ""
    headers: _Headers = Field(default_factory=dict)
    enabled: bool = True
    rate_limit_per_second: _RateLimit | None = None
    secret: _Secret | None = Field(default=None, repr=False)
    signature_scheme: _Scheme = Scheme.HMAC_SHA256

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

    model_config = _INPUT
    NULLABLE = frozenset({"rate_limit_per_second"})

    url: _Url | None = None
    events: _EventFilters | None = None
    description: _Description | None = None
    headers: _Headers | None = None
    enabled: bool | None = None
    rate_limit_per_second: _RateLimit | None = None
    signature_scheme: _Scheme | None = None


# The current secret plus at most three previous ones in their grace periods: every one of them
# signs each delivery, so the cap bounds the signature header and the signing work.
MAX_LIVE_SECRETS = 4
MAX_GRACE_SECONDS = 7 * 86_400
DEFAULT_GRACE_SECONDS = 86_400


class RotateSecret(BaseModel):
    """`POST /v1/webhooks/{id}/rotate-secret`: how long the previous secret keeps signing."""

    model_config = _INPUT

    grace_seconds: Annotated[int, Field(ge=0, le=MAX_GRACE_SECONDS), JSON_INT] = (
        DEFAULT_GRACE_SECONDS
    )


@dataclass(slots=True)
class SigningSecret:
    """A secret at rest: encrypted under the master keyring, bound to its webhook's id."""

    ciphertext: str
    expires_at_ms: int | None = None  # None for the current secret


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

    def public(self) -> dict[str, object]:
        """The webhook as the API shows it: never a secret."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "url": self.url,
            "events": self.events,
            "description": self.description,
            "headers": dict.fromkeys(self.header_names, REDACTED),
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "rate_limit_per_second": self.rate_limit_per_second,
            "signature_scheme": self.signature_scheme.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

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


def new_webhook(spec: WebhookCreate, tenant_id: str, keyring: Keyring) -> tuple[Webhook, str]:
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
        webhook, _, _ = rotate(webhook, keyring, DEFAULT_GRACE_SECONDS)
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


def rotate(webhook: Webhook, keyring: Keyring, grace_seconds: int) -> tuple[Webhook, str, int]:
    """A new current secret (of the webhook's scheme); the old one signs alongside for
    `grace_seconds`, and older ones still in their grace keep signing until they were promised.

    Returns the webhook, what the receiver verifies the new secret with, and when the previous
    one stops (unix ms). A grace of 0 ends every previous secret now. A rotation that would need
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
    return webhook, verification_key(secret), previous_expires


def _plaintext(webhook: Webhook, keyring: Keyring, secret: SigningSecret) -> str:
    return keyring.decrypt(secret.ciphertext, webhook.id.encode()).decode()


def reveal(webhook: Webhook, keyring: Keyring) -> dict[str, object]:
    """For its owner: what verifies the current secret (`whsec_` secret or `whpk_` public key),
    and until when each previous secret still signs (never their values)."""
    now_ms = int(now().timestamp() * 1000)
    return {
        "secret": verification_key(_plaintext(webhook, keyring, webhook.secrets[0])),
        "previous": [
            {"expires_at": from_timestamp(s.expires_at_ms / 1000)}
            for s in _live(webhook, now_ms)
            if s.expires_at_ms is not None
        ],
    }


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


def delivery_headers(
    custom: Mapping[str, str], keys: Sequence[SigningKey], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Every header of one attempt but user-agent (the sender's): custom ones, then signatures."""
    return {
        **custom,
        "content-type": "application/json",
        **signature_headers(msg_id, timestamp, body, keys),
    }


class SampleSend(BaseModel):
    """`POST /v1/webhooks/test`: which webhook gets a sample of which event type."""

    model_config = _INPUT

    webhook_id: str = Field(min_length=1, max_length=64)
    type: str = Field("post.published", json_schema_extra={"enum": list(EVENT_TYPES)})

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"Unknown event type; known: {', '.join(EVENT_TYPES)}.")
        return value
