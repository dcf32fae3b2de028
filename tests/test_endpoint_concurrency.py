"""An endpoint's adaptive concurrency: the rule (pure, table tests), then real workers moving it
as a loopback receiver answers, seen on the webhook through the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from relay.delivery.concurrency import ConcurrencyRule, Load, load
from tests.flows import Workers, webhook
from tests.receivers import Receiver, Reply

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


# --- through real workers --------------------------------------------------------------------


async def _concurrency(client: httpx.AsyncClient, hook_id: str) -> dict[str, int]:
    response = await client.get(f"/v1/webhooks/{hook_id}")
    assert response.status_code == 200, response.text
    shown: dict[str, int] = response.json()["data"]["concurrency"]
    return shown


async def _until(
    client: httpx.AsyncClient, hook_id: str, ok: Callable[[int], bool], timeout: float
) -> dict[str, int]:
    """The webhook's concurrency once `ok(current)`; fails the test with the last one seen."""
    deadline = time.monotonic() + timeout
    while not ok((shown := await _concurrency(client, hook_id))["current"]):
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.1)
    return shown


async def _post_many(client: httpx.AsyncClient, tenant: str, count: int) -> None:
    event: dict[str, Any] = {"type": "post.published", "tenant_id": tenant, "data": {"post_id": 1}}
    for start in range(0, count, 100):
        batch = {"events": [event] * min(100, count - start)}
        response = await client.post("/v1/events/batch", json=batch)
        assert response.status_code == 207, response.text


async def test_a_webhook_answering_503_gets_its_concurrency_halved_down_to_one(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(503))
        hook = await webhook(admin, rx.url("/busy"))
        assert await _concurrency(admin, hook["id"]) == {"current": 4, "max": 64}
        await workers(1)
        await _post_many(admin, "space_42", 20)
        shown = await _until(admin, hook["id"], lambda n: n == 1, timeout=30)
        listed = (await admin.get("/v1/webhooks", params={"tenant_id": "space_42"})).json()
    assert shown == {"current": 1, "max": 64}
    assert [w["concurrency"] for w in listed["data"]] == [shown]


async def test_a_webhook_answering_2xx_quickly_gets_more_concurrency(
    admin: httpx.AsyncClient, workers: Workers
) -> None:
    async with Receiver() as rx:
        rx.answer(Reply(200, delay=0.02))
        hook = await webhook(admin, rx.url("/fast"))
        await workers(1)
        await _post_many(admin, "space_42", 600)
        shown = await _until(admin, hook["id"], lambda n: n >= 8, timeout=60)
        await rx.wait_for(600, timeout=60)
    assert shown["max"] == 64
    # The receiver felt it: more attempts at once than the fixed concurrency of 4 allowed.
    assert rx.most_in_flight > 4, rx.most_in_flight


async def test_a_tenant_s_concurrency_still_binds_a_webhook_that_answers_quickly(
    make_client: Callable[..., Any], workers: Workers
) -> None:
    client = await make_client(endpoint_concurrency=2, tenant_concurrency=3)
    async with Receiver() as rx:
        rx.answer(Reply(200, delay=0.01))
        hook = await webhook(client, rx.url("/fast"))
        await workers(1, RELAY_ENDPOINT_CONCURRENCY="2", RELAY_TENANT_CONCURRENCY="3")
        await _post_many(client, "space_42", 300)
        await rx.wait_for(300, timeout=60)
        shown = await _concurrency(client, hook["id"])
    # It grows only while it fills its own slots, which the tenant's three stop it doing past 4.
    assert 3 <= shown["current"] <= 4, shown
    assert rx.most_in_flight <= 3, rx.most_in_flight
