"""``persistence: memory`` streams: a bounded ring of records in this process, lost on restart.

Owns: :class:`MemoryStream`, which offers the same operations as the store's
:class:`~headwater.core.store.StreamStore` (``append_batch``, ``read``, ``info``,
``expire``, checkpoints, ``free_through``) so that the streams plugin treats both alike. It must
never touch the disk: a memory stream is fast because nothing it holds survives the process, and
that is its contract. Its sequences start at 0 again after every restart.

Invariants
----------

* What to accept, drop, expire and free is decided by :mod:`~headwater.core.retention`,
  the same pure functions the file store follows: both persistences behave alike.
* Records are held oldest first with contiguous sequences; every deletion (``overwrite_oldest``,
  ``ttl``, ``drop_exported``) removes from the oldest end, so the ring never has holes and a
  read from a sequence is one index computation.
* ``total_bytes`` is the sum of :func:`record_size` over the records held, never more than the
  stream's ``max_size``: what ``describe`` reports is what is held.

Not thread-safe: the streams plugin calls it from the event loop only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from headwater.core.retention import (
    StreamState,
    plan_append,
    plan_expire,
    plan_free_through,
    unexported_by_export,
)
from headwater.core.store import AppendOutcome
from headwater.core.streams import ExportProgress
from headwater.wire.streams import StorageInfo, StreamRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

    from headwater.core.retention import RetentionLimits
    from headwater.core.store import NewRecord

__all__ = ["MemoryStream", "MemoryStreamStatistics", "record_size"]

#: What a record costs besides its topic, client id and payload: the header of the store's record
#: encoding (version, checksum, QoS, timestamp, lengths). Python's own overhead is larger, but
#: max_size is about what the user stores, and both persistences count a record alike.
RECORD_OVERHEAD: Final = 18

# Drop the consumed head of the list once it is this long and at least half of the list, so
# that popping from the oldest end stays O(1) amortized without a deque's O(n) indexing.
_COMPACT_HEAD_AT: Final = 1024


def record_size(topic: str, client_id: str, payload: bytes) -> int:
    """The bytes a record counts against ``max_size``."""
    return RECORD_OVERHEAD + len(topic.encode()) + len(client_id.encode()) + len(payload)


@dataclass(frozen=True, slots=True)
class MemoryStreamStatistics:
    """Counters of one :class:`MemoryStream` (the storage counters are in :meth:`MemoryStream.info`)."""

    appended: int
    freed_exported: int


class MemoryStream:
    """A bounded in-memory stream with the store's interface; see the module docstring."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._records: list[StreamRecord] = []
        self._sizes: list[int] = []
        self._head = 0  # index of the oldest record still held
        self._next_sequence = 0
        self._total_bytes = 0
        self._dropped_oldest = 0
        self._rejected_new = 0
        self._expired = 0
        self._appended = 0
        self._freed_exported = 0
        self._checkpoints: dict[str, int] = {}
        self._progress: dict[str, ExportProgress] = {}
        self._lost: dict[str, int] = {}  # per export: records dropped before it delivered them

    @property
    def next_sequence(self) -> int:
        """The sequence the next accepted record gets."""
        return self._next_sequence

    def __len__(self) -> int:
        return len(self._records) - self._head

    def append_batch(
        self, records: Sequence[NewRecord], *, limits: RetentionLimits, export_ids: Sequence[str] = ()
    ) -> AppendOutcome:
        """Append ``records`` in order, applying ``limits`` as :func:`plan_append` decides."""
        sizes = [record_size(record.topic, record.client_id, record.payload) for record in records]
        before = self._state()
        # Lazily, from the oldest held record: plan_append reads only as far as it drops.
        held_sizes = (self._sizes[index] for index in range(self._head, len(self._sizes)))
        plan = plan_append(before, sizes, limits, held_sizes)
        checkpoints = {export_id: self._checkpoints.get(export_id) for export_id in export_ids}
        for _ in range(min(plan.dropped_oldest, len(self))):
            self._pop_oldest()
        for record, size, sequence in zip(records, sizes, plan.sequences, strict=True):
            # A record accepted and dropped again within the batch keeps its sequence, unstored.
            if sequence is None or sequence < plan.after.oldest_sequence:
                continue
            self._records.append(
                StreamRecord(
                    sequence=sequence,
                    timestamp_ms=record.timestamp_ms,
                    topic=record.topic,
                    qos=record.qos,
                    client_id=record.client_id,
                    payload=record.payload,
                )
            )
            self._sizes.append(size)
        self._next_sequence = plan.after.next_sequence
        self._total_bytes = plan.after.total_bytes
        self._dropped_oldest += plan.dropped_oldest
        self._rejected_new += plan.rejected_new
        self._appended += len(records) - plan.rejected_new
        lost = unexported_by_export(before.oldest_sequence, plan.after.oldest_sequence, checkpoints)
        for export_id, count in lost.items():
            self._lost[export_id] = self._lost.get(export_id, 0) + count
        return AppendOutcome(
            sequences=plan.sequences, dropped_oldest=plan.dropped_oldest, dropped_unexported=lost
        )

    def read(self, from_sequence: int, *, max_count: int, max_bytes: int | None = None) -> list[StreamRecord]:
        """Records with sequence >= ``from_sequence``, oldest first.

        At most ``max_count`` of them and at most ``max_bytes`` of payload, except that the first
        record is returned whatever its size (a reader must always be able to make progress).
        """
        if max_count <= 0 or not len(self):
            return []
        oldest = self._records[self._head].sequence
        start = self._head + max(0, from_sequence - oldest)
        result: list[StreamRecord] = []
        payload_bytes = 0
        for index in range(start, min(len(self._records), start + max_count)):
            record = self._records[index]
            payload_bytes += len(record.payload)
            if result and max_bytes is not None and payload_bytes > max_bytes:
                break
            result.append(record)
        return result

    def info(self) -> StorageInfo:
        """What the ring holds now, exactly."""
        empty = not len(self)
        return StorageInfo(
            oldest_sequence=None if empty else self._records[self._head].sequence,
            newest_sequence=None if empty else self._records[-1].sequence,
            total_bytes=self._total_bytes,
            record_count=len(self),
            dropped_oldest=self._dropped_oldest,
            rejected_new=self._rejected_new,
            expired=self._expired,
        )

    def expire(self, *, older_than_ms: int, max_records: int, export_ids: Sequence[str] = ()) -> int:
        """Remove up to ``max_records`` of the oldest records stamped before ``older_than_ms``.

        ``export_ids`` is accepted for the store's signature; a memory stream keeps no per-export
        loss counters (nothing it holds survives a restart to be exported later anyway).
        """
        del export_ids
        held = range(self._head, len(self._records))
        plan = plan_expire(
            ((self._records[index].timestamp_ms, self._sizes[index]) for index in held),
            older_than_ms=older_than_ms,
            max_records=max_records,
        )
        for _ in range(plan.count):
            self._pop_oldest()
        self._expired += plan.count
        return plan.count

    def checkpoint(self, export_id: str) -> int | None:
        """The last sequence export ``export_id`` delivered, None before its first delivery."""
        return self._checkpoints.get(export_id)

    def set_checkpoint(self, export_id: str, sequence: int, progress: ExportProgress | None = None) -> None:
        """Record that export ``export_id`` delivered everything up to ``sequence`` (and its counters)."""
        self._checkpoints[export_id] = sequence
        if progress is not None:
            self._progress[export_id] = progress

    def export_progress(self, export_id: str) -> ExportProgress:
        """Export ``export_id``'s counters (zeros before its first delivery)."""
        return self._progress.get(export_id, ExportProgress())

    def set_export_progress(self, export_id: str, progress: ExportProgress) -> None:
        """Keep export ``export_id``'s counters (e.g. its ``disabled`` switch)."""
        self._progress[export_id] = progress

    def delete_checkpoint(self, export_id: str) -> None:
        """Forget export ``export_id``: its checkpoint, lost counter and counters."""
        self._checkpoints.pop(export_id, None)
        self._progress.pop(export_id, None)
        self._lost.pop(export_id, None)

    def dropped_unexported(self) -> dict[str, int]:
        """Per export id: records removed by retention before that export delivered them."""
        return dict(self._lost)

    def free_through(self, sequence: int) -> int:
        """Remove every record with a sequence <= ``sequence`` (``drop_exported``); return how many."""
        count = plan_free_through(self._state(), sequence)
        for _ in range(count):
            self._pop_oldest()
        self._freed_exported += count
        return count

    def statistics(self) -> MemoryStreamStatistics:
        """A snapshot of the counters."""
        return MemoryStreamStatistics(appended=self._appended, freed_exported=self._freed_exported)

    def _state(self) -> StreamState:
        oldest = self._records[self._head].sequence if len(self) else self._next_sequence
        return StreamState(
            next_sequence=self._next_sequence, oldest_sequence=oldest, total_bytes=self._total_bytes
        )

    def _pop_oldest(self) -> None:
        self._total_bytes -= self._sizes[self._head]
        self._head += 1
        if self._head >= _COMPACT_HEAD_AT and self._head * 2 >= len(self._records):
            del self._records[: self._head]
            del self._sizes[: self._head]
            self._head = 0
