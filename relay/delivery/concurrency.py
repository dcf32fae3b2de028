"""How many attempts one endpoint may have in flight, adapted to how it answers (pure).

An endpoint starts at `RELAY_ENDPOINT_CONCURRENCY`. While it answers 2xx quickly with every one
of its slots in use, it gets one more slot per round of attempts (additive increase), up to
`RELAY_ENDPOINT_CONCURRENCY_MAX`; when it says it is overloaded (429, 503) or does not answer in
time, it gets half (multiplicative decrease), never fewer than one. An endpoint that never fills
its slots has no use for more, so it does not grow on quick answers to a trickle.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Answers by which a receiver says it has more than it can take.
_OVERLOAD_STATUSES = frozenset({429, 503})


class Load(enum.Enum):
    """What one attempt's answer says about the endpoint's load."""

    ROOM = "room"  # a quick 2xx while every slot was in use: it could take more
    OVERLOAD = "overload"  # 429, 503, or no answer within the timeout
    UNKNOWN = "unknown"  # anything else: no reason to change


def load(
    status_code: int | None, duration_ms: int, timeout_ms: int, quick: bool, full: bool
) -> Load:
    """Read an attempt's answer: `quick` if it came within a tenth of the timeout, `full` if
    the attempt went with every one of the endpoint's slots in use."""
    if status_code in _OVERLOAD_STATUSES:
        return Load.OVERLOAD
    if status_code is None and duration_ms >= timeout_ms:
        return Load.OVERLOAD
    if status_code is not None and 200 <= status_code < 300 and quick and full:
        return Load.ROOM
    return Load.UNKNOWN


@dataclass(frozen=True, slots=True)
class ConcurrencyRule:
    """Where an endpoint's concurrency starts and how far it may grow."""

    start: int
    ceiling: int

    def __post_init__(self) -> None:
        if not 1 <= self.start <= self.ceiling:
            raise ValueError(
                f"endpoint concurrency must start between 1 and its ceiling ({self.ceiling}), "
                f"got {self.start}"
            )

    def current(self, stored: int | None) -> int:
        """The concurrency in force: the stored one (none stored: the start), within the
        ceiling, which may have been lowered since it was stored."""
        return min(self.start if stored is None else stored, self.ceiling)

    def next(self, current: int, answer: Load, draw: float) -> int:
        """The concurrency after an attempt made at `current` whose answer says `answer`.

        `draw` is uniform in [0, 1): one more slot comes with a chance of 1 in `current`, so
        one per round of `current` attempts on average, without counting them in Redis.
        Attempts made at the same concurrency all compute from it, so a burst of 503s answered
        to one round halves it once, not once per 503.
        """
        if answer is Load.OVERLOAD:
            return max(1, current // 2)
        if answer is Load.ROOM and current < self.ceiling and draw * current < 1:
            return current + 1
        return current
