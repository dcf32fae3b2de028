"""Webhook endpoint rules: what a customer may register and change, checked without any I/O."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from relay.errors import Invalid
from relay.events import EVENT_TYPES
from relay.signing import decode_secret
from relay.validation import TenantId

_MAX_URL_CHARS = 2048
_MAX_HEADER_BYTES = 4096
_MAX_RATE_PER_SECOND = 10_000

# RFC 7230 §3.2.6 token characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Visible ASCII with inner spaces or tabs: HTTP clients refuse anything else at send time, and
# CR, LF or NUL would let a value smuggle in headers of its own.
_HEADER_VALUE = re.compile(r"([\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?)?")
# Set by relay itself (signature, body framing, identity) or meaningful only to one hop.
_RESERVED_HEADERS = frozenset(
    {
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
        "transfer-encoding",
        "upgrade",
        "user-agent",
    }
)
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _valid_host(host: str) -> bool:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host.removesuffix(".").split(".")
    return len(ascii_host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _check_url(url: str) -> str:
    # The one place a target URL is judged; the SSRF rules will join here.
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
        raise ValueError("Must have a valid host name or IP address.")
    if port == 0:
        raise ValueError("Must not use port 0.")
    # Scheme and host are case-insensitive, so they are lowered; the rest is the customer's and
    # is kept byte for byte (receivers may sign or route on the exact path and query).
    userinfo, at, host_port = parts.netloc.rpartition("@")
    rest = url[len(parts.scheme) + 3 + len(parts.netloc) :]
    return f"{parts.scheme}://{userinfo}{at}{host_port.lower()}{rest}"


def _check_event_filter(name: str) -> str:
    if name != "*" and name not in EVENT_TYPES:
        raise ValueError(f"Unknown event type; expected '*' or one of: {', '.join(EVENT_TYPES)}.")
    return name


def _dedupe(names: list[str]) -> list[str]:
    # First occurrence wins, so the webhook reads back in the order the customer wrote it.
    return list(dict.fromkeys(names))


def _header_problem(name: str, value: str, repeated: bool) -> str | None:
    lowered = name.lower()
    if not _HEADER_NAME.fullmatch(name):
        return "Header name must be an RFC 7230 token (no spaces, colons or other separators)."
    if lowered in _RESERVED_HEADERS or lowered.startswith("webhook-"):
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


_Url = Annotated[str, Field(max_length=_MAX_URL_CHARS), AfterValidator(_check_url)]
_EventFilters = Annotated[
    list[Annotated[str, AfterValidator(_check_event_filter)]],
    Field(min_length=1),
    AfterValidator(_dedupe),
]
_Description = Annotated[str, Field(max_length=1024)]
_Headers = Annotated[dict[str, str], AfterValidator(_check_headers)]
_RateLimit = Annotated[int, Field(gt=0, le=_MAX_RATE_PER_SECOND)]
_Secret = Annotated[str, AfterValidator(_check_secret)]

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


class WebhookUpdate(BaseModel):
    """A change to a webhook's settings: only the fields present change."""

    model_config = _INPUT

    url: _Url | None = None
    events: _EventFilters | None = None
    description: _Description | None = None
    headers: _Headers | None = None
    enabled: bool | None = None
    rate_limit_per_second: _RateLimit | None = None

    @field_validator("url", "events", "description", "headers", "enabled", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Only the rate limit has "none" as a value; null anywhere else would erase a setting.
        if value is None:
            raise ValueError("Must not be null; leave the field out to keep its value.")
        return value

    def changes(self) -> dict[str, Any]:
        """Return the fields this update sets, with their new values."""
        return self.model_dump(exclude_unset=True)
