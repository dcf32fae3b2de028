"""The retry policy and attempt outcomes: pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.model import Status, Trigger
from relay.delivery.policy import DEFAULT_SCHEDULE, Outcome, RetryPolicy, Verdict, judge, outcome

NOW = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy()


def _no_jitter() -> float:
    return 0.5  # the middle of [0, 1): a factor of exactly 1


def test_default_schedule_is_the_contracts() -> None:
    assert POLICY.schedule == (5, 300, 1800, 7200, 18000, 36000, 36000) == DEFAULT_SCHEDULE
    assert POLICY.max_attempts == 8
    assert POLICY.jitter == 0.2


@pytest.mark.parametrize(
    ("text", "schedule"),
    [
        ("5,300,1800,7200,18000,36000,36000", DEFAULT_SCHEDULE),
        ("1", (1.0,)),
        (" 0 , 2.5,10 ", (0.0, 2.5, 10.0)),
    ],
)
def test_parse_accepts_comma_separated_seconds(text: str, schedule: tuple[float, ...]) -> None:
    policy = RetryPolicy.parse(text)

    assert policy.schedule == schedule
    assert policy.max_attempts == len(schedule) + 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("5,,300", "'' is not a number"),
        ("5,soon", "'soon' is not a number"),
        ("5,-1", "non-negative"),
        ("5,nan", "non-negative"),
        ("inf", "non-negative"),
        ("5;300", "is not a number"),
    ],
)
def test_parse_rejects_bad_schedules_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy.parse(text)


@pytest.mark.parametrize("jitter", [-0.1, 1.5])
def test_jitter_must_be_a_fraction(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=jitter)


def test_delays_follow_the_schedule_without_jitter() -> None:
    delays = [POLICY.next_delay(n, 500, None, NOW, _no_jitter) for n in range(1, 8)]

    assert delays == list(DEFAULT_SCHEDULE)


@given(attempts=st.integers(1, 7), r=st.floats(0, 1, exclude_max=True))
def test_jitter_stays_within_twenty_percent_of_the_step(attempts: int, r: float) -> None:
    step = DEFAULT_SCHEDULE[attempts - 1]

    delay = POLICY.next_delay(attempts, None, None, NOW, lambda: r)

    assert delay is not None
    assert step * 0.8 <= delay <= step * 1.2


def test_jitter_reaches_both_ends() -> None:
    assert POLICY.next_delay(2, 500, None, NOW, lambda: 0.0) == pytest.approx(240)
    assert POLICY.next_delay(2, 500, None, NOW, lambda: 0.999999) == pytest.approx(360, rel=1e-5)


def test_schedule_is_exhausted_at_max_attempts() -> None:
    policy = RetryPolicy.parse("1,2")

    assert policy.next_delay(2, 500, None, NOW) is not None
    assert policy.next_delay(3, 500, None, NOW) is None
    assert policy.next_delay(4, 500, None, NOW) is None
    assert POLICY.next_delay(POLICY.max_attempts, 429, "5", NOW) is None


def test_attempts_made_starts_at_one() -> None:
    with pytest.raises(ValueError, match="attempts_made"):
        POLICY.next_delay(0, 500, None, NOW)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(status: int) -> None:
    assert POLICY.next_delay(1, status, "120", NOW, _no_jitter) == 120
    assert POLICY.next_delay(5, status, " 7 ", NOW, _no_jitter) == 7


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_http_date_is_honoured(status: int) -> None:
    when = format_datetime(NOW + timedelta(minutes=10), usegmt=True)

    assert POLICY.next_delay(1, status, when, NOW, _no_jitter) == 600


def test_retry_after_is_capped_at_the_largest_step() -> None:
    far = format_datetime(NOW + timedelta(days=30), usegmt=True)

    assert POLICY.next_delay(1, 429, "999999999", NOW) == 36000
    assert POLICY.next_delay(1, 503, far, NOW) == 36000
    assert RetryPolicy.parse("1,60,5").next_delay(1, 429, "3600", NOW) == 60


def test_retry_after_in_the_past_means_the_first_step() -> None:
    past = format_datetime(NOW - timedelta(hours=1), usegmt=True)

    assert POLICY.next_delay(3, 503, past, NOW) == 5


@pytest.mark.parametrize("asked", ["0", "1", "4"])
def test_retry_after_never_goes_below_the_first_step(asked: str) -> None:
    # A receiver cannot make relay hammer it faster than the schedule's first step.
    assert POLICY.next_delay(2, 429, asked, NOW, _no_jitter) == 5
    assert RetryPolicy.parse("30,60").next_delay(1, 503, asked, NOW, _no_jitter) == 30


@pytest.mark.parametrize("status", [500, 502, 404, 200, None])
def test_retry_after_is_ignored_for_other_statuses(status: int | None) -> None:
    assert POLICY.next_delay(1, status, "120", NOW, _no_jitter) == 5


@pytest.mark.parametrize(
    "garbage", ["soon", "-5", "1.5", "", "Wed, 99 Foo 2025 00:00:00 GMT", "١٢٠", "0x10"]
)
def test_garbage_retry_after_falls_back_to_the_schedule(garbage: str) -> None:
    assert POLICY.next_delay(2, 429, garbage, NOW, _no_jitter) == 300


@given(value=st.text())
def test_any_retry_after_gives_a_delay_within_bounds(value: str) -> None:
    delay = POLICY.next_delay(1, 503, value, NOW)

    assert delay is not None
    assert 0 <= delay <= 36000
    assert delay >= 5 * 0.8  # the first step, less its jitter


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Outcome.DELIVERED),
        (201, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (299, Outcome.DELIVERED),
        (410, Outcome.GONE),
        (None, Outcome.RETRY),
        (199, Outcome.RETRY),
        (301, Outcome.RETRY),
        (302, Outcome.RETRY),
        (400, Outcome.RETRY),
        (404, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (503, Outcome.RETRY),
    ],
)
def test_outcome_classification(status: int | None, expected: Outcome) -> None:
    assert outcome(status) is expected


@pytest.mark.parametrize("made", range(1, 8))
def test_a_failed_manual_attempt_leaves_the_next_attempt_to_the_schedule(made: int) -> None:
    # A scheduled attempt that fails sets when the next goes; a manual one sets nothing, even
    # when the receiver asks for a wait: the delivery keeps the schedule's next attempt.
    scheduled = judge(POLICY, made, 503, None, "60", NOW, Trigger.SCHEDULED)
    assert scheduled.status is Status.PENDING and scheduled.delay is not None

    manual = judge(POLICY, made, 503, None, "60", NOW, Trigger.MANUAL)
    assert manual == Verdict(Status.PENDING, delay=None, error="HTTP 503")


def test_a_manual_attempt_that_succeeds_delivers_and_a_410_still_fails_the_delivery() -> None:
    assert judge(POLICY, 3, 204, None, None, NOW, Trigger.MANUAL) == Verdict(Status.DELIVERED)
    gone = judge(POLICY, 3, 410, None, None, NOW, Trigger.MANUAL)
    assert gone.status is Status.FAILED and gone.disable_webhook
