"""The streams plugin: MQTT publishes into durable streams, acknowledged only once stored.

Owns the running streams: which topics feed which stream (one
:class:`~headwater.core.topics.TopicFilterIndex` over every stream's filters), their start-up
from the config file and the stored run-time definitions, and the service methods: it implements
:class:`~headwater.core.streams.StreamService` for the MQTT stream API (``api.py``) and
in-process users, and :class:`~headwater.core.streams.ExportableStreams` for the upload plugin.
It must never build RocksDB keys (that is ``store.py``) nor speak request/response MQTT (that
is ``api.py``). Its parts, each a module of this package:

* :mod:`~headwater.plugins.streams.group_commit`: batching writes, one fsync per batch, the
  futures completed per record;
* :mod:`~headwater.plugins.streams.definitions`: the stored run-time definitions and the rules
  for run-time create/update/delete;
* :mod:`~headwater.plugins.streams.sweeper`: the retention sweep (TTL, ``drop_exported``,
  compaction);
* :mod:`~headwater.plugins.streams.status`: the retained status topics;
* :mod:`~headwater.plugins.streams.served`: a served stream and what it needs of its storage.

Ingest path
-----------

:meth:`StreamsPlugin.intercept` runs synchronously, in arrival order, for every publish the
ACL accepted. A topic that matches no stream costs one index lookup and returns ``None``. A
match only *queues* the record in the group commit's current batch and returns the future of
its write (see :mod:`~headwater.plugins.streams.group_commit`). The durable-ack handler sends
the PUBACK / PUBREC of a QoS 1/2 publish when its future completes; nobody waits for a QoS 0
publish, yet it lands in the stream the same way. ``memory`` streams go through the same batches
(their "write" is an append to the ring): a publish is acknowledged once it is in the ring, so
what was acknowledged can be read. Acknowledgements leave in bursts of a whole batch, which
also batches the client's next publishes, so a stream costs a publishing client little
(docs/benchmarks.md has the measurements).

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

Background tasks (owned by the plugin host, named, stopped by :meth:`StreamsPlugin.stop`)
-----------------------------------------------------------------------------------------

* ``headwater-streams-retention``: every second, :class:`~headwater.plugins.streams.sweeper.RetentionSweep`.
* ``headwater-streams-status``: :class:`~headwater.plugins.streams.status.StatusPublisher`.

``stop`` unregisters the interceptor, writes what is queued, settles every pending future
(failing any that could not be written), stops the tasks and wakes long-polling readers.

Errors raised by the service methods: the :class:`~headwater.core.streams.StreamError`
tree, and :class:`~headwater.core.store.StorageError` when the disk refuses a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from headwater.core.config import StreamConfig
from headwater.core.store import NewRecord, StorageError
from headwater.core.streams import (
    InvalidStreamRequestError,
    StreamError,
    StreamExistsError,
    StreamNotFoundError,
)
from headwater.core.topics import TopicFilterIndex
from headwater.plugins.streams.definitions import (
    check_delete,
    check_update,
    decode_definition,
    encode_definition,
)
from headwater.plugins.streams.group_commit import GroupCommit, GroupCommitPolicy
from headwater.plugins.streams.memory import MemoryStream
from headwater.plugins.streams.served import ServedStream, StreamStorage
from headwater.plugins.streams.status import StatusPublisher
from headwater.plugins.streams.sweeper import RetentionSweep
from headwater.wire.streams import ExportInfo, StreamDescription, StreamRecord, status_topic

if TYPE_CHECKING:
    from headwater.core.plugin_host import PluginHost
    from headwater.core.publish import IncomingPublish
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

_DEFAULT_GROUP_COMMIT: Final = GroupCommitPolicy()


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
        group_commit: GroupCommitPolicy = _DEFAULT_GROUP_COMMIT,
    ) -> None:
        self._sweep_interval = sweep_interval
        self._host: PluginHost | None = None
        self._exports: ExportObserver | None = None
        self._control_prefix = "headwater/"  # set from the config in start()
        self._streams: dict[str, ServedStream] = {}
        self._index: TopicFilterIndex[ServedStream] = TopicFilterIndex()
        self._group_commit_policy = group_commit
        self._commit: GroupCommit | None = None  # from start() on
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        # Compaction and deletion of a stream's column family never overlap.
        self._maintenance = asyncio.Lock()
        self._status = StatusPublisher(interval=status_interval, served=self._streams, describe=self.describe)
        self._sweep = RetentionSweep(
            streams=self._streams,
            expire_per_tick=expire_per_tick,
            compact_after=compact_after,
            maintenance=self._maintenance,
            on_changed=self._status.mark,
            on_failed=self._note_failure,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    @staticmethod
    def reserved_topics(prefix: str) -> tuple[str, ...]:
        """Every stream's status topic: only Headwater publishes there."""
        return (status_topic(prefix, "+"),)

    async def start(self, host: PluginHost) -> None:
        """Open every stream (config file + run-time definitions), then intercept and spawn tasks."""
        self._host = host
        self._control_prefix = f"{host.config.topic_prefix}/"
        database = host.storage
        self._commit = GroupCommit(
            self._group_commit_policy,
            loop=asyncio.get_running_loop(),
            request_wal_sync=database.request_wal_sync,
            on_written=self._note_written,
            on_failed=self._note_failure,
        )
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
                config = decode_definition(name, data)
            except InvalidStreamRequestError as exc:
                logger.error("stream %s is not served: its stored definition is unusable: %s", name, exc)  # noqa: TRY400
                continue
            self._serve(config, "runtime")
        unserved = sorted(set(database.stream_names()) - set(self._streams))
        if unserved:
            logger.warning(
                "records of stream(s) %s are kept on disk but not served (no definition)", ", ".join(unserved)
            )
        for name in self._streams:
            self._status.mark(name)
        host.gate.add_interceptor(self)
        self._tasks = [
            host.spawn(
                self._sweep.run(database, interval=self._sweep_interval), name="headwater-streams-retention"
            ),
            host.spawn(self._status.run(host), name="headwater-streams-status"),
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
        commit = self._commit
        assert commit is not None  # noqa: S101 - started
        await commit.wait_written()  # what is queued is written, and its fsyncs are done
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        commit.settle_pending(StreamError("the streams plugin stopped before the record was written"))
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
        return self._writer().queue(matched, record)

    def flush(self) -> None:
        """Write everything queued now: one ``append_batch`` per stream (the group commit).

        Futures of streams without ``flush_on_write`` are settled before this returns; the
        others once the one fsync this batch asks for is done.
        """
        if self._commit is not None:
            self._commit.flush()

    def _writer(self) -> GroupCommit:
        if self._commit is None or self._closing:
            raise StreamError("the streams plugin is not running")
        return self._commit

    def _note_written(self, stream: ServedStream) -> None:
        if stream.last_error is not None:
            logger.info("stream %s stores records again", stream.name)
            stream.last_error = None
        self._status.mark(stream.name)

    def _note_failure(self, stream: ServedStream, exc: BaseException) -> None:
        if stream.last_error is None:
            logger.error(
                "stream %s could not store records (%s): their publishers are not acknowledged "
                "until it can again",
                stream.name,
                exc,
            )
        stream.last_error = str(exc)
        self._status.mark(stream.name)

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

    def _export_infos(self, stream: ServedStream) -> tuple[ExportInfo, ...]:
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
        return await self._writer().queue_for_sequence(stream, record)

    async def create(self, config: StreamConfig) -> None:
        """Create and persist a run-time stream (see the module docstring for the rules)."""
        self._check_running()
        if config.name in self._streams:
            raise StreamExistsError(f"stream {config.name!r} exists already")
        data = encode_definition(config)
        config = decode_definition(config.name, data)  # what a restart will load
        assert self._host is not None  # noqa: S101 - _check_running
        stream = self._serve(config, "runtime")
        try:
            self._host.storage.put_stream_definition(config.name, data)
        except StorageError:
            self._unserve(stream)
            raise
        self._status.mark(config.name)
        if self._exports is not None:
            await self._exports.stream_changed(config.name)
        logger.info("stream %s created at run time", config.name)

    async def update(self, config: StreamConfig) -> None:
        """Change a run-time stream's settings (persisted); config-defined streams are refused."""
        self._check_running()
        assert self._host is not None  # noqa: S101 - _check_running
        stream = self._stream(config.name)
        check_update(stream, config, config_file=self._host.config.source)
        data = encode_definition(config)
        config = decode_definition(config.name, data)
        self._host.storage.put_stream_definition(config.name, data)
        for topic_filter in stream.config.topics:
            self._index.remove(topic_filter, stream)
        stream.config = config  # the writer reads limits and flush_on_write per batch
        for topic_filter in config.topics:
            self._index.add(topic_filter, stream)
        self._status.mark(config.name)
        if self._exports is not None:
            await self._exports.stream_changed(config.name)
        logger.info("stream %s updated at run time", config.name)

    async def delete(self, name: str) -> None:
        """Delete a run-time stream, its records and its definition; config-defined ones are refused."""
        self._check_running()
        assert self._host is not None  # noqa: S101 - _check_running
        stream = self._stream(name)
        check_delete(stream, config_file=self._host.config.source)
        self._unserve(stream)  # nothing new is queued for it from now on
        if self._exports is not None:
            await self._exports.stream_changed(name)  # its export drivers stop
        await self._writer().wait_written()  # ... and what was queued is written (or failed)
        database = self._host.storage
        async with self._maintenance:
            if not stream.in_memory:
                database.delete_stream(name)
            database.delete_stream_definition(name)
        stream.grown.set()  # long-polling readers find it gone
        self._status.mark_removed(name)
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
        self._status.mark(name)

    def forget_export(self, name: str, export_id: str) -> None:
        """Delete the checkpoint and counters of an export the stream no longer has."""
        self._stream(name).storage.delete_checkpoint(export_id)

    def mark_status_changed(self, name: str) -> None:
        """Republish the status topic of ``name`` (at most once per status interval)."""
        if name in self._streams:
            self._status.mark(name)

    # --- drop_exported (the upload plugin calls in once it moved a checkpoint) ----------------

    def release_exported(self, name: str) -> int:
        """Free the records of ``name`` that every export delivered, if it has ``drop_exported``.

        Returns how many records were removed. Only a checkpoint (or retention) frees a record:
        with no export, or an export that delivered nothing yet, nothing is freed.
        """
        return self._sweep.release_exported(self._stream(name))

    def statistics(self) -> StreamsStatistics:
        """A snapshot of the counters."""
        commit = self._commit.statistics() if self._commit is not None else None
        return StreamsStatistics(
            streams=len(self._streams),
            records_appended=commit.records_appended if commit else 0,
            records_rejected=commit.records_rejected if commit else 0,
            records_dropped_oldest=commit.records_dropped_oldest if commit else 0,
            records_expired=self._sweep.expired,
            records_freed_exported=self._sweep.freed_exported,
            records_failed=commit.records_failed if commit else 0,
            batches_written=commit.batches_written if commit else 0,
            largest_batch=commit.largest_batch if commit else 0,
            wal_syncs=commit.wal_syncs if commit else 0,
            status_published=self._status.published,
            compactions=self._sweep.compactions,
        )

    async def sweep(self) -> None:
        """One retention pass over every stream (the retention task runs it every second).

        It first tries to make a database that refused a write (full disk) writable again.
        """
        assert self._host is not None  # noqa: S101 - started
        await self._sweep.sweep(self._host.storage)

    # --- helpers -----------------------------------------------------------------------------

    def _serve(self, config: StreamConfig, origin: Literal["config", "runtime"]) -> ServedStream:
        assert self._host is not None  # noqa: S101 - started
        storage: StreamStorage = (
            MemoryStream(config.name)
            if config.persistence == "memory"
            else self._host.storage.open_stream(config.name)
        )
        stream = ServedStream(config=config, origin=origin, storage=storage)
        self._streams[config.name] = stream
        for topic_filter in config.topics:
            self._index.add(topic_filter, stream)
        return stream

    def _unserve(self, stream: ServedStream) -> None:
        for topic_filter in stream.config.topics:
            self._index.remove(topic_filter, stream)
        del self._streams[stream.name]

    def _stream(self, name: str) -> ServedStream:
        stream = self._streams.get(name)
        if stream is None:
            raise StreamNotFoundError(f"no stream named {name!r}")
        return stream

    def _check_running(self) -> None:
        if self._host is None or self._closing:
            raise StreamError("the streams plugin is not running")


def _names_control_prefix(config: StreamConfig, prefix: str) -> bool:
    """Whether one of the stream's filters names Headwater's control prefix literally."""
    return any(topic_filter.startswith(prefix) for topic_filter in config.topics)
