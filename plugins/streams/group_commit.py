"""The group commit: what arrives close together is written as one batch per stream.

Owns the ingest path's writing: :class:`GroupCommitPolicy` (when a batch is complete, a pure
decision) and :class:`GroupCommit`, which queues records, writes each batch with one
``append_batch`` per stream, asks for one WAL fsync per batch when a stream written has
``flush_on_write``, and settles the futures of the publishes and ``append`` calls waiting for
those records. It must never decide which stream a publish belongs to (that is the plugin's
topic index), nor retention (that is the store and :mod:`headwater.core.retention`).

How a batch is gathered
-----------------------

The first record of a batch schedules a flush callback (``loop.call_soon``) that runs once per
event-loop iteration until :class:`GroupCommitPolicy` says the batch is complete, then
:meth:`GroupCommit.flush` writes the whole batch at once: per stream one ``append_batch`` (for a
file stream one atomic RocksDB write, in the WAL when it returns). If a stream written has
``flush_on_write: true``, the flush asks for one ``Database.request_wal_sync()`` for the whole
batch; the futures of the other streams are settled at once, theirs when that fsync is done. No
task is involved: the flush is a callback, the fsync runs in the database's own worker.

A publish landing in one stream gets that stream's batch future (shared by every publish of the
batch landing only there); a publish landing in several streams gets a joint future, settled
once all of its writes are (failed if any of them failed).

To settle a future is to complete it, with a result or an exception. A write the storage refused
(``StorageError``) fails its futures — the broker then does not acknowledge and closes the
connection, so the client resends. A write that raised anything else is a bug; it is logged and
its futures fail the same way rather than wait forever. An ``append`` caller whose record the
stream refused (``reject_new``, too large) gets
:class:`~headwater.core.streams.StreamRejectedError`; a publisher's future completes normally.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from headwater.core.store import StorageError, StorageWriteError
from headwater.core.streams import StreamError, StreamRejectedError

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from headwater.core.store import AppendOutcome, NewRecord
    from headwater.plugins.streams.served import ServedStream

__all__ = ["GroupCommit", "GroupCommitPolicy", "GroupCommitStatistics"]

# The plugin's logger: these lines have always come from the plugin.
logger = logging.getLogger("headwater.plugins.streams.plugin")


@dataclass(frozen=True, slots=True)
class GroupCommitPolicy:
    """When the records gathered since the last write are written (pure; checked every iteration).

    Records arrive one event-loop iteration at a time (amqtt reads one packet per iteration, and
    more while a client has messages in flight). Writing after every iteration costs one
    ``append_batch`` per record; waiting a few iterations writes them together, and their
    publishers wait a little longer for the acknowledgement, while they keep sending (an MQTT
    client keeps several QoS 1 messages in flight). A batch is written once ``quiet_iterations``
    iterations in a row brought no new record (the burst is over: an idle broker writes a lone
    record after that many short iterations), or after ``max_iterations`` iterations, or once
    its first record waited ``max_delay`` seconds, or once it holds ``max_records`` records.
    The defaults gather a publishing client's whole in-flight window per write; writing after
    every iteration is much slower (docs/benchmarks.md has the measurements).
    """

    quiet_iterations: int = 8
    max_iterations: int = 64
    max_delay: float = 0.002  # seconds
    max_records: int = 5000

    def flush_now(self, *, records: int, quiet_iterations: int, iterations: int, waited: float) -> bool:
        """Whether the batch should be written now."""
        return (
            quiet_iterations >= self.quiet_iterations
            or iterations >= self.max_iterations
            or waited >= self.max_delay
            or records >= self.max_records
        )


@dataclass(frozen=True, slots=True)
class GroupCommitStatistics:
    """A snapshot of :class:`GroupCommit`'s counters (since start)."""

    records_appended: int  # accepted into a stream (a publish matching two streams counts twice)
    records_rejected: int  # refused: reject_new on a full stream, or larger than max_size
    records_dropped_oldest: int  # removed by overwrite_oldest to make room
    records_failed: int  # not stored because the storage failed (their publishers got no ack)
    batches_written: int  # group commits (one append_batch per stream written in each)
    largest_batch: int  # records in the largest group commit
    wal_syncs: int  # fsyncs awaited for flush_on_write streams (one per batch at most)


@dataclass(eq=False)
class _PendingWrite:
    """The records one batch will append to one stream, and who waits for them."""

    stream: ServedStream
    future: asyncio.Future[None]  # shared by every publish of the batch landing only here
    records: list[NewRecord] = field(default_factory=list)
    # append() callers: (index into records, future of the record's sequence)
    sequence_waiters: list[tuple[int, asyncio.Future[int]]] = field(default_factory=list)
    outcome: AppendOutcome | None = None
    error: BaseException | None = None


