"""Time as relay shows it: RFC 3339 UTC with milliseconds, e.g. 2026-11-23T12:00:00.123Z."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from relay.errors import Invalid

# RFC 3339 §5.6 `date-time`, and nothing looser: `datetime.fromisoformat` would also take a bare
# date, ISO 8601 basic format or a missing offset, none of which JSON Schema's `date-time` allows.
_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with a `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_timestamp(seconds: float) -> str:
    """RFC 3339 for unix seconds."""
    return rfc3339(datetime.fromtimestamp(seconds, UTC))


def read_rfc3339(value: str) -> datetime | None:
    """An RFC 3339 `date-time` as an aware datetime, or None if `value` is not one."""
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, sign, offset_hours, offset_minutes = match.groups()[6:]
    # A leap second (:60) is a valid RFC 3339 time that datetime cannot hold: read it as :59
    # and add the second back.
    leap = second == 60
    if hour > 23 or minute > 59 or second > 60 or (offset_hours and int(offset_hours) > 23):
        return None
    if offset_minutes and int(offset_minutes) > 59:
        return None
    offset = timedelta()
    if sign:
        offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
        offset = -offset if sign == "-" else offset
    micros = int((fraction or ".0")[1:7].ljust(6, "0"))
    try:
        moment = datetime(
            year, month, day, hour, minute, 59 if leap else second, micros, timezone(offset)
        )
        return moment + timedelta(seconds=1) if leap else moment
    except (ValueError, OverflowError):  # no such day (Feb 30), year 0, or past year 9999
        return None


def parse_rfc3339(value: str, field: str) -> datetime:
    """Parse a client-supplied RFC 3339 timestamp (with its offset) or raise Invalid."""
    moment = read_rfc3339(value)
    if moment is None:
        raise Invalid(
            "Bad timestamp.", {field: ["must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z"]}
        )
    return moment
