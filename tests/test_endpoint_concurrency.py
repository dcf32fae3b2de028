"""An endpoint's adaptive concurrency: the rule (pure, table tests)."""

from __future__ import annotations

import pytest

from relay.delivery.concurrency import ConcurrencyRule, Load, load

RULE = ConcurrencyRule(start=4, ceiling=64)
TIMEOUT_MS = 2000


@pytest.mark.parametrize(
    ("status_code", "duration_ms", "quick", "full", "expected"),
    [
        (200, 20, True, True, Load.ROOM),
        (204, 20, True, True, Load.ROOM),
        (200, 20, True, False, Load.UNKNOWN),  # slots to spare: no use for more
        (200, 900, False, True, Load.UNKNOWN),  # answered, but slowly
        (503, 5, True, True, Load.OVERLOAD),
        (429, 5, True, False, Load.OVERLOAD),
        (503, 1500, False, False, Load.OVERLOAD),
        (None, TIMEOUT_MS, False, True, Load.OVERLOAD),  # no answer in time
        (None, TIMEOUT_MS + 3, False, False, Load.OVERLOAD),
        (None, 3, True, True, Load.UNKNOWN),  # refused at once: not a sign of load
        (500, 5, True, True, Load.UNKNOWN),
        (502, 5, True, True, Load.UNKNOWN),
        (302, 5, True, True, Load.UNKNOWN),
        (410, 5, True, True, Load.UNKNOWN),
    ],
)
def test_an_answer_says_whether_the_endpoint_has_room_or_is_overloaded(
    status_code: int | None, duration_ms: int, quick: bool, full: bool, expected: Load
) -> None:
    assert load(status_code, duration_ms, TIMEOUT_MS, quick, full) is expected


@pytest.mark.parametrize(
    ("current", "answer", "draw", "expected"),
    [
        # Additive increase: one more with a chance of 1 in `current` (draw below 1/current).
        (4, Load.ROOM, 0.0, 5),
        (4, Load.ROOM, 0.24, 5),
        (4, Load.ROOM, 0.25, 4),
        (4, Load.ROOM, 0.99, 4),
        (1, Load.ROOM, 0.99, 2),  # at one, every quick success adds one
        (63, Load.ROOM, 0.0, 64),
        (64, Load.ROOM, 0.0, 64),  # the ceiling holds
        # Multiplicative decrease, whatever the draw, never below one.
        (64, Load.OVERLOAD, 0.0, 32),
        (9, Load.OVERLOAD, 0.5, 4),
        (4, Load.OVERLOAD, 0.99, 2),
        (2, Load.OVERLOAD, 0.0, 1),
        (1, Load.OVERLOAD, 0.0, 1),
        # Nothing learnt, nothing changed.
        (4, Load.UNKNOWN, 0.0, 4),
        (64, Load.UNKNOWN, 0.0, 64),
    ],
)
def test_the_concurrency_grows_by_one_a_round_and_halves_on_overload(
    current: int, answer: Load, draw: float, expected: int
) -> None:
    assert RULE.next(current, answer, draw) == expected


@pytest.mark.parametrize(
    ("rule", "stored", "expected"),
    [
        (RULE, None, 4),  # never adapted: where it starts
        (RULE, 17, 17),
        (RULE, 1, 1),
        (RULE, 100, 64),  # stored before the ceiling was lowered
        (ConcurrencyRule(start=4, ceiling=4), 9, 4),  # a fixed concurrency
    ],
)
def test_the_concurrency_in_force_is_the_stored_one_within_the_ceiling(
    rule: ConcurrencyRule, stored: int | None, expected: int
) -> None:
    assert rule.current(stored) == expected


@pytest.mark.parametrize(("start", "ceiling"), [(0, 4), (5, 4)])
def test_a_rule_starting_outside_its_bounds_is_refused(start: int, ceiling: int) -> None:
    with pytest.raises(ValueError, match="between 1 and its ceiling"):
        ConcurrencyRule(start, ceiling)


def test_rounds_of_quick_successes_add_about_one_each() -> None:
    # Draws spread evenly over [0, 1): the growth per round is the rule's, not luck's.
    current, draws = 4, [(i * 0.618034) % 1 for i in range(1, 2000)]
    rounds = 0
    while current < 16:
        for _ in range(current):
            current = RULE.next(current, Load.ROOM, draws.pop())
        rounds += 1
    assert 10 <= rounds <= 14, rounds
