"""The streams plugin: MQTT publishes into durable streams, acknowledged only once stored.

Owns the running streams: which topics feed which stream (one
:class:`~headwater.core.topics.TopicFilterIndex` over every stream's filters), the group
commit that writes what arrives close together as one batch per stream, ``persistence: memory``
rings, the retention sweep, the retained status topic, and run-time create/update/delete. It
implements :class:`~headwater.core.streams.StreamService` for the MQTT stream API
(``api.py``) and in-process users. It must never build RocksDB keys (that is ``store.py``) nor
speak request/response MQTT (that is ``api.py``).

Ingest path (group commit)
--------------------------

:meth:`StreamsPlugin.intercept` runs synchronously, in arrival order, for every publish the
ACL accepted. A topic that matches no stream costs one index lookup and returns ``None``. A
match only *queues* the record in the current batch and returns that stream's batch future
(shared by every publish of the batch; a publish landing in several streams gets one future
completed when all of them are). The first record of a batch schedules
a flush callback (``loop.call_soon``) that runs once per event-loop iteration until
:class:`GroupCommitPolicy` says the batch is complete, then :meth:`StreamsPlugin.flush` writes
the whole batch at once: per stream one ``append_batch`` (for a file stream one atomic RocksDB
write, in the WAL when it returns). If a stream written has ``flush_on_write: true``, the flush
asks for one ``Database.request_wal_sync()`` for the whole batch; the futures of the other
streams are resolved at once, theirs when that fsync is done. No task is involved: the flush is
a callback, the fsync runs in the database's own worker. The durable-ack handler sends the
PUBACK / PUBREC of a QoS 1/2 publish when its future completes; nobody waits for a QoS 0
publish, yet it lands in the stream the same way. ``memory`` streams go through the same batches
(their "write" is an append to the ring): a publish is acknowledged once it is in the ring, so
what was acknowledged can be read. Measured with one ``mosquitto_pub -l -q 1`` (100k x 200 B,
uvloop, 2 cores): a file stream ingests as fast as no stream (acknowledgements leave in bursts
of a whole batch, which also batches the client's next publishes), ``flush_on_write`` at about
0.85x, a memory stream at about 0.95x.

Headwater's control topics (everything under ``<topic_prefix>/``: stream API requests, deploy
messages that may carry compose files) are recorded only by a stream with a filter that names
the prefix literally (``headwater/deploy/#``), never by one that reaches them through a leading
wildcard (``#``, ``+/deploy/#``) — as MQTT keeps ``$`` topics out of ``#``.

Outcomes: ``reject_new`` on a full stream drops the record, counts it (``rejected_new``) and
completes the future normally: the publisher's session is not harmed. ``overwrite_oldest``
drops the oldest records (``dropped_oldest``). A storage failure (``StorageWriteError``: disk
full, I/O error) fails the futures of that stream's records — the broker then does not
acknowledge and closes the connection, so the client resends — and is logged once until the
stream writes again; :meth:`StreamsPlugin.last_error` tells it.

Sequence numbers start at 0 and increase by one per accepted record; for file streams the store
keeps them across restarts. A memory stream starts at 0 again after a restart, empty: lost on
restart is its contract.

Run-time streams and the config file
------------------------------------

``create`` / ``update`` / ``delete`` at run time are persisted as JSON definitions (the config
file's stream section, sizes in bytes, durations in seconds) with
``Database.put_stream_definition``, validated by the same rules as the config file. On start
the plugin serves the config file's streams plus the stored run-time definitions, and:

* **the config file wins for every name it defines.** A stored run-time definition of a name
  that the config file now also defines is deleted (a warning names it); the records stay and
  the config's settings apply to them.
* Config-defined streams can't be updated or deleted at run time (the request is refused with
  :class:`~headwater.core.streams.InvalidStreamRequestError` naming the config
  file): the file is the single source of their settings.
* Run-time streams persist until deleted at run time. ``create`` of a name the config defines
  raises :class:`~headwater.core.streams.StreamExistsError`.
* ``persistence`` can't change by ``update`` (delete and create instead).
* A file stream whose definition disappeared (removed from the config file) keeps its records
  on disk, unserved; a later stream of that name, from either source, adopts them.

Background tasks (owned by the plugin host, named, stopped by :meth:`StreamsPlugin.stop`)
-----------------------------------------------------------------------------------------

* ``headwater-streams-retention``: every second, first reopens the database if a write failed
  (RocksDB refuses every write after a failure, e.g. a full disk, until reopened: once space is
  free again, writes resume without a restart), then, per stream, expires at most
  ``expire_per_tick`` records older than ``ttl`` and frees what every export delivered
  (``drop_exported``: the lowest checkpoint of its exports); compacts a stream's column family
  after ``compact_after`` records left it (TTL, overwrite_oldest, drop_exported).
* ``headwater-streams-status``: publishes ``<prefix>/streams/<name>/status`` (retained; the
  ``describe`` object) when it changed, at most once per ``status_interval`` per stream; clears
  the status topic of a deleted stream and, at start, of streams that no longer exist.

``stop`` unregisters the interceptor, writes what is queued, resolves every pending future
(failing any that could not be written), stops the tasks and wakes long-polling readers.

Errors raised by the service methods: the :class:`~headwater.core.streams.StreamError`
tree, and :class:`~headwater.core.store.StorageError` when the disk refuses a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Literal, Protocol

from headwater.core.config import ConfigError, StreamConfig, parse_config
from headwater.core.retention import RetentionLimits
from headwater.core.store import NewRecord, StorageError, StorageWriteError
from headwater.core.streams import (
    InvalidStreamRequestError,
    StreamError,
    StreamExistsError,
    StreamNotFoundError,
    StreamRejectedError,
)
from headwater.core.topics import TopicFilterIndex, topic_matches
from headwater.plugins.streams.memory import MemoryStream
from headwater.wire.streams import ExportInfo, StreamDescription, StreamRecord, status_topic

if TYPE_CHECKING:
    from collections.abc import Sequence

    from headwater.core.plugin_host import PluginHost
    from headwater.core.publish import IncomingPublish
    from headwater.core.store import AppendOutcome
    from headwater.core.streams import ExportObserver, ExportProgress
    from headwater.wire.streams import StorageInfo

__all__ = [
    "MAX_WAIT_SECONDS",
    "GroupCommitPolicy",
    "StreamStorage",
    "StreamsPlugin",
    "StreamsStatistics",
]

logger = logging.getLogger(__name__)

#: The longest :meth:`StreamsPlugin.wait_for_records` waits (the stream API's long-poll cap).
MAX_WAIT_SECONDS: Final = 60.0

_DEFINITION_VERSION: Final = 1


class StreamStorage(Protocol):
    """What the plugin needs of a stream's storage: the store's ``StreamStore`` or a ``MemoryStream``."""

    @property
    def next_sequence(self) -> int:
        """The sequence the next accepted record gets."""
        ...

    def append_batch(
        self, records: Sequence[NewRecord], *, limits: RetentionLimits, export_ids: Sequence[str] = ()
    ) -> AppendOutcome:
        """Append ``records`` atomically, applying ``limits``."""
        ...

    def read(self, from_sequence: int, *, max_count: int, max_bytes: int | None) -> list[StreamRecord]:
        """Records with sequence >= ``from_sequence``, oldest first."""
        ...

    def info(self) -> StorageInfo:
        """Exact counts and bounds."""
        ...

    def expire(self, *, older_than_ms: int, max_records: int, export_ids: Sequence[str] = ()) -> int:
        """Remove at most ``max_records`` records older than ``older_than_ms``."""
        ...

    def checkpoint(self, export_id: str) -> int | None:
        """The last sequence ``export_id`` delivered."""
        ...

    def free_through(self, sequence: int) -> int:
        """Remove the records with sequence <= ``sequence``."""
        ...

    def set_checkpoint(self, export_id: str, sequence: int, progress: ExportProgress | None = None) -> None:
        """Write ``export_id``'s checkpoint (and counters) durably."""
        ...

    def export_progress(self, export_id: str) -> ExportProgress:
        """``export_id``'s counters."""
        ...

    def set_export_progress(self, export_id: str, progress: ExportProgress) -> None:
        """Write ``export_id``'s counters alone."""
        ...

    def dropped_unexported(self) -> dict[str, int]:
        """Per export: records retention removed before it delivered them."""
        ...

    def delete_checkpoint(self, export_id: str) -> None:
        """Forget ``export_id``'s checkpoint and counters."""
        ...


