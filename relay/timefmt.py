"""Time as relay shows it: RFC 3339 UTC with milliseconds, e.g. 2026-11-23T12:00:00.123Z."""

from __future__ import annotations

from datetime import UTC, datetime

from relay.errors import Invalid


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with a `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_timestamp(seconds: float) -> str:
    """RFC 3339 for unix seconds."""
    return rfc3339(datetime.fromtimestamp(seconds, UTC))


def parse_rfc3339(value: str, field: str) -> datetime:
    """Parse a client-supplied timestamp; a naive one is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise Invalid(
            "Bad timestamp.", {field: ["must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z"]}
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
