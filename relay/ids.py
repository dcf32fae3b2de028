"""Prefixed, time-sortable identifiers (`evt_`, `wh_`, `dlv_`, `tok_`).

After the prefix: 10 Crockford base32 characters of milliseconds since the epoch, then 16 of
randomness, so ids sort lexicographically by creation time (like ULIDs) and never collide.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RANDOM_BITS = 80


class _Monotonic:
    """The random part of ids made within one millisecond, counting up (ULID's monotonic rule).

    Lists are ordered by id, so two objects made in the same millisecond must still sort in the
    order they were made; fresh randomness for each would order them by chance.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = -1
        self._random = 0

    def next(self, ms: int) -> int:
        with self._lock:
            if ms == self._ms:
                self._random += 1
            else:
                # The top bit starts clear, so counting up within one millisecond cannot overflow.
                self._ms, self._random = ms, int.from_bytes(os.urandom(10)) >> 1
            return self._random


_monotonic = _Monotonic()


# Every pair of characters, for 10 bits at a time: an accepted event makes an id for itself and
# one per delivery, and a batch of events makes hundreds of them in one request.
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]


def _base32(value: int, length: int) -> str:
    # `length` is even: 10 characters of time, 16 of randomness.
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in range(5 * length - 10, -1, -10)])


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """Return a new id such as `evt_01jd...`: sortable by time, then by creation in a process."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    # Time and randomness side by side in one number, written out in one go.
    return f"{prefix}_{_base32(ms << _RANDOM_BITS | _monotonic.next(ms), 26)}"


def has_prefix(value: str, prefix: str) -> bool:
    """Tell whether `value` looks like an id of this kind (cheap check before any lookup)."""
    body = value[len(prefix) + 1 :]
    return value.startswith(prefix + "_") and len(body) == 26 and all(c in _ALPHABET for c in body)


def time_floor(prefix: str, ms: int) -> str:
    """The smallest possible id of this kind made at `ms`: a lexicographic bound for time ranges."""
    return f"{prefix}_{_base32(max(ms, 0), 10)}"


def pattern(prefix: str) -> str:
    """A regular expression matching exactly the ids of one kind."""
    # The prefix, then 26 characters of Crockford base32 (no i, l, o or u).
    return f"^{prefix}_[0-9a-hjkmnp-tv-z]{{26}}$"


# Crockford's digits as Python's base-32 digits, for int() to read; every other letter as a
# character int() refuses, so that only an id's own alphabet is read.
_AS_INT_DIGITS = str.maketrans(
    {
        **{c: "!" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZilou"},
        **dict(zip(_ALPHABET, "0123456789abcdefghijklmnopqrstuv", strict=True)),
    }
)


def created_ms(value: str) -> int:
    """When an id was made (unix ms), read back from its time part."""
    digits = value.partition("_")[2][:10]
    if not digits:
        return 0
    if not (digits.isascii() and digits.isalnum()):  # int() would take signs, spaces, "_"
        raise ValueError(f"not an id: {value!r}")
    return int(digits.translate(_AS_INT_DIGITS), 32)