@dataclass(frozen=True, slots=True)
class StreamsStatistics:
    """A snapshot of the streams plugin's counters (since start)."""

    streams: int
    records_appended: int  # accepted into a stream (a publish matching two streams counts twice)
    records_rejected: int  # refused: reject_new on a full stream, or larger than max_size
    records_dropped_oldest: int  # removed by overwrite_oldest to make room
    records_expired: int  # removed by the TTL sweep
    records_freed_exported: int  # removed by drop_exported
    records_failed: int  # not stored because the storage failed (their publishers got no ack)
    batches_written: int  # group commits (one append_batch per stream written in each)
    largest_batch: int  # records in the largest group commit
    wal_syncs: int  # fsyncs awaited for flush_on_write streams (one per batch at most)
    status_published: int
    compactions: int


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
    Measured on the 2-core development machine, one ``mosquitto_pub -l -q 1`` into a file stream:
    writing after every iteration (one record per write) ran at 0.62x the broker without
    streams; these defaults gather the client's whole in-flight window (about 20 records) per
    write and ran at 0.95-1.0x.
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


@dataclass(eq=False)
class _Stream:
    """A served stream. Identity-hashed: it is the value stored in the topic index."""

    config: StreamConfig
    origin: Literal["config", "runtime"]
    storage: StreamStorage
    last_error: str | None = None
    removed_since_compaction: int = 0
    waiting: int = 0  # long-polling readers
    grown: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_memory(self) -> bool:
        return self.config.persistence == "memory"

    @property
    def limits(self) -> RetentionLimits:
        return RetentionLimits(max_size=self.config.max_size, strategy_on_full=self.config.strategy_on_full)

    @property
    def export_ids(self) -> tuple[str, ...]:
        return tuple(export.id for export in self.config.exports)


