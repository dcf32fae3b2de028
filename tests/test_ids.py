"""Ids sort by creation time: lists are ordered by id and cursors are ids."""

from __future__ import annotations

import pytest

from relay.ids import created_ms, has_prefix, new_id, time_floor


def test_ids_made_in_one_millisecond_sort_in_the_order_they_were_made() -> None:
    made = [new_id("tok", 1_700_000_000_000) for _ in range(1000)]
    assert sorted(made) == made
    assert len(set(made)) == len(made)


def test_ids_sort_by_time_and_stay_above_their_time_floor() -> None:
    later, earlier = new_id("evt", 1_700_000_000_001), new_id("evt", 1_700_000_000_000)
    assert earlier < later
    assert time_floor("evt", 1_700_000_000_000) < earlier < time_floor("evt", 1_700_000_000_001)
    assert has_prefix(earlier, "evt") and not has_prefix(earlier, "dlv")


def test_an_id_tells_when_it_was_made_and_nothing_else_passes_for_one() -> None:
    for ms in (0, 1, 1_700_000_000_000, 2**50 - 1):
        assert created_ms(new_id("dlv", ms)) == ms
        assert created_ms(time_floor("evt", ms)) == ms
    # Characters outside an id's alphabet, and what int() would read as a number, are refused.
    for bad in ("dlv_0i", "dlv_+1", "dlv_ 1", "dlv_1_2", "dlv_U", "dlv_A1", "dlv_\u0663"):
        with pytest.raises(ValueError):
            created_ms(bad)
