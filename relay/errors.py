"""Domain errors: raised anywhere in relay, rendered as problem+json in one place (api.errors)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class RelayError(Exception):
    """Base of every error relay reports to a client: `code` is the stable name clients match
    on (the README's API section lists them under **Errors**), `status` its HTTP status."""

    code = "internal"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str = "", errors: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = {k: list(v) for k, v in (errors or {}).items()}


class Unauthorized(RelayError):
    code, status, title = "unauthorized", 401, "Unauthorized"


class Forbidden(RelayError):
    code, status, title = "forbidden", 403, "Forbidden"


class NotFound(RelayError):
    code, status, title = "not_found", 404, "Not found"


class MethodNotAllowed(RelayError):
    code, status, title = "method_not_allowed", 405, "Method not allowed"


class Conflict(RelayError):
    code, status, title = "conflict", 409, "Conflict"


class PayloadTooLarge(RelayError):
    code, status, title = "payload_too_large", 413, "Payload too large"


class UnsupportedMediaType(RelayError):
    code, status, title = "unsupported_media_type", 415, "Unsupported media type"


class Invalid(RelayError):
    code, status, title = "validation", 422, "Validation failed"


class RateLimited(RelayError):
    code, status, title = "rate_limited", 429, "Too many requests"

    def __init__(self, detail: str = "", retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unavailable(RelayError):
    code, status, title = "unavailable", 503, "Service unavailable"
