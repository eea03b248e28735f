"""Unit tests for headwater.core.retention: the pure retention planner."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.core.retention import (
    AppendPlan,
    ExpirePlan,
    RetentionLimits,
    StreamState,
    count_unexported,
    plan_append,
    plan_expire,
    plan_free_through,
    unexported_by_export,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

Strategy = Literal["overwrite_oldest", "reject_new"]
STRATEGIES: tuple[Strategy, ...] = ("overwrite_oldest", "reject_new")


class CountingSizes:
    """The stored records' sizes, counting how many the planner asked for (it must be lazy)."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.consumed = 0

    def __iter__(self) -> Iterator[int]:
        for size in self.sizes:
            self.consumed += 1
            yield size


# A stream holding sequences 10..13, four records of 100 bytes.
FOUR_OF_100 = StreamState(next_sequence=14, oldest_sequence=10, total_bytes=400)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exactly_full_accepts_everything(strategy: Strategy) -> None:
    stored = CountingSizes([100] * 4)
    plan = plan_append(FOUR_OF_100, [50, 50], RetentionLimits(500, strategy), stored)
    assert plan == AppendPlan(
        before=FOUR_OF_100,
        after=StreamState(next_sequence=16, oldest_sequence=10, total_bytes=500),
        sequences=(14, 15),
        rejected_new=0,
        dropped_oldest=0,
    )
    assert stored.consumed == 0


def test_one_byte_over_with_reject_new_rejects_that_record_only() -> None:
    stored = CountingSizes([100] * 4)
    plan = plan_append(FOUR_OF_100, [50, 51, 50], RetentionLimits(500, "reject_new"), stored)
    # 400 + 50 = 450; +51 = 501 > 500: rejected; +50 = 500: fits again.
    assert plan.sequences == (14, None, 15)
    assert plan.rejected_new == 1
    assert plan.dropped_oldest == 0
    assert plan.after == StreamState(next_sequence=16, oldest_sequence=10, total_bytes=500)
    assert stored.consumed == 0


def test_one_byte_over_with_overwrite_oldest_drops_one_oldest_record() -> None:
    stored = CountingSizes([100] * 4)
    plan = plan_append(FOUR_OF_100, [101], RetentionLimits(500, "overwrite_oldest"), stored)
    assert plan.sequences == (14,)
    assert plan.dropped_oldest == 1
    assert plan.after == StreamState(next_sequence=15, oldest_sequence=11, total_bytes=401)
    assert stored.consumed == 1  # lazily: only the one record it dropped


def test_overwrite_oldest_drops_as_many_as_needed_with_their_real_sizes() -> None:
    stored = CountingSizes([10, 20, 300, 70])
    state = StreamState(next_sequence=4, oldest_sequence=0, total_bytes=400)
    plan = plan_append(state, [150], RetentionLimits(500, "overwrite_oldest"), stored)
    # 400 + 150 = 550: drop 10 (540), drop 20 (520), drop 300 (220) -> fits.
    assert plan.dropped_oldest == 3
    assert plan.after == StreamState(next_sequence=5, oldest_sequence=3, total_bytes=220)
    assert stored.consumed == 3


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_record_larger_than_max_size_is_rejected_under_both_strategies(strategy: Strategy) -> None:
    stored = CountingSizes([100] * 4)
    plan = plan_append(FOUR_OF_100, [501], RetentionLimits(500, strategy), stored)
    assert plan.sequences == (None,)
    assert plan.rejected_new == 1
    assert plan.dropped_oldest == 0
    assert plan.after == FOUR_OF_100
    assert stored.consumed == 0  # nothing was dropped in vain


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_record_of_exactly_max_size_fits_an_empty_stream(strategy: Strategy) -> None:
    empty = StreamState(next_sequence=7, oldest_sequence=7, total_bytes=0)
    plan = plan_append(empty, [500], RetentionLimits(500, strategy))
    assert plan.sequences == (7,)
    assert plan.after == StreamState(next_sequence=8, oldest_sequence=7, total_bytes=500)


def test_overwrite_oldest_of_exactly_max_size_replaces_everything() -> None:
    stored = CountingSizes([100] * 4)
    plan = plan_append(FOUR_OF_100, [500], RetentionLimits(500, "overwrite_oldest"), stored)
    assert plan.dropped_oldest == 4
    assert plan.after == StreamState(next_sequence=15, oldest_sequence=14, total_bytes=500)


def test_overwrite_oldest_drops_records_of_the_same_batch_when_the_batch_alone_is_too_big() -> None:
    empty = StreamState(next_sequence=0, oldest_sequence=0, total_bytes=0)
    plan = plan_append(empty, [300, 300, 300], RetentionLimits(500, "overwrite_oldest"))
    # Each record replaces the one before it: all get sequences, only the last is kept.
    assert plan.sequences == (0, 1, 2)
    assert plan.dropped_oldest == 2
    assert plan.after == StreamState(next_sequence=3, oldest_sequence=2, total_bytes=300)


