"""Ids sort by creation time: lists are ordered by id and cursors are ids."""

from __future__ import annotations

from relay.ids import has_prefix, new_id, time_floor


def test_ids_made_in_one_millisecond_sort_in_the_order_they_were_made() -> None:
    made = [new_id("tok", 1_700_000_000_000) for _ in range(1000)]
    assert sorted(made) == made
    assert len(set(made)) == len(made)


def test_ids_sort_by_time_and_stay_above_their_time_floor() -> None:
    later, earlier = new_id("evt", 1_700_000_000_001), new_id("evt", 1_700_000_000_000)
    assert earlier < later
    assert time_floor("evt", 1_700_000_000_000) < earlier < time_floor("evt", 1_700_000_000_001)
    assert has_prefix(earlier, "evt") and not has_prefix(earlier, "dlv")
