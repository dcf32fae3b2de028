"""What a customer may register as a webhook's settings: the form of its URL, custom headers,
event filters and imported secret, checked without any I/O, and the JSON Schemas that state
those checks in the OpenAPI document."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Annotated
from urllib.parse import urlsplit

import idna
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from relay.errors import Invalid
from relay.event_types import EVENT_TYPES, WILDCARD_PATTERN, is_wildcard
from relay.signing import SECRET_PREFIX, Scheme, decode_secret
from relay.validation import JSON_INT
from relay.webhooks import REDACTED

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

Url = Annotated[
    str,
    Field(max_length=_MAX_URL_CHARS),
    AfterValidator(_check_url),
    WithJsonSchema(_URL_SCHEMA),
]
EventFilters = Annotated[
    list[Annotated[str, AfterValidator(_check_event_filter), WithJsonSchema(_EVENT_FILTER_SCHEMA)]],
    Field(min_length=1),
    AfterValidator(_dedupe),
]
Description = Annotated[str, Field(max_length=1024)]
CustomHeaders = Annotated[
    dict[str, str], AfterValidator(_check_headers), WithJsonSchema(_HEADERS_SCHEMA)
]
RateLimit = Annotated[int, Field(gt=0, le=_MAX_RATE_PER_SECOND), JSON_INT]
ImportedSecret = Annotated[str, AfterValidator(_check_secret), WithJsonSchema(_SECRET_SCHEMA)]
# An enum read from its JSON string (strict mode would take only Scheme instances).
SchemeName = Annotated[Scheme, Field(strict=False)]

# Strict: JSON already has real booleans and numbers, so "false" or "5" is a client bug to report.
# Inputs are kept out of error texts, which may be logged, because secrets pass through here.
INPUT = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)