def test_a_lowered_limit_is_applied_at_the_next_append() -> None:
    stored = CountingSizes([100] * 4)
    assert plan_append(FOUR_OF_100, [10], RetentionLimits(200, "reject_new"), stored).sequences == (None,)
    plan = plan_append(FOUR_OF_100, [10], RetentionLimits(200, "overwrite_oldest"), stored)
    assert plan.dropped_oldest == 3
    assert plan.after.total_bytes == 110


def test_missing_stored_sizes_do_not_loop_forever() -> None:
    # Metadata claims 400 bytes in 4 records, but the store yields none (a broken invariant):
    # the planner still terminates and the stream ends up holding just the new record.
    plan = plan_append(FOUR_OF_100, [100], RetentionLimits(150, "overwrite_oldest"), [])
    assert plan.after == StreamState(next_sequence=15, oldest_sequence=14, total_bytes=100)


def test_empty_batch() -> None:
    plan = plan_append(FOUR_OF_100, [], RetentionLimits(100, "reject_new"))
    assert plan.sequences == ()
    assert plan.after == FOUR_OF_100


# --- a batch behaves exactly as its records appended one at a time ---------------------------


@settings(max_examples=300, deadline=None)
@given(
    max_size=st.integers(1, 400),
    strategy=st.sampled_from(STRATEGIES),
    stored=st.lists(st.integers(1, 120), max_size=8),
    incoming=st.lists(st.integers(0, 450), max_size=12),
)
def test_a_batch_equals_its_records_one_by_one(
    max_size: int, strategy: Strategy, stored: list[int], incoming: list[int]
) -> None:
    limits = RetentionLimits(max_size, strategy)
    before = StreamState(next_sequence=100 + len(stored), oldest_sequence=100, total_bytes=sum(stored))
    batch = plan_append(before, incoming, limits, stored)

    held = list(stored)  # sizes of the records the stream holds, oldest first
    state = before
    sequences: list[int | None] = []
    dropped = 0
    for size in incoming:
        single = plan_append(state, [size], limits, held)
        sequences.extend(single.sequences)
        dropped += single.dropped_oldest
        del held[: single.dropped_oldest]
        if single.sequences != (None,):
            held.append(size)
        state = single.after

    assert batch.sequences == tuple(sequences)
    assert batch.dropped_oldest == dropped
    assert batch.rejected_new == sequences.count(None)
    assert batch.after == state
    assert state.total_bytes == sum(held)
    assert state.record_count == len(held)
    if any(sequence is not None for sequence in sequences):  # an accepted record makes room
        assert state.total_bytes <= max_size


# --- TTL ---------------------------------------------------------------------------------------


def test_expire_stops_at_the_first_record_not_expired() -> None:
    # Timestamps are not strictly ordered: the 50 after the 200 stays (the sweep stopped).
    head = [(10, 5), (20, 6), (200, 7), (50, 8)]
    assert plan_expire(head, older_than_ms=100, max_records=10) == ExpirePlan(count=2, freed_bytes=11)


def test_expire_keeps_a_record_exactly_at_the_cutoff() -> None:
    assert plan_expire([(99, 1), (100, 1)], older_than_ms=100, max_records=10) == ExpirePlan(1, 1)


def test_expire_is_bounded_by_max_records() -> None:
    head = iter([(1, 1)] * 1000)
    assert plan_expire(head, older_than_ms=100, max_records=3) == ExpirePlan(3, 3)
    assert len(list(head)) == 997  # it did not read further than it needed
    assert plan_expire([(1, 1)], older_than_ms=100, max_records=0) == ExpirePlan(0, 0)


def test_expire_removes_a_record_that_cannot_tell_its_age() -> None:
    assert plan_expire([(None, 9), (200, 1)], older_than_ms=100, max_records=10) == ExpirePlan(1, 9)


# --- drop_exported and per-export losses -------------------------------------------------------


@pytest.mark.parametrize(
    ("through", "freed"),
    [(-1, 0), (9, 0), (10, 1), (12, 3), (13, 4), (10_000, 4)],
)
def test_free_through(through: int, freed: int) -> None:
    assert plan_free_through(FOUR_OF_100, through) == freed


@pytest.mark.parametrize(
    ("checkpoint", "lost"),
    [(None, 4), (9, 4), (10, 3), (12, 1), (13, 0), (50, 0)],
)
def test_count_unexported(checkpoint: int | None, lost: int) -> None:
    # Sequences 10..13 were removed.
    assert count_unexported(10, 14, checkpoint) == lost


def test_unexported_by_export_leaves_out_exports_that_lost_nothing() -> None:
    assert unexported_by_export(10, 14, {"a": None, "b": 11, "c": 20}) == {"a": 4, "b": 2}
    assert unexported_by_export(10, 10, {"a": None}) == {}