class _Batch:
    """Everything queued since the last flush."""

    __slots__ = ("done", "joint", "records", "writes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.writes: dict[ServedStream, _PendingWrite] = {}
        self.records = 0
        # Publishes landing in several streams: done when all of their writes are.
        self.joint: list[tuple[asyncio.Future[None], tuple[_PendingWrite, ...]]] = []
        self.done: asyncio.Future[None] = loop.create_future()  # set once the batch is settled


class GroupCommit:
    """Queues records per stream and writes them in batches; see the module docstring.

    ``request_wal_sync`` is the database's (one fsync for whatever was written before it).
    ``on_written`` is called with each stream a batch wrote to, ``on_failed`` with each stream
    whose write (or fsync) the storage refused and the error.
    """

    def __init__(
        self,
        policy: GroupCommitPolicy,
        *,
        loop: asyncio.AbstractEventLoop,
        request_wal_sync: Callable[[], asyncio.Future[None]],
        on_written: Callable[[ServedStream], None],
        on_failed: Callable[[ServedStream, BaseException], None],
    ) -> None:
        self._policy = policy
        self._loop = loop
        self._request_wal_sync = request_wal_sync
        self._on_written = on_written
        self._on_failed = on_failed
        self._batch = _Batch(loop)
        # The flush callback's view of the batch being gathered (see GroupCommitPolicy).
        self._flush_scheduled = False
        self._batch_started = 0.0
        self._iterations = 0
        self._quiet = 0
        self._records_at_last_check = 0
        self._syncing: set[_Batch] = set()  # written, waiting for their fsync
        # Counters (see GroupCommitStatistics).
        self._appended = 0
        self._rejected = 0
        self._dropped_oldest = 0
        self._failed = 0
        self._batches = 0
        self._largest_batch = 0
        self._wal_syncs = 0

    def queue(self, streams: Collection[ServedStream], record: NewRecord) -> asyncio.Future[None]:
        """Queue ``record`` for every stream of ``streams`` (at least one); done once stored in all."""
        writes = [self._queue(stream, record) for stream in streams]
        if len(writes) == 1:
            return writes[0].future
        joint: asyncio.Future[None] = self._loop.create_future()
        self._batch.joint.append((joint, tuple(writes)))
        return joint

    def queue_for_sequence(self, stream: ServedStream, record: NewRecord) -> asyncio.Future[int]:
        """Queue ``record`` for ``stream``; the future gets its sequence once it is stored.

        It fails with :class:`~headwater.core.streams.StreamRejectedError` when the stream
        refused the record, with the storage's error when the write failed.
        """
        write = self._queue(stream, record)
        waiter: asyncio.Future[int] = self._loop.create_future()
        write.sequence_waiters.append((len(write.records) - 1, waiter))
        return waiter

    def _queue(self, stream: ServedStream, record: NewRecord) -> _PendingWrite:
        batch = self._batch
        write = batch.writes.get(stream)
        if write is None:
            write = batch.writes[stream] = _PendingWrite(stream, self._loop.create_future())
        write.records.append(record)
        batch.records += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._batch_started = self._loop.time()
            self._loop.call_soon(self._flush_when_due)
        return write

    def _flush_when_due(self) -> None:
        """Called once per loop iteration while a batch gathers; flushes when the policy says so."""
        batch = self._batch
        loop = self._loop
        if batch.records != self._records_at_last_check:
            self._records_at_last_check = batch.records
            self._quiet = 0
        else:
            self._quiet += 1
        self._iterations += 1
        if not self._policy.flush_now(
            records=batch.records,
            quiet_iterations=self._quiet,
            iterations=self._iterations,
            waited=loop.time() - self._batch_started,
        ):
            loop.call_soon(self._flush_when_due)
            return
        self._flush_scheduled = False
        self._iterations = self._quiet = self._records_at_last_check = 0
        self.flush()

    def flush(self) -> None:
        """Write everything queued now: one ``append_batch`` per stream (the group commit).

        Futures of streams without ``flush_on_write`` are settled before this returns; the
        others once the one fsync this batch asks for is done.
        """
        batch = self._batch
        if not batch.writes:
            return
        self._batch = _Batch(self._loop)
        self._batches += 1
        self._largest_batch = max(self._largest_batch, batch.records)
        synced: list[_PendingWrite] = []
        for write in batch.writes.values():
            stream = write.stream
            try:
                write.outcome = stream.storage.append_batch(
                    write.records, limits=stream.limits, export_ids=stream.export_ids
                )
            except StorageError as exc:
                write.error = exc
                self._failed += len(write.records)
                self._on_failed(stream, exc)
                self._settle_write(write)
                continue
            except Exception as exc:
                # A bug (the store refused its arguments), not the disk: fail these publishes
                # (not acknowledged, the clients resend) rather than leave them waiting forever.
                logger.exception("stream %s: appending %d record(s) failed", stream.name, len(write.records))
                write.error = exc
                self._failed += len(write.records)
                self._settle_write(write)
                continue
            self._count_outcome(stream, write.outcome)
            self._on_written(stream)
            if stream.config.flush_on_write:
                synced.append(write)
            else:
                self._settle_write(write)
        if not synced:
            _settle_batch(batch)
            return
        self._syncing.add(batch)
        sync = self._request_wal_sync()
        sync.add_done_callback(functools.partial(self._settle_synced, batch, synced))

    async def wait_written(self) -> None:
        """Write what is queued now and return once every write has its fsync (or failed)."""
        self.flush()
        if self._syncing:
            await asyncio.gather(*(asyncio.shield(batch.done) for batch in self._syncing))

    def settle_pending(self, error: StreamError) -> None:
        """Fail every future still waiting (queued, or written and waiting for an fsync)."""
        for batch in (*self._syncing, self._batch):
            _settle_failed(batch, error)

    def statistics(self) -> GroupCommitStatistics:
        """A snapshot of the counters."""
        return GroupCommitStatistics(
            records_appended=self._appended,
            records_rejected=self._rejected,
            records_dropped_oldest=self._dropped_oldest,
            records_failed=self._failed,
            batches_written=self._batches,
            largest_batch=self._largest_batch,
            wal_syncs=self._wal_syncs,
        )

    def _settle_synced(self, batch: _Batch, synced: list[_PendingWrite], sync: asyncio.Future[None]) -> None:
        """The fsync a batch asked for is done: settle the futures that waited for it."""
        self._syncing.discard(batch)
        error = StorageWriteError("the fsync was cancelled") if sync.cancelled() else sync.exception()
        if error is None:
            self._wal_syncs += 1
        for write in synced:
            if error is not None:
                write.error = error
                self._failed += len(write.records)
                self._on_failed(write.stream, error)
            self._settle_write(write)
        _settle_batch(batch)

    def _settle_write(self, write: _PendingWrite) -> None:
        """Settle the futures of one stream's part of a batch and tell readers."""
        _settle_future(write.future, write.error)
        for index, waiter in write.sequence_waiters:
            if waiter.done():
                continue  # the append() caller went away
            if write.error is not None:
                waiter.set_exception(write.error)
                continue
            assert write.outcome is not None  # noqa: S101 - no error means an outcome
            sequence = write.outcome.sequences[index]
            if sequence is None:
                waiter.set_exception(_rejected(write.stream))
            else:
                waiter.set_result(sequence)
        if write.error is None:
            write.stream.notify_grown()

    def _count_outcome(self, stream: ServedStream, outcome: AppendOutcome) -> None:
        rejected = outcome.sequences.count(None)
        self._appended += len(outcome.sequences) - rejected
        self._rejected += rejected
        self._dropped_oldest += outcome.dropped_oldest
        stream.removed_since_compaction += outcome.dropped_oldest


def _rejected(stream: ServedStream) -> StreamRejectedError:
    config = stream.config
    if config.strategy_on_full == "reject_new":
        return StreamRejectedError(
            f"stream {config.name!r} is full ({config.max_size} bytes, strategy reject_new) "
            "or the record is larger than max_size"
        )
    return StreamRejectedError(
        f"the record is larger than stream {config.name!r}'s max_size ({config.max_size})"
    )


def _settle_future(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
        return
    future.set_exception(error)
    # Failures are counted and logged here; a QoS 0 publisher never awaits its future, and
    # asyncio would log every such future again as "exception never retrieved".
    future.exception()


def _settle_batch(batch: _Batch) -> None:
    """Every write of ``batch`` is settled: settle the multi-stream futures and the batch."""
    for joint, writes in batch.joint:
        _settle_future(joint, next((write.error for write in writes if write.error is not None), None))
    if not batch.done.done():
        batch.done.set_result(None)


def _settle_failed(batch: _Batch, error: BaseException) -> None:
    """Fail whatever of ``batch`` is still pending, then mark the batch settled."""
    for write in batch.writes.values():
        _settle_future(write.future, error)
        for _, waiter in write.sequence_waiters:
            if not waiter.done():
                waiter.set_exception(error)
    for joint, _ in batch.joint:
        _settle_future(joint, error)
    if not batch.done.done():
        batch.done.set_result(None)
