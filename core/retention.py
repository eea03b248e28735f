"""Retention decisions for durable streams: pure functions, no I/O.

:mod:`headwater.core.store` asks these functions *what* to keep and *what* to remove,
then executes the answer in one RocksDB write batch. Everything here works on sequence numbers
and encoded record sizes only, so it is tested without a database.

The model every function follows: a stream holds the contiguous sequence range
``[oldest_sequence, next_sequence)``; ``total_bytes`` is the sum of the encoded sizes of those
records. Appending a batch behaves exactly as appending its records one at a time, in order:

* a record larger than ``max_size`` is rejected under both strategies (counted as rejected new:
  no amount of dropping makes it fit);
* ``reject_new``: a record that does not fit in ``max_size - total_bytes`` is rejected;
* ``overwrite_oldest``: the oldest records are dropped until it fits. A record of the same batch
  that was accepted and then dropped again later in that batch keeps its sequence number (it was
  accepted) but is never written; it counts as dropped oldest.

Records leave a stream only from the oldest end: by size retention (above), by the TTL sweep
(:func:`plan_expire`) and by ``drop_exported`` (:func:`plan_free_through`). The sequence range
stays contiguous.

An export *checkpoint* is the last sequence the export delivered (``None``: nothing yet). A removed
record is *unexported* for an export when its sequence is greater than that checkpoint.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

__all__ = [
    "AppendPlan",
    "ExpirePlan",
    "RetentionLimits",
    "StreamState",
    "count_unexported",
    "plan_append",
    "plan_expire",
    "plan_free_through",
    "unexported_by_export",
]


@dataclass(frozen=True, slots=True)
class RetentionLimits:
    """A stream's size limit and what happens when it is reached."""

    max_size: int  # bytes, counted as encoded record bytes (what is stored)
    strategy_on_full: Literal["overwrite_oldest", "reject_new"]


@dataclass(frozen=True, slots=True)
class StreamState:
    """The part of a stream's metadata that retention decides on."""

    next_sequence: int
    oldest_sequence: int
    total_bytes: int

    @property
    def record_count(self) -> int:
        """How many records the stream holds (the range is contiguous)."""
        return self.next_sequence - self.oldest_sequence


@dataclass(frozen=True, slots=True)
class AppendPlan:
    """What :func:`plan_append` decided for one batch.

    ``sequences[i]`` is the sequence given to incoming record ``i``, ``None`` if it is rejected.
    Incoming record ``i`` is written only if ``sequences[i] >= after.oldest_sequence`` (it may
    have been accepted and dropped again within the batch). Records of the old state in
    ``[before.oldest_sequence, min(after.oldest_sequence, before.next_sequence))`` are deleted.
    """

    before: StreamState
    after: StreamState
    sequences: tuple[int | None, ...]
    rejected_new: int
    dropped_oldest: int  # == after.oldest_sequence - before.oldest_sequence


@dataclass(frozen=True, slots=True)
class ExpirePlan:
    """What :func:`plan_expire` decided: remove the ``count`` oldest records, ``freed_bytes`` in all."""

    count: int
    freed_bytes: int


def plan_append(
    state: StreamState,
    incoming_sizes: Sequence[int],
    limits: RetentionLimits,
    oldest_sizes: Iterable[int] = (),
) -> AppendPlan:
    """Decide which incoming records are accepted and how many oldest records are dropped.

    ``incoming_sizes`` are the encoded sizes of the new records, in order. ``oldest_sizes``
    yields the encoded sizes of the stored records from ``state.oldest_sequence`` on; it is
    consumed lazily, and only as far as ``overwrite_oldest`` has to drop.
    """
    max_size = limits.max_size
    total = state.total_bytes
    if total + sum(incoming_sizes) <= max_size:  # the common case: everything fits
        first = state.next_sequence
        count = len(incoming_sizes)
        after = StreamState(first + count, state.oldest_sequence, total + sum(incoming_sizes))
        return AppendPlan(state, after, tuple(range(first, first + count)), 0, 0)

    overwrite = limits.strategy_on_full == "overwrite_oldest"
    stored: Iterator[int] = iter(oldest_sizes)
    accepted: deque[int] = deque()  # sizes of this batch's records still held, oldest first
    next_sequence = state.next_sequence
    oldest = state.oldest_sequence
    sequences: list[int | None] = []
    rejected = 0
    for size in incoming_sizes:
        if size > max_size or (total + size > max_size and not overwrite):
            sequences.append(None)
            rejected += 1
            continue
        while total + size > max_size:
            if oldest < state.next_sequence:
                total -= next(stored, 0)  # 0: a missing record frees nothing, yet is gone
            elif accepted:
                total -= accepted.popleft()
            else:  # nothing left to drop: the stream is empty, whatever total said
                total = 0
                break
            oldest += 1
        total = max(total, 0)
        sequences.append(next_sequence)
        next_sequence += 1
        total += size
        accepted.append(size)
    after = StreamState(next_sequence, oldest, total)
    return AppendPlan(state, after, tuple(sequences), rejected, oldest - state.oldest_sequence)


def plan_expire(
    oldest: Iterable[tuple[int | None, int]], *, older_than_ms: int, max_records: int
) -> ExpirePlan:
    """Decide how many of the oldest records a TTL sweep removes.

    ``oldest`` yields ``(timestamp_ms, encoded_size)`` of the stored records, oldest first;
    ``timestamp_ms`` is ``None`` for a record that can't be decoded (it can never be delivered,
    and keeping it would stall the sweep forever, so it counts as expired). The sweep stops at
    the first record that is not older than ``older_than_ms`` — timestamps are non-decreasing
    in practice but not guaranteed to be — and after ``max_records`` records.
    """
    count = 0
    freed = 0
    if max_records <= 0:
        return ExpirePlan(0, 0)
    for timestamp_ms, size in oldest:
        if timestamp_ms is not None and timestamp_ms >= older_than_ms:
            break
        count += 1
        freed += size
        if count >= max_records:
            break
    return ExpirePlan(count, freed)


def plan_free_through(state: StreamState, sequence: int) -> int:
    """How many of the oldest records ``drop_exported`` frees.

    ``sequence`` is the lowest checkpoint of the stream's exports: every export delivered it.
    """
    end = min(sequence + 1, state.next_sequence)
    return max(0, end - state.oldest_sequence)


def count_unexported(dropped_from: int, dropped_to: int, checkpoint: int | None) -> int:
    """How many of the removed sequences ``[dropped_from, dropped_to)`` an export had not delivered.

    ``checkpoint`` is the last sequence it delivered, ``None`` if none yet.
    """
    first_undelivered = 0 if checkpoint is None else checkpoint + 1
    return max(0, dropped_to - max(dropped_from, first_undelivered))


def unexported_by_export(
    dropped_from: int, dropped_to: int, checkpoints: Mapping[str, int | None]
) -> dict[str, int]:
    """:func:`count_unexported` for each export; exports that lost nothing are left out."""
    lost = {
        export_id: count_unexported(dropped_from, dropped_to, checkpoint)
        for export_id, checkpoint in checkpoints.items()
    }
    return {export_id: count for export_id, count in lost.items() if count}
