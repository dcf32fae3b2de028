"""The retry policy: what an attempt's result means, and when the next attempt is due (pure)."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from relay.delivery.model import Status, Trigger

DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)

# Statuses whose Retry-After we honour: the receiver is telling us when it can take more.
_RETRY_AFTER_STATUSES = frozenset({429, 503})


class Outcome(enum.Enum):
    """What one attempt's status means for its delivery."""

    DELIVERED = "delivered"
    GONE = "gone"
    RETRY = "retry"


def outcome(status_code: int | None) -> Outcome:
    """Classify an attempt: 2xx delivered, 410 gone (disable the webhook), anything else retry."""
    if status_code is not None and 200 <= status_code < 300:
        return Outcome.DELIVERED
    if status_code == 410:
        return Outcome.GONE
    return Outcome.RETRY


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Seconds between attempts after the first, immediate one, with proportional jitter."""

    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("retry schedule must have at least one step")
        for step in self.schedule:
            if not math.isfinite(step) or step < 0:
                raise ValueError(f"retry schedule steps must be non-negative seconds, got {step}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"retry jitter must be between 0 and 1, got {self.jitter}")

    @classmethod
    def parse(cls, text: str) -> RetryPolicy:
        """Build a policy from `RELAY_RETRY_SCHEDULE`, e.g. `"5,300,1800"`."""
        if not text.strip():
            raise ValueError("retry schedule is empty; expected seconds such as '5,300,1800'")
        steps: list[float] = []
        for part in text.split(","):
            try:
                steps.append(float(part))
            except ValueError:
                raise ValueError(
                    f"retry schedule {text!r}: {part.strip()!r} is not a number of seconds"
                ) from None
        return cls(schedule=tuple(steps))

    @property
    def max_attempts(self) -> int:
        """Attempts a delivery gets before it fails: the first plus one per step."""
        return len(self.schedule) + 1

    def next_delay(
        self,
        attempts_made: int,
        status_code: int | None,
        retry_after: str | None,
        now: datetime,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds until the next attempt after `attempts_made` failed ones, or None when done."""
        if attempts_made < 1:
            raise ValueError(f"attempts_made must be at least 1, got {attempts_made}")
        if attempts_made >= self.max_attempts:
            return None
        if status_code in _RETRY_AFTER_STATUSES and retry_after is not None:
            asked = _retry_after_seconds(retry_after, now)
            if asked is not None:
                # Within the schedule's bounds: a receiver can neither make us hammer it
                # (below the first step) nor park a delivery beyond the largest step.
                return min(max(asked, self.schedule[0]), max(self.schedule))
        step = self.schedule[attempts_made - 1]
        return step * (1 + self.jitter * (2 * rand() - 1))


def _retry_after_seconds(value: str, now: datetime) -> float | None:
    """Seconds a Retry-After value asks for (delta-seconds or HTTP-date), None if unreadable."""
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; "-0000" comes back naive from the parser.
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()


def _status_reason(status_code: int | None) -> str:
    if status_code is not None and 300 <= status_code < 400:
        # Said outright: a receiver that redirects (to itself, even) looks up and answering.
        return f"HTTP {status_code}: redirects are not followed"
    return f"HTTP {status_code}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happens to a delivery after an attempt: its next status and, if pending, when."""

    status: Status
    delay: float | None = None
    error: str | None = None
    disable_webhook: bool = False


def judge(
    policy: RetryPolicy,
    attempts_in_cycle: int,
    status_code: int | None,
    error: str | None,
    retry_after: str | None,
    now: datetime,
    trigger: Trigger,
) -> Verdict:
    """The next state after an attempt: delivered, retried after a delay, or failed.

    A failed manual attempt leaves the delivery pending with no delay of its own: its next
    attempt stays the schedule's (`attempts_in_cycle` does not count it).
    """
    result = outcome(status_code)
    if result is Outcome.DELIVERED:
        return Verdict(Status.DELIVERED)
    if result is Outcome.GONE:
        return Verdict(
            Status.FAILED, error="410 Gone: the endpoint asked to stop", disable_webhook=True
        )
    reason = error or _status_reason(status_code)
    if trigger is Trigger.MANUAL:
        return Verdict(Status.PENDING, error=reason)
    delay = policy.next_delay(attempts_in_cycle, status_code, retry_after, now)
    if delay is None:
        return Verdict(Status.FAILED, error=f"{reason} (retry schedule exhausted)")
    return Verdict(Status.PENDING, delay=delay, error=reason)