@dataclass(eq=False)
class _PendingWrite:
    """The records one batch will append to one file stream, and who waits for them."""

    stream: _Stream
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
        self.writes: dict[_Stream, _PendingWrite] = {}
        self.records = 0
        # Publishes landing in several file streams: done when all of their writes are.
        self.joint: list[tuple[asyncio.Future[None], tuple[_PendingWrite, ...]]] = []
        self.done: asyncio.Future[None] = loop.create_future()  # set once the batch is settled


class StreamsPlugin:
    """The streams plugin (a ``HeadwaterPlugin`` and ``PublishInterceptor``); see the module docstring.

    Its streams come from ``host.config.streams`` and the stored run-time definitions at
    :meth:`start`. The keyword arguments tune the background work (tests shorten them).
    """

    name = "streams"

    def __init__(
        self,
        *,
        sweep_interval: float = 1.0,
        expire_per_tick: int = 10_000,
        compact_after: int = 100_000,
        status_interval: float = 1.0,
        group_commit: GroupCommitPolicy = GroupCommitPolicy(),
    ) -> None:
        self._sweep_interval = sweep_interval
        self._expire_per_tick = expire_per_tick
        self._compact_after = compact_after
        self._status_interval = status_interval
        self._host: PluginHost | None = None
        self._exports: ExportObserver | None = None
        self._control_prefix = "headwater/"  # set from the config in start()
        self._streams: dict[str, _Stream] = {}
        self._index: TopicFilterIndex[_Stream] = TopicFilterIndex()
        self._group_commit = group_commit
        self._batch: _Batch | None = None
        # The flush callback's view of the batch being gathered (see GroupCommitPolicy).
        self._flush_scheduled = False
        self._batch_started = 0.0
        self._iterations = 0
        self._quiet = 0
        self._records_at_last_check = 0
        self._syncing: set[_Batch] = set()  # written, waiting for their fsync
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        # Status publishing: names whose status may have changed / must be cleared.
        self._status_dirty: set[str] = set()
        self._status_removed: set[str] = set()
        self._status_wanted = asyncio.Event()
        self._published_status: dict[str, bytes] = {}
        self._status_failing: set[str] = set()
        # Compaction and deletion of a stream's column family never overlap.
        self._maintenance = asyncio.Lock()
        # Counters (see StreamsStatistics).
        self._appended = 0
        self._rejected = 0
        self._dropped_oldest = 0
        self._expired = 0
        self._freed_exported = 0
        self._failed = 0
        self._batches = 0
        self._largest_batch = 0
        self._wal_syncs = 0
        self._status_published = 0
        self._compactions = 0

    # --- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def reserved_topics(prefix: str) -> tuple[str, ...]:
        """Every stream's status topic: only Headwater publishes there."""
        return (status_topic(prefix, "+"),)

    async def start(self, host: PluginHost) -> None:
        """Open every stream (config file + run-time definitions), then intercept and spawn tasks."""
        self._host = host
        self._control_prefix = f"{host.config.topic_prefix}/"
        self._batch = _Batch(asyncio.get_running_loop())
        database = host.storage
        for config in host.config.streams.values():
            self._serve(config, "config")
        for name, data in sorted(database.stream_definitions().items()):
            if name in self._streams:
                logger.warning(
                    "stream %s is defined in the config file (%s) and was also created at run time: "
                    "the config file wins; the run-time definition is deleted",
                    name,
                    host.config.source,
                )
                database.delete_stream_definition(name)
                continue
            try:
                config = _decode_definition(name, data)
            except InvalidStreamRequestError as exc:
                logger.error("stream %s is not served: its stored definition is unusable: %s", name, exc)  # noqa: TRY400
                continue
            self._serve(config, "runtime")
        unserved = sorted(set(database.stream_names()) - set(self._streams))
        if unserved:
            logger.warning(
                "records of stream(s) %s are kept on disk but not served (no definition)", ", ".join(unserved)
            )
        self._status_dirty.update(self._streams)
        self._status_wanted.set()
        host.gate.add_interceptor(self)
        self._tasks = [
            host.spawn(self._sweep_periodically(), name="headwater-streams-retention"),
            host.spawn(self._publish_statuses(), name="headwater-streams-status"),
        ]
        logger.info(
            "serving %d stream(s): %s", len(self._streams), ", ".join(sorted(self._streams)) or "none"
        )

    async def stop(self) -> None:
        """Write what is queued, settle every future, stop the tasks, wake waiting readers."""
        host = self._host
        if host is None or self._closing:
            return
        self._closing = True
        with contextlib.suppress(ValueError):
            host.gate.remove_interceptor(self)
        await self._wait_written()  # what is queued is written, and its fsyncs are done
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for batch in (*self._syncing, self._batch):
            if batch is not None:
                _settle(batch, StreamError("the streams plugin stopped before the record was written"))
        for stream in self._streams.values():
            stream.grown.set()

    # --- ingest ------------------------------------------------------------------------------

    def intercept(self, message: IncomingPublish) -> asyncio.Future[None] | None:
        """Queue ``message`` for every stream it matches; see the module docstring."""
        matched = self._index.match(message.topic)
        prefix = self._control_prefix
        if matched and message.topic.startswith(prefix):
            matched = {stream for stream in matched if _names_control_prefix(stream.config, prefix)}
        if not matched:
            return None
        record = NewRecord(
            timestamp_ms=message.received_at_ms,
            topic=message.topic,
            qos=message.qos,
            client_id=message.client_id,
            payload=message.payload,
        )
        writes = [self._queue(stream, record) for stream in matched]
        if len(writes) == 1:
            return writes[0].future
        assert self._batch is not None  # noqa: S101 - _queue just used it
        joint: asyncio.Future[None] = writes[0].future.get_loop().create_future()
        self._batch.joint.append((joint, tuple(writes)))
        return joint

    def _queue(self, stream: _Stream, record: NewRecord) -> _PendingWrite:
        batch = self._batch
        if batch is None or self._closing:
            raise StreamError("the streams plugin is not running")
        write = batch.writes.get(stream)
        if write is None:
            write = batch.writes[stream] = _PendingWrite(stream, batch.done.get_loop().create_future())
        write.records.append(record)
        batch.records += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = batch.done.get_loop()
            self._batch_started = loop.time()
            loop.call_soon(self._flush_when_due)
        return write

    def _flush_when_due(self) -> None:
        """Called once per loop iteration while a batch gathers; flushes when the policy says so."""
        batch = self._batch
        assert batch is not None  # noqa: S101 - scheduled by _queue
        loop = batch.done.get_loop()
        if batch.records != self._records_at_last_check:
            self._records_at_last_check = batch.records
            self._quiet = 0
        else:
            self._quiet += 1
        self._iterations += 1
        if not self._group_commit.flush_now(
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
        if batch is None or not batch.writes:
            return
        self._batch = _Batch(batch.done.get_loop())
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
                self._note_failure(stream, exc, len(write.records))
                self._finish(write)
                continue
            except Exception as exc:
                # A bug (the store refused its arguments), not the disk: fail these publishes
                # (not acknowledged, the clients resend) rather than leave them waiting forever.
                logger.exception("stream %s: appending %d record(s) failed", stream.name, len(write.records))
                write.error = exc
                self._failed += len(write.records)
                self._finish(write)
                continue
            self._note_outcome(stream, write.outcome)
            if stream.config.flush_on_write:
                synced.append(write)
            else:
                self._finish(write)
        if not synced:
            _settle_joint(batch)
            return
        assert self._host is not None  # noqa: S101 - started
        self._syncing.add(batch)
        sync = self._host.storage.request_wal_sync()
        sync.add_done_callback(functools.partial(self._synced, batch, synced))

    def _synced(self, batch: _Batch, synced: list[_PendingWrite], sync: asyncio.Future[None]) -> None:
        """The fsync a batch asked for is done: settle the futures that waited for it."""
        self._syncing.discard(batch)
        error = StorageWriteError("the fsync was cancelled") if sync.cancelled() else sync.exception()
        if error is None:
            self._wal_syncs += 1
        for write in synced:
            if error is not None:
                write.error = error
                self._note_failure(write.stream, error, len(write.records))
            self._finish(write)
        _settle_joint(batch)

    def _finish(self, write: _PendingWrite) -> None:
        """Settle the futures of one stream's part of a batch and tell readers."""
        _resolve(write.future, write.error)
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
            self._notify(write.stream)

    def _note_outcome(self, stream: _Stream, outcome: AppendOutcome) -> None:
        rejected = outcome.sequences.count(None)
        self._appended += len(outcome.sequences) - rejected
        self._rejected += rejected
        self._dropped_oldest += outcome.dropped_oldest
        stream.removed_since_compaction += outcome.dropped_oldest
        if stream.last_error is not None:
            logger.info("stream %s stores records again", stream.name)
            stream.last_error = None
        self._mark_status(stream.name)

    def _note_failure(self, stream: _Stream, exc: BaseException, records: int) -> None:
        self._failed += records
        if stream.last_error is None:
            logger.error(
                "stream %s could not store records (%s): their publishers are not acknowledged "
                "until it can again",
                stream.name,
                exc,
            )
        stream.last_error = str(exc)
        self._mark_status(stream.name)

    def _notify(self, stream: _Stream) -> None:
        if stream.waiting:
            event, stream.grown = stream.grown, asyncio.Event()
            event.set()

    # --- StreamService -----------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every served stream's name, sorted."""
        return sorted(self._streams)

    def describe(self, name: str) -> StreamDescription:
        """Storage and exports of ``name``."""
        stream = self._stream(name)
        return StreamDescription(
            name=name,
            persistence=stream.config.persistence,
            storage=stream.storage.info(),
            exports=self._export_infos(stream),
            state="ok" if stream.last_error is None else "failing",
            last_error=stream.last_error,
        )

    def _export_infos(self, stream: _Stream) -> tuple[ExportInfo, ...]:
        if self._exports is not None:
            return self._exports.export_infos(stream.name)
        # No upload plugin (a bare StreamsPlugin in tests): what the store knows.
        infos = []
        for export in stream.config.exports:
            progress = stream.storage.export_progress(export.id)
            infos.append(
                ExportInfo(
                    id=export.id,
                    type=export.type,
                    priority=export.priority,
                    state="disabled" if progress.disabled else "stopped",
                    last_exported_sequence=stream.storage.checkpoint(export.id),
                    last_export_time=progress.last_export_time_ms,
                    exported_records=progress.exported_records,
                    exported_bytes=progress.exported_bytes,
                    dead_lettered=progress.dead_lettered,
                    lost_records=stream.storage.dropped_unexported().get(export.id, 0),
                    last_error=None,
                )
            )
        return tuple(infos)

    def last_error(self, name: str) -> str | None:
        """Why the last write to ``name`` failed, None once it writes again (or never failed)."""
        return self._stream(name).last_error

    def stream_config(self, name: str) -> StreamConfig:
        """The settings ``name`` runs with."""
        return self._stream(name).config

    def read(
        self, name: str, *, from_sequence: int, max_count: int, max_bytes: int | None
    ) -> list[StreamRecord]:
        """Records with sequence >= ``from_sequence``, oldest first (see ``StreamService.read``)."""
        if from_sequence < 0:
            raise InvalidStreamRequestError(f"from_sequence must be at least 0, got {from_sequence}")
        if max_count < 1:
            raise InvalidStreamRequestError(f"max_count must be at least 1, got {max_count}")
        if max_bytes is not None and max_bytes < 1:
            raise InvalidStreamRequestError(f"max_bytes must be at least 1, got {max_bytes}")
        return self._stream(name).storage.read(from_sequence, max_count=max_count, max_bytes=max_bytes)

    async def wait_for_records(
        self,
        name: str,
        *,
        from_sequence: int,
        timeout: float,  # noqa: ASYNC109 - StreamService's signature: the long poll's own deadline
    ) -> None:
        """Return once a record with sequence >= ``from_sequence`` is stored.

        Or after ``timeout`` seconds (at most :data:`MAX_WAIT_SECONDS`), or when the plugin stops.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout, 0.0), MAX_WAIT_SECONDS)
        while True:
            stream = self._stream(name)
            newest = stream.storage.info().newest_sequence
            remaining = deadline - loop.time()
            if (newest is not None and newest >= from_sequence) or remaining <= 0 or self._closing:
                return
            event = stream.grown
            stream.waiting += 1
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return
            finally:
                stream.waiting -= 1

    async def append(self, name: str, payload: bytes, *, topic: str, client_id: str) -> int:
        """Append durably, as a QoS 1 publish to ``name`` would be, and return the sequence.

        Raises :class:`StreamNotFoundError`, :class:`StreamRejectedError` (full with
        ``reject_new``, or larger than ``max_size``) or ``StorageError`` (the disk refused it).
        """
        stream = self._stream(name)
        record = NewRecord(
            timestamp_ms=time.time_ns() // 1_000_000, topic=topic, qos=1, client_id=client_id, payload=payload
        )
        write = self._queue(stream, record)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        write.sequence_waiters.append((len(write.records) - 1, waiter))
        return await waiter

    async def create(self, config: StreamConfig) -> None:
        """Create and persist a run-time stream (see the module docstring for the rules)."""
        self._check_running()
        if config.name in self._streams:
            raise StreamExistsError(f"stream {config.name!r} exists already")
        data = _encode_definition(config)
        config = _decode_definition(config.name, data)  # what a restart will load
        assert self._host is not None  # noqa: S101 - _check_running
        stream = self._serve(config, "runtime")
        try:
            self._host.storage.put_stream_definition(config.name, data)
        except StorageError:
            self._unserve(stream)
            raise
        self._mark_status(config.name)
        if self._exports is not None:
            await self._exports.stream_changed(config.name)
        logger.info("stream %s created at run time", config.name)

    async def update(self, config: StreamConfig) -> None:
        """Change a run-time stream's settings (persisted); config-defined streams are refused."""
        self._check_running()
        stream = self._stream(config.name)
        if stream.origin == "config":
            raise InvalidStreamRequestError(self._config_owned(config.name, "updated"))
        if config.persistence != stream.config.persistence:
            raise InvalidStreamRequestError(
                f"stream {config.name!r}: persistence can't change from {stream.config.persistence} "
                f"to {config.persistence} (delete the stream and create it again)"
            )
        data = _encode_definition(config)
        config = _decode_definition(config.name, data)
        assert self._host is not None  # noqa: S101 - _check_running
        self._host.storage.put_stream_definition(config.name, data)
        for topic_filter in stream.config.topics:
            self._index.remove(topic_filter, stream)
        stream.config = config  # the writer reads limits and flush_on_write per batch
        for topic_filter in config.topics:
            self._index.add(topic_filter, stream)
        self._mark_status(config.name)
        if self._exports is not None:
            await self._exports.stream_changed(config.name)
        logger.info("stream %s updated at run time", config.name)

    async def delete(self, name: str) -> None:
        """Delete a run-time stream, its records and its definition; config-defined ones are refused."""
        self._check_running()
        stream = self._stream(name)
        if stream.origin == "config":
            raise InvalidStreamRequestError(self._config_owned(name, "deleted"))
        self._unserve(stream)  # nothing new is queued for it from now on
        if self._exports is not None:
            await self._exports.stream_changed(name)  # its export drivers stop
        await self._wait_written()  # ... and what was queued is written (or failed)
        assert self._host is not None  # noqa: S101 - _check_running
        database = self._host.storage
        async with self._maintenance:
            if not stream.in_memory:
                database.delete_stream(name)
            database.delete_stream_definition(name)
        stream.grown.set()  # long-polling readers find it gone
        self._published_status.pop(name, None)
        self._status_removed.add(name)
        self._status_wanted.set()
        logger.info("stream %s deleted at run time", name)

    # --- exports (the upload plugin's view of the storage) -------------------------------------

    def attach_exports(self, observer: ExportObserver | None) -> None:
        """Let the upload plugin describe exports and follow run-time stream changes."""
        self._exports = observer

    def set_export_enabled(self, name: str, export_id: str, *, enabled: bool) -> ExportInfo:
        """Pause or resume export ``export_id`` of stream ``name`` (persisted)."""
        self._stream(name)
        if self._exports is None:
            raise InvalidStreamRequestError("exports are not running (no upload plugin)")
        return self._exports.set_export_enabled(name, export_id, enabled=enabled)

    def storage_info(self, name: str) -> StorageInfo:
        """The storage counters of ``name`` (no export information)."""
        return self._stream(name).storage.info()

    def export_checkpoint(self, name: str, export_id: str) -> int | None:
        """The last sequence of ``name`` that export ``export_id`` delivered."""
        return self._stream(name).storage.checkpoint(export_id)

    def export_progress(self, name: str, export_id: str) -> ExportProgress:
        """Export ``export_id``'s persisted counters."""
        return self._stream(name).storage.export_progress(export_id)

    def export_lost(self, name: str, export_id: str) -> int:
        """Records of ``name`` retention removed before ``export_id`` delivered them."""
        return self._stream(name).storage.dropped_unexported().get(export_id, 0)

    def commit_export(self, name: str, export_id: str, sequence: int, progress: ExportProgress) -> None:
        """Write an export's checkpoint and counters in one batch, then apply ``drop_exported``."""
        self._stream(name).storage.set_checkpoint(export_id, sequence, progress)
        self.release_exported(name)

    def save_export_progress(self, name: str, export_id: str, progress: ExportProgress) -> None:
        """Write an export's counters alone (its pause switch)."""
        self._stream(name).storage.set_export_progress(export_id, progress)
        self._mark_status(name)

    def forget_export(self, name: str, export_id: str) -> None:
        """Delete the checkpoint and counters of an export the stream no longer has."""
        self._stream(name).storage.delete_checkpoint(export_id)

    def mark_status_changed(self, name: str) -> None:
        """Republish the status topic of ``name`` (at most once per status interval)."""
        if name in self._streams:
            self._mark_status(name)

    # --- drop_exported (the upload plugin calls in once it moved a checkpoint) ----------------

    def release_exported(self, name: str) -> int:
        """Free the records of ``name`` that every export delivered, if it has ``drop_exported``.

        Returns how many records were removed. Only a checkpoint (or retention) frees a record:
        with no export, or an export that delivered nothing yet, nothing is freed.
        """
        stream = self._stream(name)
        if not stream.config.drop_exported or not stream.config.exports:
            return 0
        checkpoints = [stream.storage.checkpoint(export_id) for export_id in stream.export_ids]
        delivered = [checkpoint for checkpoint in checkpoints if checkpoint is not None]
        if len(delivered) < len(checkpoints):
            return 0
        removed = stream.storage.free_through(min(delivered))
        if removed:
            self._freed_exported += removed
            stream.removed_since_compaction += removed
            self._mark_status(name)
        return removed

    def statistics(self) -> StreamsStatistics:
        """A snapshot of the counters."""
        return StreamsStatistics(
            streams=len(self._streams),
            records_appended=self._appended,
            records_rejected=self._rejected,
            records_dropped_oldest=self._dropped_oldest,
            records_expired=self._expired,
            records_freed_exported=self._freed_exported,
            records_failed=self._failed,
            batches_written=self._batches,
            largest_batch=self._largest_batch,
            wal_syncs=self._wal_syncs,
            status_published=self._status_published,
            compactions=self._compactions,
        )

    # --- retention sweep ---------------------------------------------------------------------

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            await self.sweep()

    async def sweep(self) -> None:
        """One retention pass over every stream (the retention task runs it every second).

        It first tries to make a database that refused a write (full disk) writable again.
        """
        assert self._host is not None  # noqa: S101 - started
        database = self._host.storage
        if database.write_error is not None and database.recover():
            for name in self._streams:
                self._mark_status(name)
        now_ms = time.time_ns() // 1_000_000
        for stream in list(self._streams.values()):
            if self._streams.get(stream.name) is not stream:
                continue  # deleted while an earlier stream was being compacted
            if stream.config.ttl is not None:
                cutoff = now_ms - round(stream.config.ttl * 1000)
                try:
                    expired = stream.storage.expire(
                        older_than_ms=cutoff, max_records=self._expire_per_tick, export_ids=stream.export_ids
                    )
                except StorageError as exc:
                    self._note_failure(stream, exc, 0)
                    continue
                if expired:
                    self._expired += expired
                    stream.removed_since_compaction += expired
                    self._mark_status(stream.name)
            try:
                self.release_exported(stream.name)
            except StorageError as exc:
                self._note_failure(stream, exc, 0)
            if not stream.in_memory and stream.removed_since_compaction >= self._compact_after:
                await self._compact(stream)

    async def _compact(self, stream: _Stream) -> None:
        assert self._host is not None  # noqa: S101 - started
        async with self._maintenance:
            if self._streams.get(stream.name) is not stream:
                return
            stream.removed_since_compaction = 0
            try:
                await self._host.storage.compact_stream(stream.name)
            except StorageError as exc:
                self._note_failure(stream, exc, 0)
                return
        self._compactions += 1
        self._mark_status(stream.name)

    # --- status topic ------------------------------------------------------------------------

    def _status_topic(self, name: str) -> str:
        assert self._host is not None  # noqa: S101 - started
        return status_topic(self._host.config.topic_prefix, name)

    def _mark_status(self, name: str) -> None:
        self._status_dirty.add(name)
        self._status_wanted.set()

    async def _publish_statuses(self) -> None:
        """The status task: coalesce changes, publish at most once per interval per stream."""
        await self._clear_stale_statuses()
        while True:
            await self._status_wanted.wait()
            self._status_wanted.clear()
            dirty, self._status_dirty = self._status_dirty, set()
            removed, self._status_removed = self._status_removed, set()
            for name in sorted(removed - set(self._streams)):
                if not await self._publish_status(name, b""):
                    self._status_removed.add(name)
            for name in sorted(dirty):
                stream = self._streams.get(name)
                if stream is None:
                    continue
                payload = json.dumps(self.describe(name).to_json_dict(), separators=(",", ":")).encode()
                if payload == self._published_status.get(name):
                    continue
                if await self._publish_status(name, payload):
                    self._published_status[name] = payload
                else:
                    self._status_dirty.add(name)  # retried next round
            if self._status_dirty or self._status_removed:
                self._status_wanted.set()
            await asyncio.sleep(self._status_interval)

    async def _publish_status(self, name: str, payload: bytes) -> bool:
        assert self._host is not None  # noqa: S101 - started
        try:
            await self._host.publish(self._status_topic(name), payload, retain=True)
        except StorageError as exc:
            if name not in self._status_failing:  # one line per failure streak, not per retry
                self._status_failing.add(name)
                logger.warning("status of stream %s not published (retrying): %s", name, exc)
            return False
        self._status_failing.discard(name)
        self._status_published += 1
        return True

    async def _clear_stale_statuses(self) -> None:
        """Clear retained status topics of streams that no longer exist (from an earlier run)."""
        assert self._host is not None  # noqa: S101 - started
        pattern = self._status_topic("+")
        prefix, suffix = pattern.split("+")
        for message in self._host.retained(prefix):
            if topic_matches(pattern, message.topic):
                name = message.topic.removeprefix(prefix).removesuffix(suffix)
                if name not in self._streams:
                    await self._publish_status(name, b"")

    # --- helpers -----------------------------------------------------------------------------

    def _serve(self, config: StreamConfig, origin: Literal["config", "runtime"]) -> _Stream:
        assert self._host is not None  # noqa: S101 - started
        storage: StreamStorage = (
            MemoryStream(config.name)
            if config.persistence == "memory"
            else self._host.storage.open_stream(config.name)
        )
        stream = _Stream(config=config, origin=origin, storage=storage)
        self._streams[config.name] = stream
        for topic_filter in config.topics:
            self._index.add(topic_filter, stream)
        return stream

    def _unserve(self, stream: _Stream) -> None:
        for topic_filter in stream.config.topics:
            self._index.remove(topic_filter, stream)
        del self._streams[stream.name]

    async def _wait_written(self) -> None:
        """Write what is queued now and return once every write has its fsync (or failed)."""
        self.flush()
        if self._syncing:
            await asyncio.gather(*(asyncio.shield(batch.done) for batch in self._syncing))

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            raise StreamNotFoundError(f"no stream named {name!r}")
        return stream

    def _check_running(self) -> None:
        if self._host is None or self._closing:
            raise StreamError("the streams plugin is not running")

    def _config_owned(self, name: str, what: str) -> str:
        assert self._host is not None  # noqa: S101 - started
        return (
            f"stream {name!r} is defined in the config file ({self._host.config.source}) and can't be "
            f"{what} at run time: change it there and restart"
        )


def _names_control_prefix(config: StreamConfig, prefix: str) -> bool:
    """Whether one of the stream's filters names Headwater's control prefix literally."""
    return any(topic_filter.startswith(prefix) for topic_filter in config.topics)


def _rejected(stream: _Stream) -> StreamRejectedError:
    config = stream.config
    if config.strategy_on_full == "reject_new":
        return StreamRejectedError(
            f"stream {config.name!r} is full ({config.max_size} bytes, strategy reject_new) "
            "or the record is larger than max_size"
        )
    return StreamRejectedError(
        f"the record is larger than stream {config.name!r}'s max_size ({config.max_size})"
    )


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
        return
    future.set_exception(error)
    # Failures are counted and logged here; a QoS 0 publisher never awaits its future, and
    # asyncio would log every such future again as "exception never retrieved".
    future.exception()


def _settle_joint(batch: _Batch) -> None:
    """Every write of ``batch`` is settled: settle the multi-stream futures and the batch."""
    for joint, writes in batch.joint:
        _resolve(joint, next((write.error for write in writes if write.error is not None), None))
    if not batch.done.done():
        batch.done.set_result(None)


def _settle(batch: _Batch, error: BaseException) -> None:
    """Fail whatever of ``batch`` is still pending, then mark the batch settled."""
    for write in batch.writes.values():
        _resolve(write.future, error)
        for _, waiter in write.sequence_waiters:
            if not waiter.done():
                waiter.set_exception(error)
    for joint, _ in batch.joint:
        _resolve(joint, error)
    if not batch.done.done():
        batch.done.set_result(None)


# --- run-time definitions: the config file's stream section as JSON ---------------------------


def _encode_definition(config: StreamConfig) -> bytes:
    """``config`` as the stored JSON definition (the config file's keys, sizes in bytes)."""
    exports: list[dict[str, object]] = []
    for export in config.exports:
        entry: dict[str, object] = {
            "id": export.id,
            "type": export.type,
            "priority": export.priority,
            "batch_size": export.batch_size,
            "batch_interval": export.batch_interval,
            "start": export.start,
        }
        if export.max_bandwidth is not None:
            # Bandwidths are only read from strings; an exact decimal keeps every digit.
            entry["max_bandwidth"] = f"{Decimal(export.max_bandwidth):f}B/s"
        entry.update(export.options)
        exports.append(entry)
    section: dict[str, object] = {
        "topics": list(config.topics),
        "persistence": config.persistence,
        "max_size": config.max_size,
        "strategy_on_full": config.strategy_on_full,
        "ttl": config.ttl,
        "flush_on_write": config.flush_on_write,
        "drop_exported": config.drop_exported,
        "exports": exports,
    }
    return json.dumps({"version": _DEFINITION_VERSION, "stream": section}, sort_keys=True).encode()


def _decode_definition(name: str, data: bytes) -> StreamConfig:
    """A stored definition back as a validated :class:`StreamConfig` (the config file's rules).

    Raises :class:`InvalidStreamRequestError` with the config validator's one-line reason.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidStreamRequestError(f"stream {name!r}: the definition is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("version") != _DEFINITION_VERSION:
        raise InvalidStreamRequestError(f"stream {name!r}: unknown definition format")
    try:
        config = parse_config({"streams": {name: document.get("stream")}}, source=f"stream {name!r}")
    except ConfigError as exc:
        raise InvalidStreamRequestError(str(exc)) from exc
    return config.streams[name]
