"""The one LRU-under-a-budget policy shared by the disk store and the memory pool."""

from __future__ import annotations

import math

import pytest

from modelfix.eviction import Candidate, NoRoom, format_size, parse_size, plan


def items(*specs):
    # (key, cost, last_used, held)
    return [Candidate(k, c, t, h) for k, c, t, h in specs]


def test_oldest_goes_first_until_the_newcomer_fits():
    pool = items(("a", 40, 3.0, False), ("b", 40, 1.0, False), ("c", 40, 2.0, False))
    assert plan(pool, budget=100, incoming=30) == ["b", "c"]


def test_nothing_evicted_when_it_fits():
    assert plan(items(("a", 10, 1.0, False)), budget=100, incoming=50) == []


def test_held_items_are_never_chosen():
    pool = items(("old-but-held", 60, 0.0, True), ("new", 30, 9.0, False))
    assert plan(pool, budget=100, incoming=40) == ["new"]


def test_no_room_names_the_sizes():
    pool = items(("held", 80, 0.0, True))
    with pytest.raises(NoRoom, match=r"needs 30 B but the budget is 100 B with 80 B held") as info:
        plan(pool, budget=100, incoming=30)
    assert (info.value.needed, info.value.held) == (30, 80)


def test_max_count_evicts_by_age_too():
    pool = items(("a", 1, 1.0, False), ("b", 1, 2.0, False))
    assert plan(pool, incoming=1, max_count=2) == ["a"]
    with pytest.raises(NoRoom):
        plan(items(("a", 1, 1.0, True), ("b", 1, 2.0, True)), incoming=1, max_count=2)


def test_over_budget_without_incoming_trims_to_the_budget():
    # The store calls this after a sync to get back under MODELFIX_CACHE_MAX_SIZE.
    pool = items(("a", 60, 1.0, False), ("b", 60, 2.0, False))
    assert plan(pool, budget=100) == ["a"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("1024", 1024), ("50GB", 50e9), ("2GiB", 2 * 2**30), ("512 MB", 512e6), ("1.5k", 1500), ("inf", math.inf), (7, 7)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "-5", "0", "nan", "-inf", "-1GB", -5, 0, math.nan])
def test_parse_size_refuses_what_is_no_size_naming_the_setting_and_what_works(text):
    with pytest.raises(ValueError, match=rf"^bad --max-size {text!r}: use bytes or a size like 500MB.*more than zero"):
        parse_size(text, "--max-size")


def test_format_size():
    assert (format_size(999), format_size(1_500_000), format_size(math.inf)) == ("999 B", "1.5 MB", "unlimited")
